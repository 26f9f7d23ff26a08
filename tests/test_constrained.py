"""Constrained decoding and box scores (design section 7): the answer automata accept exactly what
the tasks write, the logits processor keeps random logits inside the grammar with the tiny and the
real Llama-2 tokenizer, confidences come from the raw logits, and batching changes no answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.data.collate import PromptCollator
from medgrounder.models.decoding import AnswerProcessor, Decoded, box_scores, token_table
from medgrounder.models.tokenizer import build_tiny_tokenizer
from medgrounder.pipeline.generation import scored_row
from medgrounder.tasks import get_task
from medgrounder.tasks.identify import NO_LOCAL_FINDINGS, identify_answer, identify_grammar
from medgrounder.tasks.refer import refer_answer, refer_grammar
from medgrounder.tasks.vqa import NONE, vqa_answer, vqa_grammar

GRAMMAR_TASKS = ("identify", "vqa", "refer")


def _accepts(grammar, text: str) -> bool:
    state = grammar.feed(grammar.start, text)
    return state is not None and grammar.accepts(state)


grid_boxes = st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(1, 100), st.integers(1, 100)).filter(
    lambda b: b[0] < b[2] and b[1] < b[3])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(LOCAL_LABELS), grid_boxes), max_size=6))
def test_identify_grammar_accepts_every_answer_the_task_writes(findings):
    grammar = identify_grammar()
    answer = identify_answer(findings)
    assert _accepts(grammar, answer) and _accepts(grammar, " " + answer)
    # the labels of the dataset's vocabulary only
    others = tuple(n for n in LOCAL_LABELS if n not in {c for c, _ in findings})
    assert _accepts(identify_grammar(others), answer) == (not findings)


@settings(max_examples=40, deadline=None)
@given(st.sets(st.sampled_from(GLOBAL_LABELS)), st.booleans())
def test_vqa_grammar_accepts_every_answer_the_task_writes(labels, no_finding):
    assert _accepts(vqa_grammar(), vqa_answer(labels - {"No finding"} or labels, no_finding))


@settings(max_examples=40, deadline=None)
@given(st.lists(grid_boxes, min_size=1, max_size=4))
def test_refer_grammar_accepts_every_answer_the_task_writes(boxes):
    assert _accepts(refer_grammar(), refer_answer(boxes))


@pytest.mark.parametrize("text", [
    "Local diseases of this chest radiograph are <p>Cardiomegaly</p> {<50><49><50><63>}.",  # x1 = x2
    "Local diseases of this chest radiograph are <p>Cardiomegaly</p> {<38><49><82><101>}.",  # > 100
    "Local diseases of this chest radiograph are <p>Cardiomegaly</p> {<038><49><82><63>}.",  # leading zero
    "Local diseases of this chest radiograph are <p>Cardiomegaly</p> {<100><49><82><63>}.",  # x1 = 100
    "Local diseases of this chest radiograph are <p>Heart</p> {<38><49><82><63>}.",  # unknown label
    # labels out of order, and a label twice
    "Local diseases of this chest radiograph are <p>Cardiomegaly</p> {<1><2><3><4>}, <p>Atelectasis</p> {<1><2><3><4>}.",
    "Local diseases of this chest radiograph are <p>ILD</p> {<1><2><3><4>}, <p>ILD</p> {<5><6><7><8>}.",
    "Local diseases of this chest radiograph are <p>ILD</p> {<1><2><3><4>}",  # no ending
    "Local diseases of this chest radiograph are .",
])
def test_identify_grammar_refuses_what_the_parser_would_not_count(text):
    assert not _accepts(identify_grammar(), text)


@pytest.mark.parametrize("text", ["Global diseases of this chest radiograph are COPD, No finding.",
                                  "Global diseases of this chest radiograph are Pneumonia, COPD.",
                                  "Global diseases of this chest radiograph are none, COPD.",
                                  "Global diseases of this chest radiograph are ."])
def test_vqa_grammar_refuses_mixed_or_unordered_lists(text):
    assert not _accepts(vqa_grammar(), text)


@pytest.mark.parametrize("name", GRAMMAR_TASKS)
def test_random_walks_with_their_closing_always_parse(name):
    """From any state a walk reaches, the closing is a valid answer (the budget guarantee)."""
    task, rng = get_task(name), np.random.default_rng(0)
    grammar = task.answer_grammar()
    chars = [chr(c) for c in range(32, 127)]
    for _ in range(150):
        state, text = grammar.start, ""
        for _ in range(int(rng.integers(0, 120))):
            options = [c for c in sorted(grammar.next_chars(state)) if grammar.step(state, c) is not None]
            assert options == [c for c in chars if grammar.step(state, c) is not None]  # next_chars is complete
            if not options:
                break
            ch = options[int(rng.integers(len(options)))]
            state, text = grammar.step(state, ch), text + ch
        closing = grammar.closing(state)
        assert grammar.accepts(grammar.feed(state, closing))
        assert task.parse((text + closing).strip()).valid, text + closing


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.mark.parametrize("which", ["tiny", "llama"])
def test_token_table_reads_answers_as_the_tokenizer_decodes_them(which, tiny_tokenizer, request):
    tok = tiny_tokenizer if which == "tiny" else request.getfixturevalue("llama_tokenizer")
    table = token_table(tok)
    assert table.single_chars  # every printable ASCII character is a token: the budget guarantee holds
    answers = [identify_answer([("Nodule/Mass", (3, 40, 18, 52)), ("Nodule/Mass", (60, 40, 71, 55)),
                                ("Pleural effusion", (0, 70, 30, 100))]),
               NO_LOCAL_FINDINGS, vqa_answer(["COPD", "Other disease"]), vqa_answer([], False), refer_answer([(1, 2, 3, 4)])]
    for answer in answers:
        ids = tok(answer, add_special_tokens=False)["input_ids"]
        text, spans = table.answer_text(ids)
        assert text == answer == tok.decode(ids, skip_special_tokens=True).strip()
        assert spans[-1][1] == len(text) and all(a <= b for a, b in spans)


def _random_greedy(table, task, n, budget, vocab, seed=0, batch=50, scale=3.0):
    """Greedy generation over random logits through :class:`AnswerProcessor`, as transformers
    runs it: ``(processor results, ids [n, steps] rows)``."""
    gen = torch.Generator().manual_seed(seed)
    results = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        proc = AnswerProcessor(table, b, budget, task.answer_grammar(), constrain=True,
                               no_answer_node=task.no_answer_node)
        seq = torch.zeros(b, 0, dtype=torch.long)
        finished = torch.zeros(b, dtype=torch.bool)
        for _ in range(budget):
            nxt = proc(seq, torch.randn(b, vocab, generator=gen) * scale).argmax(-1)
            nxt = torch.where(finished, torch.zeros_like(nxt), nxt)
            finished |= nxt == table.eos_token_id
            seq = torch.cat([seq, nxt[:, None]], 1)
            if finished.all():
                break
        results += zip(proc.finish(seq), seq, strict=True)
    return results


def test_a_thousand_constrained_generations_with_llamas_tokenizer_all_parse(llama_tokenizer):
    table = token_table(llama_tokenizer)
    budgets = {"identify": 160, "vqa": 48, "refer": 128}
    parsed = {}
    for name, budget in budgets.items():
        task = get_task(name)
        n = {"identify": 300, "vqa": 400, "refer": 300}[name]
        out = _random_greedy(table, task, n, budget, len(llama_tokenizer), seed=len(name))
        texts = [llama_tokenizer.decode(ids, skip_special_tokens=True).strip() for _, ids in out]
        parsed[name] = [task.parse(t) for t in texts]
        assert all(p.valid for p in parsed[name]), [t for t, p in zip(texts, parsed[name], strict=True) if not p.valid][:3]
        assert all(d.ended and len(d.ids) < budget for d, _ in out)  # ended with </s> within the budget
        assert [table.answer_text(d.ids)[0] for d, _ in out] == texts
    # random logits explore the grammar: boxes, several labels, both endings of [identify]
    assert sum(len(p.findings) for p in parsed["identify"]) > 300
    assert any(not p.findings for p in parsed["identify"]) and any(len(p.labels) > 1 for p in parsed["identify"])
    assert sum(len(p.findings) > 1 for p in parsed["refer"]) > 30


@pytest.mark.parametrize("name", GRAMMAR_TASKS)
def test_a_budget_that_only_just_fits_still_ends_validly(name, tiny_tokenizer):
    task, table = get_task(name), token_table(tiny_tokenizer)
    grammar = task.answer_grammar()
    budget = len(grammar.closing(grammar.start)) + 2
    for d, ids in _random_greedy(table, task, 40, budget, len(tiny_tokenizer), batch=20):
        assert d.ended and task.parse(tiny_tokenizer.decode(ids, skip_special_tokens=True).strip()).valid


def test_confidences_come_from_the_raw_logits_not_the_masked_ones(tiny_tokenizer):
    table, task = token_table(tiny_tokenizer), get_task("identify")
    gen = torch.Generator().manual_seed(1)
    proc = AnswerProcessor(table, 2, 30, task.answer_grammar(), constrain=True, no_answer_node="no_finding")
    seq, raws = torch.zeros(2, 0, dtype=torch.long), []
    for _ in range(3):
        raw = torch.randn(2, len(tiny_tokenizer), generator=gen)
        masked = proc(seq, raw.clone())
        raws.append(raw)
        seq = torch.cat([seq, masked.argmax(-1, keepdim=True)], 1)
    decoded = proc.finish(seq)
    for i, d in enumerate(decoded):
        want = [raws[k].log_softmax(-1)[i, seq[i, k]].item() for k in range(len(d.ids))]
        assert d.logprobs == pytest.approx(want, abs=1e-6)
        assert sum(math.exp(v) for v in want) < 3  # not renormalised over the allowed tokens
    # the no-finding probability: the raw mass of the first tokens that commit to that answer
    grammar = task.answer_grammar()
    committed = [t for t, txt in enumerate(table.text) if txt and (s := grammar.feed(grammar.start, txt)) is not None
                 and grammar.committed_to(s, "no_finding")]
    assert committed
    assert decoded[0].no_answer_prob == pytest.approx(raws[0].softmax(-1)[0, committed].sum().item(), rel=1e-5)


def test_box_scores_combine_the_label_and_digit_probabilities(tiny_tokenizer):
    table = token_table(tiny_tokenizer)
    answer = identify_answer([("Cardiomegaly", (38, 49, 82, 63)), ("Cardiomegaly", (90, 1, 95, 9)),
                              ("Aortic enlargement", (53, 28, 65, 36))])
    ids = tiny_tokenizer(answer, add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(0)
    logprobs = list(np.log(rng.uniform(0.05, 1.0, len(ids))))
    text, spans = table.answer_text(ids)
    boxes = box_scores(Decoded(ids, logprobs, 0.1, True, answer), table, get_task("identify").pairs, 1000, 500)
    assert [(b["label"], b["box"]) for b in boxes] == [
        ("Aortic enlargement", [530.0, 140.0, 650.0, 180.0]), ("Cardiomegaly", [380.0, 245.0, 820.0, 315.0]),
        ("Cardiomegaly", [900.0, 5.0, 950.0, 45.0])]

    def tokens(lo, hi):
        return [k for k, (a, b) in enumerate(spans) if a < hi and b > lo]

    def p(ks):
        return float(np.exp(sum(logprobs[k] for k in ks)))

    first = text.index("Cardiomegaly")
    label_tokens = tokens(first, first + len("Cardiomegaly"))
    box1 = text.index("{<38>")
    digits1 = sorted({k for j in range(box1, text.index("}", box1)) if text[j].isdigit() for k in tokens(j, j + 1)})
    card = boxes[1]
    assert card["label_prob"] == pytest.approx(p(label_tokens))
    assert card["coord_probs"] == pytest.approx([math.exp(logprobs[k]) for k in digits1])
    assert card["score"] == pytest.approx(p(label_tokens) * math.exp(np.mean([logprobs[k] for k in digits1])))
    # the second box of a group: its label's tokens and those of the <delim> before it
    delim = text.index("<delim>")
    later = sorted(set(label_tokens) | (set(tokens(delim, delim + len("<delim>"))) - set(digits1)))
    assert boxes[2]["label_prob"] == pytest.approx(p(later)) and boxes[2]["label_prob"] < card["label_prob"]
    assert box_scores(Decoded(ids, logprobs), table, get_task("identify").pairs, 1000, 500, rule="label")[1]["score"] \
        == pytest.approx(card["label_prob"])


def _tiny_vlm(tokenizer=None):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_models import tiny_vlm

    model = tiny_vlm(**({"tokenizer": {"pretrained": str(tokenizer)}} if tokenizer else {})).eval()
    # A random model's logits are near ties that float noise between batch shapes can flip;
    # sharpen them so the comparison tests padding and caching, not rounding.
    model.llm.lm_head.weight.data *= 200
    return model


def _batch(tokenizer, tasks):
    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.randint(0, 256, (224, 224), generator=gen, dtype=torch.uint8), "task": t, "answer": "x",
              "instruction": get_task(t).instruction(_target(t)) if get_task(t).takes_phrase else None,
              "meta": {"task": t, "image_width": 1000, "image_height": 800}} for t in tasks]
    return PromptCollator(tokenizer)(items)


def _target(task):
    from medgrounder.tasks import Target

    return Target(text="right lower lobe opacity") if get_task(task).takes_phrase else None


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("name", GRAMMAR_TASKS)
def test_batched_answers_equal_one_at_a_time(name, constrained):
    model = _tiny_vlm()
    model.constrained_decoding = constrained
    batch = _batch(model.tokenizer, [name] * 4)
    # prompts of different lengths force left padding: cut one row's prompt short
    batch["prompt_mask"][1, -3:] = 0
    args = (batch["images"], batch["prompt_ids"], batch["prompt_mask"])
    together = model.generate_decoded(*args, max_new_tokens=40, task=name)
    for i, d in enumerate(together):
        keep = batch["prompt_mask"][i] == 1
        alone = model.generate_decoded(batch["images"][i : i + 1], batch["prompt_ids"][i : i + 1][:, keep],
                                       batch["prompt_mask"][i : i + 1][:, keep], max_new_tokens=40, task=name)[0]
        assert (alone.text, alone.ids) == (d.text, d.ids)
        assert alone.logprobs == pytest.approx(d.logprobs, abs=1e-4)
    if constrained:
        assert all(get_task(name).parse(d.text).valid for d in together)


def test_rows_carry_scored_boxes_in_pixels_and_the_no_finding_score(tiny_tokenizer):
    model = _tiny_vlm()
    batch = _batch(model.tokenizer, ["identify"] * 3)
    decoded = model.generate_decoded(batch["images"], batch["prompt_ids"], batch["prompt_mask"], 60, task="identify")
    task, table = get_task("identify"), token_table(model.tokenizer)
    for meta, d in zip(batch["meta"], decoded, strict=True):
        row = scored_row(meta, d, task, table, "label_x_geomean")
        assert [(b["label"], b["box"]) for b in row["prediction_boxes"]] == \
            [(n, [round(v, 2) for v in box]) for n, box in task.predicted_boxes(row)]
        assert all(0 < b["score"] <= 1 for b in row["prediction_boxes"])
        assert 0 < row["no_finding_score"] < 1
    vqa = scored_row(batch["meta"][0], decoded[0], get_task("vqa"), table, "label")
    assert "prediction_boxes" not in vqa and "no_finding_score" not in vqa


def test_constrained_generation_with_llamas_tokenizer_through_the_model(llama_tokenizer_dir):
    model = _tiny_vlm(llama_tokenizer_dir)
    model.constrained_decoding = True
    for name in GRAMMAR_TASKS:
        batch = _batch(model.tokenizer, [name] * 3)
        for d in model.generate_decoded(batch["images"], batch["prompt_ids"], batch["prompt_mask"], 60, task=name):
            assert d.ended and get_task(name).parse(d.text).valid, d.text


def test_vqa_none_is_an_answer_the_grammar_and_the_parser_share():
    text = vqa_answer([], no_finding=False)
    assert text.endswith(f"{NONE}.") and _accepts(vqa_grammar(), text) and get_task("vqa").parse(text).valid
