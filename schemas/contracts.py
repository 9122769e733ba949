"""The published contracts, generated from the code: JSON Schema of every
event and control record, and the OpenAPI document of the coupon API.

The msgspec types in ``events.py``, ``control.py`` and the coupon service
are the truth; the files under ``schemas/json/`` and ``schemas/openapi/``
are what other teams read (and validate their producers against). They are
generated, never edited: ``ctower schemas --write`` (or ``make schemas``)
rewrites them, and ``tests/schemas/test_contracts.py`` fails when they differ
from what the code would generate.

Every file is JSON Schema 2020-12 (OpenAPI 3.1 uses the same dialect). An
event's schema describes one Kafka message of its topic: one event, or a
JSON array of events of the stream (a batch envelope); its ``$defs`` hold the
event itself. A control record's schema describes the record, with its topic
and key in ``x-kafka``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from ctower.schemas import actions, control, tasks
from ctower.schemas.events import EVENT_TYPES

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ROOT = Path(__file__).resolve().parent
"""``schemas/`` in a checkout (the files are written beside this module)."""
JSON_DIR = "json"
OPENAPI_FILE = "openapi/coupons.json"

CONTROL_RECORDS: dict[str, tuple[type, str, str]] = {
    # file name: (type, topic (without the prefix), what the Kafka key is)
    "dead_letter": (control.DeadLetter, "dead-letter",
                    "source_topic:partition:offset:index"),
    "closed_window": (control.ClosedWindow, "aggregates",
                      "aggregate:window_start:source_topic:partition (every chunk of one "
                      "window's closed keys); header kind=closed_window; a message holds one "
                      "record or a JSON array of them (at most 500)"),
    "late_event": (control.LateEvent, "aggregates",
                   "its dedup key; header kind=late_event; one record or a JSON array"),
    "duplicate_event": (control.DuplicateEvent, "aggregates",
                        "source_topic:partition:offset:index; header kind=duplicate_event; "
                        "one record or a JSON array"),
    "coupon_policy": (control.CouponPolicy, "coupon-policy",
                      "campaign_id|store_id ('*' for every store); compacted, written to "
                      "the campaign's partition; a null value lifts the policy"),
    "coupon_signal": (control.CouponSignal, "coupon-signals",
                      "campaign_id|store_id|cause|sku, on the campaign's partition"),
    "coupon_decision": (control.CouponDecision, "coupon-decisions",
                        "campaign_id|store_id, on the campaign's partition"),
    "alert": (control.Alert, "alerts", "alert_id"),
    "alert_delivery": (control.AlertDelivery, "alert-deliveries", "delivery_id"),
    "alert_ack": (control.AlertAck, "alert-acks", "alert_id"),
    "stock_level": (control.StockLevel, "stock-levels", "location_id|sku"),
    "pickup_level": (control.PickupLevel, "pickup-levels", "store_id"),
    "shadow_alert": (control.Alert, "shadow-alerts",
                     "alert_id ('shadow-' + the id the rules in force would give); what the "
                     "shadow (candidate) rules raise, never delivered"),
    "shadow_coupon_signal": (control.CouponSignal, "shadow-signals",
                             "campaign_id|store_id|cause|sku, on the campaign's partition; "
                             "the shadow rules' signals, never acted on"),
    "action_order": (actions.ActionOrder, "actions",
                     "order_id; the whole order again at every change of state"),
    "action_status": (actions.ActionStatus, "action-status",
                      "sku (the order's SKU: its partition is the rules' that issued it)"),
    "shipment_task": (tasks.ShipmentTask, "tasks", "task_id; the whole task again when it closes"),
}


def _components(types: list[Any]) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    return msgspec.json.schema_components(types, ref_template="#/$defs/{name}")


def event_schema(stream: str) -> dict[str, Any]:
    """One message of the stream's topic: an event or a batch of them."""
    event_type = EVENT_TYPES[stream]
    (ref,), defs = _components([event_type])
    return {
        "$schema": DIALECT,
        "title": f"ct.{stream} message",
        "description": (
            f"One message of the {stream} topic (<prefix>{stream}, default ct.{stream}): one "
            f"{event_type.__name__} event, or a JSON array of them (a batch envelope; an "
            "empty array is dead-lettered). UTF-8 JSON. `ts` is epoch milliseconds or ISO "
            "8601 with a UTC offset. A malformed event goes to the dead-letter topic with "
            "its reason; the rest of its batch goes on."
        ),
        "x-kafka": {"topic": stream, "key": getattr(event_type, "key_doc", event_type.key_field)},
        "anyOf": [ref, {"type": "array", "items": ref, "minItems": 1}],
        "$defs": defs,
    }


def control_schema(name: str) -> dict[str, Any]:
    record_type, topic, key = CONTROL_RECORDS[name]
    _, defs = _components([record_type])
    schema: dict[str, Any] = {"$schema": DIALECT, "title": record_type.__name__}
    schema.update(defs[record_type.__name__])
    del defs[record_type.__name__]
    schema["x-kafka"] = {"topic": topic, "key": key}
    if defs:
        schema["$defs"] = defs
    return schema


def json_schemas() -> dict[str, dict[str, Any]]:
    """Relative path under ``schemas/`` -> the JSON Schema written there."""
    found = {f"{JSON_DIR}/events/{stream}.json": event_schema(stream) for stream in EVENT_TYPES}
    found.update({f"{JSON_DIR}/control/{name}.json": control_schema(name)
                  for name in CONTROL_RECORDS})
    return found


# --------------------------------------------------------------------------
# The coupon API
# --------------------------------------------------------------------------


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the coupon API every worker serves."""
    from ctower.coupons.service import FORWARDED_HEADER, PolicyBody, ReserveBody
    from ctower.tables.coupon_ledger import Reservation

    refs, components = msgspec.json.schema_components(
        [ReserveBody, PolicyBody, Reservation, control.CouponPolicy],
        ref_template="#/components/schemas/{name}",
    )
    components["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
        "description": "What went wrong, in words.",
    }
    components["PolicyWritten"] = {
        "type": "object",
        "properties": {"policy": refs[3], "note": {"type": "string"}},
        "required": ["policy", "note"],
    }
    components["CampaignStatus"] = {
        "type": "object",
        "description": "Policies in force, counts in the current windows, and the campaign's "
                       "state (at the store, when one is asked for).",
        "properties": {
            "campaign_id": {"type": "string"},
            "store_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "partition": {"type": "integer"},
            "known": {"type": "boolean"},
            "state": {"enum": ["open", "throttled", "paused"]},
            "reason": {"type": "string"},
            "evidence": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            "policies": {"type": "object", "additionalProperties": refs[3]},
            "windows": {
                "type": "object",
                "description": "Per scope ('*' = the campaign, else the store).",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "window_start": {"type": "integer"},
                        "window_end": {"type": "integer"},
                        "count": {"type": "integer"},
                        "cap": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                        "remaining": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                        "per_member_limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                        "members_counted": {"type": "integer"},
                    },
                },
            },
            "worker": {"type": "string", "description": "The URL of the worker that answered "
                                                        "(the campaign's owner)."},
        },
        "required": ["campaign_id", "partition", "known", "state", "windows", "worker"],
    }
    components["Overview"] = {
        "type": "object",
        "properties": {
            "partitions": {"type": "integer"},
            "owned_partitions": {"type": "array", "items": {"type": "integer"}},
            "assigned_partitions": {
                "type": "array", "items": {"type": "integer"},
                "description": "Assigned here by the group; owned once recovered."},
            "rebalance": {
                "type": "object", "additionalProperties": {"type": "boolean"},
                "description": "recovered, and the flags it is made of (rebalancing, "
                               "in_recovery, recovery_completed): why assigned partitions "
                               "are not owned yet."},
            "worker": {"type": "string"},
            "stats": {"type": "object", "additionalProperties": {"type": "integer"}},
            "layout_error": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["partitions", "owned_partitions", "worker", "stats"],
    }
    campaign = {"name": "campaign", "in": "path", "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                "description": "The campaign id (master data, or any campaign with a policy)."}
    unavailable = _error(
        "The campaign's partition is being assigned or recovered, the worker that owns it "
        "did not answer a forwarded request, the reservation could not be made durable, or "
        "the API is disabled (CTOWER_COUPON_API_TOKEN unset). Retry after Retry-After.")
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": DIALECT,
        "info": {
            "title": "ctower coupon API",
            "version": "1",
            "license": {"name": "MIT", "identifier": "MIT"},
            "description": (
                "Served by every worker on its web port (CTOWER_WORKER_WEB_PORT, default 6066). "
                "A campaign's counts live on the worker that owns its partition; a request "
                "that reaches another worker is forwarded there (once: forwarded requests "
                f"carry {FORWARDED_HEADER}), so any worker can be asked. A granted "
                "reservation is acknowledged by Kafka before it is answered."
            ),
        },
        "servers": [{"url": "http://localhost:6066", "description": "worker-1 in compose"},
                    {"url": "http://localhost:6067", "description": "worker-2 in compose"}],
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "CTOWER_COUPON_API_TOKEN (or CTOWER_COUPON_API_TOKEN_FILE)."}},
        },
        "paths": {
            "/coupons/{campaign}/reserve": {"post": {
                "operationId": "reserve",
                "summary": "Reserve one coupon of the campaign for a member at a store",
                "description": (
                    "Granted unless a cap, the member limit, a pause or a throttle at the "
                    "store says no (`reason`). Issue the coupon with `reservation_id` as its "
                    "coupon_id, so the issued event is not counted twice."),
                "security": bearer,
                "parameters": [campaign],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": refs[0]}}},
                "responses": {
                    "200": {"description": "The answer, granted or not.",
                            "content": {"application/json": {"schema": refs[2]}}},
                    "400": _error("A body that is not {store_id, member_id}."),
                    "401": _error("Missing or wrong bearer token."),
                    "404": _error("Unknown campaign."),
                    "503": unavailable,
                },
            }},
            "/coupons/{campaign}/status": {"get": {
                "operationId": "status",
                "summary": "Policies, counts and state of a campaign",
                "parameters": [campaign, {
                    "name": "store", "in": "query", "required": False,
                    "schema": {"type": "string"}, "description": "Also the store's counts "
                                                                 "and state."}],
                "responses": {
                    "200": {"description": "The campaign as its owner sees it.",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/CampaignStatus"}}}},
                    "404": _error("Unknown campaign."),
                    "503": unavailable,
                },
            }},
            "/coupons/{campaign}/policy": {"post": {
                "operationId": "setPolicy",
                "summary": "Set the campaign's policy (fields left out keep their value)",
                "description": "Written to the coupon-policy topic; in force within a second.",
                "security": bearer,
                "parameters": [campaign],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": refs[1]}}},
                "responses": {
                    "202": {"description": "Written.", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/PolicyWritten"}}}},
                    "400": _error("A bad body or an impossible policy."),
                    "401": _error("Missing or wrong bearer token."),
                    "503": unavailable,
                },
            }},
            "/coupons/": {"get": {
                "operationId": "overview",
                "summary": "The partitions this worker owns and its counters",
                "responses": {"200": {"description": "This worker.", "content": {
                    "application/json": {"schema": {
                        "$ref": "#/components/schemas/Overview"}}}}},
            }},
        },
    }


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def documents() -> dict[str, str]:
    """Relative path under ``schemas/`` -> the text of every generated file."""
    found = {path: _text(schema) for path, schema in json_schemas().items()}
    found[OPENAPI_FILE] = _text(openapi())
    return found


def stale(root: Path = ROOT) -> list[str]:
    """The generated files that are missing, differ, or are no longer generated."""
    expected = documents()
    found = [path for path, text in expected.items()
             if not (root / path).is_file() or (root / path).read_text(encoding="utf-8") != text]
    for folder in (root / JSON_DIR, (root / OPENAPI_FILE).parent):
        if folder.is_dir():
            found += [str(p.relative_to(root)) for p in sorted(folder.rglob("*.json"))
                      if str(p.relative_to(root)) not in expected]
    return sorted(found)


def write(root: Path = ROOT, say: Callable[[str], None] = print) -> list[str]:
    """(Re)write every generated file that is stale; remove the ones no type makes."""
    changed = stale(root)
    expected = documents()
    for path in changed:
        target = root / path
        if path in expected:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(expected[path], encoding="utf-8")
            say(f"wrote {target}")
        else:
            target.unlink()
            say(f"removed {target}")
    return changed


def _command() -> Any:
    import click

    @click.command("schemas")
    @click.option("--write", "mode", flag_value="write",
                  help="Rewrite the stale files (what `make schemas` runs).")
    @click.option("--check", "mode", flag_value="check", default=True,
                  help="Exit 1 naming the stale files (the default).")
    @click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=ROOT,
                  show_default=True, help="The schemas/ folder of a checkout.")
    def schemas(mode: str, root: Path) -> None:
        """The published contracts: JSON Schema of every event and control record
        (schemas/json/) and the coupon API's OpenAPI document (schemas/openapi/),
        generated from the msgspec types."""
        if mode == "write":
            changed = write(root, click.echo)
            click.echo(f"{len(changed)} file(s) changed" if changed else "up to date")
            return
        found = stale(root)
        if found:
            click.echo("stale (run `make schemas`): " + ", ".join(found), err=True)
            raise SystemExit(1)
        click.echo(f"up to date: {len(documents())} files under {root}")

    return schemas


schemas_command = _command()
