"""The short CPU time slice: granted where the kernel keeps one per thread,
inherited by threads and children, and given back by a launcher."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> dict[str, object]:
    """``code`` in a fresh interpreter (the slice would stay with this one), its JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


SUPPORTED = _run("""
    import json
    from ctower.cpu_slice import request_slice
    print(json.dumps({"granted": request_slice(0.5)}))
""")["granted"] == 0.5
needs_slices = pytest.mark.skipif(
    not SUPPORTED, reason="this kernel keeps no time slice per thread (Linux 6.12 or later)"
)


@needs_slices
def test_a_slice_asked_for_is_kept_by_the_threads_and_processes_started_after() -> None:
    seen = _run("""
        import json, os, subprocess, sys, threading
        from ctower.cpu_slice import request_slice, slice_ms
        before = slice_ms()
        os.setpriority(os.PRIO_PROCESS, 0, 3)
        granted = request_slice(0.3)
        thread = {}
        t = threading.Thread(target=lambda: thread.update(ms=slice_ms()))
        t.start(); t.join()
        child = subprocess.run(
            [sys.executable, "-c", "from ctower.cpu_slice import slice_ms; print(slice_ms())"],
            capture_output=True, text=True, check=True).stdout.strip()
        print(json.dumps({"before": before, "granted": granted, "thread": thread["ms"],
                          "child": float(child), "nice": os.getpriority(os.PRIO_PROCESS, 0)}))
    """)
    assert seen["before"] != 0.3  # the kernel's default is longer
    assert seen["granted"] == seen["thread"] == seen["child"] == 0.3
    assert seen["nice"] == 3  # asking for a slice keeps the niceness


@needs_slices
def test_a_launcher_gives_its_children_the_slice_and_gets_the_default_back() -> None:
    seen = _run("""
        import json, subprocess, sys
        from ctower.cpu_slice import slice_for_children, slice_ms
        before = slice_ms()
        with slice_for_children(0.2) as granted:
            child = subprocess.Popen(
                [sys.executable, "-c", "from ctower.cpu_slice import slice_ms; print(slice_ms())"],
                stdout=subprocess.PIPE, text=True)
        out, _ = child.communicate()
        with slice_for_children(0) as none:
            pass
        print(json.dumps({"before": before, "granted": granted, "child": float(out),
                          "after": slice_ms(), "none": none}))
    """)
    assert seen["granted"] == seen["child"] == 0.2
    assert seen["after"] == seen["before"] != 0.2
    assert seen["none"] is None


def test_a_slice_the_kernel_would_clamp_is_not_asked_for() -> None:
    seen = _run("""
        import json
        from ctower.cpu_slice import request_slice, slice_ms
        before = slice_ms()
        print(json.dumps({"short": request_slice(0.01), "long": request_slice(500),
                          "after": slice_ms(), "before": before}))
    """)
    assert seen["short"] is None and seen["long"] is None
    assert seen["after"] == seen["before"]

