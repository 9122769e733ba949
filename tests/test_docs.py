"""The repository is self-contained: nothing in it cites notes that live outside it,
every ``docs/<name>.md`` it mentions exists, and so does every path the README
and the docs quote. The operator's manual,
``docs/operations.md``, names what the code has: every setting by its variable
and default (so does the README's table), every topic, a runbook for every
``system_*`` alert kind.

The first checks read files only. The forbidden strings are built from parts so
that this file does not trip its own check. The manual's checks take their lists
from the code (the settings object, the topic tuples, the alert kinds and the
watch's source), so a setting, topic or kind added there fails here until it is
documented; they import only modules that need no broker, store or Faust.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

from pydantic import AliasChoices, SecretStr
from pydantic_core import PydanticUndefined

from ctower.schemas.control import SYSTEM_ALERT_KINDS, AlertKind
from ctower.settings import CONTROL_TOPICS, SECRET_FIELDS, STREAMS, Settings
from ctower.system_alerts import ACTIONS, RUNBOOKS

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"

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
TOP_FOLDERS = ("streams", "tables", "rules", "coupons", "sinks", "dashboard", "schemas",
               "simulator", "bench", "devstack", "ctower", "tests", "deploy", "docs")
CODE_PATH = re.compile(r"`((?:" + "|".join(TOP_FOLDERS) + r")/[\w./-]*)`")
"""A file or folder of the repository quoted as code in the README or a docs page."""


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


def test_every_path_the_readme_and_the_docs_quote_exists() -> None:
    """Folders move (the layout is the process map); their readers must follow."""
    assert [name for name in TOP_FOLDERS if not (ROOT / name).is_dir()] == []
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for quoted in sorted(set(CODE_PATH.findall(page.read_text(encoding="utf-8")))):
            if not (ROOT / quoted.rstrip(".")).exists():
                missing.append(f"{page.relative_to(ROOT).as_posix()}: {quoted}")
    assert not missing, "quoted but missing:\n" + "\n".join(missing)


# --------------------------------------------------------------------------
# docs/operations.md against the code
# --------------------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line, e.g. ``## Topics``),
    up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"no heading {heading!r}") from None
    body = []
    for line in lines[start + 1:]:
        hashes = len(line) - len(line.lstrip("#"))
        if 0 < hashes <= level and line[hashes:hashes + 1] == " ":
            break
        body.append(line)
    return "\n".join(body)


def operations() -> str:
    return OPERATIONS.read_text(encoding="utf-8")


def variables(name: str) -> list[str]:
    """The environment variables of a settings field: ``CTOWER_<NAME>``, or its
    aliases in upper case (``kafka_bootstrap``: ``CTOWER_KAFKA_BOOTSTRAP``,
    ``KAFKA_BOOTSTRAP``)."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str) and c.isupper()]
    return [f"CTOWER_{name.upper()}"]


FIELD_OF = {variable: name for name in Settings.model_fields for variable in variables(name)}
VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]*)`")
"""A variable in backticks; ``CTOWER_WEBHOOK_<ROBOT>`` and the like are not matched."""


def settings_rows(text: str) -> list[tuple[str, list[str], str]]:
    """(row, fields, default cell) of every row of the tables whose header has a
    ``variable`` and a ``default`` column. A row naming several fields
    (``a, b | 1, 2``) gives their defaults in the same order."""
    rows: list[tuple[str, list[str], str]] = []
    default_at: int | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            default_at = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "variable":
            default_at = cells.index("default") if "default" in cells else None
            continue
        if default_at is None or set(cells[0]) <= {"-"}:
            continue
        names = VARIABLE.findall(cells[0])
        unknown = [n for n in names if n not in FIELD_OF]
        assert not unknown, f"not a setting of ctower/settings.py: {unknown} in {line}"
        fields = list(dict.fromkeys(FIELD_OF[n] for n in names))
        if not fields:  # CTOWER_WEBHOOK_<ROBOT>, CTOWER_RULE_...: not fields
            continue
        cell = cells[default_at]
        parts = cell.split(", ") if len(fields) > 1 else [cell]
        assert len(parts) == len(fields), f"one default per setting: {line}"
        rows.extend((line, [field], part) for field, part in zip(fields, parts, strict=True))
    return rows


def agrees(default: Any, cell: str) -> bool:
    """Whether a documented default says the code's. An unset (None) or computed
    default is described in words; a number must be the number, a string the
    string, an empty secret ``empty``."""
    shown = cell.replace("`", "").strip()
    if default is None or default is PydanticUndefined:
        return True
    if isinstance(default, SecretStr):
        return shown == ("empty" if not default.get_secret_value() else "***")
    if isinstance(default, bool):
        return shown == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(shown) == float(default)
        except ValueError:
            return False
    return shown == str(default)


def test_every_setting_is_in_the_operations_manual_by_its_variable() -> None:
    rows = settings_rows(section(operations(), "## Settings"))
    documented = {field for _, fields, _ in rows for field in fields}
    missing = [", ".join(variables(name)) for name in Settings.model_fields
               if name not in documented]
    assert not missing, "settings missing from docs/operations.md: " + "; ".join(missing)
    for name in Settings.model_fields:  # every variable of a field, aliases included
        for variable in variables(name):
            assert f"`{variable}`" in section(operations(), "## Settings"), variable


def test_the_manual_and_the_readme_give_the_code_s_defaults() -> None:
    readme = section((ROOT / "README.md").read_text(encoding="utf-8"), "## Settings")
    for where, text in (("docs/operations.md", section(operations(), "## Settings")),
                        ("README.md", readme)):
        rows = settings_rows(text)
        assert rows, f"{where}: no settings table found"
        wrong = [
            f"{where}: {', '.join(variables(field))}: documented {cell!r}, "
            f"the code says {Settings.model_fields[field].default!r}"
            for _, (field,), cell in rows
            if not agrees(Settings.model_fields[field].default, cell)
        ]
        assert not wrong, "\n".join(wrong)
    readme_fields = {field for _, fields, _ in settings_rows(readme) for field in fields}
    assert readme_fields == set(Settings.model_fields), (
        "README's settings table lacks "
        + ", ".join(sorted(set(Settings.model_fields) - readme_fields)))


def test_the_secret_settings_are_marked_secret() -> None:
    settings = section(operations(), "## Settings")
    for name in SECRET_FIELDS:
        variable = variables(name)[0]
        rows = [line for line in settings.splitlines()
                if line.startswith(f"| `{variable}` |")]
        assert rows and "secret" in rows[0].split("|")[2], f"{variable}: type says secret"
        assert f"`{variable}`" in section(settings, "### Secrets"), variable


def system_alert_kinds() -> set[str]:
    """Every system kind the code knows: ``AlertKind``'s, ``SYSTEM_ALERT_KINDS``
    and each one a watch names (the worker's, the sink's, their words)."""
    watch = "".join((ROOT / path).read_text(encoding="utf-8") for path in (
        "streams/watch.py", "sinks/clickhouse/watch.py", "ctower/system_alerts.py"))
    return (
        {kind for kind in get_args(AlertKind) if kind.startswith("system_")}
        | set(SYSTEM_ALERT_KINDS)
        | set(re.findall(r"\"(system_[a-z_]+)\"", watch))
    )


def test_every_system_alert_kind_has_a_runbook() -> None:
    runbooks = section(operations(), "## Runbooks")
    kinds = system_alert_kinds()
    assert len(kinds) >= 6
    for kind in sorted(kinds):
        body = section(runbooks, f"### `{kind}`")
        for part in ("**What it means**", "**How to confirm**", "**What to do**"):
            assert part in body, f"runbook of {kind}: no {part}"
    headed = set(re.findall(r"^### `(system_[a-z_]+)`$", runbooks, re.M))
    assert headed == kinds, f"runbooks for kinds the code lacks: {sorted(headed - kinds)}"


def test_each_system_alert_names_its_runbook() -> None:
    assert (ROOT / RUNBOOKS).is_file()
    for language, actions in ACTIONS.items():
        assert set(actions) == system_alert_kinds(), language
        for kind, text in actions.items():
            assert RUNBOOKS in text and kind in text, f"{language} {kind}: {text}"


def test_every_topic_is_in_the_topics_section() -> None:
    topics = section(operations(), "## Topics")
    rows = {m for line in topics.splitlines() if line.startswith("| `ct.")
            for m in re.findall(r"^\| `ct\.([a-z-]+)`", line)}
    names = set(STREAMS) | set(CONTROL_TOPICS)
    assert rows >= names, f"topics without a row: {sorted(names - rows)}"
    named = set(re.findall(r"(?<![\w.])ct\.([a-z][a-z-]*[a-z])", operations()))
    assert named <= names, f"topics the code does not have: {sorted(named - names)}"


def test_the_operations_manual_is_linked() -> None:
    for page in ("README.md", "docs/architecture.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        assert "docs/operations.md)" in text, f"{page} does not link docs/operations.md"
