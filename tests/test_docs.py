"""The repository is self-contained: nothing in it cites notes that live outside it,
and every ``docs/<name>.md`` it mentions exists.

Reads files only (imports no project code). The forbidden strings are built from
parts so that this file does not trip its own check.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SUFFIXES = (".py", ".toml", ".md", ".yml")
SKIPPED = ("docs/screenshots",)
"""Relative paths left out (besides the folders below)."""
SKIPPED_DIRS = frozenset({
    ".venv", ".git",
    # generated or local, ignored by git: caches, builds, local data, secrets
    "__pycache__", ".pytest_cache", ".ruff_cache", ".ctower", "build", "dist", "secrets",
})

FORBIDDEN = tuple(
    "".join(parts) for parts in (
        ("facts", ".md"), ("patterns", ".md"), ("shared", "/notes"), ("/", "work", "/"),
    )
)
"""Notes kept outside the repository: a reader of the repository cannot open them."""
DOMAIN_ELSEWHERE = re.compile(r"(?<!docs/)" + re.escape("domain" + ".md"))
"""The domain page is named only by its path in the repository, ``docs/domain.md``."""
DOC_PATH = re.compile(r"(?<![\w-])docs/([\w.-]+?)\.md\b")


def repository_files() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT)
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in relative.parts):
            continue
        if any(relative.as_posix().startswith(skipped + "/") for skipped in SKIPPED):
            continue
        if path.is_file() and path.suffix in SUFFIXES:
            found.append(path)
    return found


def test_the_scan_finds_the_repository() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in repository_files()}
    assert {"README.md", "pyproject.toml", "docker-compose.yml", "tests/test_docs.py"} <= names


def test_nothing_cites_notes_outside_the_repository() -> None:
    problems = []
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            hits = [word for word in FORBIDDEN if word in line]
            if DOMAIN_ELSEWHERE.search(line):
                hits.append("domain" + ".md without docs/")
            if hits:
                where = path.relative_to(ROOT).as_posix()
                problems.append(f"{where}:{number}: {', '.join(hits)}: {line.strip()[:120]}")
    assert not problems, "cites what is not in the repository:\n" + "\n".join(problems)


def test_every_docs_page_mentioned_exists() -> None:
    missing = []
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in sorted(set(DOC_PATH.findall(text))):
            if not (ROOT / "docs" / f"{name}.md").is_file():
                missing.append(f"{path.relative_to(ROOT).as_posix()}: docs/{name}.md")
    assert not missing, "mentioned but missing:\n" + "\n".join(missing)
