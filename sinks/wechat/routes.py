"""Which robots hear of which alert: the routing file (``alert_routes_file``).

A route matches alerts by kind, severity, region and store (an empty list
matches anything) and sends them to one or more robots. Every matching
route gets the alert; when none matches, the ``[fallback]`` route does, so
an alert is never routed nowhere. The fallback also takes over the alerts
of a route whose robot is broken (see ``delivery``).

Per route: who is @mentioned (user ids, ``@all``, or mobiles), quiet hours
in which only critical alerts go out (the others wait for the end of the
quiet hours, they are not dropped), whether resolutions are sent, and
``escalate_to``: the route that also gets an open alert nobody acknowledged
within ``alert_escalate_after_seconds`` (see ``escalation``). A route with
``escalations_only = true`` gets escalations and nothing directly.

The file is TOML and holds no secrets: robots are names whose URLs come
from :mod:`webhooks`. A URL pasted into it is refused, so a key cannot be
committed by mistake::

    timezone = "Asia/Shanghai"

    [[routes]]
    name = "stock-east"
    robots = ["stock_east"]            # default: one robot named like the route
    kinds = ["stock_out", "restock"]
    severities = ["warning", "critical"]
    regions = ["east"]
    stores = []
    mention_users = ["zhangsan"]       # or ["@all"]
    mention_mobiles = ["13800001111"]
    quiet_hours = "22:00-08:00"
    send_resolutions = true
    escalate_to = "oncall"             # open and nobody acknowledged it within
                                       # alert_escalate_after_seconds: also here

    [[routes]]
    name = "oncall"
    robots = ["duty_manager"]
    escalations_only = true            # gets escalations, no alert directly

    [fallback]
    robots = ["ops"]
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ctower.schemas.control import ALERT_KINDS, SEVERITIES, Alert
from ctower.settings import SettingsError

FALLBACK = "fallback"
"""The name of the fallback route."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
_QUIET = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span of local time, possibly across midnight (22:00-08:00)."""

    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, text: str, zone: ZoneInfo) -> QuietHours:
        match = _QUIET.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"quiet_hours must look like 22:00-08:00, got {text!r}")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"quiet_hours has an impossible time: {text!r}")
        end = time(0, 0) if h2 == 24 else time(h2, m2)
        if time(h1, m1) == end:
            raise ValueError(f"quiet_hours starts and ends at the same time: {text!r}")
        return cls(time(h1, m1), end, zone)

    def until(self, now: float) -> float | None:
        """When the quiet hours that contain ``now`` (epoch seconds) end, or
        None when ``now`` is not in them."""
        local = datetime.fromtimestamp(now, self.zone)
        clock = local.time()
        if self.start < self.end:
            inside = self.start <= clock < self.end
        else:  # across midnight
            inside = clock >= self.start or clock < self.end
        if not inside:
            return None
        end = datetime.combine(local.date(), self.end, self.zone)
        if end <= local:
            end = datetime.combine(local.date() + timedelta(days=1), self.end, self.zone)
        return end.timestamp()


@dataclass(frozen=True, slots=True)
class Route:
    """One route of the routing file, validated."""

    name: str
    robots: tuple[str, ...]
    kinds: frozenset[str] = frozenset()
    severities: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    stores: frozenset[str] = frozenset()
    mention_users: tuple[str, ...] = ()
    mention_mobiles: tuple[str, ...] = ()
    quiet: QuietHours | None = None
    send_resolutions: bool = True
    escalate_to: str | None = None
    """The route that also gets the route's open alerts nobody acknowledged in time."""
    escalations_only: bool = False
    """The route gets escalations only: it matches no alert directly."""

    def matches(self, alert: Alert) -> bool:
        """Every non-empty filter must contain the alert's value."""
        return not self.escalations_only and (
            (not self.kinds or alert.kind in self.kinds)
            and (not self.severities or alert.severity in self.severities)
            and (not self.regions or alert.region in self.regions)
            and (not self.stores or alert.store_id in self.stores)
        )

    @property
    def mentions(self) -> bool:
        return bool(self.mention_users or self.mention_mobiles)

    def held_until(self, alert: Alert, now: float) -> float | None:
        """When a quiet route may send ``alert`` (None: now). Critical
        alerts ignore quiet hours."""
        if self.quiet is None or alert.severity == "critical":
            return None
        return self.quiet.until(now)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The routes and the fallback; :meth:`routes_for` is the whole policy."""

    routes: tuple[Route, ...]
    fallback: Route
    source: Path | None = None
    by_name: dict[str, Route] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name.update({r.name: r for r in (*self.routes, self.fallback)})

    def routes_for(self, alert: Alert) -> list[Route]:
        """The routes that should hear of ``alert`` (the fallback when none
        matches); a resolution only where the route sends resolutions."""
        matched = [r for r in self.routes if r.matches(alert)] or [self.fallback]
        if alert.status == "resolved":
            matched = [r for r in matched if r.send_resolutions]
        return matched

    @property
    def robots(self) -> set[str]:
        return {robot for r in (*self.routes, self.fallback) for robot in r.robots}

    def get(self, name: str) -> Route:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.by_name))
            raise SettingsError(f"no route named {name!r} (routes: {known})") from None


# --------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------


class _RouteModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = FALLBACK
    robots: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list)
    severities: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    stores: list[str] = Field(default_factory=list)
    mention_users: list[str] = Field(default_factory=list)
    mention_mobiles: list[str] = Field(default_factory=list)
    quiet_hours: str | None = None
    send_resolutions: bool = True
    escalate_to: str | None = None
    escalations_only: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("letters, digits, '_' and '-' only (at most 64)")
        return value

    @field_validator("robots")
    @classmethod
    def _robots(cls, value: list[str]) -> list[str]:
        for robot in value:
            if not _NAME.fullmatch(robot):
                raise ValueError(
                    f"robot {robot!r}: a robot is a name (letters, digits, '_', '-'); its URL "
                    "goes in CTOWER_WEBHOOK_<ROBOT> or the secrets file, never here"
                )
        return value

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(ALERT_KINDS))
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; known: {list(ALERT_KINDS)}")
        return value

    @field_validator("severities")
    @classmethod
    def _severities(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SEVERITIES))
        if unknown:
            raise ValueError(f"unknown severit(ies) {unknown}; known: {list(SEVERITIES)}")
        return value

    @field_validator("mention_mobiles")
    @classmethod
    def _mobiles(cls, value: list[str]) -> list[str]:
        for mobile in value:
            if not re.fullmatch(r"\+?\d{5,20}|@all", mobile):
                raise ValueError(f"{mobile!r} is not a mobile number")
        return value


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = "Asia/Shanghai"
    routes: list[_RouteModel] = Field(default_factory=list)
    fallback: _RouteModel


def _route(model: _RouteModel, zone: ZoneInfo, where: str) -> Route:
    quiet = None
    if model.quiet_hours:
        try:
            quiet = QuietHours.parse(model.quiet_hours, zone)
        except ValueError as exc:
            raise SettingsError(f"CTOWER_ALERT_ROUTES_FILE: {where}: {exc}") from None
    return Route(
        name=model.name,
        robots=tuple(model.robots or [model.name]),
        kinds=frozenset(model.kinds),
        severities=frozenset(model.severities),
        regions=frozenset(model.regions),
        stores=frozenset(model.stores),
        mention_users=tuple(model.mention_users),
        mention_mobiles=tuple(model.mention_mobiles),
        quiet=quiet,
        send_resolutions=model.send_resolutions,
        escalate_to=model.escalate_to or None,
        escalations_only=model.escalations_only,
    )


def parse_routes(data: dict[str, Any], source: Path | None = None) -> RoutingTable:
    """A routing table from the parsed TOML; a :class:`SettingsError` names
    the route and key at fault."""
    where = f"CTOWER_ALERT_ROUTES_FILE ({source})" if source else "CTOWER_ALERT_ROUTES_FILE"
    if "://" in repr(data) or re.search(r"key=", repr(data)):
        raise SettingsError(
            f"{where}: holds what looks like a webhook URL; URLs are secrets and go in "
            "CTOWER_WEBHOOK_<ROBOT> or CTOWER_WEBHOOK_SECRETS_FILE"
        )
    if "fallback" not in data:
        raise SettingsError(f"{where}: a [fallback] route is required (robots = [...])")
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = ".".join(str(p) for p in error["loc"])
            problems.append(f"{loc}: {error['msg']}")
        raise SettingsError(f"{where}: " + "; ".join(problems)) from None
    try:
        zone = ZoneInfo(model.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"{where}: unknown timezone {model.timezone!r}") from None
    routes = tuple(_route(m, zone, f"routes[{i}]") for i, m in enumerate(model.routes))
    fallback_model = model.fallback.model_copy(update={"name": FALLBACK})
    fallback = _route(fallback_model, zone, "fallback")
    names = [r.name for r in routes]
    duplicates = sorted({n for n in names if names.count(n) > 1} | ({FALLBACK} & set(names)))
    if duplicates:
        raise SettingsError(f"{where}: route name(s) used twice or reserved: {duplicates}")
    known = {*names, FALLBACK}
    for route in (*routes, fallback):
        if route.escalate_to is not None and (route.escalate_to not in known
                                              or route.escalate_to == route.name):
            raise SettingsError(
                f"{where}: route {route.name}: escalate_to must name another route "
                f"({', '.join(sorted(known - {route.name}))}), got {route.escalate_to!r}"
            )
    return RoutingTable(routes, fallback, source)


def load_routes(path: Path) -> RoutingTable:
    """The routing table of a TOML file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"CTOWER_ALERT_ROUTES_FILE: cannot read {path}: {exc}") from None
    return parse_routes(data, path)
