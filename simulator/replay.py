"""Replaying a recorded ``--out`` file: same bytes, same order, chosen pace.

Why replay exists next to the seed: a seed reproduces a run only with the
same code; a file reproduces it across versions of the simulator, and lets
a bug report carry the exact messages that triggered it.

Pace: each valid event is held until ``(ts - first ts) / speed`` has passed
since the first one (``speed=None`` = as fast as possible). Malformed lines
have no trustworthy time and go out right after their predecessor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctower.settings import Settings
from ctower.simulator.clock import Pacer
from ctower.simulator.jsonl import JsonlWriter, read_jsonl
from ctower.simulator.producer import KafkaSink, SendStats, pump
from ctower.simulator.truth import TruthRecorder


def replay(
    settings: Settings | None,
    path: str | Path,
    *,
    speed: float | None = None,
    batch: int = 1,
    acks: str = "all",
    compression: str = "auto",
    truth: TruthRecorder | None = None,
    out: str | Path | None = None,
    progress: Any = None,
) -> SendStats:
    """Send the messages of a JSONL file again (to Kafka unless ``settings`` is None)."""
    if speed is not None and speed <= 0:
        raise ValueError("speed must be > 0 (or None for as fast as possible)")
    if out is not None and Path(out).resolve() == Path(path).resolve():
        raise ValueError("--out must not be the file being replayed")
    sink = (
        KafkaSink(settings, batch=batch, acks=acks, compression=compression)
        if settings is not None
        else None
    )
    writer = JsonlWriter(out) if out is not None else None
    pacer = Pacer(speed) if speed is not None else None
    return pump(
        read_jsonl(path), kafka=sink, out=writer, truth=truth, pacer=pacer, progress=progress
    )


def count_lines(path: str | Path) -> int:
    """Lines in a file, for the progress bar's total (cheap: no JSON parsing)."""
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)
