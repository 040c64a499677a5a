"""The tutor quality question set (bench/tutor_questions.py) and its grading, without a model.

``bench`` is no package (its scripts import each other as top-level modules), so the module is
loaded from its file under the name the runner imports it by, ``tutor_questions``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "tutor_questions.py"
    spec = importlib.util.spec_from_file_location("tutor_questions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tutor_questions", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tq = _load()
Question = tq.Question
QUESTIONS = tq.QUESTIONS
numbers_in = tq.numbers_in
grade = tq.grade

CATEGORIES = {"arithmetic", "algebra", "science", "language", "followup"}
BY_ID = {q.id: q for q in QUESTIONS}


def _has(values: list[float], expected: float) -> bool:
    return any(math.isclose(v, expected, rel_tol=1e-9, abs_tol=1e-9) for v in values)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- The set ----------------------------------------------------------------------------------


def test_ids_are_unique_and_the_set_is_a_tuple() -> None:
    assert isinstance(QUESTIONS, tuple)
    ids = [q.id for q in QUESTIONS]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]


def test_size_languages_and_categories() -> None:
    assert len(QUESTIONS) >= 100
    assert {q.language for q in QUESTIONS} == {"en", "zh"}
    assert {q.category for q in QUESTIONS} == CATEGORIES
    for language in ("en", "zh"):
        assert {q.category for q in QUESTIONS if q.language == language} == CATEGORIES


def test_every_question_is_well_formed() -> None:
    for q in QUESTIONS:
        assert q.language in ("en", "zh"), q.id
        assert q.id.startswith(f"{q.language}-"), q.id
        assert q.category in CATEGORIES, q.id
        assert isinstance(q.turns, tuple) and q.turns, q.id
        assert all(isinstance(t, str) and t.strip() for t in q.turns), q.id
        assert q.number is not None or q.words, f"{q.id} has neither a number nor words"
        assert all(group and all(alt for alt in group) for group in q.words), q.id
        if q.category == "followup":
            assert len(q.turns) >= 2, q.id
        else:
            assert len(q.turns) == 1, q.id


def test_a_numeric_answer_is_not_among_the_numbers_of_its_own_turns() -> None:
    """Otherwise a reply that only repeats the question would pass."""
    for q in QUESTIONS:
        if q.number is None:
            continue
        for turn in q.turns:
            assert not _has(numbers_in(turn), q.number), (q.id, turn)


def test_no_required_word_is_given_away_by_the_question() -> None:
    """No alternative of a word group is in the graded turn (for a question that is no
    follow-up: in any turn; a follow-up may state the fact in an earlier turn on purpose)."""
    for q in QUESTIONS:
        turns = q.turns[-1:] if q.category == "followup" else q.turns
        text = " ".join(turns).casefold()
        for group in q.words:
            for alt in group:
                assert alt.casefold() not in text, (q.id, alt)


@pytest.mark.parametrize("q", QUESTIONS, ids=lambda q: q.id)
def test_a_correct_reply_passes_and_a_wrong_one_fails(q: Question) -> None:
    words = " ".join(group[0] for group in q.words)
    number = "" if q.number is None else _number_text(q.number)
    correct = f"Let me explain. The answer is {number} {words}.".strip()
    assert grade(q, correct), correct
    if q.number is not None:
        wrong = f"Let me explain. The answer is {_number_text(q.number + 1)} {words}."
        assert not grade(q, wrong), wrong
    if q.words:
        assert not grade(q, f"Let me explain. The answer is {number}."), "words missing"
    for bad in q.forbidden:
        assert not grade(q, f"{correct} {bad}"), bad


# --- numbers_in -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7 times 8 is 56.", [7, 8, 56]),
        ("It costs $3.50.", [3.5]),
        ("The total is 1,250 people.", [1250]),
        ("That is 12,345,678.", [12345678]),
        ("Numbers 1,2,3", [1, 2, 3]),
        ("x = -4", [-4]),
        ("x = \u22124", [-4]),
        ("x equals negative 5", [-5]),
        ("10-4 = 6", [10, 4, 6]),
        ("The answer is 3/4.", [0.75, 3, 4]),
        ("-3/4", [-0.75, -3, 4]),
        ("25% of them", [25]),
        ("百分之二十五", [25]),
        ("百分之25", [25]),
        ("四分之三", [0.75, 4, 3]),
        ("答案是５６。", [56]),
        ("5² = 25", [5, 2, 25]),
        ("分别是12，345", [12, 345]),  # a full-width comma separates numbers
    ],
)
def test_numbers_in_exact(text: str, expected: list[float]) -> None:
    assert sorted(numbers_in(text)) == sorted(float(v) for v in expected)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("\\frac{3}{4}", 0.75),
        ("$\\dfrac{5}{8}$", 0.625),
        ("\\frac34", 0.75),
        ("-\\frac{1}{2}", -0.5),
        ("2\\frac{1}{2} hours", 2.5),
        ("2 1/2 hours", 2.5),
        ("1½ cups", 1.5),
        ("¾", 0.75),
        ("1{,}250", 1250),
        ("十二", 12),
        ("五十六", 56),
        ("一百零五", 105),
        ("两千", 2000),
        ("兩千", 2000),
        ("三百五", 350),
        ("一千二百三十四", 1234),
        ("九千九百九十九", 9999),
        ("十", 10),
        ("零", 0),
        ("一万五千", 15000),
        ("3万", 30000),
        ("三点五", 3.5),
        ("负四", -4),
        ("负4", -4),
        ("等于-4", -4),
        ("五千克", 5),
        ("fifty-six", 56),
        ("two hundred and six", 206),
        ("one thousand and eighty-one", 1081),
        ("negative five", -5),
        ("１,２５０", 1250),
    ],
)
def test_numbers_in_reads(text: str, value: float) -> None:
    assert _has(numbers_in(text), value), numbers_in(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10-4", -4),  # a subtraction, not a negative number
        ("1.2.3", 2.3),
        ("1,2345", 12345),
        ("5/12/2024", 5 / 12),  # a date, not a fraction
        ("百分之二十五", 100),  # the 百 of 百分之 is no number of its own
        ("The answer is 5.", 0.5),
        ("someone is done", 1),  # "one" only as a word of its own
        ("5²", 52),
    ],
)
def test_numbers_in_does_not_read(text: str, value: float) -> None:
    assert not _has(numbers_in(text), value), numbers_in(text)


def test_numbers_in_empty() -> None:
    assert numbers_in("") == []
    assert numbers_in("No numbers here.") == []


# --- grade ------------------------------------------------------------------------------------


def _q(**fields: object) -> Question:
    defaults: dict[str, object] = {
        "id": "t-1",
        "language": "en",
        "category": "arithmetic",
        "turns": ("?",),
    }
    return Question(**{**defaults, **fields})


def test_grade_numbers() -> None:
    seven_eights = _q(number=56)
    assert grade(seven_eights, "7 times 8 is 56.")
    assert grade(seven_eights, "7 × 8 = **56**")
    assert grade(seven_eights, "The answer is fifty-six.")
    assert not grade(seven_eights, "7 times 8 is 54")
    assert not grade(seven_eights, "7 times 8 is 560")
    assert not grade(seven_eights, "")
    assert not grade(seven_eights, "   \n")

    zh = _q(language="zh", number=56)
    assert grade(zh, "七乘以八等于五十六")
    assert grade(zh, "7×8=56")
    assert grade(zh, "答案是５６。")
    assert not grade(zh, "七乘以八等于五十四")

    assert grade(_q(number=0.75), "1/2 + 1/4 = 3/4")
    assert grade(_q(number=0.75), "It is 0.75.")
    assert grade(_q(number=0.75), "$\\frac{3}{4}$")
    assert grade(_q(number=1250), "1,250")
    assert grade(_q(number=-5), "x = −5")
    assert not grade(_q(number=-5), "x = 5")
    assert grade(_q(number=25), "百分之二十五")
    assert grade(_q(number=25), "25%")
    assert grade(_q(number=7.5), "He spends $7.50.")
    # Tolerance: relative 1e-4.
    assert grade(_q(number=0.625), "0.62500001")
    assert not grade(_q(number=0.625), "0.63")


def test_grade_words_and_forbidden() -> None:
    q = _q(category="science", words=(("carbon dioxide", "co2"),))
    assert grade(q, "Plants take in Carbon Dioxide.")
    assert grade(q, "They take in CO₂ from the air.")  # NFKC: a subscript 2 is a 2
    assert not grade(q, "Plants take in oxygen.")

    states = _q(category="science", words=(("solid",), ("liquid",), ("gas",)))
    assert grade(states, "Solid, liquid and\ngas.")
    assert not grade(states, "Solid and liquid.")

    bat = _q(category="science", words=(("mammal",),), forbidden=("not a mammal",))
    assert grade(bat, "Bats are mammals.")
    assert not grade(bat, "A bat is not a mammal, it is a bird.")
    assert not grade(bat, "A bat is NOT A MAMMAL.")

    zh = _q(language="zh", category="science", words=(("氧气", "氧氣"),))
    assert grade(zh, "植物会放出氧气。")
    assert grade(zh, "植物會放出氧氣。")
    assert not grade(zh, "植物会放出二氧化碳。")

    both = _q(number=26, words=(("cm",),))
    assert grade(both, "The perimeter is 26 cm.")
    assert not grade(both, "The perimeter is 26.")
    assert not grade(both, "The perimeter is 24 cm.")


def test_grade_on_questions_of_the_set() -> None:
    assert grade(BY_ID["zh-arith-01"], "七乘以八等于五十六。")
    assert not grade(BY_ID["zh-arith-01"], "七乘以八等于五十四。")
    assert grade(BY_ID["en-arith-01"], "7 × 8 = 56")
    assert not grade(BY_ID["en-arith-01"], "7 times 8 is 54")
    assert grade(BY_ID["en-follow-01"], "Double 42 is 84.")
    assert not grade(BY_ID["en-follow-01"], "That is 42.")
    assert grade(BY_ID["en-follow-03"], "The closest planet to the Sun is Mercury.")
    assert not grade(BY_ID["en-follow-03"], "It is Venus.")
    assert grade(BY_ID["en-follow-10"], "5/8 of the pizza is left.")
    assert grade(BY_ID["zh-arith-07"], "0.75 = 75%")
    assert grade(BY_ID["zh-alg-01"], "x = 15 − 7 = 8")
    assert grade(BY_ID["zh-sci-05"], "水在0摄氏度时结冰。")
    assert grade(BY_ID["zh-lang-03"], "“快乐”的反义词是“悲伤”。")
    assert not grade(BY_ID["zh-lang-03"], "“快乐”的反义词是“高兴”。")
    assert grade(BY_ID["en-alg-13"], "Subtract 8 from both sides: x = 3 − 8 = −5.")
    assert not grade(BY_ID["en-alg-13"], "x = 5")
    assert grade(BY_ID["en-sci-13"], "Bats are mammals, the only ones that can truly fly.")
    assert not grade(BY_ID["en-sci-13"], "Bats are not mammals; they are birds.")
