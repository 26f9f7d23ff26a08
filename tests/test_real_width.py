"""The real-size path at real width and reduced depth, on CPU: ``litegpt_dual`` as composed from
its experiment file, pointed at random weights written in the real on-disk formats
(:func:`medgrounder.models.random_weights.write_config_weights`: a sharded Hugging Face Llama
directory with Llama-2's widths and tokenizer, BiomedCLIP's open_clip folder, PubMedCLIP's
``CLIPVisionModel`` folder, MiniGPT-v2's checkpoint), built by ``instantiate(cfg.model)`` as
``medgrounder.train`` builds it: the LLM loaded in 8-bit through bitsandbytes with gradient
checkpointing, the projector and LoRA started from the checkpoint, one AdamW step, then a batched
greedy generation. One decoder layer and two PubMedCLIP blocks; every width is the real one."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from safetensors import safe_open

from helpers import compose_train
from medgrounder.data.collate import PromptCollator
from medgrounder.models.random_weights import depth_overrides, write_config_weights
from medgrounder.summary import summarize
from medgrounder.tasks.identify import identify_answer

pytestmark = pytest.mark.slow
bnb = pytest.importorskip("bitsandbytes")

BASE = ["+experiment=litegpt_dual", "paths.output_dir=.", "check_generation_budgets=false"]
HIDDEN, VOCAB, FFN = 4096, 32000, 11008


@pytest.fixture(scope="module")
def real_width(tmp_path_factory, llama_tokenizer_dir):
    """``(module, folder)``: litegpt_dual at 1 LLM layer and 2 PubMedCLIP blocks, built from
    the written files, the LLM computing in float32 (a CPU without bf16 units)."""
    folder = tmp_path_factory.mktemp("real_width")
    depth = depth_overrides(compose_train(BASE), llm_layers=1, tower_layers=2)
    sized = compose_train([*BASE, *depth])
    # shards of 400 MB (the 0.9 GB LLM in 3): the index file and the sharded load are on the path
    weights = write_config_weights(sized, folder, tokenizer=str(llama_tokenizer_dir), max_shard_size="400MB",
                                   projector_in=summarize(sized)["projector"]["shapes"][-2])
    cfg = compose_train([*BASE, *depth, *weights, "model.llm.dtype=fp32"])
    torch.manual_seed(0)
    return instantiate(cfg.model), folder


def _batch(module, n: int = 2) -> dict:
    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.randint(0, 256, (224, 224), generator=gen, dtype=torch.uint8), "task": "identify",
              "answer": identify_answer([("Cardiomegaly", (10 + i, 20, 60, 70)), ("Aortic enlargement", (40, 10, 55, 30))]),
              "meta": {"id": str(i)}} for i in range(n)]
    return PromptCollator(module.tokenizer)(items)


def test_files_are_the_real_formats(real_width):
    _, folder = real_width
    llama = folder / "llama"
    config = json.loads((llama / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["vocab_size"]) == (HIDDEN, FFN, VOCAB)
    assert config["num_hidden_layers"] == 1 and config["architectures"] == ["LlamaForCausalLM"]
    index = json.loads((llama / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((llama / s).is_file() for s in shards)
    with safe_open(str(llama / index["weight_map"]["model.embed_tokens.weight"]), "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [VOCAB, HIDDEN]
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    assert (llama / "tokenizer.json").is_file()
    open_clip_cfg = json.loads(next(folder.glob("open_clip_*/open_clip_config.json")).read_text())
    assert open_clip_cfg["model_cfg"]["vision_cfg"]["timm_model_name"] == "vit_base_patch16_224"
    assert json.loads(next(folder.glob("clip_*/config.json")).read_text())["architectures"] == ["CLIPVisionModel"]
    ckpt = torch.load(folder / "minigptv2_checkpoint.pth", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "epoch"} and ckpt["model"]["llama_proj.weight"].shape == (HIDDEN, 5632)


def test_the_model_is_8bit_lora_at_real_width(real_width):
    module, folder = real_width
    llm = module.llm
    assert (llm.config.hidden_size, llm.config.vocab_size, llm.config.num_hidden_layers) == (HIDDEN, VOCAB, 1)
    assert llm.config._attn_implementation == "sdpa" and llm.is_activation_checkpointing
    attn = llm.base_model.model.model.layers[0].self_attn
    q_base = attn.q_proj.base_layer
    assert isinstance(q_base, bnb.nn.Linear8bitLt) and q_base.weight.dtype == torch.int8
    assert q_base.weight.shape == (HIDDEN, HIDDEN) and not q_base.weight.requires_grad
    assert isinstance(llm.base_model.model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
    lora_a = attn.q_proj.lora_A["default"].weight
    assert lora_a.shape == (64, HIDDEN) and lora_a.dtype == torch.float32 and lora_a.requires_grad
    # MiniGPT-v2's checkpoint started the adapters and the projector's last layer
    state = torch.load(folder / "minigptv2_checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    torch.testing.assert_close(lora_a, state["llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    torch.testing.assert_close(module.projector[-1].weight, state["llama_proj.weight"])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    assert {p.device.type for p in module.parameters()} == {"cpu"}


def test_a_training_step_and_a_generation(real_width):
    module, _ = real_width
    batch = _batch(module)
    images = batch["images"]
    assert images.shape == (2, 3, 224, 224) and images.dtype == torch.float32
    visual = module.encode_images(images)
    assert visual.shape == (2, 49, HIDDEN) and visual.dtype == torch.float32  # 245 tokens merged by 5

    opt, _ = module.build_optimizer(10)
    trainable = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    frozen = module.llm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    module.train()
    loss = module._batch_loss(batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert 5.0 < float(loss) < 20.0  # random weights over 32,000 tokens: about ln(32000) = 10.4
    loss.backward()
    lora_b = next(p for n, p in module.named_parameters() if n.endswith("q_proj.lora_B.default.weight"))
    assert lora_b.grad is not None and torch.isfinite(lora_b.grad).all() and lora_b.grad.abs().sum() > 0
    opt.step()
    changed = {n for n, p in module.named_parameters() if n in trainable and not torch.equal(p, trainable[n])}
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert any(n.startswith("projector.") for n in changed)
    assert torch.equal(module.llm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, frozen)

    module.eval()
    decoded = module.generate_decoded(batch["images"], batch["prompt_ids"], batch["prompt_mask"], 6, task="identify")
    assert len(decoded) == 2
    for d in decoded:
        assert (d.ended or len(d.ids) == 6) and len(d.ids) <= 6 and all(0 <= i < VOCAB for i in d.ids)
        assert isinstance(d.text, str) and len(d.logprobs) == len(d.ids)
        assert all(lp <= 0.0 for lp in d.logprobs)
