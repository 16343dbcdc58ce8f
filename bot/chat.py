"""``petition-bot chat``: the real dispatcher and handlers, driven from a terminal.

Typed lines become Telegram messages from a simulated citizen; the bot's
answers are printed as plain text with their buttons numbered. Commands of the
terminal itself:

  /press N | /press <label>   press a button of the latest keyboard
  /contact <phone>            share a phone number (Telegram's "share my phone")
  /photo [caption]            send a photo          /document [name]  send a file
  /sticker, /voice            send a sticker or a voice note
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

from aiogram.methods import SendMessage, TelegramMethod
from sqlalchemy import func, select
from aiogram.types import InlineKeyboardMarkup, ReplyKeyboardMarkup

from bot.app import create_bot, create_dispatcher, open_database
from bot.settings import Settings
from bot.simulator import FakeTelegram, Simulator, SimUser
from dialogs.bureau import BureauConfig
from storage.models import ProcessedUpdate

_TAG = re.compile(r"<[^>]+>")
FAKE_TOKEN = "1000000:local-chat-without-telegram-000000"


def plain(text: str) -> str:
    return html.unescape(_TAG.sub("", text))


class Printer:
    def __init__(self, citizen_chat: int, staff_chat: int | None) -> None:
        self.citizen_chat = citizen_chat
        self.staff_chat = staff_chat
        self.last_buttons: list[str] = []

    def __call__(self, method: TelegramMethod[Any]) -> None:
        if not isinstance(method, SendMessage):
            return
        chat = int(method.chat_id)
        marker = "bot" if chat == self.citizen_chat else (
            "staff chat" if chat == self.staff_chat else f"chat {chat}")
        print(f"\n[{marker}] " + plain(method.text).replace("\n", "\n    "))
        markup = method.reply_markup
        if chat != self.citizen_chat:
            return
        labels: list[str] = []
        if isinstance(markup, InlineKeyboardMarkup):
            labels = [b.text for row in markup.inline_keyboard for b in row]
            for i, label in enumerate(labels, 1):
                print(f"    [{i}] {label}")
            self.last_buttons = labels
        elif isinstance(markup, ReplyKeyboardMarkup):
            for row in markup.keyboard:
                for b in row:
                    print(f"    [{b.text}] (type /contact <phone> to share a number)")
        sys.stdout.flush()


async def run_chat(settings: Settings, bureau: BureauConfig, *, user_id: int, language: str) -> int:
    engine, sessionmaker = await open_database(settings)
    printer = Printer(user_id, settings.staff_chat_id)
    telegram = FakeTelegram(on_call=printer)
    bot = create_bot(settings.bot_token or FAKE_TOKEN, session=telegram)
    dp = create_dispatcher(settings, sessionmaker, bureau)
    sim = Simulator(dp, bot, telegram)
    # Continue the numbering of earlier runs so update ids are never reused.
    async with sessionmaker() as session:
        last = await session.scalar(select(func.max(ProcessedUpdate.update_id)))
    sim.start_update_ids((last or 0) + 1)
    citizen = sim.citizen(user_id=user_id, language_code=language)
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
            if not interactive:
                print(f"\n[you] {line}")
            try:
                await _act(citizen, line)
            except LookupError as exc:
                print(f"    ! {exc}")
    finally:
        await bot.session.close()
        await engine.dispose()
    return 0


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
