"""One simulated run with every incident, shared by the simulator tests.

Generated once per session through the real CLI (``--no-kafka``), so the
file tests read is exactly what ``ctower simulate --out`` writes. 60k events
at 4 events per simulated second from 08:00 span about three and a half hours: long enough for
shipments to reach their ETA and for every incident to play out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from ctower.schemas.events import EVENT_TYPES, Event
from ctower.schemas.wire import Decoded, EventDecoder
from ctower.simulator.clock import CHINA_TZ
from ctower.simulator.command import simulate
from ctower.simulator.truth import load_truth

RUN_EVENTS = 60_000
RUN_SIM_RATE = 4
RUN_SEED = int(os.environ.get("SIM_TEST_SEED", "7"))  # other seeds: a robustness check


def run_start() -> str:
    """08:00 China time two days ago: a fixed time of day, so the curve (hence
    the span and where incidents land) is the same whenever the tests run,
    and recent enough for the worker's ts window."""
    today = datetime.now(CHINA_TZ).date() - timedelta(days=2)
    return datetime.combine(today, dt_time(8, 0), tzinfo=CHINA_TZ).isoformat()


@dataclass
class Line:
    """One line of the --out file, decoded the way the worker would."""

    seq: int
    stream: str
    value: bytes
    decoded: Decoded[Event]
    is_raw: bool
    late_ms: int


@dataclass
class Run:
    out: Path
    truth_path: Path
    truth: dict[str, Any]
    lines: list[Line]

    def valid(self) -> Iterator[tuple[Line, Event]]:
        for line in self.lines:
            for event in line.decoded.events:
                yield line, event


class _RawLine(msgspec.Struct):
    stream: str
    event: msgspec.Raw = msgspec.Raw()  # empty: not an event line
    raw: str | None = None
    raw_b64: str | None = None
    late_ms: int = 0


def decode_out_file(path: Path, now_ms: int | None = None) -> list[Line]:
    """Every message of an --out file through the worker's own decoder."""
    import base64

    decoders = {s: EventDecoder.for_stream(s, 400 * 86400, 3600) for s in EVENT_TYPES}
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    out = []
    reader = msgspec.json.Decoder(_RawLine)
    with open(path, "rb") as handle:
        for seq, text in enumerate(handle):
            line = reader.decode(text)
            if len(line.event):
                value, is_raw = bytes(line.event), False
            elif line.raw is not None:
                value, is_raw = line.raw.encode("utf-8"), True
            else:
                assert line.raw_b64 is not None
                value, is_raw = base64.b64decode(line.raw_b64), True
            decoded = decoders[line.stream].decode(value, now)
            out.append(Line(seq, line.stream, value, decoded, is_raw, line.late_ms))
    return out


@pytest.fixture(scope="session")
def incident_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("sim")
    out, truth = folder / "run.jsonl", folder / "truth.json"
    result = CliRunner().invoke(
        simulate,
        [
            "--seed",
            str(RUN_SEED),
            "--start",
            run_start(),
            "--events",
            str(RUN_EVENTS),
            "--sim-rate",
            str(RUN_SIM_RATE),
            "--incidents",
            "all",
            "--no-kafka",
            "--out",
            str(out),
            "--truth",
            str(truth),
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return Run(out, truth, load_truth(truth), decode_out_file(out))
