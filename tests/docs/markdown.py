"""The code blocks of a docs page, as the docs tests read them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``docs/<page>`` in order (not the indented ones)."""
    source = (DOCS / page).read_text()
    return [
        Block(page, source.count("\n", 0, found.start()) + 1, found.group(1), found.group(2))
        for found in FENCE.finditer(source)
    ]
