"""Cut a reply, as its tokens arrive, into clauses that can be spoken on their own.

Piper speaks a whole text at once, so the first audio of a reply waits for its first
complete piece of text. Cutting at sentence ends, and at commas, semicolons and colons once
enough words have gathered, gets the first clause to the synthesiser within a few tokens
while each piece stays long enough to sound natural.
"""

from __future__ import annotations

import re

# A sentence end: . ! ? (optionally closed by quotes or brackets) followed by white space.
# Requiring the space means "3.14" and "e.g.x" are not cut, and the cut waits for the token
# after the full stop, which the model produces a few milliseconds later.
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
_SOFT_END = re.compile(r"[,;:—]\s")
_NEWLINE = re.compile(r"\n\s*")
# A list item's number ("2." at the start of a line) is not a sentence of its own.
_LIST_NUMBER = re.compile(r"\s*\d{1,3}[.)]")

# Read aloud, the small models' markdown and maths notation is noise (or worse: "asterisk").
# Every pattern is linear: no nested quantifiers, bounded repetition only.
_LINK = re.compile(r"\[([^\]\n]{1,200})\]\([^)\s]{1,500}\)")
_LIST_MARKER = re.compile(r"^\s*(?:[-+*•]|\d{1,3}[.)])\s+", re.MULTILINE)
_FRACTION = re.compile(r"\\d?frac\s*\{([^{}]{1,40})\}\s*\{([^{}]{1,40})\}")
_SQRT = re.compile(r"\\sqrt\s*\{([^{}]{1,40})\}")
_SPOKEN_SYMBOLS = {
    r"\times": " times ",
    r"\cdot": " times ",
    r"\div": " divided by ",
    r"\pm": " plus or minus ",
    r"\approx": " is about ",
    r"\neq": " is not ",
    r"\leq": " is at most ",
    r"\geq": " is at least ",
    "×": " times ",
    "÷": " divided by ",
    "≈": " is about ",
    "≠": " is not ",
    "≤": " is at most ",
    "≥": " is at least ",
    " = ": " equals ",
}
_MATH_DELIMITERS = re.compile(r"\\[()\[\]]|\$+|\\(?:text|mathrm|mathbf)\b|[{}]")
_CITATIONS_AND_MARKUP = re.compile(r"\[\d+(?:,\s*\d+)*\]|[*_#`>|~]+")
_SPACES = re.compile(r"\s+")


class ClauseSplitter:
    def __init__(
        self, soft_min_chars: int = 40, first_soft_min_chars: int = 12, max_chars: int = 220
    ) -> None:
        # A comma-type break cuts only once the clause has this many characters; the first
        # clause sooner, because the student is waiting for it in silence.
        self.soft_min_chars = soft_min_chars
        self.first_soft_min_chars = min(first_soft_min_chars, soft_min_chars)
        self._cuts = 0
        # With no break at all, cut at the last space before this many characters.
        self.max_chars = max_chars
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        """Add text; return the clauses it completed, in order."""
        self._pending += text
        clauses: list[str] = []
        while (cut := self._next_cut()) is not None:
            clause, self._pending = self._pending[:cut], self._pending[cut:]
            clauses.append(clause)
            self._cuts += 1
        return clauses

    def flush(self) -> list[str]:
        """The reply has ended: whatever is left is the last clause."""
        rest, self._pending = self._pending, ""
        return [rest] if rest.strip() else []

    def _next_cut(self) -> int | None:
        text = self._pending
        soft_min = self.soft_min_chars if self._cuts else self.first_soft_min_chars
        ends = [
            end
            for pattern, min_chars in ((_SENTENCE_END, 1), (_NEWLINE, 1), (_SOFT_END, soft_min))
            if (end := _first_end(pattern, text, min_chars)) is not None
        ]
        if ends:
            return min(ends)
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None


def _first_end(pattern: re.Pattern[str], text: str, min_chars: int) -> int | None:
    """Where the first break of ``pattern`` ends that leaves a clause with words in it and
    at least ``min_chars`` characters."""
    for match in pattern.finditer(text):
        clause = text[: match.start() + 1]
        if pattern is _SENTENCE_END and _LIST_NUMBER.fullmatch(clause):
            continue
        if clause.strip() and len(clause) >= min_chars:
            return match.end()
    return None


def speakable(clause: str) -> str:
    """The clause as it should be read aloud: no markdown (emphasis, headings, list markers,
    links, code), no [1] citations, and the maths notation the models write (LaTeX, the
    times and division signs) in words."""
    text = _LINK.sub(r"\1", clause)
    text = _LIST_MARKER.sub("", text)
    text = _FRACTION.sub(r" \1 over \2 ", text)
    text = _SQRT.sub(r" the square root of \1 ", text)
    for symbol, words in _SPOKEN_SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _MATH_DELIMITERS.sub(" ", text)
    text = _CITATIONS_AND_MARKUP.sub(" ", text)
    return _SPACES.sub(" ", text).strip()
