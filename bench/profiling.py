"""Where a benchmarked process spends its time: py-spy, summarised.

``ctower bench`` samples the worker while it drains (when py-spy is
installed: ``pip install py-spy``) and prints the functions with the most
*own* time, the ones worth making cheaper. Sampling does not pause the
worker (``--nonblocking``), so the drain rate it reports stays honest.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy executable, beside this Python or on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Profile:
    """py-spy recording one process until :meth:`stop`."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.out = out
        executable = py_spy()
        self.proc: subprocess.Popen[bytes] | None = None
        if executable is not None:
            self.proc = subprocess.Popen(
                [executable, "record", "--pid", str(pid), "--format", "raw", "--function",
                 "--rate", str(rate), "--nonblocking", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )

    def stop(self) -> list[tuple[str, float]]:
        """Stop sampling; the functions by share of own time, largest first."""
        if self.proc is None:
            return []
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return []
        return own_time(self.out) if self.out.exists() else []


def own_time(raw: Path) -> list[tuple[str, float]]:
    """Share of samples each function was the innermost frame of, from py-spy's
    raw format (``frame;frame;... count`` per line)."""
    own: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        own[_short(leaf)] += int(count)
    total = sum(own.values())
    return [(name, n / total) for name, n in own.most_common()] if total else []


def _short(frame: str) -> str:
    """``function (path/to/module.py:12)`` -> ``function (module.py:12)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name
