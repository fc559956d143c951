"""A webhook receiver for the tests, run as its own process:

    python -m tests.webhook_receiver PORT LOG SECRET [SECRET …]

It listens on 127.0.0.1:PORT (0: any; the port bound is written to LOG with the suffix
``.port``), verifies every request with the ``standardwebhooks`` package, once per SECRET,
and appends one JSON line per request to LOG: its headers, body, which secrets verified
it, and the status it answered.
It answers the statuses of its plan in order, then its default (200); ``PUT /plan`` with
``{"plan": [500, 500], "default": 200}`` sets them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

PLAN = web.AppKey("plan", dict)


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    headers = dict(request.headers)
    verified = []
    for signer in request.app[SIGNERS]:
        try:
            signer.verify(body, headers)
            verified.append(True)
        except WebhookVerificationError:
            verified.append(False)
    plan: dict[str, Any] = request.app[PLAN]
    status = plan["plan"].pop(0) if plan["plan"] else plan["default"]
    line = {"path": request.path_qs, "headers": {k.lower(): v for k, v in headers.items()},
            "body": body.decode(), "verified": verified, "status": status}
    with request.app[LOG].open("a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")
    return web.Response(status=status, headers=plan.get("headers", {}))


async def set_plan(request: web.Request) -> web.Response:
    request.app[PLAN].update(await request.json())
    return web.json_response(request.app[PLAN])


SIGNERS = web.AppKey("signers", list)
LOG = web.AppKey("log", Path)


async def serve(port: int, log: Path, secrets: list[str]) -> None:
    app = web.Application()
    app[SIGNERS] = [Webhook(s) for s in secrets]
    app[LOG] = log
    app[PLAN] = {"plan": [], "default": 200}
    app.router.add_put("/plan", set_plan)
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    log.with_suffix(".port").write_text(str(runner.addresses[0][1]))
    await asyncio.Event().wait()


def main() -> None:
    port, log, *secrets = sys.argv[1:]
    asyncio.run(serve(int(port), Path(log), secrets))


if __name__ == "__main__":
    main()
