"""``ctower bench peer``: the Quix Streams and Bytewax apps drain a small backlog
on the session broker, each counting every event, and the RESULT line carries
their rates. The figures themselves are for people, not assertions."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from ctower.bench import peer as bench_peer
from ctower.bench import peers
from ctower.cli import cli
from ctower.settings import STREAMS, Settings

PEERS_INSTALLED = all(importlib.util.find_spec(name) for name in ("quixstreams", "bytewax"))


def test_the_peers_read_every_stream_the_worker_reads() -> None:
    assert set(peers.STREAMS) == set(STREAMS)


def test_a_paid_order_feeds_its_store_minute_and_each_line_its_sku_window() -> None:
    order = {"ts": "2026-01-01T08:00:30+08:00", "store_id": "S1", "ship_from": "W1",
             "status": "paid", "amount": 12.5,
             "lines": [{"sku": "K1", "qty": 2, "unit_price": 1.25},
                       {"sku": "K2", "qty": 1, "unit_price": 10.0}]}
    ts = 1767225630000
    mappings = peers.MAPPINGS["order"]
    assert mappings["store_minute"](order) == [("S1", ts, {"paid_orders": 1, "gmv_fen": 1250})]
    assert mappings["sku_sales_5min"](order) == [
        ("W1|K1", ts, {"units": 2, "revenue_fen": 250}),
        ("W1|K2", ts, {"units": 1, "revenue_fen": 1000}),
    ]


def test_a_peer_without_its_library_is_skipped_with_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(bench_peer.importlib.util, "find_spec",
                        lambda name, *a: None if name == "quixstreams" else real(name, *a))
    answer = CliRunner().invoke(cli, ["bench", "peer", "--only", "quix", "--no-worker"])
    assert answer.exit_code == 0, answer.output
    assert "pip install -e '.[peer]'" in answer.output
    assert answer.output.splitlines()[-1] == (
        "RESULT quix_batched=0 quix_single=0 bytewax_batched=0 bytewax_single=0")


@pytest.mark.skipif(not PEERS_INSTALLED,
                    reason="the peer extra is not installed: pip install -e '.[peer]'")
@pytest.mark.timeout(300)
def test_each_peer_counts_every_event_of_both_cases(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [sys.executable, "-m", "ctower", "bench", "peer", "--events", "2000",
         "--single-events", "500", "--no-worker"],
        env=settings.child_env(), capture_output=True, text=True, timeout=280,
    )
    output = run.stdout.replace("\r", "\n")
    assert run.returncode == 0, output[-3000:] + run.stderr[-3000:]
    for peer in ("quix", "bytewax"):
        drained = re.findall(rf"^  {peer}: [\d,]+ events/s \(drained ([\d,]+) in", output, re.M)
        assert drained == ["2,000", "500"], output[-3000:]
    result = re.search(r"^RESULT (.*)$", output, re.M)
    assert result is not None, output[-3000:]
    figures = dict(pair.split("=") for pair in result.group(1).split())
    assert sorted(figures) == ["bytewax_batched", "bytewax_single", "quix_batched", "quix_single"]
    assert all(float(value) > 0 for value in figures.values()), result.group(0)
