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
# Markdown and citation markers the model may write; spoken, they are noise.
_UNSPOKEN = re.compile(r"\[\d+(?:,\s*\d+)*\]|[*_#`>|~]+")
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
        if clause.strip() and len(clause) >= min_chars:
            return match.end()
    return None


def speakable(clause: str) -> str:
    """The clause as it should be read aloud: no markdown, no [1] citations."""
    return _SPACES.sub(" ", _UNSPOKEN.sub(" ", clause)).strip()
