"""``ctower alerts deliver | test --route NAME | routes``.

``deliver`` is the long-running service; ``test`` proves a route's robots
are reachable (and clears a route marked broken once they are); ``routes``
shows the routing with each route's health as the service last saw it.
Webhook URLs are never printed: robots appear by name and masked key.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click

from ctower.cli import settings_or_exit
from ctower.logs import MaskingFilter, configure_logging
from ctower.settings import Settings, SettingsError

_MaskingFilter = MaskingFilter  # webhook keys are masked in every process's logs (ctower.logs)


def _settings(**overrides: Any) -> Settings:
    settings = settings_or_exit(**overrides)
    configure_logging(settings)
    return settings


def _overrides(routes: str | None, secrets: str | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if routes is not None:
        found["alert_routes_file"] = routes
    if secrets is not None:
        found["webhook_secrets_file"] = secrets
    return found


_ROUTES_OPTION = click.option(
    "--routes", "routes_file", default=None,
    help="Routing file (overrides CTOWER_ALERT_ROUTES_FILE).",
)
_SECRETS_OPTION = click.option(
    "--secrets", "secrets_file", default=None,
    help="Webhook secrets file (overrides CTOWER_WEBHOOK_SECRETS_FILE).",
)


@click.group()
def alerts() -> None:
    """Alerts to WeChat Work group robots."""


@alerts.command()
@_ROUTES_OPTION
@_SECRETS_OPTION
def deliver(routes_file: str | None, secrets_file: str | None) -> None:
    """Deliver alerts from ct.alerts to the robots, until SIGTERM or Ctrl-C."""
    settings = _settings(**_overrides(routes_file, secrets_file))
    from ctower.sinks.wechat.delivery import run_delivery

    try:
        stats = run_delivery(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stopped: {stats.alerts} alerts read, {sum(stats.messages.values())} messages "
               f"sent ({dict(stats.messages)}), {stats.skipped} records not alerts, "
               f"dead-lettered ({dict(stats.dead_letters)})")


@alerts.command("test")
@click.option("--route", "route_name", required=True, help="The route whose robots to test.")
@_ROUTES_OPTION
@_SECRETS_OPTION
def test_route(route_name: str, routes_file: str | None, secrets_file: str | None) -> None:
    """Send a test message to every robot of a route."""
    settings = _settings(**_overrides(routes_file, secrets_file))
    try:
        failures = asyncio.run(_test(settings, route_name))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if failures:
        raise click.ClickException(f"{failures} robot(s) of route {route_name} did not accept "
                                   "the test message")


async def _test(settings: Settings, route_name: str) -> int:
    from ctower.schemas.control import AlertDelivery
    from ctower.sinks.wechat.client import WebhookClient
    from ctower.sinks.wechat.delivery import outbox_path
    from ctower.sinks.wechat.messages import render_test
    from ctower.sinks.wechat.outbox import Outbox, now_ms
    from ctower.sinks.wechat.routes import load_routes
    from ctower.sinks.wechat.webhooks import resolve_webhooks, robot_label

    if settings.alert_routes_file is None:
        raise SettingsError("CTOWER_ALERT_ROUTES_FILE: not set")
    route = load_routes(settings.alert_routes_file).get(route_name)
    urls = resolve_webhooks(settings, route.robots)
    outbox = Outbox(outbox_path(settings))
    failures = 0
    try:
        async with WebhookClient(settings.alert_send_timeout_seconds) as client:
            for robot in route.robots:
                label = robot_label(robot, urls[robot])
                message = render_test(route.name, label, lang=settings.language,
                                      dashboard=settings.dashboard_link)
                send_id = outbox.send_started(robot)  # counted even if we die waiting
                result = await client.send(urls[robot], message.body)
                outcome = result.outcome
                ok = outcome == "delivered"
                failures += not ok
                outbox.record([AlertDelivery(
                    delivery_id=f"t{now_ms()}{robot}"[:40], alert_id="", alert_key="",
                    kind="test", severity="info", route=route.name, robot=label, attempt=1,
                    result=outcome, errcode=result.errcode, http_status=result.http_status,
                    latency_ms=result.latency_ms, message_kind="test", ts=now_ms(),
                    detail=result.detail,
                )], sent=(robot, time.time()), send_id=send_id)
                click.echo(f"{route.name} -> {label}: {'ok' if ok else outcome} "
                           f"(errcode {result.errcode}, {result.latency_ms:.0f} ms)"
                           f"{'' if ok else ' ' + result.detail}")
        if not failures and route.name in outbox.route_states():
            outbox.set_route(route.name, broken=False)
    finally:
        outbox.close()
    return failures


@alerts.command("routes")
@_ROUTES_OPTION
@_SECRETS_OPTION
def list_routes(routes_file: str | None, secrets_file: str | None) -> None:
    """List the routes, their robots (keys masked) and their health."""
    settings = _settings(**_overrides(routes_file, secrets_file))
    try:
        for line in route_lines(settings):
            click.echo(line)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def route_lines(settings: Settings) -> list[str]:
    """The text of ``ctower alerts routes``."""
    from ctower.sinks.wechat.delivery import outbox_path
    from ctower.sinks.wechat.outbox import Outbox
    from ctower.sinks.wechat.routes import FALLBACK, load_routes
    from ctower.sinks.wechat.webhooks import env_name, resolve_webhooks, robot_label

    if settings.alert_routes_file is None:
        raise SettingsError("CTOWER_ALERT_ROUTES_FILE: not set")
    table = load_routes(settings.alert_routes_file)
    labels: dict[str, str] = {}
    for robot in table.robots:
        try:
            labels[robot] = robot_label(robot, resolve_webhooks(settings, [robot])[robot])
        except SettingsError:
            labels[robot] = f"{robot} (no URL: set {env_name(robot)})"
    states: dict[str, Any] = {}
    pending: dict[str, int] = {}
    path = outbox_path(settings)
    if path.exists():
        outbox = Outbox(path)
        try:
            states = outbox.route_states()
            for item in outbox.pending():
                pending[item.route] = pending.get(item.route, 0) + 1
        finally:
            outbox.close()
    lines = []
    for route in (*table.routes, table.fallback):
        state = states.get(route.name)
        if state is not None and state.broken:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.since))
            health = f"BROKEN since {since} (errcode {state.errcode}: {state.detail})"
        else:
            health = "ok"
        filters = ", ".join(
            f"{name}={sorted(values)}"
            for name, values in (("kinds", route.kinds), ("severities", route.severities),
                                 ("regions", route.regions), ("stores", route.stores))
            if values
        )
        if not filters:
            filters = "what no other route matches" if route.name == FALLBACK else "all alerts"
        lines.append(f"{route.name}: {health}; pending {pending.get(route.name, 0)}")
        lines.append(f"  robots: {', '.join(labels[r] for r in route.robots)}")
        lines.append(f"  matches: {filters}")
        extras = []
        if route.mentions:
            extras.append(f"mentions {list(route.mention_users) + list(route.mention_mobiles)}")
        if route.quiet is not None:
            extras.append(f"quiet {route.quiet.start:%H:%M}-{route.quiet.end:%H:%M}")
        extras.append("resolutions sent" if route.send_resolutions else "no resolutions")
        lines.append(f"  {'; '.join(extras)}")
    return lines
