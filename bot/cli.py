"""``petition-bot``: run (long polling), migrate, chat (the bot in a terminal), report (KPIs).

Only wiring lives here: settings → logging → database → dispatcher → run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import queue
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

from bot.settings import Settings, SettingsError, load_settings
from dialogs.bureau import BureauConfigError, load_bureau_config
from storage import crypto
from storage.db import create_engine, migrate

log = logging.getLogger("bot")

EXIT_CONFIG = 2


@contextmanager
def logging_off_the_event_loop() -> Iterator[None]:
    """While the bot runs, log lines are written by a thread of their own: the
    event loop only queues them. Writing to a stream lets go of the GIL, and
    getting it back can wait behind the database's thread (measured with
    ``os.urandom``, which does the same: ~1 ms a call under load, 0.5 µs alone);
    at INFO, aiogram writes a line for every update."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    if not handlers:  # nothing configured: leave logging's last resort in place
        yield
        return
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(lines, *handlers, respect_handler_level=True)
    root.handlers = [QueueHandler(lines)]
    listener.start()
    try:
        yield
    finally:
        root.handlers = handlers  # lines from now on are written directly again
        listener.stop()  # after writing what is still queued


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petition-bot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve Telegram by long polling, or by webhook (needs PETITION_BOT_TOKEN)")
    run.add_argument("--webhook", action="store_true",
                     help="serve a webhook (PETITION_WEBHOOK_URL, _SECRET, _HOST, _PORT, _PATH) instead of polling")
    run.add_argument("--no-set-webhook", action="store_true",
                     help="with --webhook: do not register the webhook with Telegram (extra workers)")
    sub.add_parser("migrate", help="bring the database schema up to date")
    chat = sub.add_parser("chat", help="talk to the bot in this terminal (no token, no network)")
    chat.add_argument("--user-id", type=int, default=1001, help="the simulated citizen's Telegram id")
    chat.add_argument("--language", choices=["zh", "en"], default=None,
                      help="the simulated Telegram client's language (default: PETITION_DEFAULT_LOCALE)")
    # -- personal data --
    sub.add_parser("new-key", help="print a new key for PETITION_DATA_KEYS")
    sub.add_parser("rotate-keys", help="re-encrypt personal data under the first of PETITION_DATA_KEYS")
    purge = sub.add_parser("purge", help="erase personal data of cases that ended long ago")
    purge.add_argument("--days", type=int, default=None,
                       help="cases that ended more than this many days ago (default: PETITION_RETENTION_DAYS)")
    # -- report (KPIs; bot/report.py) --
    report = sub.add_parser("report", help="KPIs for a period: table, CSV or XLSX (docs/KPI.md)")
    report.add_argument("--from", dest="start", required=True, metavar="DATE", help="first day, YYYY-MM-DD")
    report.add_argument("--to", dest="end", required=True, metavar="DATE", help="last day, YYYY-MM-DD (included)")
    report.add_argument("--unit", metavar="CODE", help="only this handling unit's cases")
    report.add_argument("--format", choices=["table", "csv", "xlsx"], default="table")
    report.add_argument("--out", type=Path, metavar="FILE", help="write here (required for xlsx)")
    report.add_argument("--lang", choices=["zh", "en"], default=None,
                        help="language of headers and names (default: PETITION_DEFAULT_LOCALE)")
    report.add_argument("--other-channels", type=int, default=None, metavar="N",
                        help="petitions received in the period by letter, visit or phone (for the online share); "
                             "default: the counts entered with /channels in the staff chat")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        bureau = load_bureau_config(settings.bureau_config)
    except (SettingsError, BureauConfigError) as exc:
        print(f"petition-bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=settings.log_level if args.command not in ("chat", "report") else "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "new-key":
            print(crypto.new_key())
            return 0
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "rotate-keys":
            return asyncio.run(_rotate(settings))
        if args.command == "purge":
            days = args.days if args.days is not None else settings.retention_days
            if days <= 0:
                print("petition-bot: PETITION_RETENTION_DAYS: set it (or --days) to a number of days", file=sys.stderr)
                return EXIT_CONFIG
            return asyncio.run(_purge(settings, days))
        if args.command == "chat":
            from bot.chat import run_chat

            return asyncio.run(run_chat(settings, bureau, user_id=args.user_id,
                                        language=args.language or settings.default_locale))
        if args.command == "report":
            from bot.report import run_report

            return asyncio.run(run_report(settings, bureau, start=args.start, end=args.end, unit=args.unit,
                                          fmt=args.format, out=args.out, lang=args.lang,
                                          other_channels=args.other_channels))
        if not settings.bot_token:
            print("petition-bot: PETITION_BOT_TOKEN: required for `run` "
                  "(try `petition-bot chat` to use the bot without Telegram)", file=sys.stderr)
            return EXIT_CONFIG
        if args.webhook:
            missing = [name for name, value in (("PETITION_WEBHOOK_SECRET", settings.webhook_secret),
                                                ("PETITION_WEBHOOK_URL", settings.webhook_url or args.no_set_webhook))
                       if not value]
            if missing:
                print(f"petition-bot: {missing[0]}: required for `run --webhook`", file=sys.stderr)
                return EXIT_CONFIG
            from bot.webhook import run_webhook

            with logging_off_the_event_loop():
                return asyncio.run(run_webhook(settings, bureau, set_webhook=not args.no_set_webhook))
        from bot.polling import run_polling

        with logging_off_the_event_loop():
            return asyncio.run(run_polling(settings, bureau))
    except SettingsError as exc:  # found while opening the database (e.g. the data keys)
        print(f"petition-bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


async def _migrate(settings: Settings) -> int:
    engine = create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    print("database is up to date")
    return 0


async def _rotate(settings: Settings) -> int:
    from bot.app import open_database
    from handoff.privacy import rotate_keys

    engine, sessionmaker = await open_database(settings)
    try:
        count = await rotate_keys(sessionmaker)
    finally:
        await engine.dispose()
    print(f"re-encrypted {count} rows under the first key; older keys can now be removed")
    return 0


async def _purge(settings: Settings, days: int) -> int:
    from datetime import UTC, datetime

    from bot.app import open_database
    from handoff.privacy import purge

    engine, sessionmaker = await open_database(settings)
    total = 0
    try:
        while True:
            async with sessionmaker() as session, session.begin():
                erased = await purge(session, datetime.now(UTC), days, keep_text=settings.retention_keep_text)
            total += erased
            if erased == 0:
                break
    finally:
        await engine.dispose()
    print(f"personal data erased from {total} cases that ended more than {days} days ago")
    return 0
