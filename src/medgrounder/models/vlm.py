"""The vision-language model as a LightningModule (MiniGPT-v2 layout; LiteGPT section 3).

::

    images [B, 3, S, S] -> towers -> [B, P, C] -> merge k -> [B, P/k, k*C] -> projector -> [B, M, D]
    <s>[INST] <Img> {M image embeddings} </Img> [task] instruction [/INST] answer</s>

The loss is on the answer tokens (and the closing ``</s>``) only. Generation is greedy and
batched with the KV cache; prompts are left-padded so every row continues from its last token.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LogitsProcessorList

from medgrounder.core.template import IGNORE_INDEX, PROMPT_PREFIX
from medgrounder.models.checkpoints import PARTS, check_trainable_state, load_minigptv2
from medgrounder.models.decoding import BOX_SCORES, AnswerProcessor, Decoded, token_table
from medgrounder.models.fusion import merge_tokens, merged_token_count, resolve_merge
from medgrounder.models.llm import build_llm
from medgrounder.models.projector import build_projector
from medgrounder.models.tokenizer import load_tokenizer
from medgrounder.tasks import get_task

ENCODER_TRAIN_MODES = ("frozen", "full")


class VisionLanguageModel(L.LightningModule):
    def __init__(
        self,
        encoder: nn.Module,
        llm: dict,
        projector: dict | None = None,
        lora: dict | None = None,
        image_size: int = 224,
        merge: int | str = 5,
        merge_mode: str = "flat",
        visual_tokens: int | None = None,
        encoder_train_mode: str = "frozen",
        optim: dict | None = None,
        max_new_tokens: int = 160,
        init_from: dict | None = None,
        cache_frozen_features: bool = False,
        encoder_output_norm: bool = False,
        constrained_decoding: bool = False,
        box_score: str = "label_x_geomean",
    ):
        """``encoder``: a tower or :class:`FusedTowers`; ``llm``: :func:`build_llm` arguments plus
        ``tokenizer`` (:func:`load_tokenizer` arguments); ``projector``: ``{hidden: int | None}``;
        ``lora``: :class:`LoraSettings` fields; ``optim``: AdamW and schedule settings;
        ``merge``: tokens merged into one, or ``auto`` (:func:`resolve_merge`, with ``visual_tokens``);
        ``init_from``: ``{minigptv2: PATH, parts: [projector, lora]}`` starts the projector's last
        layer and the LoRA adapters from MiniGPT-v2 (:func:`load_minigptv2`, strict);
        ``cache_frozen_features``: training keeps the frozen towers' tokens of its fixed training
        images (:meth:`cache_features`; no effect when the towers train);
        ``encoder_output_norm``: a LayerNorm without affine weights on each token the encoder
        outputs (LiteGPT's frozen ``ln_vision``, weight 1 and bias 0: nothing to train or save);
        ``constrained_decoding`` (contract): greedy answers kept to the task's answer grammar
        (:mod:`medgrounder.models.decoding`); ``box_score``: the rule that combines a box's parts
        into its ``score`` (:data:`~medgrounder.models.decoding.BOX_SCORES`)."""
        super().__init__()
        if box_score not in BOX_SCORES:
            raise ValueError(f"model.box_score must be one of {', '.join(BOX_SCORES)}, got {box_score!r}")
        if encoder_train_mode not in ENCODER_TRAIN_MODES:
            raise ValueError(f"model.encoder_train_mode must be one of {ENCODER_TRAIN_MODES}, got {encoder_train_mode!r}")
        if encoder.image_size != image_size:
            raise ValueError(f"model.image_size={image_size} but the encoder expects {encoder.image_size}")
        if encoder_output_norm and any(isinstance(getattr(t, "ln_vision", None), nn.LayerNorm) for t in encoder.towers):
            raise ValueError("model.encoder_output_norm=true on an encoder with its own ln_vision "
                             "(model.encoder.ln_vision): the tokens would be normalised twice; set one of them false")
        llm_kwargs = dict(llm)
        self.tokenizer = load_tokenizer(**(llm_kwargs.pop("tokenizer", None) or {}))
        self.image_size = image_size
        self.encoder = encoder
        self.encoder_train_mode = encoder_train_mode
        self.encoder.requires_grad_(encoder_train_mode == "full")
        # eps 1e-5: torch's default, as the reference's nn.LayerNorm(width)
        self.output_norm = nn.LayerNorm(encoder.width, elementwise_affine=False) if encoder_output_norm else None
        self.cache_frozen_features = cache_frozen_features and encoder_train_mode == "frozen"
        self._features: torch.Tensor | None = None  # [N, P, C] tower tokens of cached images
        self._feature_rows: dict[bytes, int] = {}  # image digest -> row of _features
        tokens_per_tower = getattr(encoder, "tokens_per_tower", [encoder.num_tokens])
        self.tokens_per_tower = list(tokens_per_tower)
        self.merge = resolve_merge(merge, self.tokens_per_tower, visual_tokens)
        self.merge_mode = merge_mode
        self.num_visual_tokens = merged_token_count(self.tokens_per_tower, self.merge, merge_mode)
        if not llm_kwargs.get("pretrained"):
            llm_kwargs["vocab_size"] = len(self.tokenizer)
        self.llm = build_llm(**llm_kwargs, lora=lora)
        self.projector = build_projector(encoder.width * self.merge, self.llm.config.hidden_size,
                                         (projector or {}).get("hidden"))
        if init_from and init_from.get("minigptv2"):
            load_minigptv2(self, init_from["minigptv2"], tuple(init_from.get("parts") or PARTS))
        self.optim = {"lr": 1e-4, "weight_decay": 0.05, "betas": (0.9, 0.999), "warmup_steps": 0,
                      "warmup_start_lr": 0.0, "min_lr": 0.0, **(optim or {})}
        self.max_new_tokens = max_new_tokens
        self.constrained_decoding = constrained_decoding
        self.box_score = box_score
        # Resume checkpoints keep the trainable weights only (on_save_checkpoint); the frozen
        # towers / 7B LLM are rebuilt from config, and on_load_checkpoint checks the keys itself.
        self.strict_loading = False
        self._fingerprint: str | None = None
        self.prefix_ids = [self.tokenizer.bos_token_id, *self.tokenizer.encode(PROMPT_PREFIX, add_special_tokens=False)]

    # ----------------------------------------------------------------- embeddings
    def feature_cache_bytes(self, n_images: int) -> int:
        """Host memory that :meth:`cache_features` takes for ``n_images``: float32 tokens
        ``[N, P, C]`` (LiteGPT's towers over VinDr's 15,000 training images: 245 x 768, 11.3 GB)."""
        return n_images * sum(self.tokens_per_tower) * self.encoder.width * 4

    @torch.no_grad()
    def cache_features(self, images: torch.Tensor, batch_size: int = 64, device: torch.device | str | None = None,
                       autocast: torch.dtype | None = None) -> None:
        """Run the frozen towers once over ``images`` (uint8 ``[N, S, S]``, e.g. every training
        image of a dataset without augmentation) and keep their tokens on the host, keyed by each
        image's digest (:func:`medgrounder.data.collate.image_digest`): a batch whose images are
        all cached then skips the towers, at full and tiny scale alike (frozen towers give the
        same tokens every epoch). In fixed batches of ``batch_size``, so a resumed run caches
        bit-identical tokens; on ``device`` (default: the towers' own; they return there after)
        under the training's ``autocast`` dtype (None: none), as the towers would run in training."""
        from tqdm.auto import tqdm

        from medgrounder.data.collate import image_digest, images_to_float

        self.encoder.eval()
        home = next(self.encoder.parameters()).device
        device = torch.device(device) if device is not None else home
        self.encoder.to(device)
        chunks = []
        for i in tqdm(range(0, len(images), batch_size), desc="cache frozen tower features"):
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                chunks.append(self.encoder(images_to_float(images[i : i + batch_size]).to(device)).float().cpu())
        self.encoder.to(home)
        self._features = torch.cat(chunks) if chunks else None
        self._feature_rows = {image_digest(img): i for i, img in enumerate(images)}

    def encode_images(self, images: torch.Tensor, image_keys: list[bytes] | None = None) -> torch.Tensor:
        """``[B, 3, S, S] -> [B, M, D_llm]``; ``image_keys``: the images' digests (the collator's
        ``image_keys``), used when every one of them is in the :meth:`cache_features` cache."""
        rows = [self._feature_rows.get(k) for k in image_keys] if image_keys and self._feature_rows else None
        if rows and None not in rows:
            tokens = self._features[rows].to(images.device)
        elif self.encoder_train_mode == "frozen":
            self.encoder.eval()
            with torch.no_grad():
                tokens = self.encoder(images)
        else:
            tokens = self.encoder(images)
        if self.output_norm is not None:
            tokens = self.output_norm(tokens)
        merged = merge_tokens(tokens, self.merge, self.merge_mode, self.tokens_per_tower)
        return self.projector(merged.to(self.projector[0].weight.dtype))

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def _with_prefix(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, M, D] -> [B, len(prefix) + M, D]`` (``<s>[INST] <Img>`` before the image)."""
        b = image_embeds.shape[0]
        prefix = torch.tensor(self.prefix_ids, device=image_embeds.device).expand(b, -1)
        return torch.cat([self._embed_ids(prefix).to(image_embeds.dtype), image_embeds], dim=1)

    # ----------------------------------------------------------------- training
    def forward(self, images: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor, text_labels: torch.Tensor,
                image_keys: list[bytes] | None = None):
        """Teacher-forced loss. ``text_*`` [B, T]: the prompt suffix, answer and ``</s>``, right-padded."""
        head = self._with_prefix(self.encode_images(images, image_keys))
        embeds = torch.cat([head, self._embed_ids(text_ids).to(head.dtype)], dim=1)
        b, h = head.shape[:2]
        mask = torch.cat([text_mask.new_ones(b, h), text_mask], dim=1)
        labels = torch.cat([text_labels.new_full((b, h), IGNORE_INDEX), text_labels], dim=1)
        # Logits only from the first position that predicts an answer token: the LM head over the
        # image and prompt positions would be discarded (a [B, T, 32000] tensor at full scale).
        targets = labels[:, 1:]
        first = int((targets != IGNORE_INDEX).any(0).int().argmax())
        keep = torch.arange(first, targets.shape[1], device=embeds.device)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets[:, first:].flatten(), ignore_index=IGNORE_INDEX)

    def _batch_loss(self, batch: dict) -> torch.Tensor:
        return self(batch["images"], batch["text_ids"], batch["text_mask"], batch["text_labels"],
                    batch.get("image_keys"))

    def training_step(self, batch, batch_idx):
        loss = self._batch_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self._batch_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["images"]), sync_dist=True)

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 max_new_tokens: int | None = None, task: str | None = None) -> list[str]:
        """Greedy decoding. ``prompt_*`` [B, T]: the prompt suffix, right-padded. Returns the answers
        (kept to ``task``'s grammar under ``constrained_decoding``)."""
        return [d.text for d in self.generate_decoded(images, prompt_ids, prompt_mask, max_new_tokens, task)]

    @torch.no_grad()
    def generate_decoded(self, images: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                         max_new_tokens: int | None = None, task: str | None = None,
                         labels: tuple[str, ...] | None = None) -> list[Decoded]:
        """:meth:`generate` with each answer's tokens and their raw log-probabilities
        (:class:`~medgrounder.models.decoding.Decoded`). ``task``: the answers' task (its grammar
        gives the no-answer probability, and the constraint under ``constrained_decoding``);
        ``labels``: the labels its grammar may name (None: all)."""
        head = self._with_prefix(self.encode_images(images))
        embeds = torch.cat([head, self._embed_ids(prompt_ids).to(head.dtype)], dim=1)
        b, h = head.shape[:2]
        mask = torch.cat([prompt_mask.new_ones(b, h), prompt_mask], dim=1)
        # [head][suffix][pad] -> [pad][head][suffix]: generation continues from the last column.
        pads = (prompt_mask == 0).sum(1)
        if pads.any():
            embeds = torch.stack([e.roll(int(p), dims=0) for e, p in zip(embeds, pads, strict=True)])
            mask = torch.stack([m.roll(int(p), dims=0) for m, p in zip(mask, pads, strict=True)])
        budget = max_new_tokens or self.max_new_tokens
        t = get_task(task) if task else None
        grammar = t.answer_grammar(labels) if t else None
        processor = AnswerProcessor(token_table(self.tokenizer), b, budget, grammar,
                                    constrain=self.constrained_decoding and grammar is not None,
                                    no_answer_node=t.no_answer_node if t else None)
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=budget,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([processor]),
        )
        decoded = processor.finish(out)
        for d, text in zip(decoded, self.tokenizer.batch_decode(out, skip_special_tokens=True), strict=True):
            d.text = text.strip()
        return decoded

    # ----------------------------------------------------------------- optimisation
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that training changes (what a stage hand-off checkpoint keeps)."""
        names = self.trainable_names()
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if k in names}

    def trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def frozen_fingerprint(self) -> str:
        """A digest of the weights training does not change (towers, frozen LLM). A stage
        checkpoint keeps only trainable weights; the digest proves the rest was rebuilt the same
        (same pretrained files, or the same seed for random tiny towers)."""
        import hashlib

        trainable = self.trainable_names()
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            if name not in trainable and tensor.is_floating_point() and tensor.device.type != "meta":
                t = tensor.double()
                digest.update(f"{name}:{t.sum().item():.12e}:{t.abs().sum().item():.12e}".encode())
        return digest.hexdigest()

    # ----------------------------------------------------------------- resume checkpoints
    def on_fit_start(self) -> None:
        self._fingerprint = None  # frozen weights are fixed for a fit: digest them once

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Lightning's resume checkpoint without the frozen weights (a 7B LLM stays out), with
        the frozen weights' digest instead."""
        names = self.trainable_names()
        state = checkpoint.get("state_dict")
        if state is not None:
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in names}
        if self._fingerprint is None:
            self._fingerprint = self.frozen_fingerprint()
        checkpoint["frozen_fingerprint"] = self._fingerprint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict")
        if state is None:  # strategies that restore weights themselves (DeepSpeed)
            return
        check_trainable_state(self, state, checkpoint.get("frozen_fingerprint"), "resume checkpoint")

    def configure_optimizers(self):
        opt, sched = self.build_optimizer(max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def build_optimizer(self, total_steps: int):
        """AdamW (no weight decay on biases and norms; trainable towers may take their own lr)
        and its per-step schedule: linear warm-up, then cosine to ``min_lr`` at ``total_steps``."""
        o = self.optim
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                key = (name.startswith("encoder."), p.ndim < 2 or "norm" in name)
                groups.setdefault(key, []).append(p)
        encoder_lr = o.get("encoder_lr") or o["lr"]
        opt = torch.optim.AdamW(
            [{"params": ps, "lr": encoder_lr if enc else o["lr"], "weight_decay": 0.0 if no_wd else o["weight_decay"]}
             for (enc, no_wd), ps in sorted(groups.items())],
            lr=o["lr"], betas=tuple(o["betas"]), fused=fused_adamw_ok([p for ps in groups.values() for p in ps]),
        )
        # One multiplier for every group: each follows the schedule relative to its own base lr.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(o["lr"], total_steps, o["warmup_steps"],
                                                                     o["warmup_start_lr"], o["min_lr"]))
        return opt, sched


def warmup_cosine(lr: float, total_steps: int, warmup_steps: int, warmup_start_lr: float, min_lr: float):
    """LR multiplier: linear ``warmup_start_lr -> lr`` over ``warmup_steps``, then cosine to ``min_lr``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            cur = warmup_start_lr + (lr - warmup_start_lr) * step / warmup_steps
        else:
            t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            cur = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        return cur / lr

    return factor


def fused_adamw_ok(params) -> bool | None:
    """``True`` where ``torch.optim.AdamW(fused=True)`` takes ``params`` (floating tensors on CPU
    or CUDA), else ``None`` (torch's default): one kernel for every tensor instead of a dozen
    small ops each (on 2 CPU cores: 0.5 ms against 4.3 ms a step for the tiny LLM)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
