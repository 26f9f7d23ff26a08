"""Real-model loading at toy size: towers saved in their published formats (BLIP-2's
``eva_vit_g.pth`` layout, an open_clip ``local-dir:``, a transformers ``save_pretrained`` CLIP)
and loaded through the code that loads the real weights; MiniGPT-v2's checkpoint key map with its
errors; a tiny Llama in 8-bit and 4-bit through bitsandbytes on CPU training a LoRA step; the
full-size model sizes on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medgrounder.models.checkpoints import CheckpointKeyError, load_minigptv2, to_minigptv2_state
from medgrounder.models.encoders import EVAViTG, FusedTowers, HFCLIPVision, OpenCLIPTrunk, TimmViT
from medgrounder.models.eva_vit import interpolate_pos_embed
from medgrounder.models.vlm import VisionLanguageModel

TINY_EVA = {"width": 32, "depth": 2, "num_heads": 2, "mlp_hidden": 48}


# ----------------------------------------------------------------------------------- EVA ViT-g
def _blip2_layout_state(tower: EVAViTG, extra_blocks: int = 1) -> dict[str, torch.Tensor]:
    """A checkpoint as BLIP-2 ships eva_vit_g.pth: flat keys, 224-px position table, and the
    full EVA-CLIP's extra last block and final norm that the 39-block ViT does not use."""
    state = {k: v.clone() for k, v in tower.vit.state_dict().items()}
    for i in range(extra_blocks):
        for k, v in tower.vit.blocks[0].state_dict().items():
            state[f"blocks.{tower.vit.depth + i}.{k}"] = torch.randn_like(v)
    state["norm.weight"] = torch.ones(tower.width)
    state["norm.bias"] = torch.zeros(tower.width)
    return state


def test_eva_keys_follow_blip2_layout():
    tower = EVAViTG(image_size=224, **TINY_EVA, load_weights=False)
    keys = set(tower.vit.state_dict())
    block0 = {k.removeprefix("blocks.0.") for k in keys if k.startswith("blocks.0.")}
    assert block0 == {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
                      "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                      "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
    assert {k for k in keys if not k.startswith("blocks.")} == {
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert tower.vit.pos_embed.shape == (1, 1 + 16 * 16, 32)  # 224 / 14 = 16


def test_eva_checkpoint_loads_at_448_with_interpolated_positions(tmp_path):
    torch.manual_seed(0)
    source = EVAViTG(image_size=224, **TINY_EVA)
    state = _blip2_layout_state(source)
    path = tmp_path / "eva_vit_g.pth"
    torch.save(state, path)

    tower = EVAViTG(checkpoint=str(path), image_size=448, **TINY_EVA)
    assert tower.num_tokens == 1024 and tower.width == 32
    got = tower.vit.state_dict()
    assert torch.equal(got["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.equal(got["blocks.0.attn.q_bias"], state["blocks.0.attn.q_bias"])
    table = state["pos_embed"][:, 1:].reshape(1, 16, 16, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(table, size=(32, 32), mode="bicubic", align_corners=False)
    assert torch.allclose(got["pos_embed"][:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 1024, 32))
    assert torch.equal(got["pos_embed"][:, :1], state["pos_embed"][:, :1])
    out = tower(torch.rand(2, 3, 448, 448))
    assert out.shape == (2, 1024, 32) and torch.isfinite(out).all()


def test_eva_attention_is_qv_biased_softmax_attention():
    torch.manual_seed(0)
    attn = EVAViTG(image_size=28, **TINY_EVA).vit.blocks[0].attn
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 5, 32)
    q, k, v = (x @ w.T for w in attn.qkv.weight.chunk(3))
    q, v = q + attn.q_bias, v + attn.v_bias  # the key has no bias
    heads = [t.view(2, 5, 2, 16).transpose(1, 2) for t in (q, k, v)]
    weights = (heads[0] @ heads[1].transpose(-1, -2) / 16**0.5).softmax(-1)
    ref = attn.proj((weights @ heads[2]).transpose(1, 2).reshape(2, 5, 32))
    assert torch.allclose(attn(x), ref, atol=1e-5)


def test_eva_checkpoint_with_a_missing_or_foreign_key_fails_naming_it(tmp_path):
    source = EVAViTG(image_size=224, **TINY_EVA)
    state = _blip2_layout_state(source)
    del state["blocks.1.mlp.fc2.bias"]
    state["rel_pos_bias.table"] = torch.zeros(3)
    torch.save(state, tmp_path / "eva.pth")
    with pytest.raises(KeyError, match=r"blocks\.1\.mlp\.fc2\.bias") as err:
        EVAViTG(checkpoint=str(tmp_path / "eva.pth"), image_size=224, **TINY_EVA)
    assert "rel_pos_bias.table" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"eva_vit_g\.pth"):
        EVAViTG(checkpoint=str(tmp_path / "absent.pth"), image_size=224, **TINY_EVA)


def test_interpolate_pos_embed_keeps_a_matching_grid():
    table = torch.randn(1, 1 + 9, 4)
    assert interpolate_pos_embed(table, 3) is table
    assert interpolate_pos_embed(table, 6).shape == (1, 37, 4)


# ----------------------------------------------------------------------------- BiomedCLIP
def _write_open_clip_dir(folder):
    """A BiomedCLIP-style folder: open_clip_config.json (timm trunk, no pooling, linear head) and
    open_clip_pytorch_model.bin, as on the hub. Returns the full open_clip model."""
    import open_clip

    folder.mkdir()
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(1)
    model = open_clip.create_model(f"local-dir:{folder}")
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model.eval()


def test_biomedclip_loads_from_open_clip_local_dir(tmp_path):
    folder = tmp_path / "biomedclip"
    reference = _write_open_clip_dir(folder)
    tower = OpenCLIPTrunk(f"local-dir:{folder}").eval()
    assert tower.num_tokens == 196 and tower.width == 192
    ref_trunk = reference.visual.trunk.state_dict()
    for key, value in tower.trunk.state_dict().items():
        assert torch.equal(value, ref_trunk[key]), key
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference.visual.trunk.forward_features(tower.normalize(images))[:, 1:]
        assert torch.allclose(tower(images), expected, atol=1e-6)


def test_biomedclip_checkpoint_missing_a_visual_key_fails_naming_it(tmp_path):
    folder = tmp_path / "biomedclip"
    _write_open_clip_dir(folder)
    state = torch.load(folder / "open_clip_pytorch_model.bin")
    del state["visual.trunk.blocks.3.attn.qkv.weight"]
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(KeyError, match=r"trunk\.blocks\.3\.attn\.qkv\.weight"):
        OpenCLIPTrunk(f"local-dir:{folder}")


# ----------------------------------------------------------------------------- PubMedCLIP
def test_pubmedclip_loads_from_save_pretrained_dir(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(2)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "patch_size": 32, "image_size": 224}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 64}
    reference = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    reference.save_pretrained(tmp_path / "pubmedclip")  # a full CLIPModel, as PubMedCLIP ships
    tower = HFCLIPVision(pretrained=str(tmp_path / "pubmedclip")).eval()
    assert tower.num_tokens == 49 and tower.width == 32
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.vision_model(pixel_values=tower.normalize(images)).last_hidden_state[:, 1:]
        assert torch.allclose(tower(images), expected, atol=1e-5)


# ----------------------------------------------------------------------------- fused pairs
def test_fused_pair_of_different_widths_errors_or_pads():
    a = TimmViT(model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2})
    b = HFCLIPVision(config={"hidden_size": 24, "intermediate_size": 32, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "patch_size": 32})
    with pytest.raises(ValueError, match=r"\[16, 24\].*width_rule=pad"):
        FusedTowers([a, b])
    fused = FusedTowers({"biomedclip": a, "pubmedclip": b}, width_rule="pad").eval()
    images = torch.rand(1, 3, 224, 224)
    out = fused(images)
    assert fused.width == 24 and out.shape == (1, 245, 24)
    with torch.no_grad():
        assert torch.equal(out[:, :196, :16], a(images)) and not out[:, :196, 16:].any()
        assert torch.equal(out[:, 196:], b(images))
    with pytest.raises(ValueError, match="width_rule"):
        FusedTowers([a, b], width_rule="project")


# ----------------------------------------------------------------------------- MiniGPT-v2 checkpoint
TINY_LLM = {
    "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "num_key_value_heads": 2, "max_position_embeddings": 256},
    "train_mode": "lora",
}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}


def _vlm(hidden: int | None = 24, init_from: dict | None = None, seed: int = 0) -> VisionLanguageModel:
    torch.manual_seed(seed)
    tower = EVAViTG(image_size=224, **TINY_EVA)
    return VisionLanguageModel(tower, dict(TINY_LLM), projector={"hidden": hidden}, lora=LORA,
                               merge=4, init_from=init_from)


def _minigptv2_file(tmp_path, hidden=24, drop: str | None = None, add: str | None = None):
    donor = _vlm(hidden, seed=7)
    state = {k: torch.randn_like(v) for k, v in to_minigptv2_state(donor).items()}
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(1)
    path = tmp_path / "minigptv2_checkpoint.pth"
    torch.save({"model": state, "epoch": 3}, path)
    return path, state


def test_minigptv2_names_are_the_old_peft_names(tmp_path):
    _, state = _minigptv2_file(tmp_path)
    assert {"llama_proj.weight", "llama_proj.bias"} <= set(state)
    assert "llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" in state
    assert not any(".default." in k for k in state) and len(state) == 2 + 2 * 2 * 2


@pytest.mark.parametrize("hidden", [24, None])
def test_minigptv2_checkpoint_loads_projector_last_layer_and_lora(tmp_path, hidden):
    path, state = _minigptv2_file(tmp_path, hidden)
    model = _vlm(hidden, init_from={"minigptv2": str(path)})
    last = "projector.2" if hidden else "projector.0"
    own = model.state_dict()
    assert torch.equal(own[f"{last}.weight"], state["llama_proj.weight"])
    assert torch.equal(own["llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"],
                       state["llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    fresh = _vlm(hidden)
    if hidden:  # LiteGPT: only the last Linear comes from MiniGPT-v2
        assert torch.equal(own["projector.0.weight"], fresh.state_dict()["projector.0.weight"])
    report = load_minigptv2(fresh, path, parts=["projector"])
    assert len(report["loaded"]) == 2 and len(report["skipped"]) == 8


def test_minigptv2_checkpoint_missing_one_lora_key_fails_naming_it(tmp_path):
    key = "llama_model.base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    path, _ = _minigptv2_file(tmp_path, drop=key)
    with pytest.raises(CheckpointKeyError) as err:
        _vlm(init_from={"minigptv2": str(path)})
    msg = str(err.value)
    assert key in msg and "missing 1 expected key" in msg
    assert "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight" in msg


def test_minigptv2_checkpoint_with_an_unexpected_key_or_shape_fails(tmp_path):
    path, _ = _minigptv2_file(tmp_path, add="llama_model.base_model.model.lm_head.weight")
    with pytest.raises(CheckpointKeyError, match=r"unexpected key\(s\): llama_model\.base_model\.model\.lm_head"):
        load_minigptv2(_vlm(), path)
    path, _ = _minigptv2_file(tmp_path)
    with pytest.raises(ValueError, match=r"llama_proj\.weight \(32, 24\) -> projector\.0\.weight \(32, 128\)"):
        load_minigptv2(_vlm(hidden=None), path)


# ----------------------------------------------------------------------------- 8-bit / 4-bit LLM
@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("llama") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_llama_trains_a_lora_step_on_cpu(tiny_llama_dir, bits):
    import bitsandbytes as bnb

    from medgrounder.models.llm import build_llm

    torch.manual_seed(0)
    model = build_llm(pretrained=str(tiny_llama_dir), dtype="fp32", quantization=bits, train_mode="lora",
                      lora={"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "v_proj"]})
    layer_type = bnb.nn.Linear8bitLt if bits == "8bit" else bnb.nn.Linear4bit
    quantized = [n for n, m in model.named_modules() if isinstance(m, layer_type)]
    assert any(n.endswith("q_proj.base_layer") for n in quantized) and any("mlp" in n for n in quantized)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen_before = {n: b.detach().clone() for n, b in model.state_dict().items()
                     if n.endswith("q_proj.base_layer.weight")}
    ids = torch.randint(0, 128, (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    for n, b in model.state_dict().items():
        if n in frozen_before:
            assert torch.equal(b, frozen_before[n]), n


# ----------------------------------------------------------------------------- summary (meta)
def _summary(name):
    from medgrounder.summary import compose_config, summarize

    return summarize(compose_config([f"+experiment={name}"]))


def test_summary_litegpt_dual_full_size():
    s = _summary("litegpt_dual")
    assert [(t["class"], t["tokens"], t["width"]) for t in s["towers"]] == [
        ("OpenCLIPTrunk", 196, 768), ("HFCLIPVision", 49, 768)]
    assert all(t["trainable_params"] == 0 for t in s["towers"])
    assert s["visual_tokens"] == 49
    assert s["projector"]["shapes"] == [3840, 5632, 4096] and s["projector"]["params"] == 44_705_280
    assert s["llm"]["total_params"] == 6_738_415_616
    assert s["llm"]["trainable_params"] == s["llm"]["lora"]["params"] == 33_554_432
    assert s["llm"]["lora"]["targets"] == ["q_proj", "v_proj"]


# PFMVG at 448 px; LiteGPT's MiniGPT-v2 row at the reference's 224 (audit item 15).
MINIGPTV2_SIZES = [("pfmvg", 448, 1024, 256), ("litegpt_minigptv2", 224, 256, 64)]


@pytest.mark.parametrize(("name", "size", "eva_tokens", "visual"), MINIGPTV2_SIZES)
def test_summary_minigptv2_towers_full_size(name, size, eva_tokens, visual):
    s = _summary(name)
    (eva,) = s["towers"]
    assert (eva["class"], eva["blocks"], eva["width"], eva["image_size"], eva["tokens"]) == (
        "EVAViTG", 39, 1408, size, eva_tokens)
    assert eva["trainable_params"] == 0
    assert s["visual_tokens"] == visual
    assert s["projector"]["shapes"] == [5632, 4096] and s["projector"]["params"] == 23_072_768
    assert s["llm"]["total_params"] == 6_738_415_616 and s["llm"]["trainable_params"] == 33_554_432


def test_summary_command_prints_json(capsys):
    from medgrounder.summary import main

    main(["+experiment=demo"])
    s = json.loads(capsys.readouterr().out)
    assert s["visual_tokens"] == 49 and s["llm"]["trainable_params"] == s["llm"]["total_params"]


def test_pfmvg_stops_at_start_naming_what_is_missing(tmp_path, monkeypatch):
    from helpers import compose_train
    from medgrounder.train import run
    from medgrounder.utils.preflight import MissingInputError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MEDGROUNDER_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("MSCXR_ROOT", str(tmp_path / "ms-cxr"))
    monkeypatch.setenv("MEDGROUNDER_DATA", str(tmp_path / "data"))
    cfg = compose_train(["+experiment=pfmvg", f"paths.output_dir={tmp_path}/out"])
    with pytest.raises(MissingInputError) as err:
        run(cfg)
    msg = str(err.value)
    assert f"{tmp_path}/ms-cxr" in msg and "MS_CXR_Local_Alignment_v1.1.0.csv" in msg
    assert "physionet.org/content/ms-cxr" in msg and f"{tmp_path}/data/mimic-cxr-jpg/files" in msg
    assert f"{tmp_path}/data/roco-dataset/data" in msg and "github.com/razorx89/roco-dataset" in msg
    assert f"{tmp_path}/data/imageclef2022" in msg and "imageclef.org/2022/medical/caption" in msg
    assert "mimic-cxr-2.0.0-split.csv" in msg and "physionet.org/content/mimic-cxr/" in msg
    assert f"{tmp_path}/weights/eva_vit_g.pth" in msg and "LAVIS/models/BLIP2/eva_vit_g.pth" in msg
    assert f"{tmp_path}/weights/minigptv2_checkpoint.pth" in msg
    assert "meta-llama/Llama-2-7b-chat-hf" in msg


@pytest.mark.parametrize(("name", "size", "eva_tokens", "visual"), MINIGPTV2_SIZES)
def test_minigptv2_experiments_build_at_tiny_scale(name, size, eva_tokens, visual, tmp_path):
    from hydra.utils import instantiate

    from helpers import compose_train

    cfg = compose_train([f"+experiment={name}", "scale=tiny", f"paths.output_dir={tmp_path}"])
    model = instantiate(cfg.model)
    assert model.num_visual_tokens == visual and model.projector[0].in_features == 4 * 64
    embeds = model.encode_images(torch.rand(1, 3, size, size))
    assert embeds.shape == (1, visual, model.llm.config.hidden_size)
