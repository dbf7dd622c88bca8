"""The code blocks of a docs page, as the docs tests read them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
# An HTML comment on the line right above a fence: invisible on the page, read by the tests.
MARKER = re.compile(r"<!--\s*(.*?)\s*-->\s*\n\Z")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str
    marker: str = ""  # the comment above the fence, e.g. "runs" (see test_examples.py)

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``docs/<page>`` in order (not the indented ones)."""
    source = (DOCS / page).read_text()
    found_blocks = []
    for found in FENCE.finditer(source):
        above = source[source.rfind("\n", 0, max(found.start() - 1, 0)) + 1 : found.start()]
        marker = MARKER.search(above)
        found_blocks.append(
            Block(
                page,
                source.count("\n", 0, found.start()) + 1,
                found.group(1),
                found.group(2),
                marker.group(1) if marker else "",
            )
        )
    return found_blocks
