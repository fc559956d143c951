"""systemd's notify protocol (``Type=notify``): READY, STOPPING, STATUS and the watchdog.

systemd passes ``NOTIFY_SOCKET``, a Unix datagram socket (a path, or ``@name`` for the
abstract namespace); each notification is one datagram of ``KEY=value`` lines
(sd_notify(3)). With ``WatchdogSec=`` it also passes ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``):
the service must send ``WATCHDOG=1`` more often than that. Outside systemd there is no socket
and every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping


class Notifier:
    """Sends notifications to the socket named by ``environ["NOTIFY_SOCKET"]``, if any."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: Seconds between keep-alives: half the watchdog interval; None without a watchdog.
        self.watchdog_interval = int(usec) / 2e6 if watched and self._address else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *lines: str) -> None:
        """Send one notification (``"READY=1"``, ``"STATUS=…"``); never raises."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
        except OSError:
            pass  # systemd went away or the socket is gone: nothing to tell

    async def watchdog(self) -> None:
        """Send ``WATCHDOG=1`` every half interval while the event loop runs (cancel to
        stop): a stuck loop stops the keep-alives and systemd restarts recsink."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)
