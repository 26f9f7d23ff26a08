"""Text metrics (LiteGPT tables 4-5) against independent references: rouge-score, nltk's
corpus BLEU, pycocoevalcap's CIDEr-D, hand-computed METEOR; the METEOR null path."""

from __future__ import annotations

import random
import shutil

import pytest
from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.cider.cider import Cider
from rouge_score import rouge_scorer

from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.metrics import text as tm
from medgrounder.tasks.identify import identify_answer
from medgrounder.tasks.vqa import vqa_answer

WORDS = ["the", "heart", "lung", "left", "right", "small", "large", "effusion", "opacity", "of", "is", "no", "and", "pleural"]


def random_corpus(seed: int, n: int = 40) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    refs = [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) for _ in range(n)]
    # Predictions share material with their reference so that every n-gram order matches; at
    # least 4 tokens each (nltk counts a 1 in the n-gram denominator of a shorter hypothesis, HF
    # evaluate's BLEU a 0).
    preds = [r if i % 5 == 0 else " ".join(r.split()[: rng.randint(2, 8)] + rng.choices(WORDS, k=rng.randint(2, 5)))
             for i, r in enumerate(refs)]
    return preds, refs


def test_strip_grounding():
    answer = identify_answer([("Aortic enlargement", (53, 28, 65, 36)), ("Aortic enlargement", (1, 2, 3, 4)),
                              ("Cardiomegaly", (38, 49, 82, 63))])
    assert tm.strip_grounding(answer) == "Local diseases of this chest radiograph are Aortic enlargement, Cardiomegaly."
    assert tm.strip_grounding(answer, keep_tags=True) == (
        "Local diseases of this chest radiograph are <p>Aortic enlargement</p>, <p>Cardiomegaly</p>.")
    assert tm.strip_grounding("{ <1> <2><3> <4> } < DELIM >{<5><6><7><8>} Edema") == "Edema"
    assert tm.strip_grounding(None) == "" and tm.strip_grounding(3) == ""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_matches_nltk_corpus_bleu(seed):
    preds, refs = random_corpus(seed)
    p = [tm.tokenize_13a(s) for s in preds]
    r = [tm.tokenize_13a(s) for s in refs]
    ours = tm.bleu(p, r)
    for n in range(1, 5):
        expected = corpus_bleu([[x] for x in r], p, weights=tuple([1 / n] * n))
        assert ours[f"bleu{n}"] == pytest.approx(expected, rel=1e-12), n
        assert ours[f"bleu{n}"] > 0


def test_bleu_hand_computed_and_brevity_penalty():
    # 2 of 3 unigrams match, 1 of 2 bigrams; candidate 3 tokens vs reference 4: BP = e^(1 - 4/3).
    out = tm.bleu([["a", "b", "x"]], [["a", "b", "c", "d"]], max_order=2)
    bp = pytest.approx(2.718281828459045 ** (1 - 4 / 3))
    assert out["bleu1"] == pytest.approx(bp.expected * 2 / 3)
    assert out["bleu2"] == pytest.approx(bp.expected * (2 / 3 * 1 / 2) ** 0.5)
    assert tm.bleu([["a"]], [["b"]])["bleu1"] == 0.0 and tm.bleu([[]], [["b"]])["bleu4"] == 0.0


def test_tokenize_13a():
    assert tm.tokenize_13a("Cardiomegaly, effusion (left).") == ["Cardiomegaly", ",", "effusion", "(", "left", ")", "."]
    assert tm.tokenize_13a("size 1.5 cm") == ["size", "1.5", "cm"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_d_matches_pycocoevalcap(seed):
    preds, refs = random_corpus(seed)
    ours, per_row = tm.cider_d([tm.caption_tokens(s) for s in preds], [tm.caption_tokens(s) for s in refs])
    score, scores = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [p] for i, p in enumerate(preds)})
    assert ours == pytest.approx(score, rel=1e-12)
    assert per_row == pytest.approx(list(scores), rel=1e-12)
    assert ours > 0


def test_rouge_matches_rouge_score_and_a_hand_lcs():
    preds, refs = random_corpus(4)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    ours = tm.rouge(preds, refs)
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[k] == pytest.approx(sum(scorer.score(r, p)[k].fmeasure for p, r in zip(preds, refs, strict=False)) / len(preds))
    # LCS("a b c d", "a c d e") = 3: P = R = 3/4; unigram overlap 3; bigram overlap 1 of 3.
    one = tm.rouge(["a b c d"], ["a c d e"])
    assert one["rougeL"] == pytest.approx(0.75) and one["rouge1"] == pytest.approx(0.75)
    assert one["rouge2"] == pytest.approx(1 / 3)


def test_text_metrics_perfect_and_keys():
    rng = random.Random(0)
    answers = [vqa_answer(rng.sample(GLOBAL_LABELS[:-1], k=rng.randint(0, 3))) for _ in range(12)]
    answers += [identify_answer([(rng.choice(LOCAL_LABELS), (10, 10, 20, 20))]) for _ in range(12)]
    m = tm.text_metrics(answers, answers, meteor_backend=None)
    assert set(tm.TEXT_KEYS) | {"num_samples"} == set(m)
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu2", "bleu3", "bleu4"):
        assert m[k] == pytest.approx(1.0), k
    assert m["meteor"] is None and m["cider"] > 0
    with pytest.raises(ValueError):
        tm.text_metrics(["a"], [])


def test_meteor_without_wordnet_is_null_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDGROUNDER_WORDNET", str(tmp_path / "nowhere"))
    monkeypatch.setattr(tm, "DEBIAN_WORDNET", str(tmp_path / "nowhere"))
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "empty"))
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    with pytest.warns(RuntimeWarning, match="WordNet"):
        m = tm.text_metrics(["the heart is big"], ["the heart is large"])
    assert m["meteor"] is None and m["rouge1"] > 0


def test_meteor_without_java_is_null_with_a_warning(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.warns(RuntimeWarning, match="Java"):
        assert tm.meteor(["a b"], ["a b"], backend="coco") is None
    with pytest.raises(ValueError):
        tm.meteor(["a"], ["a"], backend="bleu")


needs_wordnet = pytest.mark.skipif(tm.wordnet_reader() is None, reason="no WordNet 3.0 (make wordnet)")


@needs_wordnet
def test_meteor_nltk_hand_computed():
    # 4 of 4 words aligned in one chunk: Fmean = 1, penalty = 0.5 * (1/4)^3.
    assert tm.meteor(["the patient is ill"], ["the patient is ill"]) == pytest.approx(1 - 0.5 / 64)
    # "sick" ~ "ill" only through WordNet (neither stems to the other).
    assert tm.meteor(["the patient is sick"], ["the patient is ill"]) == pytest.approx(1 - 0.5 / 64)
    # Without a match for the last word: P = R = 3/4, one chunk of 3 -> 0.75 * (1 - 0.5 / 27).
    assert tm.meteor(["the patient is blue"], ["the patient is ill"]) == pytest.approx(0.75 * (1 - 0.5 / 27))
    assert tm.wordnet_reader().get_version() == "3.0"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="no java")
def test_meteor_coco_java():
    preds, refs = random_corpus(5, n=10)
    assert tm.meteor(refs, refs, backend="coco") == pytest.approx(1.0, abs=0.01)
    assert 0 < tm.meteor(preds, refs, backend="coco") < 1
