"""Running a worker process: topics first, then Faust's own Worker."""

from __future__ import annotations

import logging
import os

import faust

from ctower.gc_tuning import tune_for_streaming
from ctower.logs import configure_logging
from ctower.settings import Settings
from ctower.streams.app import build_app

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT. Several workers share the partitions."""
    from ctower.topics import ensure_topics, replication_of

    niceness = step_aside(settings)  # before Faust starts a thread: they inherit it
    configure_logging(settings)
    if niceness:
        log.info("CPU niceness %d (role %s)", niceness, settings.worker_role)
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
