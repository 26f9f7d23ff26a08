"""Text metrics of LiteGPT Tables 4-5 (design section 7): ROUGE, BLEU-1..4, METEOR, CIDEr-D.

The generated and reference answers are first stripped of their localization details
(:func:`strip_grounding`): boxes ``{<x1><y1><x2><y2>}`` and ``<delim>`` always, the ``<p>`` /
``</p>`` tags unless ``keep_tags=True`` (the compatibility flag: the phrase text stays either
way). Every metric has one reference per prediction; all values are fractions (CIDEr-D is on its
usual 0-10 scale) and :mod:`medgrounder.metrics.tables` prints percentages.

Implementations and what they reproduce:

- ``rouge1 rouge2 rougeL rougeLsum``: the ``rouge-score`` package (HF ``evaluate``'s ``rouge``
  defaults: its own tokenizer, no stemmer), mean F-measure over rows. ``rougeLsum`` splits
  summaries on newlines, so on one-line answers it equals ``rougeL`` (as in the paper's tables).
- ``bleu1..bleu4``: corpus BLEU-n (Papineni et al.): clipped n-gram counts pooled over the
  corpus, geometric mean of the 1..n precisions (0 when one of them is 0, no smoothing), brevity
  penalty ``exp(1 - r / c)`` when the candidate length ``c`` is below the reference length
  ``r``; a candidate shorter than n adds nothing to the n-gram denominator (as HF ``evaluate``;
  nltk's ``corpus_bleu`` adds 1). Tokens: the ``13a`` tokenizer (case kept), HF ``evaluate``'s ``bleu`` default.
- ``cider``: CIDEr-D exactly as ``pycocoevalcap``'s ``Cider`` (n = 1..4, sigma = 6, clipped
  tf-idf vectors, document frequencies over the references of the scored corpus, x10; its
  Gaussian length penalty counts bigrams, as the reference code does). Tokens: lower case,
  punctuation dropped (:func:`caption_tokens`, close to the PTB tokenizer of the COCO toolkit).
- ``meteor``: two backends (``meteor=`` argument).

  * ``"nltk"`` (default): ``nltk.translate.meteor_score.single_meteor_score`` with alpha 0.9,
    beta 3, gamma 0.5 and WordNet 3.0 synonyms, averaged over rows: what HF ``evaluate``'s
    ``meteor`` computes, hence what LiteGPT's Tables 4-5 report. Tokens: nltk's Treebank word
    tokenizer on the sentences of an untrained Punkt splitter (nltk's ``word_tokenize`` needs
    the downloadable ``punkt_tab`` model; the two differ only on abbreviations with a period).
    WordNet is looked up in this order: the folder in ``$MEDGROUNDER_WORDNET``, nltk's own data
    (``nltk.download("wordnet")``), then Debian's ``wordnet-base`` files (``/usr/share/wordnet``,
    ``make wordnet`` installs them; they lack nltk's ``lexnames`` index, which is written next to
    links to them in a temporary folder).
  * ``"coco"``: the Java METEOR 1.5 of ``pycocoevalcap`` (jar and paraphrase table ship in the
    wheel; needs ``java`` on ``PATH``), the captioning-standard number, not LiteGPT's.
  * ``None``: skipped.

  A backend that is not available gives ``meteor = None`` and a warning, never an error.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medgrounder.core.grammar import strip_grounding

__all__ = [
    "TEXT_KEYS",
    "bleu",
    "caption_tokens",
    "cider_d",
    "meteor",
    "paper_text_metrics",
    "remove_boxes",
    "rouge",
    "sentence_lines",
    "strip_grounding",
    "text_metrics",
    "tokenize_13a",
    "wordnet_reader",
]

log = logging.getLogger(__name__)

TEXT_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider")
DEBIAN_WORDNET = "/usr/share/wordnet"

# ---------------------------------------------------------------------------------- ROUGE
def rouge(predictions: Sequence[str], references: Sequence[str], stem: bool = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures of ``rouge-score`` (Porter stemming with ``stem``)."""
    from rouge_score import rouge_scorer

    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=stem)
    sums = dict.fromkeys(keys, 0.0)
    for p, r in zip(predictions, references, strict=True):
        s = scorer.score(r, p)
        for k in keys:
            sums[k] += s[k].fmeasure
    n = len(predictions)
    return {k: sums[k] / n if n else 0.0 for k in keys}


# ----------------------------------------------------------------------------------- BLEU
def tokenize_13a(text: str) -> list[str]:
    """The ``13a`` tokenizer of mteval-v13a / sacrebleu (HF ``evaluate``'s ``bleu`` default)."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in text:
        text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = f" {text} "
    text = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", text)
    text = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", text)
    text = re.sub(r"([\.,])([^0-9])", r" \1 \2", text)
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)
    return text.split()


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]], max_order: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..``max_order`` of token lists (one reference each): ``bleu<n>`` keys."""
    matches = np.zeros(max_order)
    possible = np.zeros(max_order)
    c = r = 0
    for pred, ref in zip(predictions, references, strict=True):
        c += len(pred)
        r += len(ref)
        for n in range(1, max_order + 1):
            p, q = _ngrams(pred, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(v, q[g]) for g, v in p.items())
            possible[n - 1] += max(len(pred) - n + 1, 0)
    bp = 1.0 if c >= r else (math.exp(1 - r / c) if c else 0.0)
    out = {}
    for n in range(1, max_order + 1):
        m, t = matches[:n], possible[:n]
        if (t > 0).all() and (m > 0).all():
            out[f"bleu{n}"] = float(bp * math.exp(np.mean(np.log(m / t))))
        else:
            out[f"bleu{n}"] = 0.0
    return out


# ---------------------------------------------------------------------------------- CIDEr
def caption_tokens(text: str) -> list[str]:
    """Lower-case word tokens, punctuation dropped (``x-ray`` and ``1.5`` stay whole)."""
    return re.findall(r"\w+(?:[-'./]\w+)*", text.lower())


def cider_d(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D of token lists, one reference each: ``(corpus mean, per-row scores)``."""
    if not predictions:
        return 0.0, []

    def counts(tokens):
        out: Counter = Counter()
        for k in range(1, n + 1):
            out.update(_ngrams(tokens, k))
        return out

    tests = [counts(p) for p in predictions]
    refs = [counts(r) for r in references]
    df: Counter = Counter()
    for ref in refs:
        df.update(set(ref))
    log_n = math.log(len(refs))

    def vec(cnts):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in cnts.items():
            k = len(g) - 1
            w = tf * (log_n - math.log(max(1.0, df[g])))
            v[k][g] = w
            norm[k] += w * w
            if k == 1:  # the reference code measures length in bigrams
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for test, ref in zip(tests, refs, strict=True):
        vh, nh, lh = vec(test)
        vr, nr, lr = vec(ref)
        penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
        total = 0.0
        for k in range(n):
            val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
            if nh[k] and nr[k]:
                val /= nh[k] * nr[k]
            total += val * penalty
        scores.append(10.0 * total / n)
    return float(np.mean(scores)), scores


# --------------------------------------------------------------------------------- METEOR
_LEXNAME_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl"]
_WORDNET_FILES = [f"{k}.{p}" for k in ("data", "index") for p in ("noun", "verb", "adj", "adv")]


def _lexnames_text() -> str:
    """WordNet 3.0's ``lexnames`` file (lexnames(5WN)): number, name, syntactic category."""
    return "".join(f"{i:02d}\t{name}\t{_LEXNAME_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


def _is_wordnet_dir(path: Path) -> bool:
    return all((path / f).is_file() for f in _WORDNET_FILES)


@functools.cache
def _reader_for(folder: str):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class Reader(WordNetCorpusReader):
        """Serves WordNet 3.0's ``lexnames`` when the folder lacks it (Debian's wordnet-base) and
        skips the synset map to nltk's own WordNet copy (needed only by the OMW languages)."""

        def open(self, fileid):
            if fileid == "lexnames" and not (Path(folder) / "lexnames").is_file():
                return io.StringIO(_lexnames_text())
            return super().open(fileid)

        def map_wn(self, version="wordnet"):
            return None  # the mapping to another WordNet version only serves OMW languages

    # nltk >= 3.9 opens files only under its data roots.
    if folder not in nltk.data.path:
        nltk.data.path.append(folder)
    with warnings.catch_warnings():  # "multilingual functions are not available": not needed
        warnings.simplefilter("ignore", UserWarning)
        return Reader(folder, None)


def wordnet_reader():
    """An nltk WordNet reader from the first source found (see the module docstring), or None."""
    env = os.environ.get("MEDGROUNDER_WORDNET")
    if env and _is_wordnet_dir(Path(env)):
        return _reader_for(str(Path(env).resolve()))
    try:
        import nltk

        return _reader_for(str(Path(nltk.data.find("corpora/wordnet")).resolve()))
    except (LookupError, OSError, ValueError):
        pass
    if _is_wordnet_dir(Path(DEBIAN_WORDNET)):
        return _reader_for(DEBIAN_WORDNET)
    return None


def _meteor_tokens(text: str) -> list[str]:
    from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer

    words = NLTKWordTokenizer()
    return [t for s in PunktSentenceTokenizer().tokenize(text) for t in words.tokenize(s)]


def _meteor_nltk(predictions: Sequence[str], references: Sequence[str]) -> float | None:
    from nltk.translate.meteor_score import single_meteor_score

    wn = wordnet_reader()
    if wn is None:
        warnings.warn("METEOR (nltk) needs WordNet 3.0 and none was found: meteor = null. Install it "
                      "with `make wordnet` (Debian's wordnet-base) or nltk.download('wordnet'), or "
                      "point $MEDGROUNDER_WORDNET at a WordNet dict folder", RuntimeWarning, stacklevel=3)
        return None
    scores = [single_meteor_score(_meteor_tokens(r), _meteor_tokens(p), alpha=0.9, beta=3.0, gamma=0.5, wordnet=wn)
              for p, r in zip(predictions, references, strict=True)]
    return float(np.mean(scores)) if scores else 0.0


def _meteor_coco(predictions: Sequence[str], references: Sequence[str]) -> float | None:
    if shutil.which("java") is None:
        warnings.warn("METEOR (coco) needs Java on PATH: meteor = null", RuntimeWarning, stacklevel=3)
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    # The jar's protocol is line based: no newlines or '|||' inside a sentence.
    def clean(s: str) -> str:
        return " ".join(s.replace("|||", " ").split()).lower()

    gts = {i: [clean(r)] for i, r in enumerate(references)}
    res = {i: [clean(p)] for i, p in enumerate(predictions)}
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        with scorer.lock:
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    return float(score)


def meteor(predictions: Sequence[str], references: Sequence[str], backend: str | None = "nltk") -> float | None:
    """Mean METEOR with ``backend`` ``"nltk"`` or ``"coco"`` (None when unavailable or skipped)."""
    if backend is None or not predictions:
        return None if backend is None else 0.0
    if backend == "nltk":
        return _meteor_nltk(predictions, references)
    if backend == "coco":
        return _meteor_coco(predictions, references)
    raise ValueError(f"unknown METEOR backend {backend!r} (nltk, coco or None)")


# ---------------------------------------------------------------------------------- all
def text_metrics(predictions: Sequence[object], references: Sequence[object], keep_tags: bool = False,
                 meteor_backend: str | None = "nltk") -> dict:
    """All text metrics (:data:`TEXT_KEYS`, plus ``num_samples``) after :func:`strip_grounding`.

    ``predictions`` may hold non-str values (a missing answer): they score as empty text.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    preds = [strip_grounding(p, keep_tags) for p in predictions]
    refs = [strip_grounding(r, keep_tags) for r in references]
    out: dict = {"num_samples": len(preds)}
    out.update(rouge(preds, refs))
    out.update(bleu([tokenize_13a(p) for p in preds], [tokenize_13a(r) for r in refs]))
    out["meteor"] = meteor(preds, refs, meteor_backend)
    out["cider"] = cider_d([caption_tokens(p) for p in preds], [caption_tokens(r) for r in refs])[0] if preds else 0.0
    return out



# ------------------------------------------------------------------ the papers' protocol
#: what LiteGPT's ``remove_bboxes`` removes: a box written without spaces (tags, commas and
#: ``<delim>`` stay)
REFERENCE_BOX_RE = re.compile(r"{<\d+><\d+><\d+><\d+>}")


def remove_boxes(text: object) -> str:
    """LiteGPT's localization-free text: only ``{<x1><y1><x2><y2>}`` boxes removed (non-str: ``""``)."""
    return REFERENCE_BOX_RE.sub("", text) if isinstance(text, str) else ""


def sentence_lines(text: str) -> str:
    """``nltk.sent_tokenize`` sentences joined by newlines (what ROUGE-Lsum splits on), as
    LiteGPT's ``compute_rouge`` does. Without nltk's downloadable ``punkt_tab`` model an untrained
    Punkt splitter stands in (the two differ only on abbreviations with a period)."""
    import nltk
    from nltk.tokenize import PunktSentenceTokenizer

    text = text.strip()
    try:
        sentences = nltk.sent_tokenize(text)
    except LookupError:
        sentences = PunktSentenceTokenizer().tokenize(text)
    return "\n".join(sentences)


def paper_text_metrics(predictions: Sequence[object], references: Sequence[object],
                       meteor_backend: str | None = "nltk") -> dict:
    """:data:`TEXT_KEYS` as LiteGPT's reference code measures them (its ``compute_text_validity``
    on ``remove_bboxes`` text; audit A1 item 7), plus ``num_samples``:

    - text: only the boxes removed (:func:`remove_boxes`); ``<p>`` tags, ``<delim>`` and commas stay;
    - ROUGE: ``rouge-score`` with Porter stemming on :func:`sentence_lines` text (so ``rougeLsum``
      differs from ``rougeL`` on several sentences); the mean F-measure (HF ``evaluate``'s default
      aggregator reports a bootstrap estimate of that mean);
    - BLEU-1..4 and METEOR: as :func:`text_metrics` (HF ``evaluate``'s, which the reference calls);
    - CIDEr: the reference's ``compute_cider(preds, labels)`` passes the predictions as
      ``gts``: the predictions are the corpus the document frequencies come from and the
      references are scored against them; tokens are ``str.split`` (case and punctuation kept).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    preds = [remove_boxes(p) for p in predictions]
    refs = [remove_boxes(r) for r in references]
    out: dict = {"num_samples": len(preds)}
    out.update(rouge([sentence_lines(p) for p in preds], [sentence_lines(r) for r in refs], stem=True))
    out.update(bleu([tokenize_13a(p) for p in preds], [tokenize_13a(r) for r in refs]))
    out["meteor"] = meteor(preds, refs, meteor_backend)
    out["cider"] = cider_d([r.split() for r in refs], [p.split() for p in preds])[0] if preds else 0.0
    return out
