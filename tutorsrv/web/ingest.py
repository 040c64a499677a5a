"""Turning an uploaded file into searchable chunks: extract sections, then split them.

Extraction keeps the document's own structure (headings, paragraphs) because chunks that
follow it retrieve better than fixed windows: a passage about one topic stays together, and
its heading travels with it as context. Everything here is plain, blocking CPU work; callers
run it in a worker thread.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser

# What we accept, by extension; the browser's content type is only a hint.
FILE_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}


class UnreadableFile(ValueError):
    """The file is not what its name says, or has no text; the message says which."""


@dataclass
class Section:
    heading: str
    paragraphs: list[str]


@dataclass
class Chunk:
    ordinal: int
    heading: str
    content: str


def file_type(filename: str) -> str | None:
    for ext, kind in FILE_TYPES.items():
        if filename.lower().endswith(ext):
            return kind
    return None


def extract(filename: str, data: bytes) -> list[Section]:
    kind = file_type(filename)
    if kind == "application/pdf":
        sections = _pdf(data)
    else:
        text = decode_text(data)
        if kind == "text/html":
            sections = _html(text)
        elif kind == "text/markdown":
            sections = _markdown(text)
        else:
            sections = [Section("", _paragraphs(text))]
    sections = [s for s in sections if s.paragraphs]
    if not sections:
        raise UnreadableFile("the file contains no text")
    return sections


def check_pdf(data: bytes) -> int:
    """Open a PDF enough to know it is one (fast, before accepting an upload); page count."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        return len(reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as e:
        raise UnreadableFile(f"not a readable PDF ({type(e).__name__})") from None


def decode_text(data: bytes) -> str:
    if b"\x00" in data:
        raise UnreadableFile("binary data in a text file")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UnreadableFile("the text is neither UTF-8 nor Windows-1252")


def _paragraphs(text: str) -> list[str]:
    parts = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return [" ".join(p.split()) for p in parts if p.strip()]


def atx_heading(line: str) -> str | None:
    """The text of a Markdown heading line (1-6 ``#``, whitespace, the title, optional
    closing ``#``s), or None. Plain string operations, linear in the line's length: the regex
    this replaces (``^#{1,6}\\s+(.*?)\\s*#*\\s*$``) backtracked in cubic time on a line of
    spaces, and held the interpreter for minutes on one 10 KB line."""
    level = len(line) - len(line.lstrip("#"))
    if not 1 <= level <= 6 or len(line) == level or not line[level].isspace():
        return None
    return line[level:].strip().rstrip("#").rstrip()


def _markdown(text: str) -> list[Section]:
    sections: list[Section] = []
    heading, lines = "", []
    fence = ""  # inside a fenced code block, "# ..." is code, not a heading
    for line in text.replace("\r\n", "\n").split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = "" if fence == marker else (fence or marker)
        title = None if fence else atx_heading(line)
        if title is not None:
            sections.append(Section(heading, _paragraphs("\n".join(lines))))
            heading, lines = title, []
        else:
            lines.append(line)
    sections.append(Section(heading, _paragraphs("\n".join(lines))))
    return sections


class _HTMLSections(HTMLParser):
    BLOCKS = frozenset(
        {
            "p", "div", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "td", "th", "br",
            "section", "article", "main", "header", "footer", "aside", "figure", "figcaption",
            "blockquote", "pre", "hr",
        }
    )  # fmt: skip
    HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
    SKIP = frozenset({"script", "style", "head", "nav", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections = [Section("", [])]
        self._buffer: list[str] = []
        self._heading: list[str] | None = None
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in self.HEADINGS:
            self._flush()
            self._heading = []
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.HEADINGS and self._heading is not None:
            title = " ".join("".join(self._heading).split())
            self.sections.append(Section(title, []))
            self._heading = None
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        (self._heading if self._heading is not None else self._buffer).append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._buffer).split())
        if text:
            self.sections[-1].paragraphs.append(text)
        self._buffer = []

    def close(self) -> None:
        super().close()
        self._flush()


def _html(text: str) -> list[Section]:
    parser = _HTMLSections()
    parser.feed(text)
    parser.close()
    return parser.sections


def _pdf(data: bytes) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            sections.append(Section(f"page {number}", _paragraphs(page.extract_text() or "")))
        return sections
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as e:
        raise UnreadableFile(f"not a readable PDF ({type(e).__name__})") from None


def chunk(sections: list[Section], size: int, overlap: int) -> list[Chunk]:
    """Pack paragraphs into chunks of about ``size`` characters without crossing headings.

    A paragraph longer than ``size`` is cut at sentence ends (or hard, as a last resort).
    Consecutive chunks of a section share ``overlap`` characters, so an answer that spans a
    boundary is still found whole in one of them."""
    chunks: list[Chunk] = []
    for section in sections:
        pieces: list[str] = []
        for paragraph in section.paragraphs:
            pieces.extend(_split_long(paragraph, size))
        current = ""
        for piece in pieces:
            if current and len(current) + 1 + len(piece) > size:
                chunks.append(Chunk(len(chunks), section.heading, current))
                tail = _tail(current, overlap)
                current = f"{tail} {piece}".strip() if tail else piece
            else:
                current = f"{current}\n{piece}" if current else piece
        if current:
            chunks.append(Chunk(len(chunks), section.heading, current))
    return chunks


def _split_long(paragraph: str, size: int) -> list[str]:
    """A paragraph as pieces of at most ``size`` characters, in order: cut at sentence ends,
    a sentence longer than ``size`` at word boundaries, a word longer than that anywhere."""
    if len(paragraph) <= size:
        return [paragraph]
    units: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        units.extend(_split_words(sentence, size) if len(sentence) > size else [sentence])
    out, current = [], ""
    for unit in units:
        if current and len(current) + 1 + len(unit) > size:
            out.append(current)
            current = unit
        else:
            current = f"{current} {unit}".strip()
    if current:
        out.append(current)
    return out


def _split_words(sentence: str, size: int) -> list[str]:
    out, current = [], ""
    for word in sentence.split():
        while len(word) > size:  # one "word" longer than a chunk: no better place to cut
            if current:
                out.append(current)
                current = ""
            out.append(word[:size])
            word = word[size:]
        if current and len(current) + 1 + len(word) > size:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    if current:
        out.append(current)
    return out


def _tail(text: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``text``, starting at a word boundary."""
    if overlap <= 0:
        return ""
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < len(tail) - 1 else tail
