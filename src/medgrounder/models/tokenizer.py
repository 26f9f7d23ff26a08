"""Tokenizers: the real one from a hub id / local directory, or a tiny one built offline.

The tiny tokenizer is a byte-level BPE trained on the suite's own prompt and answer vocabulary
(instructions, label names, box syntax). Like Llama-2's SentencePiece model it splits every
digit into its own token, so ``<38>`` costs the model the same steps at both scales. Unlike it,
merges may cross spaces, so a fixed phrase of the template (a task's instruction, ``<p>Nodule/Mass</p>
{<``) becomes one token: the tiny LLM reads the same text at about half the positions (an
``[identify]`` sample is ~80 tokens instead of ~145), which is what its steps per minute on a CPU
depend on; free text (phrases, captions) still splits into sub-words. It is trained from a
fixed corpus, so every run gets the same ids.
"""

from __future__ import annotations

from functools import lru_cache

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from medgrounder.core.template import PROMPT_PREFIX
from medgrounder.tasks import TASKS

# Report words of MS-CXR phrases and the caption corpora (locations, qualifiers, findings).
REPORT_WORDS = (
    "right left bilateral upper mid lower apical basilar lobe lung lungs base bases zone heart cardiac "
    "silhouette enlarged enlargement moderate small large mild severe dense patchy hazy focal multifocal "
    "subsegmental interstitial pulmonary pleural effusion fluid opacity opacities consolidation atelectasis "
    "edema pneumonia pneumothorax cardiomegaly consistent with concerning for in the of and is are there "
    "no acute abnormality abnormalities normal clear chest x-ray radiograph showing demonstrating findings "
    "impression process cardiopulmonary cardiomediastinal photograph skin"
)

SPECIAL = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def _corpus() -> list[str]:
    lines = [PROMPT_PREFIX]
    lines += [text for task in TASKS.values() for text in task.prompt_corpus()]
    answered: set[type] = set()  # [grounding] shares [identify]'s answers
    for task in TASKS.values():
        if type(task) not in answered:
            answered.add(type(task))
            lines += task.answer_corpus()
    lines += [REPORT_WORDS, REPORT_WORDS.capitalize()]
    # Words later tasks use (MS-CXR phrases, captions) so the tiny vocabulary covers them.
    lines += ["[refer] [caption] [grounding] Where is the finding? Give the bounding box of the region."]
    return lines * 4


@lru_cache(maxsize=4)
def build_tiny_tokenizer(vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]  # no split at spaces
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def load_tokenizer(pretrained: str | None = None, vocab_size: int = 2048) -> PreTrainedTokenizerBase:
    """``pretrained``: hub id or local directory (Llama-2's tokenizer); ``None``: the tiny one."""
    if pretrained is None:
        return build_tiny_tokenizer(vocab_size)
    tok = AutoTokenizer.from_pretrained(pretrained)
    if tok.pad_token is None:  # Llama-2 ships without one; padding is masked out anyway.
        tok.pad_token = tok.unk_token
    return tok
