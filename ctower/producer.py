"""Producing our events the way the worker wants them: ``ctower.producer``.

Real producers (tills, the mini-program back end) send one event per message,
and a worker pays Faust's per-message cost (about 90 µs) for each; in
envelopes of 100 the cost is paid once per hundred. :class:`EventProducer`
does what the worker expects of a producer, so that any of ours gets the
batched throughput:

- an event goes to its stream's topic, keyed by the stream's key field
  (store, shipment, location or campaign: ``Event.key_field``);
- its partition is Kafka's default partitioner over that key (murmur2, as
  the Java client computes it), so an event lands on the same partition
  alone or in an envelope, and a partition keeps the order events were sent
  in (the worker's event-time windows rely on it);
- events of one partition are gathered into a JSON array (the batch
  envelope) of up to ``batch`` events or ``MAX_ARRAY_BYTES``, sent after at
  most ``linger_s``.

Usage::

    from ctower.producer import EventProducer
    from ctower.settings import load_settings

    with EventProducer(load_settings(), batch=100) as producer:
        producer.send(Scan(ts=..., scan_id="...", store_id="S001", sku="K1", action="view"))
        ...                      # call producer.tick() now and then in a slow loop

``acks="all"`` with idempotence (no loss, no duplicates from retries) is the
default. A send that fails in the end is counted in :attr:`errors` and
logged once; ``close()`` flushes and waits.
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import TracebackType

from kafka import KafkaProducer

from ctower.schemas.events import Event, encoder
from ctower.settings import STREAMS, Settings
from ctower.topics import partition_for

log = logging.getLogger(__name__)

_PARTITION_CACHE_MAX = 200_000
MAX_ARRAY_BYTES = 900_000
"""An array is sent early rather than exceed this: brokers refuse messages over
``message.max.bytes`` (about 1 MB by default), whatever ``batch`` says."""


def crc32c_is_native() -> bool:
    """Whether kafka-python found the C ``crc32c`` package for its record batches."""
    from kafka.record import util

    return util._crc32c is not util.crc32c_py


def resolve_compression(choice: str) -> str | None:
    """``auto``: gzip when kafka-python checksums in pure Python, else none.

    Why: every record batch gets a CRC-32C, and without the ``crc32c``
    extension kafka-python computes it in Python at about 10 MB/s, the
    bottleneck of a batched run. Compressing first shrinks what is
    checksummed about ninefold (JSON), and gzip is the codec every consumer
    can read: aiokafka decodes lz4/snappy/zstd only with ``cramjam``, which
    this project does not install.
    """
    if choice == "auto":
        return None if crc32c_is_native() else "gzip"
    if choice == "none":
        return None
    if choice != "gzip":
        raise ValueError(f"compression must be auto, none or gzip, not {choice!r}")
    return choice


class EventProducer:
    """A kafka-python producer plus the per-partition batch buffers.

    ``batch=1`` sends each event as its own keyed message. ``batch>1`` groups
    up to ``batch`` events of one partition into a JSON array; a partly full
    array waits at most ``linger_s`` of wall time (so a live run at a few
    events a second still delivers promptly). Producer settings: batches of
    up to 1 MiB lingering 20 ms amortise the per-request cost; ``acks=all``
    (and idempotence) by default, because the truth file assumes nothing was
    lost. ``compression``: see :func:`resolve_compression`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        batch: int = 1,
        acks: str = "all",
        linger_s: float = 0.2,
        create_topics: bool = True,
        client_id: str = "ctower-producer",
        compression: str = "auto",
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if create_topics:
            from ctower.topics import ensure_topics

            ensure_topics(settings)
        acks_value: str | int = "all" if acks == "all" else int(acks)
        self.compression = resolve_compression(compression)
        self.producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id=client_id,
            acks=acks_value,
            enable_idempotence=acks == "all",
            linger_ms=20,
            batch_size=1 << 20,
            compression_type=self.compression,
            max_request_size=8 << 20,
        )
        self.batch = batch
        self.linger_s = linger_s
        self.topics = {stream: settings.topic(stream) for stream in STREAMS}
        self.partitions = {
            stream: len(self.producer.partitions_for(topic) or ())
            for stream, topic in self.topics.items()
        }
        missing = [t for s, t in self.topics.items() if not self.partitions[s]]
        if missing:
            raise RuntimeError(
                f"no partitions known for {', '.join(missing)} on {settings.bootstrap}"
            )
        self._cache: dict[tuple[str, str], int] = {}
        self._buffers: dict[tuple[str, int], list[bytes]] = {}
        self._since: dict[tuple[str, int], float] = {}
        self._bytes: dict[tuple[str, int], int] = {}
        self._last_tick = time.monotonic()
        self.messages = 0
        self.bytes = 0
        self.errors = 0
        self.first_error: str | None = None

    def partition(self, stream: str, key: str) -> int:
        cache = self._cache
        p = cache.get((stream, key))
        if p is None:
            if len(cache) > _PARTITION_CACHE_MAX:
                cache.clear()
            p = cache[(stream, key)] = partition_for(key.encode(), self.partitions[stream])
        return p

    def send(self, event: Event) -> None:
        """One event: encoded, keyed and batched as the worker expects."""
        self.send_bytes(event.stream, event.partition_key, encoder.encode(event))

    def send_bytes(
        self, stream: str, key: str, value: bytes, *, standalone: bool = False
    ) -> None:
        """One event's bytes as they are (a replay keeps them byte for byte).
        ``standalone``: never inside an envelope (a message that is not one valid
        event goes alone, after what its partition had gathered)."""
        p = self.partition(stream, key)
        if self.batch == 1 or standalone:
            if standalone:
                self._flush((stream, p))  # keep the partition's order
            self._send(stream, value, key.encode() if key else None, p)
            return
        slot = (stream, p)
        buf = self._buffers.get(slot)
        if buf is None:
            buf = self._buffers[slot] = []
            self._since[slot] = time.monotonic()
            self._bytes[slot] = 1  # "["; each element adds its bytes and a "," or "]"
        elif self._bytes[slot] + len(value) + 1 > MAX_ARRAY_BYTES:
            self._flush(slot)
            self.send_bytes(stream, key, value)
            return
        buf.append(value)
        self._bytes[slot] += len(value) + 1
        if len(buf) >= self.batch:
            self._flush(slot)

    def tick(self) -> None:
        """Send arrays that have waited longer than ``linger_s``."""
        now = time.monotonic()
        if now - self._last_tick < self.linger_s / 4:
            return
        self._last_tick = now
        for slot, since in list(self._since.items()):
            if now - since >= self.linger_s:
                self._flush(slot)

    def _flush(self, slot: tuple[str, int]) -> None:
        buf = self._buffers.pop(slot, None)
        self._since.pop(slot, None)
        if buf:
            self._send(slot[0], b"[" + b",".join(buf) + b"]", None, slot[1])

    def _send(self, stream: str, value: bytes, key: bytes | None, partition: int) -> None:
        future = self.producer.send(self.topics[stream], value=value, key=key, partition=partition)
        future.add_errback(self._failed)
        self.messages += 1
        self.bytes += len(value)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = repr(exc)
            log.error("send failed: %r", exc)

    def flush(self, timeout: float = 60.0) -> None:
        """Send every array gathered so far and wait until Kafka has them."""
        for slot in list(self._buffers):
            self._flush(slot)
        self.producer.flush(timeout=timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, timeout: float = 60.0) -> None:
        for slot in list(self._buffers):
            self._flush(slot)
        try:
            self.producer.flush(timeout=timeout)
        finally:
            with contextlib.suppress(Exception):
                self.producer.close(timeout=5)


