"""The one place the dispatcher is assembled; the CLI, the terminal chat and the
tests all call :func:`create_dispatcher`."""

from __future__ import annotations

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.base import BaseSession
from aiogram.enums import ParseMode
from aiogram.types import BotCommand, BotCommandScopeAllPrivateChats, LinkPreviewOptions
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.middlewares import Clock, UpdatePipeline
from bot.routers.citizen import build_citizen_router
from bot.settings import Settings
from dialogs.bureau import BureauConfig
from dialogs.engine import IntakeEngine, utcnow
from dialogs.i18n import LOCALES, t
from handoff.intake import IntakeService
from handoff.status import StatusService
from storage.db import create_engine, create_sessionmaker, is_sqlite, migrate

#: Updates the bot asks Telegram for (others are never delivered).
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
COMMANDS = ("start", "new", "status", "help", "cancel", "back", "language")


def create_bot(token: str, session: BaseSession | None = None) -> Bot:
    return Bot(token, session=session, default=DefaultBotProperties(
        parse_mode=ParseMode.HTML, link_preview=LinkPreviewOptions(is_disabled=True)))


def create_dispatcher(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession],
                      bureau: BureauConfig, clock: Clock = utcnow) -> Dispatcher:
    engine = IntakeEngine(bureau, clock)
    dp = Dispatcher(
        settings=settings, bureau=bureau,
        intake=IntakeService(engine),
        status=StatusService(bureau.bureau.code),
    )
    dp.update.outer_middleware(UpdatePipeline(sessionmaker, clock, settings.default_locale))
    dp.include_router(build_citizen_router())
    return dp


async def set_commands(bot: Bot, default_locale: str) -> None:
    """The command menu, in each language Telegram clients may ask for."""
    scope = BotCommandScopeAllPrivateChats()
    for locale in LOCALES:
        commands = [BotCommand(command=c, description=t(locale, f"commands.{c}")) for c in COMMANDS]
        await bot.set_my_commands(commands, scope=scope, language_code=locale)
        if locale == default_locale:
            await bot.set_my_commands(commands, scope=scope)


async def open_database(settings: Settings) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    """Engine and sessionmaker; the embedded SQLite is migrated on start."""
    engine = create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    if is_sqlite(settings.database_url):
        await migrate(engine)
    return engine, create_sessionmaker(engine)
