"""``petition-bot chat``: the real dispatcher and handlers, driven from a terminal.

Typed lines become Telegram messages from a simulated citizen; the bot's
answers are printed as plain text with their buttons numbered. Commands of the
terminal itself:

  /press N | /press <label>   press a button of the latest keyboard
  /contact <phone>            share a phone number (Telegram's "share my phone")
  /photo [caption]            send a photo          /document [name]  send a file
  /sticker, /voice            send a sticker or a voice note
  /as staff | /as citizen     type as a staff member in the staff chat, or as the citizen again
  /quit                       leave

When stdin is not a terminal, one message is read per line, so a whole filing
can be scripted. Messages to the staff chat are printed marked as such.
"""

from __future__ import annotations

import asyncio
import html
import re
import sys
from typing import Any

from aiogram.methods import EditMessageText, SendDocument, SendMediaGroup, SendMessage, SendPhoto, TelegramMethod
from aiogram.types import InlineKeyboardMarkup, ReplyKeyboardMarkup
from sqlalchemy import func, select

from bot.app import create_bot, create_dispatcher, create_maintenance, create_outbox_worker, open_database
from bot.settings import Settings
from bot.simulator import FakeTelegram, Simulator, SimUser
from dialogs.bureau import BureauConfig
from handoff.outbox import OutboxWorker
from handoff.pacer import Pacer
from storage.models import ProcessedUpdate

_TAG = re.compile(r"<[^>]+>")
FAKE_TOKEN = "1000000:local-chat-without-telegram-000000"


def plain(text: str) -> str:
    return html.unescape(_TAG.sub("", text))


#: Used when no staff chat or admin is configured: the local chat still shows the staff side.
LOCAL_STAFF_CHAT = -1000000000001
LOCAL_ADMIN = 1


class Printer:
    def __init__(self, citizen_chat: int, staff_chat: int | None) -> None:
        self.citizen_chat = citizen_chat
        self.staff_chat = staff_chat

    def __call__(self, method: TelegramMethod[Any]) -> None:
        if isinstance(method, SendMessage | EditMessageText) and method.chat_id is not None:
            text, markup = method.text, method.reply_markup
        elif isinstance(method, SendPhoto | SendDocument):
            text, markup = f"[{type(method).__name__[4:].lower()}] {method.caption or ''}", None
        elif isinstance(method, SendMediaGroup):
            text, markup = f"[album of {len(method.media)}]", None
        else:
            return
        chat = int(method.chat_id)  # type: ignore[arg-type]
        marker = "bot" if chat == self.citizen_chat else (
            "staff chat" if chat == self.staff_chat else f"private chat {chat}")
        if isinstance(method, EditMessageText):
            marker += ", card updated"
        print(f"\n[{marker}] " + plain(text or "").replace("\n", "\n    "))
        if isinstance(markup, InlineKeyboardMarkup):
            labels = [b.text for row in markup.inline_keyboard for b in row]
            for i, label in enumerate(labels, 1):
                print(f"    [{i}] {label}")
        elif isinstance(markup, ReplyKeyboardMarkup):
            for row in markup.keyboard:
                for b in row:
                    print(f"    [{b.text}] (type /contact <phone> to share a number)")
        sys.stdout.flush()


async def run_chat(settings: Settings, bureau: BureauConfig, *, user_id: int, language: str) -> int:
    settings = settings.model_copy(update={
        "staff_chat_id": settings.staff_chat_id or LOCAL_STAFF_CHAT,
        "admin_ids": settings.admin_ids or [LOCAL_ADMIN],
        # One person at a keyboard, or a script: nobody to protect the bot from.
        "flood_limit": 10**9})
    engine, sessionmaker = await open_database(settings)
    printer = Printer(user_id, settings.staff_chat_id)
    telegram = FakeTelegram(on_call=printer)
    bot = create_bot(settings.bot_token or FAKE_TOKEN, session=telegram)
    dp = create_dispatcher(settings, sessionmaker, bureau)
    # No Telegram here, so no rate limits to respect: deliver at once, in order.
    worker = create_outbox_worker(dp, sessionmaker, bot, pacer=Pacer(
        per_chat_interval=1e-6, group_per_minute=10**9, global_per_second=10**9, safety=0.0))
    maintenance = create_maintenance(dp, sessionmaker, bot=bot)
    await maintenance.tick()
    sim = Simulator(dp, bot, telegram, batches=True)  # each line as polling delivers it
    # Continue the numbering of earlier runs so update ids are never reused.
    async with sessionmaker() as session:
        last = await session.scalar(select(func.max(ProcessedUpdate.update_id)))
    sim.start_update_ids((last or 0) + 1)
    citizen = sim.citizen(user_id=user_id, language_code=language)
    staff = sim.staff(settings.admin_ids[0], settings.staff_chat_id or LOCAL_STAFF_CHAT)
    actor = citizen
    interactive = sys.stdin.isatty()
    if interactive:
        print("petition-bot chat — type a message; /press N presses a button; /quit leaves.")
    try:
        await citizen.send("/start") if interactive else None
        while True:
            line = await _read_line(interactive)
            if line is None or line.strip() == "/quit":
                break
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.strip() in ("/as staff", "/as citizen"):
                actor = staff if line.strip().endswith("staff") else citizen
                who = f"staff member {staff.user.id} in the staff chat" if actor is staff else "citizen"
                print(f"    (now typing as the {who})")
                continue
            if not interactive:
                print(f"\n[{'staff' if actor is staff else 'you'}] {line}")
            try:
                await _act(actor, line)
            except LookupError as exc:
                print(f"    ! {exc}")
            await _deliver(worker)
    finally:
        await bot.session.close()
        await engine.dispose()
    return 0


async def _deliver(worker: OutboxWorker) -> None:
    """Send what the last message queued (cards, notices), before reading the next line."""
    for _ in range(1000):
        wait = await worker.deliver_due()
        if wait is None or wait > 0.5:
            return
        if wait > 0:
            await asyncio.sleep(wait)


async def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return await asyncio.to_thread(input, "\nyou> ")
        except EOFError:
            return None
    line = await asyncio.to_thread(sys.stdin.readline)
    return line or None


async def _act(citizen: SimUser, line: str) -> None:
    word, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if word == "/press":
        target: str | int = int(rest) if rest.isdigit() else rest
        await citizen.press(target)
    elif word == "/contact":
        await citizen.share_contact(rest)
    elif word == "/photo":
        await citizen.send_photo(caption=rest or None)
    elif word == "/document":
        await citizen.send_document(name=rest or "document.pdf")
    elif word == "/sticker":
        await citizen.send_sticker()
    elif word == "/voice":
        await citizen.send_voice()
    else:
        await citizen.send(line)
