"""Answer parsers: round trips of the answer builders, tolerance, strictness, fuzz."""

import random

import pytest

from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.tasks.identify import NO_LOCAL_FINDINGS, identify_answer, parse_identify
from medgrounder.tasks.parse import Parsed, parse_boxes
from medgrounder.tasks.refer import parse_refer
from medgrounder.tasks.vqa import parse_vqa, vqa_answer


def random_box(rng):
    x1, x2 = sorted(rng.sample(range(101), 2))
    y1, y2 = sorted(rng.sample(range(101), 2))
    return (x1, y1, x2, y2)


def random_findings(rng):
    return [(rng.choice(LOCAL_LABELS), random_box(rng)) for _ in range(rng.randint(0, 6))]


def real_answers(rng, n):
    out = []
    for _ in range(n):
        out.append(identify_answer(random_findings(rng)))
        out.append(vqa_answer(rng.sample(GLOBAL_LABELS, rng.randint(0, 3))))
    return out


@pytest.mark.parametrize("seed", range(50))
def test_identify_round_trip(seed):
    rng = random.Random(seed)
    findings = random_findings(rng)
    p = parse_identify(identify_answer(findings))
    assert p.valid
    assert sorted(p.findings) == sorted(findings)
    assert p.labels == {c for c, _ in findings}


@pytest.mark.parametrize("seed", range(50))
def test_vqa_round_trip(seed):
    rng = random.Random(seed)
    labels = set(rng.sample(GLOBAL_LABELS, rng.randint(1, 4)))
    p = parse_vqa(vqa_answer(labels))
    assert p.valid and p.labels == labels and p.findings == []


def test_empty_vqa_answer_is_no_finding():
    assert parse_vqa(vqa_answer([])).labels == {"No finding"}


def test_boxes_tolerate_spaces_and_refuse_malformed_boxes():
    """Issue 18 item 10: a box outside 0..100 or with swapped corners is not a box of the answer."""
    assert parse_boxes("{< 53 >< 28 > <65><36> }") == [(53, 28, 65, 36)]
    for malformed in ("{<65><36><53><28>}", "{<-4><0><250><100>}", "{<1><2><3><" + "9" * 5000 + ">}",
                      "{<10><20><10><30>}", "{<+1><2><3><4>}", "{<1><2><3>}"):
        assert parse_boxes(malformed) == [], malformed
    assert parse_boxes("{<0><0><100><100>} {<007><2><8><9>}") == [(0, 0, 100, 100), (7, 2, 8, 9)]
    assert parse_boxes(None) == []


@pytest.mark.parametrize("box", ["{<65><36><53><28>}", "{<0><0><101><9>}", "{<5><5><5><9>}"])
def test_issue_18_item_10_malformed_boxes_never_make_an_answer_valid(box):
    identify = parse_identify(f"<p>ILD</p> {box}, <p>Edema</p> {{<1><2><3><4>}}.")
    assert not identify.valid and identify.findings == [("Edema", (1, 2, 3, 4))]
    refer = parse_refer(f"{box}<delim>{{<1><2><3><4>}}")
    assert not refer.valid and refer.findings == [("", (1, 2, 3, 4))]
    assert not parse_refer(box).valid and parse_refer(box).findings == []


def test_identify_tolerance():
    text = (
        "local DISEASES of this chest  radiograph are < p > aortic   enlargement </P>"
        "{< 53 >< 28 > <65><36> } < delim > {<1><2><3><4>} and <p>nodule / mass</p> {<5><6><7><8>}"
    )
    p = parse_identify(text)
    assert p.valid
    assert p.findings == [
        ("Aortic enlargement", (53, 28, 65, 36)),
        ("Aortic enlargement", (1, 2, 3, 4)),
        ("Nodule/Mass", (5, 6, 7, 8)),
    ]
    # No prefix, no period, repeated class.
    p = parse_identify("<p>ILD</p> {<1><2><3><4>}, <p>ild</p> {<5><6><7><8>}")
    assert p.valid and p.labels == {"ILD"} and len(p.findings) == 2


@pytest.mark.parametrize(
    "text",
    [
        NO_LOCAL_FINDINGS,
        "the chest radiograph shows NO findings",
        "No findings.",
        "none",
        "Local diseases of this chest radiograph are none.",
    ],
)
def test_identify_no_findings(text):
    assert parse_identify(text) == Parsed(True, [], set())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Local diseases of this chest radiograph are .",
        "<p>Pneumonia</p> {<1><2><3><4>}.",  # a global label is not a local class
        "<p>Cardiomegaly</p>.",  # phrase without a box
        "<p>Cardiomegaly</p>, <p>ILD</p> {<1><2><3><4>}.",
        "{<1><2><3><4>} <p>ILD</p> {<1><2><3><4>}.",  # orphan box
        "<p>ILD</p> {<1><2><3><4>}<delim>.",  # dangling delimiter
        "<p>ILD</p> {<1><2><3><4>}, <p>Cardiomegaly</p> {<38><49><8",  # truncated
        "Sure! <p>ILD</p> {<1><2><3><4>}.",
        "The radiograph shows cardiomegaly.",
        "no pneumonia",
    ],
)
def test_identify_invalid(text):
    assert not parse_identify(text).valid


def test_identify_invalid_keeps_partial_findings():
    p = parse_identify(
        "<p>Unknown thing</p> {<9><9><19><19>}, <p>ILD</p> {<1><2><3><4>}, <p>Edema</p>"
    )
    assert not p.valid
    assert p.findings == [("ILD", (1, 2, 3, 4))] and p.labels == {"ILD"}


def test_audit_1_pairs_count_whatever_surrounds_them():
    """Every well-formed ``<p>class</p> {box}`` pair (and its ``<delim>`` boxes) counts; text
    between a tag and its box breaks the pair, a box without a tag or delimiter is no pair."""
    p = parse_identify("Sure! Here: <p>ILD</p> {<1><2><3><4>}<delim> {<5><6><7><8>} and more chatter "
                       "<p>Edema</p> looks like {<9><9><19><19>}, {<20><20><30><30>} <p>Nodule/Mass</p>{<1><1><2><2>}")
    assert not p.valid
    assert p.findings == [("ILD", (1, 2, 3, 4)), ("ILD", (5, 6, 7, 8)), ("Nodule/Mass", (1, 1, 2, 2))]


def test_vqa_tolerance_and_aliases():
    p = parse_vqa("global diseases of this chest radiograph are  Lung Tumor and other DISEASES")
    assert p.valid and p.labels == {"Lung tumor", "Other disease"}
    assert parse_vqa("No Finding.").labels == {"No finding"}
    assert parse_vqa("COPD, and Tuberculosis.").labels == {"COPD", "Tuberculosis"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no pneumonia",
        "Global diseases of this chest radiograph are no pneumonia.",
        "Pneumonia, maybe tuberculosis",
        "Global diseases of this chest radiograph are .",
        "<p>Cardiomegaly</p> {<1><2><3><4>}",
    ],
)
def test_vqa_invalid(text):
    assert not parse_vqa(text).valid


def test_vqa_no_substring_matching():
    assert parse_vqa("no pneumonia").labels == set()
    p = parse_vqa("Pneumonia, no tuberculosis")
    assert not p.valid and p.labels == {"Pneumonia"}


def test_refer():
    p = parse_refer("{<1><2><3><4>} <delim>{< 5 ><6><7><8>}.")
    assert p.valid and p.findings == [("", (1, 2, 3, 4)), ("", (5, 6, 7, 8))]
    assert not parse_refer("").valid
    assert not parse_refer("<delim>").valid
    p = parse_refer("the left lung {<1><2><3><4>}")
    assert not p.valid and p.findings == [("", (1, 2, 3, 4))]


@pytest.mark.parametrize("value", [None, 3, b"{<1><2><3><4>}", ["x"], {"a": 1}])
def test_non_str_is_invalid(value):
    for parse in (parse_identify, parse_vqa, parse_refer):
        p = parse(value)
        assert p.valid is False and p.findings == [] and p.labels == set()


ALPHABET = "<>{}/p delim,.;and0123456789-+ \n\tabcXYZ" + "".join(LOCAL_LABELS[:3])


def mangle(rng, text):
    """A random corruption of a real answer."""
    kind = rng.randrange(5)
    if kind == 0:  # truncation
        return text[: rng.randrange(len(text) + 1)]
    if kind == 1:  # shuffle of whitespace tokens
        tokens = text.split()
        rng.shuffle(tokens)
        return " ".join(tokens)
    if kind == 2:  # shuffle of bracket-delimited pieces
        pieces = text.replace("<", "\0<").replace("{", "\0{").split("\0")
        rng.shuffle(pieces)
        return "".join(pieces)
    if kind == 3:  # character edits
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            i = rng.randrange(len(chars) + 1)
            op = rng.randrange(3)
            if op == 0 and i < len(chars):
                del chars[i]
            elif op == 1:
                chars.insert(i, rng.choice(ALPHABET))
            elif i < len(chars):
                chars[i] = rng.choice(ALPHABET)
        return "".join(chars)
    return text * rng.randint(2, 3)


def test_fuzz_never_raises():
    rng = random.Random(1234)
    answers = [*real_answers(rng, 200), NO_LOCAL_FINDINGS]
    texts = []
    for _ in range(2500):
        texts.append(mangle(rng, rng.choice(answers)))
    for _ in range(1500):
        texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 120))))
    for _ in range(300):
        texts.append("".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(0, 40))))
    texts += ["<p>" * 500 + "{<" * 500, "{<1><2><3><" + "9" * 10000 + ">}", "\udc80", "\x00" * 10]
    for text in texts:
        for parse in (parse_identify, parse_vqa, parse_refer):
            p = parse(text)
            assert isinstance(p.valid, bool)
            assert all(isinstance(c, str) and len(b) == 4 for c, b in p.findings)
            assert all(0 <= v <= 100 for _, b in p.findings for v in b)
        assert all(0 <= v <= 100 for b in parse_boxes(text) for v in b)
