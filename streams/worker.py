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

    configure_logging(settings)
    lower_priority(settings.worker_niceness)
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


def lower_priority(niceness: int) -> None:
    """Run at ``niceness`` (never higher than the process started at).

    An aggregation draining a backlog takes every cycle it gets; the coupon
    service and the broker answer requests someone waits for. On a shared
    host the kernel then gives them the core first (the decisions bench's
    reservation p99 with one core busy was 162 ms with every process at 0).
    Raising niceness needs no privilege; lowering it would, so a process
    already nicer than asked stays as it is.
    """
    current = os.nice(0)
    if niceness > current:
        os.nice(niceness - current)
        log.info("worker niceness %d (was %d)", niceness, current)
