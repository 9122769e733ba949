"""Running a worker process: topics first, then Faust's own Worker."""

from __future__ import annotations

import logging
import os

import faust

from ctower.cpu_slice import request_slice
from ctower.gc_tuning import tune_for_streaming
from ctower.logs import configure_logging
from ctower.settings import Settings
from ctower.streams.app import build_app

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT. Several workers share the partitions."""
    from ctower.topics import ensure_topics, replication_of

    niceness = step_aside(settings)  # before Faust starts a thread: they inherit it
    slice_ms = go_first(settings)  # the same
    configure_logging(settings)
    if niceness:
        log.info("CPU niceness %d (role %s)", niceness, settings.worker_role)
    if slice_ms is not None:
        log.info("CPU time slice %.1f ms (role %s)", slice_ms, settings.worker_role)
    elif settings.worker_role == "coupons" and settings.latency_slice_ms:
        log.info("this kernel keeps no time slice per process (Linux 6.12 or later does): "
                 "CTOWER_LATENCY_SLICE_MS has no effect here")
    ensure_topics(settings)
    # Faust creates the changelogs itself and needs a number: the one the
    # cluster gave our topics (1 on the local broker, its default elsewhere)
    tower = build_app(settings, replication=replication_of(settings))
    worker = faust.Worker(
        tower.app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        # keep ctower.logs' configuration (format, masking, outage summaries):
        # by default mode's Worker clears the root handlers and installs its own
        override_logging=False,
    )
    # At WARNING and above, faust.Worker's start-up spinner adds a handler at
    # DEBUG and sets the root logger to DEBUG, so every log.debug call in
    # Faust, aiokafka and mode built a record that was then dropped (about 7%
    # of a busy worker). Without the spinner the root logger keeps the level.
    worker.spinner = None
    tune_for_streaming()
    worker.execute_from_commandline()


def step_aside(settings: Settings) -> int:
    """Lower an aggregation's CPU priority to ``aggregate_nice``; the niceness after.

    Why: the aggregation is catch-up work that loses nothing by waiting a few
    milliseconds, while a reservation holds a shopper, and both may share a
    host's cores with the broker. The kernel shares busy cores by weight; at
    niceness 5 the aggregation's is a third of a process at 0, so the coupon
    server and the broker are run first. Linux keeps a niceness per thread
    and new threads inherit it, so this runs before Faust starts any. A
    niceness the worker was started with above the setting is kept.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if settings.worker_role != "aggregate" or current >= settings.aggregate_nice:
        return current
    os.setpriority(os.PRIO_PROCESS, 0, settings.aggregate_nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def go_first(settings: Settings) -> float | None:
    """Ask for a short CPU time slice for a coupon server; the slice it got.

    Why: a reservation holds a shopper, and each of its steps wakes the coupon
    server up on cores the aggregation and the broker keep busy; with a slice
    shorter than theirs it takes a core as it wakes (``ctower/cpu_slice.py``).
    The aggregation, with nothing waiting on its next millisecond, keeps the
    kernel's default, as does a worker of role ``all``, which does both.
    """
    if settings.worker_role != "coupons" or not settings.latency_slice_ms:
        return None
    return request_slice(settings.latency_slice_ms)
