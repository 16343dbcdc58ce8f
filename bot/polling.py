"""Long polling that never confirms an update before its effects are committed.

Telegram confirms updates when getUpdates is called with a higher offset. This
loop asks for a batch, processes it completely (chats in parallel, each chat's
updates in order), and only then asks again with the next offset. A crash
mid-batch therefore replays the batch on restart, and the replays are skipped
by update id (``processed_updates``). Pending updates are never dropped at
start: what citizens sent while the bot was down is processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime

from aiogram import Bot, Dispatcher
from aiogram.exceptions import (
    TelegramConflictError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import Update

from bot.app import (
    ALLOWED_UPDATES,
    background_work,
    create_dispatcher,
    open_database,
    set_commands,
    stop_on_signals,
    telegram_bot,
    telegram_pacer,
)
from bot.middlewares import UpdatePipeline, feed_each
from bot.settings import Settings
from dialogs.bureau import BureauConfig
from handoff.deadlines import BUREAU_TZ, calendar_warning

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0


async def process_batch(dp: Dispatcher, bot: Bot, updates: Sequence[Update],
                        done: Callable[[int], None] | None = None) -> None:
    """Every update of a batch: in one transaction when the dispatcher has the
    product's pipeline (group commit, see ``UpdatePipeline.run_batch``), else
    each on its own; each chat's in order. ``done`` is told each update id once
    its replies are sent."""
    pipeline: UpdatePipeline | None = dp.workflow_data.get("pipeline")
    if pipeline is None:
        await feed_each(dp, bot, updates, done)
    else:
        await pipeline.run_batch(dp, bot, updates, done)


class Poller:
    def __init__(self, dp: Dispatcher, bot: Bot, timeout: int) -> None:
        self.dp = dp
        self.bot = bot
        self.timeout = timeout
        self.offset: int | None = None

    async def run(self, stop: asyncio.Event) -> int:
        backoff = 1.0
        while not stop.is_set():
            try:
                updates = await self._fetch(stop)
            except TelegramConflictError:
                log.error("another process is polling with this bot token (409 Conflict); "
                          "stop it or use webhook mode. Retrying in %.0f s", backoff)
                await _sleep(stop, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except TelegramRetryAfter as exc:
                await _sleep(stop, exc.retry_after)
                continue
            except (TelegramNetworkError, TelegramServerError) as exc:
                log.warning("getUpdates failed (%s); retrying in %.1f s", exc, backoff)
                await _sleep(stop, backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except TelegramUnauthorizedError:
                log.error("Telegram rejected the bot token (401): check PETITION_BOT_TOKEN")
                return 2
            backoff = 1.0
            if updates is None:
                break
            if updates:
                await process_batch(self.dp, self.bot, updates)
                self.offset = updates[-1].update_id + 1
        await self._confirm()
        return 0

    async def _fetch(self, stop: asyncio.Event) -> list[Update] | None:
        """The next batch, or None when asked to stop while waiting."""
        fetch = asyncio.ensure_future(self.bot.get_updates(
            offset=self.offset, timeout=self.timeout, allowed_updates=ALLOWED_UPDATES,
            request_timeout=self.timeout + 10))
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if fetch in done:
            stopping.cancel()
            return fetch.result()
        fetch.cancel()  # nothing fetched was processed, so nothing is confirmed
        return None

    async def _confirm(self) -> None:
        """Tell Telegram the last batch is done, so a restart does not replay it."""
        if self.offset is None:
            return
        try:
            await self.bot.get_updates(offset=self.offset, timeout=0, limit=1,
                                       allowed_updates=ALLOWED_UPDATES)
        except Exception as exc:  # replay is harmless: updates are deduplicated
            log.info("could not confirm the last batch (%s); it will be skipped on restart", exc)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def run_polling(settings: Settings, bureau: BureauConfig) -> int:
    assert settings.bot_token
    engine, sessionmaker = await open_database(settings)
    bot = telegram_bot(settings)
    dp = create_dispatcher(settings, sessionmaker, bureau, pacer=telegram_pacer(settings))
    stop = stop_on_signals()
    try:
        if warning := calendar_warning(datetime.now(BUREAU_TZ).date()):
            log.error("%s", warning)
        me = await bot.get_me()
        log.info("polling as @%s", me.username)
        await bot.delete_webhook(drop_pending_updates=False)
        await set_commands(bot, settings.default_locale)
        async with background_work(dp, sessionmaker, bot, stop):
            return await Poller(dp, bot, settings.polling_timeout).run(stop)
    except TelegramUnauthorizedError:
        log.error("Telegram rejected the bot token (401): check PETITION_BOT_TOKEN")
        return 2
    finally:
        await bot.session.close()
        await engine.dispose()
        log.info("stopped")
