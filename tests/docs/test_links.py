"""The repository's own references: links from the README to the docs, paths of docs
pages named in code and configuration, and the docs' page list. (Links between docs
pages are checked by the strict MkDocs build in ``make check``.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.docs.markdown import DOCS, blocks

ROOT = DOCS.parent
DOCS_PATH = re.compile(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# Where code and configuration name docs pages.
SOURCES = ["django_qtasks", "example_project", "bench", "scripts", "tests"]
SOURCE_FILES = ["pyproject.toml", "Makefile", "mkdocs.yml", "CHANGELOG.md", "README.md"]
# Pages already named in code while they are being written, with who writes them. An
# entry must go when its page lands: the test below fails while both exist.
PENDING: dict[str, str] = {}


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading."""
    text = re.sub(r"`|\*|\[|\]\([^)]*\)", "", heading)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: str) -> set[str]:
    source = FENCE.sub("", (DOCS / page).read_text())
    return {slug(h) for h in HEADING.findall(source)}


def references() -> list[tuple[str, str, str | None]]:
    """(where, page, anchor) for every ``docs/<page>.md`` named in the repository."""
    files = [ROOT / name for name in SOURCE_FILES]
    for folder in SOURCES:
        files += [
            p for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in {".py", ".sh", ".md", ".html", ".toml", ".txt"}
        ]
    found = []
    for path in files:
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in DOCS_PATH.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{number}", match[1], match[2]))
    return found


def test_every_docs_page_named_in_the_repository_exists() -> None:
    refs = references()
    assert len(refs) > 20, "the search found too few references to be looking right"
    broken = [
        f"{where}: docs/{page}" + (f"#{anchor}" if anchor else "")
        for where, page, anchor in refs
        if page not in PENDING
        and (not (DOCS / page).exists() or (anchor and anchor not in anchors(page)))
    ]
    assert not broken, "references to docs that do not exist:\n" + "\n".join(broken)


def test_pending_pages_are_still_pending() -> None:
    landed = [page for page in PENDING if (DOCS / page).exists()]
    assert not landed, f"{landed} exist now: remove them from PENDING"


def test_the_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    broken = []
    for target in MD_LINK.findall(readme):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        missing_anchor = anchor and path.startswith("docs/") and anchor not in anchors(path[5:])
        if not (ROOT / path).exists() or missing_anchor:
            broken.append(target)
    assert not broken, broken


def test_the_readme_lists_every_page_of_the_docs() -> None:
    nav = re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE)
    assert len(nav) == len(list(DOCS.glob("*.md"))), "mkdocs.yml's nav lists every page"
    readme = (ROOT / "README.md").read_text()
    missing = [page for page in nav if f"(docs/{page})" not in readme]
    assert not missing, f"README.md's page list leaves out {missing}"


def test_the_license_the_package_names_is_there() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_python_blocks_are_python(page: str) -> None:
    """Every ```python block of the docs parses (a shell session is ```pycon)."""
    for block in blocks(page):
        if block.lang == "python":
            try:
                ast.parse(block.text)
            except SyntaxError as exc:
                pytest.fail(f"{block.where}: {exc}")
