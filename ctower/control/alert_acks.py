"""Writing operators' alert acknowledgements to ``<prefix>alert-acks``.

The dashboard never writes the store itself: in embedded mode the sink is
the only process allowed to open it, so an acknowledgement is a Kafka record
that the sink stores in ``alert_acks`` like every other control record. The
key is the alert id, so all acknowledgements of one alert stay in order on
one partition.
"""

from __future__ import annotations

from kafka import KafkaProducer

from ctower.errors import CtowerError
from ctower.schemas.control import AlertAck
from ctower.schemas.control import encoder as control_encoder
from ctower.settings import Settings


class AckError(CtowerError, RuntimeError):
    """An acknowledgement could not be written; the message says why."""


def publish_ack(settings: Settings, ack: AlertAck, timeout: float = 10.0) -> None:
    """Write one acknowledgement and wait until Kafka has it (acks=all)."""
    if not ack.alert_id.strip():
        raise AckError("alert_id: must not be empty")
    if not ack.acked_by.strip():
        raise AckError("acked_by: say who acknowledges")
    topic = settings.topic("alert-acks")
    try:
        producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap, acks="all", client_id="ctower-alert-acks"
        )
    except Exception as exc:  # kafka-python raises many types; the caller needs one
        raise AckError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from exc
    try:
        producer.send(
            topic, key=ack.alert_id.encode(), value=control_encoder.encode(ack)
        ).get(timeout=timeout)
    except Exception as exc:
        raise AckError(f"could not write the acknowledgement to {topic}: {exc}") from exc
    finally:
        producer.close(timeout=timeout)
