"""The webhook outbox's rows and statements (migration 0006; :mod:`recsink.webhooks` sends).

* ``webhook_events``: written by a trigger on ``recordings`` in the statement, so the
  transaction, that moves a recording to a final status (``completed``, ``discarded``, a
  final ``failed``): a crash can neither lose an event nor leave one for a change that did
  not commit. An event lives until it is fanned out.
* ``webhook_deliveries``: one per event and matching endpoint (unique, so fanning out twice,
  or on two instances at once, makes one), holding the exact body sent on every attempt,
  its state (``pending`` → ``delivered`` | ``failed``), its attempts and the lease of the
  dispatcher sending it now.
* ``webhook_endpoints``: endpoints a receiver disabled (410 Gone) until an operator
  re-enables them.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from recsink.catalog.records import iso, parse_iso
from recsink.catalog.sql import TAKEABLE, lease_due

DeliveryState = Literal["pending", "delivered", "failed"]
DELIVERY_STATES: tuple[DeliveryState, ...] = ("pending", "delivered", "failed")


def new_delivery_id() -> str:
    """A delivery's id, also its ``webhook-id`` header: ``msg_`` + 24 random hex digits
    (no ``.``, as the spec requires)."""
    return "msg_" + secrets.token_hex(12)


@dataclass(frozen=True)
class Event:
    """A recording's status change waiting to be fanned out; ``type`` is
    ``recording.<status>``, ``created_at`` (UTC) the time of the change."""

    id: str
    type: str
    record_id: str
    created_at: datetime


@dataclass
class Delivery:
    """One event to one endpoint. ``body`` is the exact JSON text sent (and signed) on
    every attempt; ``endpoint`` the endpoint's id (:func:`recsink.webhooks.endpoint_ids`);
    ``max_attempts`` None means the configured schedule's (a retry through the API allows
    one more attempt); ``last_status`` the receiver's last HTTP status, None when it gave
    none (connection error, timeout). Times are UTC."""

    id: str
    event_id: str
    endpoint: str
    type: str
    record_id: str
    body: str
    state: DeliveryState
    attempts: int
    max_attempts: int | None
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime
    lease_owner: str | None = None
    lease_until: datetime | None = None

    def resource(self, endpoint: int | None) -> dict[str, Any]:
        """The delivery as the API serves it; ``endpoint``: its endpoint's index in
        ``webhooks.endpoints`` (None when no configured endpoint has its id now)."""
        return {
            "id": self.id, "event_id": self.event_id, "endpoint": endpoint,
            "endpoint_id": self.endpoint, "type": self.type, "recording_id": self.record_id,
            "state": self.state, "attempts": self.attempts, "last_status": self.last_status,
            "last_error": self.last_error, "next_attempt_at": iso(self.next_attempt_at),
            "delivered_at": iso(self.delivered_at), "created_at": iso(self.created_at),
        }


DELIVERY_FIELDS = tuple(f.name for f in fields(Delivery))
DELIVERY_COLUMNS = ", ".join(DELIVERY_FIELDS)
DELIVERY_TIMES = frozenset({"next_attempt_at", "delivered_at", "created_at", "updated_at",
                            "lease_until"})
RETURNING = f" RETURNING {DELIVERY_COLUMNS}"
SELECT = f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"  # noqa: S608


def decode_time(value: Any) -> datetime | None:
    if isinstance(value, str):
        return parse_iso(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return None


def decode_delivery(row: Sequence[Any]) -> Delivery:
    """A row (:data:`DELIVERY_FIELDS` in order) as a :class:`Delivery`."""
    values = dict(zip(DELIVERY_FIELDS, row, strict=True))
    for name in DELIVERY_TIMES:
        values[name] = decode_time(values[name])
    return Delivery(**values)


def decode_event(row: Sequence[Any]) -> Event:
    """``id, type, record_id, created_at`` as an :class:`Event`."""
    created = decode_time(row[3])
    assert created is not None
    return Event(str(row[0]), str(row[1]), str(row[2]), created)


def marks(prefix: str, count: int) -> tuple[str, list[str]]:
    """``(:p0, :p1, …)`` and the parameter names, for a list of ``count`` values (an IN
    list of endpoint ids; at least one: ``count`` 0 gives ``(NULL)``, which matches none)."""
    names = [f"{prefix}{n}" for n in range(count)]
    return "(" + (", ".join(f":{n}" for n in names) or "NULL") + ")", names


def claim(endpoints: int, skip_locked: str) -> str:
    """Lease up to ``:_limit`` due pending deliveries to endpoints ``:_e0 …`` (not
    disabled) to ``:_owner`` until ``:_until``: ones nobody holds, or whose holder does
    not match ``:_mine`` (a catalog no other process shares: another process's lease is a
    stopped process's)."""
    where, _ = marks("_e", endpoints)
    due = (f"state = 'pending' AND next_attempt_at <= :_now AND {TAKEABLE} "  # noqa: S608
           f"AND endpoint IN {where} AND endpoint NOT IN (SELECT id FROM webhook_endpoints "
           "WHERE disabled_at IS NOT NULL)")
    return lease_due("webhook_deliveries", due, "next_attempt_at", skip_locked, RETURNING)


def insert_deliveries(count: int) -> str:
    """Insert ``count`` deliveries (parameters ``:<field><n>``), each unless its event
    has one for its endpoint already; the ids inserted."""
    columns = ("id", "event_id", "endpoint", "type", "record_id", "body", "state",
               "next_attempt_at", "created_at", "updated_at")
    rows = ", ".join("(" + ", ".join(f":{c}{n}" for c in columns) + ")" for n in range(count))
    return (f"INSERT INTO webhook_deliveries ({', '.join(columns)}) VALUES {rows} "  # noqa: S608
            "ON CONFLICT (event_id, endpoint) DO NOTHING RETURNING id")
