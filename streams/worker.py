"""Running a worker process: topics first, then Faust's own Worker."""

from __future__ import annotations

import logging

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
