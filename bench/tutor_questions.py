"""A fixed, automatically graded question set for small LLMs acting as a school tutor.

The runner (``bench/tutor_quality.py``) imports ``QUESTIONS``, ``Question``, ``grade`` and
``numbers_in`` from here (``from tutor_questions import ...``, as the benchmark scripts import
``common``). This module only uses the standard library.

Composition
-----------
School-level questions, each with one clear correct answer. Ids are ``<language>-<kind>-<nn>``
(``arith``, ``alg``, ``sci``, ``lang``, ``follow``), e.g. ``en-arith-01`` or ``zh-sci-03``.

- English (``en``): arithmetic (times tables, long multiplication and division, fractions,
  decimals, percentages, money and time word problems), algebra (linear equations, evaluating
  expressions, simple systems, squares and roots), science (biology, physics, chemistry, earth
  science), language (irregular past tenses, plurals, antonyms, a synonym, parts of speech,
  spelling) and follow-ups (several turns; the last turn refers back to the earlier ones).
- Chinese (``zh``, in simplified Chinese as a student would write): arithmetic and algebra,
  science, language (antonyms, measure words, an idiom) and follow-ups.

Run ``python bench/tutor_questions.py`` for the counts per language and category.

Grading (``grade``)
-------------------
The model answers every turn in order; only the reply to the last turn is graded:

- an empty (or whitespace-only) reply is wrong;
- ``number``: one of ``numbers_in(reply)`` must equal it (absolute tolerance 1e-6 or relative
  1e-4). ``numbers_in`` reads integers, decimals, thousands separators ("1,250"), signs ("-4",
  also with U+2212, "negative 4", "负4"), fractions ("3/4" gives 0.75 as well as 3 and 4;
  "2 1/2", "½", "\\frac{3}{4}", "四分之三"), percentages ("25%" and "百分之二十五" give 25),
  Chinese numerals ("五十六", "一百零五", "两千", "三点五", also 万/亿), English number words
  ("fifty-six", "two hundred and six") and full-width digits (via NFKC);
- ``words``: every group must match, and a group matches when any of its alternatives is a
  substring of the reply (after NFKC, case folding and collapsing whitespace);
- ``forbidden``: none of these substrings may appear (same normalisation).

Known leniency: "contains the number" also accepts a reply that states other numbers besides
(a wrong final answer next to a correct intermediate step, a hedge listing two answers, the
"3" and "4" inside "3/4", the "一" in "一个"). No numeric answer appears among the numbers of
its question's own turns, so repeating the question is not enough. Word groups are plain
substrings: "went" is also inside "twenty", and a reply that names the right word while
rejecting it ("it is not X") passes unless a ``forbidden`` phrase catches that; ``forbidden``
is used only for such negations, which a correct answer would not contain. Questions are
phrased so that no alternative of a word group appears in the question's (last) turn.
"""

from __future__ import annotations

import math
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Literal

CATEGORIES = ("arithmetic", "algebra", "science", "language", "followup")


@dataclass(frozen=True)
class Question:
    id: str
    language: Literal["en", "zh"]
    # One of CATEGORIES.
    category: str
    # Student messages in order; the model answers each, only the reply to the last is graded.
    turns: tuple[str, ...]
    # Numeric answer that must appear in the graded reply.
    number: float | None = None
    # Every group must match; a group matches if any of its alternatives appears.
    words: tuple[tuple[str, ...], ...] = ()
    # None of these may appear.
    forbidden: tuple[str, ...] = ()


# --- Numbers in a reply -----------------------------------------------------------------------

_SUPERSCRIPTS = str.maketrans({c: "^" + d for c, d in zip("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789", strict=True)})
_VULGAR_FRACTIONS = "¼½¾⅐⅑⅒⅓⅔⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞"

# A minus sign: not right after a letter, digit or closing bracket ("10-4" is a subtraction).
_SIGN = r"(?<![0-9A-Za-z)\]}])-"
_ARABIC = re.compile(
    rf"(?P<sign>{_SIGN}|[负負]|\bnegative\s+)?"
    r"(?<![0-9.])(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?P<dec>\.[0-9]+)?",
    re.IGNORECASE,
)
_FRACTION = re.compile(
    rf"(?P<sign>{_SIGN})?(?<![0-9./])(?P<num>[0-9]+)/(?P<den>[0-9]+)(?![0-9]|[./][0-9])"
)
_MIXED = re.compile(
    rf"(?P<sign>{_SIGN})?(?<![0-9./,])(?P<whole>[0-9]+)\s+"
    r"(?P<num>[0-9]+)/(?P<den>[0-9]+)(?![0-9]|[./][0-9])"
)
_LATEX_NUM = r"-?[0-9]+(?:\.[0-9]+)?"
_LATEX_FRAC = re.compile(
    rf"(?P<sign>{_SIGN}\s*)?(?:(?<![0-9.])(?P<whole>[0-9]+)\s*)?\\[dt]?frac\s*"
    rf"(?:\{{\s*(?P<num>{_LATEX_NUM})\s*\}}|(?P<num1>[0-9]))\s*"
    rf"(?:\{{\s*(?P<den>{_LATEX_NUM})\s*\}}|(?P<den1>[0-9]))"
)
_LATEX_THOUSANDS = re.compile(r"(?<=[0-9])(?:\{,\}|\\,)(?=[0-9]{3})")

_CN_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "兩": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000}
_CN_BIG = {"万": 10**4, "萬": 10**4, "亿": 10**8, "億": 10**8}
_CN_CHARS = "".join([*_CN_DIGITS, *_CN_UNITS, *_CN_BIG])
_CN_PLAIN_DIGITS = "零〇一二三四五六七八九"
_CN_NUMBER = re.compile(
    rf"(?P<sign>[负負])?(?P<int>[{_CN_CHARS}]+)(?:[点點](?P<dec>[{_CN_PLAIN_DIGITS}]+))?"
)
# "X分之Y" is Y/X; "百分之Y" is Y percent (the value Y).
_CN_FRACTION = re.compile(
    rf"(?P<den>[{_CN_CHARS}]+|[0-9]+)分之(?P<num>[{_CN_CHARS}]+|[0-9]+(?:\.[0-9]+)?)"
)
_ARABIC_BIG = re.compile(r"(?<![0-9.])(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<big>[万萬亿億])")

_EN_SMALL = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_EN_TENS = {
    word: 10 * value
    for value, word in enumerate(
        "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2
    )
}
_EN_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6}
_EN_WORD = "|".join(sorted([*_EN_SMALL, *_EN_TENS, *_EN_SCALES], key=len, reverse=True))
_EN_WORD_RE = re.compile(rf"\b(?:{_EN_WORD})\b", re.IGNORECASE)
_EN_RUN = re.compile(
    rf"(?P<neg>\bnegative\s+)?\b(?:{_EN_WORD})\b(?:(?:\s+and\s+|[\s-]+)(?:{_EN_WORD})\b)*",
    re.IGNORECASE,
)


def _normalise_for_numbers(text: str) -> str:
    text = text.replace("\uff0c", ", ")  # a full-width comma separates, it is no "1,250"
    text = text.translate(_SUPERSCRIPTS)  # "5²" is 5^2, not 52 (NFKC would glue them)
    for fraction in _VULGAR_FRACTIONS:
        text = text.replace(fraction, " " + fraction)  # "1½" -> "1 1/2", a mixed number
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2044", "/").replace("\u2212", "-")
    return _LATEX_THOUSANDS.sub(",", text)


def _cn_int(run: str) -> int:
    """The value of a run of Chinese numerals: "五十六" 56, "一百零五" 105, "三百五" 350."""
    if not any(c in _CN_UNITS or c in _CN_BIG for c in run):
        return int("".join(str(_CN_DIGITS[c]) for c in run))  # read digit by digit: "二〇二四"
    total = 0
    section = 0
    digit: int | None = None
    last_unit = 1
    after_unit = False
    digit_after_unit = False
    for c in run:
        if c in _CN_DIGITS:
            digit = _CN_DIGITS[c]
            digit_after_unit = after_unit and digit != 0
            after_unit = False
        elif c in _CN_UNITS:
            last_unit = _CN_UNITS[c]
            section += (1 if digit is None else digit) * last_unit  # a bare "十" is 10
            digit = None
            after_unit = True
        else:
            big = _CN_BIG[c]
            value = section + (digit or 0)
            if big >= 10**8:
                total = ((total + value) or 1) * big
            else:
                total += (value or 1) * big
            section, digit, last_unit, after_unit = 0, None, big, True
    if digit is not None:
        # A digit right after a unit stands for the next lower unit: "三百五" is 350.
        section += digit * (max(1, last_unit // 10) if digit_after_unit else 1)
    return total + section


def _en_values(tokens: list[str]) -> list[int]:
    """Numbers from consecutive English number words: ["fifty", "six"] -> [56]."""
    values: list[int] = []
    total = current = 0
    last = ""  # "", "small", "tens", "hundred" or "scale"

    def flush() -> None:
        nonlocal total, current, last
        if last:
            values.append(total + current)
        total = current = 0
        last = ""

    for token in (t.lower() for t in tokens):
        if token in _EN_SMALL:
            value = _EN_SMALL[token]
            fits = (
                last == ""
                or (last == "tens" and 1 <= value <= 9)
                or (last in ("hundred", "scale") and value != 0)
            )
            if not fits:
                flush()
            current += value
            last = "small"
        elif token in _EN_TENS:
            if last not in ("", "hundred", "scale"):
                flush()
            current += _EN_TENS[token]
            last = "tens"
        elif token == "hundred":
            if last in ("small", "tens") and 0 < current < 100:
                current *= 100  # "two hundred", also "twenty-five hundred"
            else:
                flush()
                current = 100
            last = "hundred"
        else:
            scale = _EN_SCALES[token]
            if last in ("", "scale"):
                flush()
                current = 1
            total += (current or 1) * scale
            current = 0
            last = "scale"
    flush()
    return values


def numbers_in(text: str) -> list[float]:
    """Every number a reply states, in order of appearance (see the module docstring)."""
    text = _normalise_for_numbers(text)
    found: list[tuple[int, float]] = []

    def add(position: int, value: float) -> None:
        found.append((position, float(value)))

    for m in _ARABIC.finditer(text):
        value = float(m["int"].replace(",", "") + (m["dec"] or ""))
        add(m.start(), -value if m["sign"] else value)
    for m in _FRACTION.finditer(text):
        if int(m["den"]):
            value = int(m["num"]) / int(m["den"])
            add(m.start(), -value if m["sign"] else value)
    for m in _MIXED.finditer(text):
        num, den = int(m["num"]), int(m["den"])
        if 0 < num < den:
            value = int(m["whole"]) + num / den
            add(m.start(), -value if m["sign"] else value)
    for m in _LATEX_FRAC.finditer(text):
        num, den = float(m["num"] or m["num1"]), float(m["den"] or m["den1"])
        if den:
            sign = -1.0 if m["sign"] else 1.0
            if m["whole"] is not None:
                add(m.start(), num / den)
                if 0 < num < den:
                    add(m.start(), sign * (int(m["whole"]) + num / den))
            else:
                add(m.start(), sign * num / den)
    for m in _ARABIC_BIG.finditer(text):
        add(m.start(), float(m["n"]) * _CN_BIG[m["big"]])

    # Chinese: fractions and percentages first; the "百" of "百分之" is no 100 of its own.
    masked = list(text)
    for m in _CN_FRACTION.finditer(text):
        den, num = m["den"], m["num"]
        if den == "百":
            masked[m.start("den")] = " "  # the percentage is Y itself, read below
            continue
        den_value = int(den) if den.isdigit() else _cn_int(den)
        if den_value:
            add(m.start(), (float(num) if num[0].isdigit() else _cn_int(num)) / den_value)
    masked_text = "".join(masked)
    for m in _CN_NUMBER.finditer(masked_text):
        run = m["int"]
        value = float(_cn_int(run))
        if m["dec"]:
            value += float("0." + "".join(str(_CN_DIGITS[c]) for c in m["dec"]))
        add(m.start(), -value if m["sign"] else value)
        # "五千克" is 5 kg (千克, 千米, 千瓦 are units), so 5 counts as well as 5000.
        if len(run) > 1 and run.endswith("千") and not m["dec"]:
            if masked_text[m.end() : m.end() + 1] in ("克", "米", "瓦"):
                add(m.start(), (-1 if m["sign"] else 1) * _cn_int(run[:-1]))

    for m in _EN_RUN.finditer(text):
        values = _en_values(_EN_WORD_RE.findall(m.group()))
        if m["neg"] and values:
            values[0] = -values[0]
        for value in values:
            add(m.start(), value)

    found.sort(key=lambda item: item[0])
    return [value for _, value in found]


# --- Grading ----------------------------------------------------------------------------------


def _normalise_for_words(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())


def _same_number(value: float, expected: float) -> bool:
    return math.isclose(value, expected, rel_tol=1e-4, abs_tol=1e-6)


def grade(question: Question, reply: str) -> bool:
    """Whether ``reply`` (to the question's last turn) is correct; see the module docstring."""
    if not reply or not reply.strip():
        return False
    if question.number is not None and not any(
        _same_number(value, question.number) for value in numbers_in(reply)
    ):
        return False
    text = _normalise_for_words(reply)
    for group in question.words:
        if not any(_normalise_for_words(alt) in text for alt in group):
            return False
    return not any(_normalise_for_words(bad) in text for bad in question.forbidden)


# --- The questions ----------------------------------------------------------------------------

_LANGUAGES: dict[str, Literal["en", "zh"]] = {"en": "en", "zh": "zh"}
_KINDS = {
    "arith": "arithmetic",
    "alg": "algebra",
    "sci": "science",
    "lang": "language",
    "follow": "followup",
}


def _q(
    qid: str,
    turns: str | tuple[str, ...],
    *,
    number: float | None = None,
    words: tuple[tuple[str, ...], ...] = (),
    forbidden: tuple[str, ...] = (),
) -> Question:
    """A question whose language and category come from its id ("en-arith-01")."""
    language, kind, _ = qid.split("-")
    return Question(
        id=qid,
        language=_LANGUAGES[language],
        category=_KINDS[kind],
        turns=(turns,) if isinstance(turns, str) else turns,
        number=number,
        words=words,
        forbidden=forbidden,
    )


_EN_ARITHMETIC = (
    _q("en-arith-01", "What is 7 times 8?", number=56),
    _q("en-arith-02", "What is 9 times 6?", number=54),
    _q("en-arith-03", "What is 12 times 12?", number=144),
    _q("en-arith-04", "Can you work out 23 times 47 using long multiplication?", number=1081),
    _q("en-arith-05", "What is 125 × 8?", number=1000),
    _q("en-arith-06", "What is 304 multiplied by 26?", number=7904),
    _q("en-arith-07", "What is 132 divided by 11?", number=12),
    _q("en-arith-08", "What is 91 divided by 7?", number=13),
    _q("en-arith-09", "What is 1,000 divided by 8?", number=125),
    _q("en-arith-10", "Use long division to find 4,368 divided by 12.", number=364),
    _q("en-arith-11", "What is 487 plus 356?", number=843),
    _q("en-arith-12", "What is 1,000 minus 367?", number=633),
    _q("en-arith-13", "What is the remainder when 47 is divided by 5?", number=2),
    _q("en-arith-14", "What is 1/2 plus 1/4? Give the answer as a fraction.", number=0.75),
    _q("en-arith-15", "What is 2/3 of 27?", number=18),
    _q("en-arith-16", "Write three fifths as a decimal.", number=0.6),
    _q("en-arith-17", "What is 1/3 plus 1/6? Simplify your answer.", number=0.5),
    _q("en-arith-18", "What is 3/4 multiplied by 2/5, as a simplified fraction?", number=0.3),
    _q("en-arith-19", "What is 3.6 plus 2.75?", number=6.35),
    _q("en-arith-20", "What is 0.4 times 0.3?", number=0.12),
    _q("en-arith-21", "What is 7.5 divided by 0.5?", number=15),
    _q("en-arith-22", "What is 25% of 80?", number=20),
    _q("en-arith-23", "What is 15% of 200?", number=30),
    _q(
        "en-arith-24",
        "A shirt costs $40 and is on sale for 20% off. What is the sale price in dollars?",
        number=32,
    ),
    _q("en-arith-25", "What percentage is 18 out of 24?", number=75),
    _q(
        "en-arith-26",
        "Sam buys 3 notebooks at $2.50 each. How much does he spend in total, in dollars?",
        number=7.5,
    ),
    _q(
        "en-arith-27",
        "Maria pays for a $6.75 sandwich with a $10 bill. How much change should she get?",
        number=3.25,
    ),
    _q(
        "en-arith-28",
        "A film starts at 2:15 pm and ends at 4:05 pm. How long is it? Give the answer in minutes.",
        number=110,
    ),
    _q("en-arith-29", "How many minutes are there in 3.5 hours?", number=210),
    _q(
        "en-arith-30",
        "Tom reads 12 pages every day. How many pages does he read in 3 weeks?",
        number=252,
    ),
    _q("en-arith-31", "What is 3 + 4 × 5? Remember the order of operations.", number=23),
    _q("en-arith-32", "What is the average (mean) of 4, 8, 10 and 14?", number=9),
    _q("en-arith-33", "Round 3,847 to the nearest hundred.", number=3800),
)

_EN_ALGEBRA = (
    _q("en-alg-01", "Solve for x: 3x + 7 = 22", number=5),
    _q("en-alg-02", "Solve for x: 2x − 9 = 11", number=10),
    _q("en-alg-03", "Solve for y: 5y = 45", number=9),
    _q("en-alg-04", "Solve for x: x/4 = 7", number=28),
    _q("en-alg-05", "Solve for x: 4x + 3 = 2x + 15", number=6),
    _q("en-alg-06", "If x = 3, what is the value of 2x² + 1?", number=19),
    _q("en-alg-07", "Evaluate 5a − 2b when a = 4 and b = 3.", number=14),
    _q("en-alg-08", "Solve the system x + y = 10 and x − y = 4. What is x?", number=7),
    _q("en-alg-09", "Solve the system x + y = 12 and x − y = 2. What is y?", number=5),
    _q("en-alg-10", "What is the square root of 169?", number=13),
    _q("en-alg-11", "What is 15 squared?", number=225),
    _q("en-alg-12", "What is 2 to the power of 6?", number=64),
    _q("en-alg-13", "Solve for x: x + 8 = 3", number=-5),
    _q("en-alg-14", "Solve for x: 3(x − 2) = 15", number=7),
)

_NOT_MAMMAL = (
    "not a mammal",
    "not mammal",
    "isn't a mammal",
    "aren't mammals",
    "are not mammals",
)

_EN_SCIENCE = (
    _q(
        "en-sci-01",
        "What gas do plants take in from the air to make their food?",
        words=(("carbon dioxide", "co2"),),
    ),
    _q(
        "en-sci-02",
        "What is the process called in which green plants use sunlight, water and carbon "
        "dioxide to make their own food?",
        words=(("photosynthesis", "photosynthetic"),),
    ),
    _q(
        "en-sci-03",
        "Which gas do plants give off during photosynthesis?",
        words=(("oxygen",),),
    ),
    _q("en-sci-04", "What is the chemical formula for water?", words=(("h2o",),)),
    _q("en-sci-05", "Which element has the chemical symbol Na?", words=(("sodium",),)),
    _q(
        "en-sci-06",
        "What force pulls objects toward the ground when you drop them?",
        words=(("gravity", "gravitation"),),
    ),
    _q("en-sci-07", "What is the largest planet in our solar system?", words=(("jupiter",),)),
    _q("en-sci-08", "Which organ pumps blood around the human body?", words=(("heart",),)),
    _q(
        "en-sci-09",
        "What are the three common states of matter?",
        words=(("solid",), ("liquid",), ("gas",)),
    ),
    _q(
        "en-sci-10",
        "What is the small, dense centre of an atom called?",
        words=(("nucleus", "nuclei"),),
    ),
    _q(
        "en-sci-11",
        "What type of rock forms when lava or magma cools and becomes solid?",
        words=(("igneous",),),
    ),
    _q(
        "en-sci-12",
        "What do we call an animal that eats only plants?",
        words=(("herbivor",),),
    ),
    _q(
        "en-sci-13",
        "Bats can fly. Which class of animals do bats belong to?",
        words=(("mammal",),),
        forbidden=_NOT_MAMMAL,
    ),
    _q(
        "en-sci-14",
        "Which layer of gas high in the atmosphere protects us from the Sun's ultraviolet rays?",
        words=(("ozone",),),
    ),
    _q("en-sci-15", "How many bones are there in the adult human body?", number=206),
    _q(
        "en-sci-16",
        "What kind of energy does an object have because it is moving?",
        words=(("kinetic",),),
    ),
)

_EN_LANGUAGE = (
    _q("en-lang-01", "What is the past tense of the verb 'go'?", words=(("went",),)),
    _q("en-lang-02", "What is the past tense of the verb 'swim'?", words=(("swam",),)),
    _q("en-lang-03", "What is the plural of 'mouse' (the animal)?", words=(("mice",),)),
    _q("en-lang-04", "What is the plural of 'child'?", words=(("children",),)),
    _q("en-lang-05", "What is the plural of 'tooth'?", words=(("teeth",),)),
    _q("en-lang-06", "What is the opposite of 'maximum'?", words=(("minimum",),)),
    _q("en-lang-07", "What is the opposite of 'asleep'?", words=(("awake",),)),
    _q(
        "en-lang-08",
        "Give a synonym of 'quick' that starts with the letter f.",
        words=(("fast",),),
    ),
    _q(
        "en-lang-09",
        "In the sentence 'The dog ran quickly', what part of speech is 'quickly'?",
        words=(("adverb",),),
    ),
    _q(
        "en-lang-10",
        "In the sentence 'She sang a beautiful song', what part of speech is 'beautiful'?",
        words=(("adjective",),),
    ),
    _q(
        "en-lang-11",
        "Many students write 'recieve'. How is that word spelled correctly?",
        words=(("receive",),),
    ),
    _q("en-lang-12", "Fill in the gap: good, ___, best.", words=(("better",),)),
)

_EN_FOLLOWUP = (
    _q("en-follow-01", ("What is 15 plus 27?", "Now double that."), number=84),
    _q("en-follow-02", ("My sister is 12.", "How old will she be in 5 years?"), number=17),
    _q(
        "en-follow-03",
        ("Let's talk about the planet closest to the Sun.", "What is its name?"),
        words=(("mercury",),),
    ),
    _q(
        "en-follow-04",
        ("I have 24 apples.", "If I give away a quarter of them, how many do I have left?"),
        number=18,
    ),
    _q(
        "en-follow-05",
        (
            "A rectangle is 8 cm long and 5 cm wide.",
            "What is its area?",
            "And what is its perimeter?",
        ),
        number=26,
    ),
    _q(
        "en-follow-06",
        ("My name is Priya and I am learning about volcanoes.", "Can you remind me of my name?"),
        words=(("priya",),),
    ),
    _q(
        "en-follow-07",
        ("Think of the number 9.", "Multiply it by 4.", "Now subtract 6. What do you get?"),
        number=30,
    ),
    _q(
        "en-follow-08",
        ("I'm reading about the largest mammal on Earth.", "What is that animal called?"),
        words=(("blue whale",),),
    ),
    _q(
        "en-follow-09",
        ("Solve 2x + 4 = 18.", "Now use that value of x to work out 3x − 1."),
        number=20,
    ),
    _q(
        "en-follow-10",
        (
            "A pizza is cut into 8 equal slices and I eat 3 of them.",
            "What fraction of the pizza is left?",
        ),
        number=0.625,
    ),
    _q(
        "en-follow-11",
        (
            "This morning the temperature was −3 °C.",
            "By noon it had risen by 10 degrees. What was the temperature at noon?",
        ),
        number=7,
    ),
)

_ZH_ARITHMETIC = (
    _q("zh-arith-01", "七乘以八等于多少？", number=56),
    _q("zh-arith-02", "三十六除以四等于几？", number=9),
    _q("zh-arith-03", "125加上378等于多少？", number=503),
    _q("zh-arith-04", "24乘以15等于多少？", number=360),
    _q("zh-arith-05", "一本笔记本12元，买5本一共要多少元？", number=60),
    _q("zh-arith-06", "小明有20颗糖，把其中的四分之一送给了妹妹，他还剩几颗？", number=15),
    _q("zh-arith-07", "把0.75写成百分数是多少？", number=75),
    _q("zh-arith-08", "一个长方形长8厘米，宽6厘米，它的面积是多少平方厘米？", number=48),
    _q("zh-arith-09", "2.5小时等于多少分钟？", number=150),
    _q("zh-arith-10", "200的百分之十五是多少？", number=30),
    _q("zh-arith-11", "二分之一加上四分之一等于多少？", number=0.75),
)

_ZH_ALGEBRA = (
    _q("zh-alg-01", "解方程：x + 7 = 15，x等于多少？", number=8),
    _q("zh-alg-02", "解方程：3x = 27，x是多少？", number=9),
    _q("zh-alg-03", "解方程：2x − 5 = 9，求x。", number=7),
    _q("zh-alg-04", "当a = 4时，代数式3a + 2的值是多少？", number=14),
    _q("zh-alg-05", "已知x + y = 10，x − y = 2，求x的值。", number=6),
)

_ZH_SCIENCE = (
    _q(
        "zh-sci-01",
        "植物进行光合作用时会放出什么气体？",
        words=(("氧气", "氧氣", "oxygen"),),
    ),
    _q("zh-sci-02", "水的化学式是什么？", words=(("h2o",),)),
    _q(
        "zh-sci-03",
        "人体中负责把血液输送到全身的器官是什么？",
        words=(("心脏", "心臟"),),
    ),
    _q("zh-sci-04", "太阳系中最大的行星是哪一颗？", words=(("木星",),)),
    _q("zh-sci-05", "在标准大气压下，纯水在多少摄氏度时结冰？", number=0),
    _q("zh-sci-06", "物质从固态变成液态的过程叫什么？", words=(("熔化", "融化"),)),
    _q("zh-sci-07", "地球上面积最大的大洋是哪个？", words=(("太平洋",),)),
    _q(
        "zh-sci-08",
        "把物体往上抛，它总会落回地面，这是因为受到了什么力？",
        words=(("重力", "引力"),),
    ),
)

_ZH_LANGUAGE = (
    _q("zh-lang-01", "“大”的反义词是什么？", words=(("小",),)),
    _q("zh-lang-02", "“高”的反义词是什么？", words=(("矮", "低"),)),
    _q(
        "zh-lang-03",
        "“快乐”的反义词是什么？",
        words=(
            (
                "悲伤",
                "悲傷",
                "难过",
                "難過",
                "伤心",
                "傷心",
                "痛苦",
                "忧伤",
                "憂傷",
                "忧愁",
                "憂愁",
                "不开心",
                "不開心",
                "不高兴",
                "不高興",
            ),
        ),
    ),
    _q("zh-lang-04", "“一（ ）马”的括号里应该填什么量词？", words=(("匹",),)),
    _q("zh-lang-05", "“一（ ）鱼”的括号里应该填什么量词？", words=(("条", "條", "尾"),)),
    _q("zh-lang-06", "成语“画蛇添（ ）”的括号里应该填哪个字？", words=(("足",),)),
)

_ZH_FOLLOWUP = (
    _q("zh-follow-01", ("我有15个苹果。", "吃掉6个以后，还剩几个？"), number=9),
    _q("zh-follow-02", ("我弟弟今年8岁。", "再过7年，他多少岁？"), number=15),
    _q(
        "zh-follow-03",
        ("我们来聊聊离太阳最近的那颗行星。", "它叫什么名字？"),
        words=(("水星",),),
    ),
    _q("zh-follow-04", ("一个正方形的边长是5厘米。", "它的周长是多少厘米？"), number=20),
    _q("zh-follow-05", ("先算一下12乘以3等于多少。", "再把这个结果减去10，得多少？"), number=26),
    _q(
        "zh-follow-06",
        ("我的名字叫李华，我在学习分数。", "你还记得我叫什么名字吗？"),
        words=(("李华", "李華"),),
    ),
)

QUESTIONS: tuple[Question, ...] = (
    *_EN_ARITHMETIC,
    *_EN_ALGEBRA,
    *_EN_SCIENCE,
    *_EN_LANGUAGE,
    *_EN_FOLLOWUP,
    *_ZH_ARITHMETIC,
    *_ZH_ALGEBRA,
    *_ZH_SCIENCE,
    *_ZH_LANGUAGE,
    *_ZH_FOLLOWUP,
)


def main() -> int:
    counts = Counter((q.language, q.category) for q in QUESTIONS)
    for language in ("en", "zh"):
        parts = ", ".join(f"{c} {counts[language, c]}" for c in CATEGORIES)
        print(f"{language}: {sum(counts[language, c] for c in CATEGORIES)} ({parts})")
    print(f"total: {len(QUESTIONS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
