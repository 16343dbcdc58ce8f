"""The one place the dispatcher is assembled; the CLI, the terminal chat and the
tests all call :func:`create_dispatcher`."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.base import BaseSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.types import BotCommand, BotCommandScopeAllPrivateChats, LinkPreviewOptions
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.middlewares import Clock, FloodGate, UpdatePipeline
from bot.routers.citizen import build_citizen_router, build_filing_router, filing_lane
from bot.routers.followup import build_followup_router
from bot.routers.staff import build_staff_router
from bot.settings import Settings, SettingsError
from bot.transport import TelegramTransport
from dialogs.bureau import BureauConfig
from dialogs.engine import IntakeEngine, utcnow
from dialogs.i18n import LOCALES, t
from handoff.cards import CardRenderer
from handoff.clocks import Clocks
from handoff.followup import FollowUpService
from handoff.intake import IntakeService
from handoff.maintenance import Maintenance
from handoff.outbox import OutboxWorker, Wakeup
from handoff.pacer import Pacer
from handoff.queue import QueueService
from handoff.relay import RelayService
from handoff.staff import StaffService
from storage import crypto
from storage.db import create_engine, create_sessionmaker, is_sqlite, migrate
from storage.repositories import CaseRepository, citizen_cache

log = logging.getLogger(__name__)

#: Updates the bot asks Telegram for (others are never delivered).
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
COMMANDS = ("start", "new", "status", "mycases", "help", "cancel", "back", "language")


def create_bot(token: str, session: BaseSession | None = None) -> Bot:
    return Bot(token, session=session, default=DefaultBotProperties(
        parse_mode=ParseMode.HTML, link_preview=LinkPreviewOptions(is_disabled=True)))


def telegram_bot(settings: Settings) -> Bot:
    """The bot for ``run``: Telegram, or the self-hosted Bot API server of PETITION_TELEGRAM_API_URL."""
    assert settings.bot_token
    session = (AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
               if settings.telegram_api_url else None)
    return create_bot(settings.bot_token, session=session)


def staff_chat_ids(settings: Settings, bureau: BureauConfig) -> set[int]:
    ids = {u.chat_id for u in bureau.units if u.chat_id is not None}
    if settings.staff_chat_id is not None:
        ids.add(settings.staff_chat_id)
    return ids


def create_dispatcher(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession],
                      bureau: BureauConfig, clock: Clock = utcnow, pacer: Pacer | None = None) -> Dispatcher:
    """The bot. ``pacer``, when given, paces the direct replies too and is the
    outbox worker's (one count of what goes to Telegram)."""
    engine = IntakeEngine(bureau, clock)
    staff_locale = settings.default_locale
    wakeup = Wakeup()
    clocks = Clocks(bureau, settings.staff_chat_id, staff_locale)
    relay = RelayService(settings.staff_chat_id, staff_locale)
    followup = FollowUpService(bureau, settings.staff_chat_id, staff_locale,
                               max_failures_per_user=settings.status_max_failures_per_user,
                               max_failures_per_number=settings.status_max_failures_per_number, clocks=clocks)
    # aiogram's FSM is off: conversations live in our tables. Left on, its
    # MemoryStorage keeps a record for every chat ever seen (a slow leak).
    intake = IntakeService(engine, clocks, relay, settings.staff_chat_id, staff_locale)
    dp = Dispatcher(
        disable_fsm=True,
        settings=settings, bureau=bureau,
        intake=intake,
        followup=followup,
        relay=relay,
        staff_service=StaffService(bureau, staff_locale, frozenset(settings.admin_ids),
                                   settings.staff_chat_id, clock, followup, clocks),
        clocks=clocks,
        queue=QueueService(bureau, staff_locale),
        outbox_wakeup=wakeup,
    )
    flood = FloodGate(settings.flood_limit, settings.flood_window_seconds)
    pipeline = UpdatePipeline(sessionmaker, clock, settings.default_locale, wakeup, flood, prefetch=intake.prefetch,
                              lane=filing_lane, citizen_cache=citizen_cache(sessionmaker, settings.citizen_cache_size))
    dp.update.outer_middleware(pipeline)
    dp["pipeline"] = pipeline  # polling hands it whole batches (group commit)
    if pacer is not None:
        pipeline.pacer = pacer
        dp["pacer"] = pacer
    dp.include_router(build_filing_router())  # first: most updates are a filing's answers
    dp.include_router(build_followup_router())
    dp.include_router(build_citizen_router())
    chats = staff_chat_ids(settings, bureau)
    if chats:
        dp.include_router(build_staff_router(chats))
    return dp


def create_maintenance(dp: Dispatcher, sessionmaker: async_sessionmaker[AsyncSession],
                       clock: Clock = utcnow, bot: Bot | None = None) -> Maintenance:
    """Expiring ratings and windows, pruning dedupe records, outbox rows done
    with and ended counts of failed lookups, the retention purge, and (given
    the bot) sending again replies Telegram did not take (started by ``run``
    and ``chat``)."""
    settings: Settings = dp["settings"]
    maintenance = Maintenance(sessionmaker, dp["bureau"], clock, dp["outbox_wakeup"], clocks=dp["clocks"],
                              lookups=dp["followup"], retention_days=settings.retention_days,
                              retention_keep_text=settings.retention_keep_text)
    if bot is not None:
        pipeline: UpdatePipeline = dp["pipeline"]
        maintenance.jobs.append(partial(pipeline.resend_unsent, bot))
    return maintenance


def telegram_pacer(settings: Settings) -> Pacer:
    """One count of what goes to Telegram, for the replies and the outbox."""
    return Pacer(global_per_second=settings.telegram_messages_per_second)


def stop_on_signals() -> asyncio.Event:
    """An event SIGINT and SIGTERM set: the way ``run`` is asked to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


#: How long the event loop's thread may keep the GIL while another thread
#: waits for it (CPython's default is 5 ms). The bot's threads — aiosqlite's
#: connection, the query-code maker (``handoff.codes``) — each need the GIL
#: back for a moment after every call that let go of it; with the default, a
#: busy loop made each such moment wait up to 5 ms: a query code (~3 ms of
#: Argon2id) took ~8–13 ms to make, a surge of filings outran the maker, and
#: confirms made their own code inside their batch (BENCHMARKS finding 27).
GIL_SWITCH_INTERVAL = 0.001


def settle_process() -> None:
    """Once start-up is over, before serving: what every way of running the bot does.

    * Take what start-up made (modules, schemas, catalogs, the bureau's
      configuration) out of the garbage collector's sight. Those objects live
      as long as the process, yet every full collection walks them all:
      measured here, one took ~150 ms, during which every update in flight
      waits. Frozen, a full collection walks only what came after.
    * Hand the GIL to a waiting thread sooner (:data:`GIL_SWITCH_INTERVAL`).
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


async def ready_to_serve(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """The last step of start-up, before the first update: compile ahead the
    statements whose first compile is long enough to hold up a batch
    (``CaseRepository.compile_ahead``), then :func:`settle_process`, so what
    they leave behind is frozen with the rest of start-up. A database that is
    away at this moment does not stop the bot: the first batch that needs a
    statement compiles it, as it would have."""
    try:
        async with sessionmaker() as session, session.begin():
            await CaseRepository(session).compile_ahead()
    except (SQLAlchemyError, OSError) as exc:
        log.warning("could not compile the petitioner query ahead (%s); the first filings will", exc)
    settle_process()


@asynccontextmanager
async def background_work(dp: Dispatcher, sessionmaker: async_sessionmaker[AsyncSession], bot: Bot,
                          stop: asyncio.Event) -> AsyncIterator[None]:
    """The outbox worker and the maintenance tick while the bot runs. On the way
    out they stop, and which replies went out is written, so none is sent again.
    Start-up is over by then (:func:`ready_to_serve`)."""
    await ready_to_serve(sessionmaker)
    tasks = [asyncio.create_task(create_outbox_worker(dp, sessionmaker, bot).run(stop)),
             asyncio.create_task(create_maintenance(dp, sessionmaker, bot=bot).run(stop))]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        pipeline: UpdatePipeline = dp["pipeline"]
        try:
            await pipeline.record_sent()
        except Exception as exc:  # at worst a few replies are sent once more later
            log.warning("could not record the last sent replies: %s", exc)


def create_outbox_worker(dp: Dispatcher, sessionmaker: async_sessionmaker[AsyncSession], bot: Bot,
                         clock: Clock = utcnow, pacer: Pacer | None = None) -> OutboxWorker:
    """The delivery worker for the dispatcher's outbox (started by ``run`` and ``chat``)."""
    settings: Settings = dp["settings"]
    staff: StaffService = dp["staff_service"]
    cards = CardRenderer(dp["bureau"], staff)
    alerts = [settings.staff_chat_id] if settings.staff_chat_id is not None else list(settings.admin_ids)
    locale = settings.default_locale
    return OutboxWorker(
        sessionmaker=sessionmaker, transport=TelegramTransport(bot), render_card=cards.render,
        clock=clock, pacer=pacer or dp.workflow_data.get("pacer") or Pacer(), alert_chat_ids=alerts,
        wakeup=dp["outbox_wakeup"],
        alert_text=lambda row: str(t(locale, "staff.delivery_failed", id=row.id, chat=row.chat_id,
                                     error=row.last_error or "")),
        on_sent=staff.delivered, max_attempts=settings.outbox_max_attempts,
    )


async def set_commands(bot: Bot, default_locale: str) -> None:
    """The command menu, in each language Telegram clients may ask for."""
    scope = BotCommandScopeAllPrivateChats()
    for locale in LOCALES:
        commands = [BotCommand(command=c, description=t(locale, f"commands.{c}")) for c in COMMANDS]
        await bot.set_my_commands(commands, scope=scope, language_code=locale)
        if locale == default_locale:
            await bot.set_my_commands(commands, scope=scope)


def configure_encryption(settings: Settings) -> None:
    """The personal-data keys; only the embedded SQLite default may generate its own."""
    if not settings.data_keys and not is_sqlite(settings.database_url):
        raise SettingsError("PETITION_DATA_KEYS: required with PostgreSQL (generate one with "
                            "`petition-bot new-key`)")
    key_file = settings.data_key_file
    if key_file is None:
        database = make_url(settings.database_url).database or "petitions.db"
        key_file = Path(database if database != ":memory:" else "petitions.db").with_name(
            Path(database).name + ".key")
    try:
        crypto.configure(crypto.keys_from(settings.data_keys, key_file))
    except crypto.DataKeyError as exc:
        raise SettingsError(f"PETITION_DATA_KEYS: {exc}") from None


async def open_database(settings: Settings) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    """Engine and sessionmaker; the embedded SQLite is migrated on start."""
    configure_encryption(settings)
    engine = create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    if is_sqlite(settings.database_url):
        await migrate(engine)
    return engine, create_sessionmaker(engine)
