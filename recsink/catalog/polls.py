"""Sendbird polls and sweep leases: their rows and statements (migration 0008;
:mod:`recsink.sources.sendbird_polls` works them).

* ``sendbird_polls``: one row per ended direct call or deleted room whose cloud recordings
  recsink asks Sendbird about (specs/sendbird.md §1: no event says a recording is ready).
  ``pending`` until every recording is settled (``done``) or ``sendbird.poll_max_age``
  seconds after ``first_seen`` (``expired``). Claimed with a lease, like pulls, so a poll
  runs on one instance of a fleet at a time and survives restarts.
* ``sendbird_sweeps``: a lease row per periodic job that one instance of a fleet runs at a
  time (``reconcile``), with the time of its last run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from recsink.catalog.outbox import decode_time
from recsink.catalog.sql import TAKEABLE, lease_due

PollKind = Literal["direct_call", "room"]
PollState = Literal["pending", "done", "expired"]


def poll_id(kind: PollKind, target_id: str) -> str:
    """A poll's id: ``direct_call:<call_id>`` or ``room:<room_id>``."""
    return f"{kind}:{target_id}"


@dataclass
class Poll:
    """One call or room recsink polls. Times are UTC; ``attempts`` counts the polls made."""

    id: str
    kind: PollKind
    target_id: str
    state: PollState
    attempts: int
    first_seen: datetime
    next_poll_at: datetime
    last_error: str | None
    updated_at: datetime
    lease_owner: str | None = None
    lease_until: datetime | None = None


POLL_FIELDS = tuple(f.name for f in fields(Poll))
_TIMES = frozenset({"first_seen", "next_poll_at", "updated_at", "lease_until"})
RETURNING = " RETURNING " + ", ".join(POLL_FIELDS)
SELECT = "SELECT " + ", ".join(POLL_FIELDS) + " FROM sendbird_polls"  # noqa: S608


def decode_poll(row: Sequence[Any]) -> Poll:
    """A row (:data:`POLL_FIELDS` in order) as a :class:`Poll`."""
    values = dict(zip(POLL_FIELDS, row, strict=True))
    for name in _TIMES:
        values[name] = decode_time(values[name])
    return Poll(**values)


_INSERT = ("INSERT INTO sendbird_polls (id, kind, target_id, state, attempts, first_seen, "
           "next_poll_at, updated_at) VALUES (:id, :kind, :target_id, 'pending', 0, :_now, "
           ":_now, :_now) ON CONFLICT (id) DO ")
#: A poll queued unless the call or room has one (a resent webhook changes nothing).
ENQUEUE = _INSERT + "NOTHING" + RETURNING
#: The same, and a ``done`` poll queued again (recordings appeared after it ended).
REOPEN = (_INSERT + "UPDATE SET state = 'pending', attempts = 0, "
          "first_seen = excluded.first_seen, next_poll_at = excluded.next_poll_at, "
          "last_error = NULL, updated_at = excluded.updated_at "
          "WHERE sendbird_polls.state = 'done'" + RETURNING)

#: Finish an attempt under its lease and give the lease up.
FINISH = ("UPDATE sendbird_polls SET state = :state, attempts = :attempts, "  # noqa: S608
          "next_poll_at = :next_poll_at, last_error = :last_error, updated_at = :_now, "
          "lease_owner = NULL, lease_until = NULL "
          "WHERE id = :_id AND lease_owner = :_owner" + RETURNING)


def claim(skip_locked: str) -> str:
    """Lease up to ``:_limit`` due pending polls to ``:_owner`` until ``:_until``: ones
    nobody holds, or (a catalog no other process shares) held by another, so stopped,
    process (``lease_owner NOT LIKE :_mine``)."""
    return lease_due("sendbird_polls", f"state = 'pending' AND next_poll_at <= :_now "
                     f"AND {TAKEABLE}", "next_poll_at", skip_locked, RETURNING)


#: Take a sweep's lease when nobody holds it and its last run is at least an interval ago.
TAKE_SWEEP = ("UPDATE sendbird_sweeps SET lease_owner = :_owner, lease_until = :_until, "  # noqa: S608
              "last_run = :_now WHERE name = :name "
              f"AND {TAKEABLE} "
              "AND (last_run IS NULL OR last_run <= :_due) RETURNING name")
END_SWEEP = ("UPDATE sendbird_sweeps SET lease_owner = NULL, lease_until = NULL "
             "WHERE name = :name AND lease_owner = :_owner RETURNING name")
