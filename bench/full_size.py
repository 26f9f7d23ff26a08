"""The real-size path from the real on-disk formats: a LoRA training step and batched greedy
generation of an experiment's own model, with random weights at its real widths.

    python bench/full_size.py --experiment litegpt_dual [--llm-layers N] [--matrix]
    python bench/full_size.py --experiment pfmvg [--precisions bf16,8bit,4bit] [--attention sdpa,eager]
                              [--checkpointing on,off] [--batch B] [--steps S] [--new-tokens T]

What runs: random weights are written, in a temporary directory removed at the end
(``--workdir`` keeps them), in the formats of the real downloads (``medgrounder.models.random_weights``):
a Hugging Face Llama directory (sharded safetensors, index, ``config.json``,
``generation_config.json``, Llama-2's tokenizer from ``MEDGROUNDER_LLAMA_TOKENIZER``), BiomedCLIP's
open_clip folder, PubMedCLIP's ``CLIPVisionModel`` folder, BLIP-2's ``eva_vit_g.pth`` and
MiniGPT-v2's checkpoint, each for the towers and LLM the experiment's config names. The
experiment's config is composed through Hydra and pointed at them with ordinary overrides
(``model.llm.pretrained``, ``model.encoder...model_name`` / ``pretrained``, ``paths.eva_vit_g``,
``paths.minigptv2_ckpt``); the model is ``instantiate(cfg.model)``, as ``medgrounder.train`` builds it.

Each configuration (precision x attention x gradient checkpointing) runs in a fresh process and
prints: load time; the training step time (forward with the towers, backward, AdamW step on the
trainable projector and LoRA weights; median of ``--steps`` after one warm-up step); peak memory
(CPU: the process's peak RSS, loading included; GPU: ``torch.cuda.max_memory_allocated`` during
the steps); training tokens/s (non-padding LLM positions: prefix, visual tokens, prompt and
answer) and samples/s; on a GPU the model FLOPs utilisation, ``(6 N_llm T_llm + 2 N_towers
T_towers) / step time / peak bf16 FLOP/s`` (the standard 6N approximation for the LLM's forward
and backward, as if every weight trained; the frozen towers' forward only; attention's T^2 term
and checkpointing's recomputation not counted); and the ratio of samples/s to LiteGPT's reported
throughput (20 epochs x 549 iterations in about 3 h on 4 A100s: 1.02 iterations/s at the global
batch 8 of conf/experiment/litegpt_dual.yaml, i.e. 8.1 samples/s, 2.03 per GPU; PFMVG reports no
throughput). Then a batched greedy generation of ``--gen-samples`` prompts of the same task:
new tokens/s (rows x decoding steps over the time of ``model.generate``).

The batch is built directly with the datamodule's collator (``PromptCollator``) from random
images at the experiment's ``model.image_size`` and the first stage's task (``--task``): the
bench measures the model step, not data loading. LiteGPT: ``[identify]`` with two findings;
PFMVG: ``[caption]`` with a 60-word report (``--task refer``: one phrase, one box).

Defaults: on a GPU the whole matrix at full size (32 LLM layers, the config's per-device batch);
on a CPU the experiment's own precision, attention and checkpointing, ``--llm-layers 2`` (every
width and the towers' full depth kept), batch 2, 16 new tokens; ``--matrix`` widens a CPU run to
the whole matrix (bitsandbytes runs 8-bit and 4-bit on CPU). A CPU run computes in float32 (the
LLM's ``model.llm.dtype=fp32``, no autocast; the files stay bf16 / fp16 as published): a CPU
without AVX512-BF16 or AMX emulates bf16 matrix products far below its float32 speed, and the
``bf16`` row is then labelled ``fp32``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

PRECISIONS = {"bf16": None, "8bit": "8bit", "4bit": "4bit"}
ATTENTION = ("sdpa", "eager")
CHECKPOINTING = ("on", "off")
# LiteGPT section 4.4: 20 epochs x 549 iterations in about 3 hours on 4 A100s, at the global batch
# of conf/experiment/litegpt_dual.yaml (8: inferred there from 4,394 images / 549 iterations).
PAPER = {"litegpt": {"iterations": 20 * 549, "seconds": 3 * 3600, "gpus": 4, "global_batch": 8}}
# Dense bf16 tensor-core peaks (NVIDIA data sheets), matched on the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A40": 149.7e12, "A10": 125e12,
             "L4": 121e12, "V100": 125e12}
CAPTION = ("Frontal chest radiograph. The heart size is mildly enlarged. There is a moderate right pleural effusion "
           "with adjacent basilar atelectasis. No pneumothorax is seen. The left lung is clear. Mediastinal "
           "contours are within normal limits. There are degenerative changes of the thoracic spine. Impression: "
           "moderate right pleural effusion and mild cardiomegaly, no focal consolidation.")


# ----------------------------------------------------------------------------- config
def compose(experiment: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("medgrounder.conf", version_base="1.3"):
        return hydra_compose("train", overrides=[f"+experiment={experiment}", *overrides])


# ----------------------------------------------------------------------------- batch
def build_items(task: str, n: int, image_size: int, seed: int = 0) -> list[dict]:
    """``n`` collator items of ``task`` with random uint8 images (each row its own image)."""
    import torch

    from medgrounder.tasks import get_task
    from medgrounder.tasks.base import Target
    from medgrounder.tasks.identify import identify_answer

    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = torch.randint(0, 256, (image_size, image_size), generator=gen, dtype=torch.uint8)
        item = {"image": image, "task": task, "meta": {"id": str(i)}}
        if task == "identify":
            item["answer"] = identify_answer([("Cardiomegaly", (10 + i % 7, 20, 60 + i % 11, 70)),
                                              ("Aortic enlargement", (40, 10, 55, 30))])
        elif task == "refer":
            target = Target(text="right lower lobe opacity", findings=(("", (12 + i % 5, 40, 48, 77)),))
            item["instruction"] = get_task("refer").instruction(target)
            item["answer"] = get_task("refer").answer(target)
        elif task == "caption":
            item["answer"] = CAPTION
        else:
            raise ValueError(f"--task {task!r}: the bench builds identify, refer or caption batches")
        items.append(item)
    return items


def first_task(cfg) -> str:
    return next(iter(cfg.stages.values())).task


def stage_batch_size(cfg, task: str) -> int:
    """The config's per-process training batch of ``task`` (``data.batch_size`` or
    ``data.tasks.<task>.batch_size``)."""
    data = cfg.data
    if "tasks" in data and task in data.tasks:
        return int(data.tasks[task].batch_size)
    return int(data.batch_size)


# ----------------------------------------------------------------------------- one configuration
def _rss_now() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(spec: dict) -> dict:
    """Build the model of ``spec`` (experiment, overrides, device) and time it."""
    import torch
    from hydra.utils import instantiate

    from medgrounder.data.collate import PromptCollator
    from medgrounder.summary import summarize
    from medgrounder.train import autocast_dtype

    torch.manual_seed(0)
    cfg = compose(spec["experiment"], spec["overrides"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    module = instantiate(cfg.model)
    module.to(device)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_now()
    batch = PromptCollator(module.tokenizer)(build_items(spec["task"], spec["batch"], int(cfg.model.image_size)))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    # GPU: the experiment's own trainer precision (bf16-mixed); CPU: float32 throughout, since a CPU
    # without AVX512-BF16 / AMX emulates bf16 matmuls at a small fraction of its fp32 speed
    amp = autocast_dtype(cfg.trainer.precision) if cuda else None

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    steps = spec["steps"]
    opt, _ = module.build_optimizer(steps + 1)
    module.train()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with autocast():
            loss = module._batch_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
    step_s = statistics.median(times[1:])
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    b = spec["batch"]
    prefix = len(module.prefix_ids) + module.num_visual_tokens
    llm_tokens = b * prefix + int(batch["text_mask"].sum())
    summary = summarize(cfg)
    tower_flops = sum(2 * t["total_params"] * t["tokens"] for t in summary["towers"]) * b
    flops = 6 * summary["llm"]["total_params"] * llm_tokens + tower_flops  # from the config: 4-bit packing halves no count
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), None) if cuda else None

    # batched greedy generation: one LM-head call per decoding step (the prompt's included)
    gen = PromptCollator(module.tokenizer)(build_items(spec["task"], spec["gen_samples"], int(cfg.model.image_size), 1))
    calls = []
    hook = module.llm.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    module.eval()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    with autocast():
        answers = module.generate(gen["images"].to(device), gen["prompt_ids"].to(device), gen["prompt_mask"].to(device),
                                  max_new_tokens=spec["new_tokens"])
    if cuda:
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - t
    hook.remove()
    return {
        "device": name, "load_s": load_s, "rss_loaded": rss_loaded, "step_s": step_s, "steps": times, "losses": losses,
        "peak_bytes": peak, "tokens_per_s": llm_tokens / step_s, "samples_per_s": b / step_s,
        "llm_tokens": llm_tokens, "flops": flops, "mfu": flops / step_s / peak_flops if peak_flops else None,
        "gen_s": gen_s, "gen_tokens": len(calls) * spec["gen_samples"], "answers": answers,
        "llm_layers": module.llm.config.num_hidden_layers,
    }


def _child(spec: dict, queue) -> None:
    try:
        queue.put(measure(spec))
    except Exception as e:  # reported by the parent, which goes on with the next configuration
        import traceback

        queue.put({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


def run_isolated(spec: dict) -> dict:
    """:func:`measure` in a fresh process: its peak RSS is this configuration's alone."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(spec, queue))
    proc.start()
    try:
        result = queue.get()
    except KeyboardInterrupt:
        proc.terminate()
        raise
    proc.join()
    return result


# ----------------------------------------------------------------------------- main
def paper_line(experiment: str, samples_per_s: float) -> str:
    ref = next((v for k, v in PAPER.items() if experiment.startswith(k)), None)
    if ref is None:
        return "paper: no throughput reported"
    its = ref["iterations"] / ref["seconds"]
    per_gpu = its * ref["global_batch"] / ref["gpus"]
    return (f"paper: {its:.2f} it/s x batch {ref['global_batch']} on {ref['gpus']} A100 = {per_gpu:.2f} samples/s "
            f"per GPU; this run / paper per device: {samples_per_s / per_gpu:.3g}")


def _split(value: str | None, allowed) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"unknown value(s) {bad}: choose among {list(allowed)}")
    return items


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="conf/experiment/NAME.yaml (litegpt_dual, pfmvg, ...)")
    ap.add_argument("--llm-layers", type=int, default=None, help="LLM depth (default: 2 on CPU, the real 32 on GPU)")
    ap.add_argument("--tower-layers", type=int, default=None,
                    help="EVA / CLIP tower depth (default: the real depth; BiomedCLIP's trunk always keeps 12)")
    ap.add_argument("--precisions", default=None, help="comma list of bf16,8bit,4bit (default: CPU the config's, GPU all)")
    ap.add_argument("--attention", default=None, help="comma list of sdpa,eager (default: CPU the config's, GPU both)")
    ap.add_argument("--checkpointing", default=None, help="comma list of on,off (default: CPU the config's, GPU both)")
    ap.add_argument("--matrix", action="store_true", help="every precision x attention x checkpointing on CPU too")
    ap.add_argument("--task", default=None, help="the batch's task (default: the first stage's)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: CPU 2, GPU the config's)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up (default: CPU 1, GPU 5)")
    ap.add_argument("--gen-samples", type=int, default=None, help="prompts generated in one batch (default: CPU 2, GPU 8)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generation budget (default: CPU 16, GPU 128)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--workdir", default=None, help="write the weights here and keep them (default: a temporary dir)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    args.precisions = _split(args.precisions, PRECISIONS)
    args.attention = _split(args.attention, ATTENTION)
    args.checkpointing = _split(args.checkpointing, CHECKPOINTING)
    return args


def main(argv=None) -> list[dict]:
    import torch

    from medgrounder.models.random_weights import depth_overrides, write_config_weights
    from medgrounder.summary import summarize

    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    full = gpu or args.matrix
    base = compose(args.experiment, ["paths.output_dir=.", "check_generation_budgets=false"])
    llm = base.model.llm
    own_precision = next(k for k, v in PRECISIONS.items() if v == llm.quantization)
    precisions = args.precisions or (list(PRECISIONS) if full else [own_precision])
    attention = args.attention or (list(ATTENTION) if full else [llm.attn_implementation])
    checkpointing = args.checkpointing or (list(CHECKPOINTING) if full else ["on" if llm.gradient_checkpointing else "off"])
    dtype = "bf16" if gpu else "fp32"  # the LLM's compute dtype (see measure)
    llm_layers = args.llm_layers if args.llm_layers is not None else (None if gpu else 2)
    task = args.task or first_task(base)
    batch = args.batch or (stage_batch_size(base, task) if gpu else 2)
    depth = depth_overrides(base, llm_layers, args.tower_layers)
    sized = compose(args.experiment, ["paths.output_dir=.", *depth])

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="medgrounder-full-size-"))
    results = []
    started = time.perf_counter()
    try:
        t = time.perf_counter()
        weights = write_config_weights(sized, workdir / "weights", tokenizer=os.environ.get("MEDGROUNDER_LLAMA_TOKENIZER"),
                                       projector_in=summarize(sized)["projector"]["shapes"][-2])
        print(f"{args.experiment}: random weights in the real formats written in {time.perf_counter() - t:.0f} s "
              f"(LLM layers {sized.model.llm.config.num_hidden_layers}, task {task}, batch {batch}, device {device}, "
              f"{torch.get_num_threads()} threads)", flush=True)
        for prec in precisions:
            for attn in attention:
                for ckpt in checkpointing:
                    q = PRECISIONS[prec]
                    overrides = [f"paths.output_dir={json.dumps(str(workdir / 'out'))}", "check_generation_budgets=false", *depth,
                                 *weights, f"model.llm.quantization={q if q else 'null'}", f"model.llm.dtype={dtype}",
                                 f"model.llm.attn_implementation={attn}",
                                 f"model.llm.gradient_checkpointing={'true' if ckpt == 'on' else 'false'}"]
                    spec = {"experiment": args.experiment, "overrides": overrides, "device": device, "task": task,
                            "batch": batch, "steps": args.steps or (5 if gpu else 1),
                            "gen_samples": args.gen_samples or (8 if gpu else 2),
                            "new_tokens": args.new_tokens or (128 if gpu else 16)}
                    shown = prec if gpu or q else dtype  # CPU: the unquantized row computes in fp32
                    label = f"{shown:>4} {attn:>5} ckpt={ckpt:<3}"
                    r = run_isolated(spec)
                    r.update({"precision": prec, "attention": attn, "checkpointing": ckpt, "batch": batch, "task": task})
                    results.append(r)
                    if "error" in r:
                        print(f"{label}: FAILED {r['error']}\n{r['traceback']}", flush=True)
                        continue
                    mem = "CUDA peak" if gpu else "peak RSS"
                    mfu = f", MFU {100 * r['mfu']:.1f} %" if r.get("mfu") is not None else ""
                    print(f"{label}: load {r['load_s']:.0f} s, step {r['step_s']:.2f} s, {mem} {r['peak_bytes'] / 2**30:.2f} GiB, "
                          f"{r['tokens_per_s']:.1f} tokens/s, {r['samples_per_s']:.3f} samples/s{mfu}, "
                          f"loss {r['losses'][-1]:.2f}; generation {r['gen_tokens'] / r['gen_s']:.1f} tokens/s "
                          f"({spec['gen_samples']} x {r['gen_tokens'] // spec['gen_samples']} steps in {r['gen_s']:.1f} s); "
                          f"{paper_line(args.experiment, r['samples_per_s'])}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    sys.exit(0 if all("error" not in r for r in main()) else 1)
