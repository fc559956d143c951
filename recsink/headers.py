"""Values of HTTP headers that recsink reads in other servers' answers (the Sendbird
Platform API, webhook receivers)."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (RFC 9110 §10.2.3): delay-seconds, or an
    HTTP date counted from ``now`` (UTC; default: the current time), 0 when it has passed;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
