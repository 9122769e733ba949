"""The Faust application of one worker, on one screen: what it reads, keeps and runs.

Each event stream has one agent and one changelog-backed table holding its
windows (see ``tables/window_state.py`` for why the windows are ours). The
agents read raw bytes, fold each message at once and persist in batches: decoding with
msgspec and folding a whole batch is what makes one worker fast; Faust's
per-message machinery is the floor (about 85 µs a message).

The install steps, in the order they run:

- ``streams/intake.py``: the consumer hands the agents' topics over a list
  at a time, and commits once Kafka has what was sent;
- ``streams/decisions.py`` (the rules) and ``coupons/service.py`` (the
  coupon ledger and API), as the worker's role says;
- ``streams/agents.py``: an agent per raw stream and per internal topic;
- ``streams/upkeep.py``: the once-a-second task and the revocation handler;
- ``streams/stall_report.py``: a rebalance lasting a minute logs where the
  worker's tasks wait;
- ``/stats/``, ``/metrics`` (``ctower/metrics.py``) and the system alerts'
  watch (``streams/watch.py``).
"""

from __future__ import annotations

from typing import Any

import faust

from ctower.coupons.service import install_coupon_service
from ctower.metrics import install_worker_metrics
from ctower.settings import STREAMS, Settings
from ctower.streams.agents import install_rule_agents, install_stream_agents
from ctower.streams.batch_writer import BatchWriter, faust_producer
from ctower.streams.decisions import DecisionLayer
from ctower.streams.intake import Intake
from ctower.streams.stall_report import install_stall_report
from ctower.streams.tower import ControlTower
from ctower.streams.upkeep import install_upkeep
from ctower.streams.watch import install_worker_watch
from ctower.tables.memory_store import STORE_URL

PRODUCER_LINGER_S: dict[str, float] = {"all": 0.005, "aggregate": 0.005, "coupons": 0.0}
"""How long the producer waits to fill a batch, per role. The aggregation's
writes come in bursts after each batch and travel well in few requests. A
reservation waits for its ledger write and the coupon role writes little:
with no linger a write leaves at once, and those made while it is in flight
go together in the next request, so a quiet reservation no longer waits out
the linger (the README's "Speed" has the figures). At an earlier stop, when
the aggregation's writes cost the shared broker about three times what they
do now, no linger had queued reservations for seconds while it drained a
backlog (the cause in aiokafka's sender was not traced); the decisions
bench's runs made during a drain would show it again."""

COMMIT_INTERVAL_S = 1.0
"""How often the consumer commits what is acknowledged (Faust's default: 2.8 s).
De-duplication forgets an identity only once the committed offset is past
the horizon (``tables/dedup.py``): what a replay would read again must still
find its first copies. So the identities held are the horizon plus however
far the commit lags what is read: draining a backlog, a 2.8 s interval left
30 to 90 minutes of event time uncommitted on some streams, and the drain's
peak RSS went over the 400 MB target once the worker drained faster (the
README's "Speed" has the figures). A commit is one request for all the
partitions."""

HEARTBEAT_INTERVAL_S = 1.0
"""How often the consumer tells the group it is alive (Faust's default: 3 s).
A worker learns from a heartbeat's answer that a rebalance has begun, and the
group waits for every member to rejoin: with two workers started together,
the second waited about four seconds for the first, which drained alone
meanwhile. The session timeout (10 s) stays well above three heartbeats."""

ROLE_STREAMS: dict[str, tuple[str, ...]] = {
    "all": STREAMS,
    "aggregate": tuple(stream for stream in STREAMS if stream != "coupon"),
    "coupons": ("coupon",),
}
"""The raw streams each worker role folds (``CTOWER_WORKER_ROLE``)."""


def app_id_for(settings: Settings) -> str:
    """The coupon role is a consumer group of its own: it is scaled apart from
    the aggregation, and its ledger's changelog is its own."""
    if settings.worker_role == "coupons":
        return f"{settings.app_id}-coupons"
    return settings.app_id


def build_app(settings: Settings, replication: int = 1) -> ControlTower:
    """The worker's app. ``replication``: the changelogs' replication factor,
    the one the cluster gave the project's own topics (``run_worker`` asks)."""
    role = settings.worker_role
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id_for(settings),
        broker=[f"kafka://{server}" for server in settings.bootstrap.split(",")],
        store=STORE_URL,  # a kept partition is not read back after a rebalance
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=replication,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_host=settings.worker_web_host,
        web_bind=settings.worker_bind,  # issue 13: where it listens (0.0.0.0 in a container)
        web_port=settings.worker_web_port,
        canonical_url=settings.worker_url,  # where other workers forward to (its hostname)
        web_in_thread=False,
        stream_buffer_maxsize=max(4096, settings.batch_max_messages * 2),
        broker_commit_interval=COMMIT_INTERVAL_S,
        broker_session_timeout=10.0,  # a killed worker's partitions move on sooner
        broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
        # each standby applies another worker's every state write, message by
        # message on Faust's path (docs/operations.md, "Standby replicas")
        table_standby_replicas=settings.standby_replicas,
        producer_linger=PRODUCER_LINGER_S[role],
    )
    tower = ControlTower(
        settings=settings, app=app, writer=BatchWriter(lambda: faust_producer(app))
    )
    intake = Intake(app)
    intake.install()
    # a reservation waits behind whatever its process is busy with: the coupon
    # role keeps the aggregation's batches out of its event loop
    if role != "coupons":
        tower.decisions = DecisionLayer(app, settings, tower.writer)
    if role != "aggregate":
        tower.coupons = install_coupon_service(app, settings)
    install_stream_agents(tower, intake, ROLE_STREAMS[role])
    install_rule_agents(tower, intake)
    install_upkeep(tower)
    install_stall_report(app)

    @app.page("/stats/")
    async def stats(web: Any, request: Any) -> Any:
        return web.json(tower.stats())

    install_worker_metrics(tower)  # /metrics, read at scrape time
    if tower.decisions is not None:  # its alerts go out as the rules' do
        install_worker_watch(tower)  # system alerts, once a second
    return tower
