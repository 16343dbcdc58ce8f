"""Webhook mode: Telegram posts updates to an aiohttp server.

* A request without the secret token (``X-Telegram-Bot-Api-Secret-Token``)
  gets 401 and is not processed.
* The answer is sent only after the update's effects are committed (the update
  is handled inside the request), so Telegram re-sends what a crash interrupted;
  replays are skipped by update id, as in long polling.
* Several worker processes may share one PostgreSQL database behind a load
  balancer: each update has effect once (the update id is claimed in the same
  transaction as its effects), and one citizen's updates are never handled at
  the same time (the citizen's row is locked, ``SELECT … FOR UPDATE``).
* Order: Telegram opens at most ``PETITION_WEBHOOK_MAX_CONNECTIONS`` connections
  (default 1). With one, it sends the next update only after this one was
  answered, so every chat's updates run in the order they were sent, whichever
  worker gets them. More connections buy throughput, but two messages of one
  chat sent a moment apart may then race on two connections and be handled in
  either order (each still once, never at the same time).
"""

from __future__ import annotations

import logging
from datetime import datetime

from aiogram.exceptions import TelegramUnauthorizedError
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

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
from bot.settings import Settings
from dialogs.bureau import BureauConfig
from handoff.deadlines import BUREAU_TZ, calendar_warning

log = logging.getLogger(__name__)


async def run_webhook(settings: Settings, bureau: BureauConfig, *, set_webhook: bool = True) -> int:
    assert settings.bot_token and settings.webhook_secret
    engine, sessionmaker = await open_database(settings)
    bot = telegram_bot(settings)
    dp = create_dispatcher(settings, sessionmaker, bureau, pacer=telegram_pacer(settings))
    app = web.Application()
    SimpleRequestHandler(dispatcher=dp, bot=bot, secret_token=settings.webhook_secret,
                         handle_in_background=False).register(app, path=settings.webhook_path)
    stop = stop_on_signals()
    runner = web.AppRunner(app)
    try:
        if warning := calendar_warning(datetime.now(BUREAU_TZ).date()):
            log.error("%s", warning)
        me = await bot.get_me()
        if set_webhook:
            assert settings.webhook_url
            await bot.set_webhook(url=settings.webhook_url.rstrip("/") + settings.webhook_path,
                                  secret_token=settings.webhook_secret, allowed_updates=ALLOWED_UPDATES,
                                  max_connections=settings.webhook_max_connections, drop_pending_updates=False)
            await set_commands(bot, settings.default_locale)
        await runner.setup()
        await web.TCPSite(runner, settings.webhook_host, settings.webhook_port).start()
        log.info("webhook for @%s on %s:%s%s", me.username, settings.webhook_host, settings.webhook_port,
                 settings.webhook_path)
        async with background_work(dp, sessionmaker, bot, stop):
            await stop.wait()
            # Stop taking requests first; requests in flight finish (aiohttp waits for them).
            await runner.cleanup()
        return 0
    except TelegramUnauthorizedError:
        log.error("Telegram rejected the bot token (401): check PETITION_BOT_TOKEN")
        return 2
    finally:
        await runner.cleanup()
        await bot.session.close()
        await engine.dispose()
        log.info("stopped")
