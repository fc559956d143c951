"""``recsink serve | check-config | migrate | reindex | erasures reapply [--from FILE]
[--config PATH]``.

``recsink migrate`` brings the catalog's schema up to date and exits (ahead of a rolling
upgrade of a fleet; ``serve`` migrates at start too); it prints ``{"catalog", "from", "to"}``.
``recsink reindex`` rebuilds the catalog from the S3 bucket (prints counts).
``recsink erasures reapply`` applies every erasure and API deletion of the erasure log
(``retention.erasure_log``, or ``--from FILE``) again, after a restored catalog or storage
brought recordings back; it prints a JSON report (:func:`recsink.retention.reapply_log`).

Exit status: 0 on success, 2 when the configuration is invalid (the message names each bad
key), 1 when serving, migrating or reindexing fails (storage or catalog unusable, or a
catalog migrated by a newer recsink).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from recsink import __version__, logs
from recsink.config import ConfigError, Settings, load_settings, mask_dsn


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsink", description="Call-recording sink: stores Kazoo recordings exactly once.")
    parser.add_argument("--version", action="version", version=f"recsink {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("serve", "run the HTTP server"),
                       ("check-config", "validate the configuration and print it, "
                                        "secrets masked"),
                       ("migrate", "bring the catalog's schema up to date, then exit"),
                       ("reindex", "rebuild the catalog from the S3 bucket's object metadata "
                                   "(storage.backend = \"s3\")")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--config", type=Path, metavar="PATH",
            help="TOML configuration file (default: built-in defaults; RECSINK_* environment "
                 "variables override either)")
    erasures = commands.add_parser(
        "erasures", help="erasures of the erasure log (retention.erasure_log)",
        description="erasures of the erasure log (retention.erasure_log)")
    actions = erasures.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = ("apply every erasure and deletion of the log again (after restoring a backup "
            "of the catalog or the storage); prints a JSON report")
    reapply = actions.add_parser("reapply", help=text, description=text)
    reapply.add_argument("--from", dest="log", type=Path, metavar="FILE",
                         help="the erasure log to read (default: retention.erasure_log)")
    reapply.add_argument("--config", type=Path, metavar="PATH",
                         help="TOML configuration file")
    return parser


def _effective(settings: Settings) -> str:
    """The configuration as JSON, every secret shown as ``**********`` (the catalog URL
    with only its password masked)."""
    effective = settings.model_dump(mode="json")
    effective["catalog"]["url"] = mask_dsn(settings.catalog.url.get_secret_value())
    return json.dumps(effective, indent=2)


def _log_secrets(settings: Settings) -> list[str]:
    """What the logs must never show: every configured secret, and each ``auth.basic``
    entry's ``user:password`` (whose Base64 is what a client sends)."""
    basic = [f"{c.username}:{c.password.get_secret_value()}" for c in settings.auth.basic]
    return settings.secrets() + basic


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"recsink: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(_effective(settings))
        print("configuration OK", file=sys.stderr)
        return 0
    if args.command == "reindex":
        return _reindex(settings)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "erasures":
        return _reapply(settings, args.log or settings.retention.erasure_log)

    import uvloop

    from recsink.server import DescriptorShortage, serve  # aiohttp is only needed to serve

    logs.configure(settings.log.level, _log_secrets(settings))
    try:
        if settings.server.event_loop == "uvloop":
            uvloop.run(serve(settings))
        else:
            asyncio.run(serve(settings))
    except DescriptorShortage as exc:  # the environment, not a bug: no traceback
        logs.get_logger().error("server.failed", error=str(exc))
        return 1
    except Exception as exc:
        logs.get_logger().error("server.failed", error=str(exc), exc_info=exc)
        return 1
    return 0


def _migrate(settings: Settings) -> int:
    from recsink.catalog import open_catalog

    async def migrate() -> dict[str, object]:
        catalog = await open_catalog(settings.catalog, migrate=False)
        try:
            before = await catalog.schema_version()
        finally:
            await catalog.close()
        catalog = await open_catalog(settings.catalog)
        try:
            return {"catalog": catalog.describe(), "from": before,
                    "to": await catalog.schema_version()}
        finally:
            await catalog.close()

    logs.configure(settings.log.level, _log_secrets(settings), stream=sys.stderr)
    try:
        result = asyncio.run(migrate())
    except Exception as exc:
        logs.get_logger().error("migrate.failed", error=str(exc))
        print(f"recsink: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def _reindex(settings: Settings) -> int:
    if settings.storage.backend != "s3":
        print("recsink: reindex needs storage.backend = \"s3\"", file=sys.stderr)
        return 2
    from recsink.reindex import reindex

    logs.configure(settings.log.level, _log_secrets(settings), stream=sys.stderr)
    try:
        counts = asyncio.run(reindex(settings))
    except Exception as exc:
        logs.get_logger().error("reindex.failed", error=str(exc), exc_info=exc)
        return 1
    print(json.dumps(counts))
    return 0


def _reapply(settings: Settings, path: Path) -> int:
    from recsink.retention import reapply_log

    logs.configure(settings.log.level, _log_secrets(settings), stream=sys.stderr)
    try:
        report = asyncio.run(reapply_log(settings, path))
    except OSError as exc:
        print(f"recsink: cannot read the erasure log {path}: {exc.strerror}", file=sys.stderr)
        return 1
    except Exception as exc:
        logs.get_logger().error("reapply.failed", error=str(exc), exc_info=exc)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
