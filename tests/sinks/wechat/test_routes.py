"""Routing: which routes hear of an alert, quiet hours, and a routing file
that is refused with a message naming what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ctower.schemas.control import Alert
from ctower.settings import SettingsError
from ctower.sinks.wechat.routes import FALLBACK, QuietHours, load_routes

ROUTES = """
timezone = "Asia/Shanghai"

[[routes]]
name = "stock-east"
robots = ["stock_east", "ops_east"]
kinds = ["stock_out", "restock"]
regions = ["east"]

[[routes]]
name = "critical"
severities = ["critical"]
mention_users = ["zhangsan", "@all"]
mention_mobiles = ["13800001111"]
send_resolutions = false

[[routes]]
name = "store-s9"
stores = ["S009"]
quiet_hours = "22:00-08:00"

[fallback]
robots = ["ops"]
"""

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(hour: int, minute: int = 0) -> float:
    return datetime(2025, 3, 3, hour, minute, tzinfo=SHANGHAI).timestamp()


def names(routes: list) -> list[str]:
    return [r.name for r in routes]


def test_every_matching_route_hears_of_an_alert_and_the_fallback_catches_the_rest(
    write_routes: Callable[[str], Path], make_alert: Callable[..., Alert]
) -> None:
    table = load_routes(write_routes(ROUTES))
    assert names(table.routes_for(make_alert())) == ["stock-east"]
    assert names(table.routes_for(make_alert(severity="critical"))) == ["stock-east", "critical"]
    assert names(table.routes_for(make_alert(region="west"))) == [FALLBACK]
    assert names(table.routes_for(make_alert(kind="demand_spike"))) == [FALLBACK]
    assert names(table.routes_for(make_alert(region="west", store_id="S009"))) == ["store-s9"]
    # robots default to one named like the route
    assert table.get("critical").robots == ("critical",)
    assert table.get("stock-east").robots == ("stock_east", "ops_east")
    assert table.robots == {"stock_east", "ops_east", "critical", "store-s9", "ops"}


def test_resolutions_go_only_where_the_route_wants_them(
    write_routes: Callable[[str], Path], make_alert: Callable[..., Alert]
) -> None:
    table = load_routes(write_routes(ROUTES))
    resolved = make_alert(severity="critical", status="resolved", resolved_at=1)
    assert names(table.routes_for(resolved)) == ["stock-east"]  # 'critical' sends none
    # a resolution nobody matches still reaches the fallback
    assert names(table.routes_for(make_alert(region="west", status="resolved"))) == [FALLBACK]


def test_quiet_hours_hold_all_but_critical_alerts_until_they_end(
    write_routes: Callable[[str], Path], make_alert: Callable[..., Alert]
) -> None:
    route = load_routes(write_routes(ROUTES)).get("store-s9")
    warning = make_alert(store_id="S009")
    critical = make_alert(store_id="S009", severity="critical")
    assert route.held_until(warning, at(23, 30)) == at(8) + 86_400  # across midnight
    assert route.held_until(warning, at(3)) == at(8)
    assert route.held_until(warning, at(8)) is None  # the end is not quiet
    assert route.held_until(warning, at(21, 59)) is None
    assert route.held_until(critical, at(23, 30)) is None
    # a route without quiet hours never holds
    assert load_routes(write_routes(ROUTES)).get("critical").held_until(warning, at(3)) is None


def test_quiet_hours_within_a_day() -> None:
    quiet = QuietHours.parse("12:00-13:30", SHANGHAI)
    assert quiet.until(at(11, 59)) is None
    assert quiet.until(at(12, 0)) == at(13, 30)
    assert quiet.until(at(13, 30)) is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[routes]]\nname = "x"\n', "[fallback]"),
        (ROUTES.replace('kinds = ["stock_out", "restock"]', 'kinds = ["stockout"]'),
         "routes.0.kinds"),
        (ROUTES.replace('severities = ["critical"]', 'severities = ["urgent"]'), "routes.1"),
        (ROUTES.replace('"22:00-08:00"', '"late"'), "routes[2]"),
        (ROUTES.replace('robots = ["ops"]',
                        'robots = ["https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc"]'),
         "webhook URL"),
        (ROUTES.replace('timezone = "Asia/Shanghai"', 'timezone = "Mars/Base"'), "timezone"),
        (ROUTES.replace('name = "store-s9"', 'name = "critical"'), "used twice"),
        (ROUTES.replace("send_resolutions = false", "send_resolution = false"), "routes.1"),
        ("this is = not toml =", "cannot read"),
    ],
)
def test_a_bad_routing_file_names_the_setting_and_the_problem(
    write_routes: Callable[[str], Path], text: str, named: str
) -> None:
    with pytest.raises(SettingsError) as error:
        load_routes(write_routes(text))
    message = str(error.value)
    assert "CTOWER_ALERT_ROUTES_FILE" in message
    assert named in message
    assert "key=abc" not in message
