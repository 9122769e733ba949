"""Webhook URLs of the group robots: where they come from and how they are shown.

The key in a robot's URL is its only credential: whoever has the URL can
post into the group. So URLs never live in code or in the routing file
(which is meant to be committed); they come from the environment
(``CTOWER_WEBHOOK_<ROBOT>``) or from a secrets file (``webhook_secrets_file``,
TOML ``robot = "https://..."``), the environment winning. Everything that
leaves the process (logs, the screen, the delivery records) shows
:func:`mask_url` or :func:`robot_label` instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ctower.settings import Settings, SettingsError

ENV_PREFIX = "CTOWER_WEBHOOK_"
"""``CTOWER_WEBHOOK_OPS`` holds the URL of the robot named ``ops``."""

_KEY = re.compile(r"(key=)([^&\s\"'<>]+)", re.IGNORECASE)


def env_name(robot: str) -> str:
    """The environment variable that holds ``robot``'s URL."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", robot).upper()


def _mask_key(key: str) -> str:
    """The last four characters only: enough to tell two robots apart."""
    return "***" + key[-4:] if len(key) > 8 else "***"


def mask_secrets(text: str) -> str:
    """``text`` with every ``key=...`` replaced by its masked form.

    Applied to anything that might carry a URL: exception messages of the
    HTTP client, log records, error details stored in the delivery records.
    """
    return _KEY.sub(lambda m: m.group(1) + _mask_key(m.group(2)), text)


def mask_url(url: str) -> str:
    """The URL as it may be shown: host and path, the key masked."""
    return mask_secrets(url)


def url_key(url: str) -> str:
    """The ``key`` parameter of a webhook URL ('' when it has none)."""
    values = parse_qs(urlsplit(url).query).get("key", [])
    return values[0] if values else ""


def robot_label(robot: str, url: str) -> str:
    """How a robot is named in records and on screen: ``ops (key ***a1b2)``."""
    return f"{robot} (key {_mask_key(url_key(url))})"


def fingerprint(url: str) -> str:
    """A stable, non-reversible id of a URL: tells whether a robot's URL
    changed since its route was marked broken, without storing the URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def check_url(robot: str, url: str, source: str) -> str:
    """``url`` if it looks like a webhook URL, else a :class:`SettingsError`
    naming where it came from (never echoing the URL: it is the secret)."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{source}: the webhook URL of robot {robot!r} is not an http(s) URL")
    if not url_key(url):
        raise SettingsError(f"{source}: the webhook URL of robot {robot!r} has no key= parameter")
    return url


def load_secrets_file(path: Path) -> dict[str, str]:
    """Robot name -> URL from a TOML secrets file (top level, or a
    ``[webhooks]`` table)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"CTOWER_WEBHOOK_SECRETS_FILE: cannot read {path}: {exc}") from None
    table = data.get("webhooks", data)
    if not isinstance(table, dict):
        raise SettingsError(f"CTOWER_WEBHOOK_SECRETS_FILE: [webhooks] in {path} is not a table")
    found: dict[str, str] = {}
    for name, value in table.items():
        if not isinstance(value, str):
            raise SettingsError(
                f"CTOWER_WEBHOOK_SECRETS_FILE: {name} in {path} must be a URL string"
            )
        found[name] = check_url(name, value, f"CTOWER_WEBHOOK_SECRETS_FILE ({name})")
    return found


def resolve_webhooks(
    settings: Settings, robots: Iterable[str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The URL of every robot in ``robots``; a robot without one stops
    start-up with a message naming both places it could come from."""
    env = os.environ if environ is None else environ
    from_file = (
        load_secrets_file(settings.webhook_secrets_file)
        if settings.webhook_secrets_file is not None
        else {}
    )
    urls: dict[str, str] = {}
    missing: list[str] = []
    for robot in sorted(set(robots)):
        var = env_name(robot)
        if env.get(var, "").strip():
            urls[robot] = check_url(robot, env[var], var)
        elif robot in from_file:
            urls[robot] = from_file[robot]
        else:
            missing.append(robot)
    if missing:
        names = ", ".join(f"{r} ({env_name(r)})" for r in missing)
        raise SettingsError(
            f"no webhook URL for robot(s) {names}: set the variable or add the robot to "
            "CTOWER_WEBHOOK_SECRETS_FILE"
        )
    return urls
