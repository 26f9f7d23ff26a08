"""Model pieces at toy scale: token merge, towers, tokenizer, loss masking, batched greedy
generation and the LoRA path."""

from __future__ import annotations

import pytest
import torch

from medgrounder.core.template import IGNORE_INDEX
from medgrounder.data.collate import PromptCollator
from medgrounder.models.encoders import FusedTowers, HFCLIPVision, TimmViT
from medgrounder.models.fusion import merge_tokens, merged_token_count
from medgrounder.models.tokenizer import build_tiny_tokenizer
from medgrounder.models.vlm import VisionLanguageModel, fused_adamw_ok
from medgrounder.tasks.identify import identify_answer
from medgrounder.tasks.vqa import vqa_answer

TINY_LLM = {
    "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "num_key_value_heads": 2, "max_position_embeddings": 256},
    "train_mode": "full",
}


def tiny_pair() -> FusedTowers:
    vit = TimmViT(model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2})
    clip = HFCLIPVision(config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "patch_size": 32})
    return FusedTowers({"biomedclip": vit, "pubmedclip": clip})


def tiny_vlm(**llm) -> VisionLanguageModel:
    torch.manual_seed(0)
    return VisionLanguageModel(tiny_pair(), {**TINY_LLM, **llm}, projector={"hidden": 24}, max_new_tokens=12)


def test_towers_give_litegpt_token_counts():
    pair = tiny_pair()
    out = pair(torch.rand(2, 3, 224, 224))
    assert pair.tokens_per_tower == [196, 49]
    assert out.shape == (2, 245, 16)
    assert merged_token_count(pair.tokens_per_tower, 5, "flat") == 49


def test_flat_merge_is_raster_concatenation():
    x = torch.arange(2 * 10 * 3, dtype=torch.float).view(2, 10, 3)
    y = merge_tokens(x, 5)
    assert y.shape == (2, 2, 15)
    assert torch.equal(y[0, 1], x[0, 5:10].reshape(-1))


def test_per_encoder_merge_groups_2x2_blocks():
    x = torch.arange(16, dtype=torch.float).view(1, 16, 1)  # a 4 x 4 grid
    y = merge_tokens(x, 4, "per_encoder", [16])
    assert y[0, 0].tolist() == [0, 1, 4, 5]
    assert y[0, 3].tolist() == [10, 11, 14, 15]


def test_merge_that_does_not_divide_fails_clearly():
    with pytest.raises(ValueError, match="divisible by 5"):
        merged_token_count([196, 49], 5, "per_encoder")
    with pytest.raises(ValueError, match="merge mode"):
        merged_token_count([196], 4, "raster")


def test_fused_towers_need_one_width():
    a = TimmViT(model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2})
    b = TimmViT(model_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2})
    with pytest.raises(ValueError, match="one width"):
        FusedTowers([a, b])


def test_tiny_tokenizer_splits_digits_and_round_trips():
    tok = build_tiny_tokenizer()
    text = identify_answer([("Cardiomegaly", (38, 49, 82, 63)), ("Nodule/Mass", (5, 100, 0, 7))])
    ids = tok.encode(text, add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert "3" in pieces and "8" in pieces and "38" not in pieces and "100" not in pieces
    assert tok.decode(ids) == text
    assert build_tiny_tokenizer().get_vocab() == tok.get_vocab()


def _batch(tokenizer, answers, task="identify"):
    collate = PromptCollator(tokenizer)
    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.randint(0, 256, (224, 224), generator=gen, dtype=torch.uint8), "task": task,
              "answer": a, "meta": {}} for a in answers]
    return collate(items)


def test_labels_cover_answer_tokens_only():
    tok = build_tiny_tokenizer()
    answers = [vqa_answer(["Pneumonia"]), vqa_answer([])]
    batch = _batch(tok, answers, task="vqa")
    for i, answer in enumerate(answers):
        labels = batch["text_labels"][i]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept == [*tok.encode(answer, add_special_tokens=False), tok.eos_token_id]
        # Padding is never a target and is masked out of attention.
        assert (batch["text_mask"][i] == 0).sum() == (batch["text_ids"][i] == tok.pad_token_id).sum()


def test_loss_ignores_prompt_and_image():
    model = tiny_vlm()
    batch = _batch(model.tokenizer, [identify_answer([("Cardiomegaly", (1, 2, 3, 4))])])
    loss = model(batch["images"], batch["text_ids"], batch["text_mask"], batch["text_labels"])
    # Changing the instruction text (not a target) changes the loss only through attention;
    # masking every label gives no loss at all.
    no_targets = torch.full_like(batch["text_labels"], IGNORE_INDEX)
    masked = model(batch["images"], batch["text_ids"], batch["text_mask"], no_targets)
    assert torch.isfinite(loss) and torch.isnan(masked)


def test_batched_greedy_generation_matches_one_at_a_time():
    model = tiny_vlm().eval()
    # A random model's logits are near ties that float noise between batch shapes can flip;
    # sharpen them so the comparison tests padding and caching, not rounding.
    model.llm.lm_head.weight.data *= 200
    # Prompts of different lengths (two tasks) force left padding inside the batch.
    items = _batch(model.tokenizer, ["a", "b", "c"], task="identify")
    vqa = _batch(model.tokenizer, ["d"], task="vqa")
    images = torch.cat([items["images"], vqa["images"]])
    collate = PromptCollator(model.tokenizer)
    batch = collate([{"image": (img[0] * 255).to(torch.uint8), "task": t, "answer": "x", "meta": {}}
                     for img, t in zip(images, ["identify", "identify", "vqa", "identify"], strict=True)])
    together = model.generate(batch["images"], batch["prompt_ids"], batch["prompt_mask"])
    alone = []
    for i in range(len(together)):
        alone += model.generate(batch["images"][i : i + 1], batch["prompt_ids"][i : i + 1][:, batch["prompt_mask"][i] == 1],
                                batch["prompt_mask"][i : i + 1][:, batch["prompt_mask"][i] == 1])
    assert together == alone
    assert model.generate(batch["images"], batch["prompt_ids"], batch["prompt_mask"]) == together


def test_lora_trains_only_adapters():
    model = tiny_vlm(train_mode="lora")
    trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)
    assert not any("k_proj" in n or "o_proj" in n for n in trainable)
    assert all(not p.requires_grad for p in model.encoder.parameters())
    batch = _batch(model.tokenizer, [identify_answer([("Cardiomegaly", (1, 2, 3, 4))])])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(batch["images"], batch["text_ids"], batch["text_mask"], batch["text_labels"]).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in changed)
    assert any(n.startswith("projector") for n in changed)
    frozen = dict(model.llm.named_parameters())
    base_q = next(n for n in frozen if n.endswith("q_proj.base_layer.weight"))
    assert not frozen[base_q].requires_grad


def test_optimizer_groups_and_schedule():
    from medgrounder.models.vlm import warmup_cosine

    model = tiny_vlm()
    model.encoder.requires_grad_(True)
    model.optim.update(lr=1e-3, encoder_lr=1e-4, weight_decay=0.05)

    class _Trainer:
        estimated_stepping_batches = 100

    model._trainer = _Trainer()
    opt = model.configure_optimizers()["optimizer"]
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["llm.lm_head.weight"])]["weight_decay"] == 0.05
    assert by_param[id(named["llm.model.norm.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["projector.0.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["encoder.towers.0.trunk.patch_embed.proj.weight"])]["lr"] == 1e-4
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())
    f = warmup_cosine(1e-3, 100, 10, 0.0, 1e-5)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(100) * 1e-3 == pytest.approx(1e-5)


def _image_batch(model, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    items = [{"image": torch.randint(0, 256, (224, 224), dtype=torch.uint8, generator=gen), "task": "vqa",
              "answer": vqa_answer(["Pneumonia"]), "meta": {}} for _ in range(n)]
    return PromptCollator(model.tokenizer, image_keys=True)(items)


def test_frozen_feature_cache_gives_the_towers_tokens_and_skips_them():
    model = tiny_vlm()
    model.cache_frozen_features = True
    batch = _image_batch(model)
    args = (batch["images"], batch["text_ids"], batch["text_mask"], batch["text_labels"])
    plain = model(*args, batch["image_keys"]).item()  # nothing cached yet: through the towers
    images = (batch["images"][:, 0] * 255).round().to(torch.uint8)
    model.cache_features(images, batch_size=2)
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    assert model(*args, batch["image_keys"]).item() == pytest.approx(plain, abs=1e-5)
    assert not calls  # every image cached: the towers are skipped
    other = _image_batch(model, seed=1)  # images never cached: computed
    model(other["images"], other["text_ids"], other["text_mask"], other["text_labels"], other["image_keys"])
    assert calls == [1]


def test_feature_cache_is_off_when_the_towers_train():
    torch.manual_seed(0)
    model = VisionLanguageModel(tiny_pair(), dict(TINY_LLM), projector={"hidden": 24}, encoder_train_mode="full",
                                cache_frozen_features=True)
    assert not model.cache_frozen_features


def test_fused_adamw_only_where_torch_takes_it():
    assert fused_adamw_ok([torch.zeros(2), torch.zeros(3, dtype=torch.bfloat16)]) is True
    assert fused_adamw_ok([torch.zeros(2), torch.zeros(2, device="meta")]) is None
    assert fused_adamw_ok([torch.zeros(2, dtype=torch.int8)]) is None  # e.g. an 8-bit weight
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=fused_adamw_ok([p]))
    p.grad = torch.ones(3)
    opt.step()
    assert opt.defaults["fused"] and (p < 1).all()


def test_feature_cache_fit_check_counts_every_process_of_the_node(monkeypatch, caplog):
    """LiteGPT's pair over VinDr's 15,000 training images: 10.51 GiB per process; 4 processes fit
    in 100 GiB available (half usable) but not in 80."""
    from functools import partial
    from types import SimpleNamespace

    import psutil

    from helpers import compose_train
    from medgrounder.models.vlm import VisionLanguageModel
    from medgrounder.train import feature_cache_fits

    cfg = compose_train(["+experiment=litegpt_dual", "paths.output_dir=.", "trainer.devices=4"])
    module = SimpleNamespace(tokens_per_tower=[196, 49], encoder=SimpleNamespace(width=768))
    module.feature_cache_bytes = partial(VisionLanguageModel.feature_cache_bytes, module)
    assert module.feature_cache_bytes(15_000) == 15_000 * 245 * 768 * 4
    for gib, fits in ((100, True), (80, False)):
        monkeypatch.setattr(psutil, "virtual_memory", lambda gib=gib: SimpleNamespace(available=gib * 2**30))
        caplog.clear()
        with caplog.at_level("INFO", logger="medgrounder.train"):
            assert feature_cache_fits(cfg, module, 15_000) is fits
        assert "10.51 GiB per process, x 4 on this node" in caplog.text
        assert ("does not fit" in caplog.text) is not fits
