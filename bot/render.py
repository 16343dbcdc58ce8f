"""Channel-neutral replies → Telegram messages (HTML text and keyboards)."""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from aiogram.types import (
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
)

from bot.callbacks import CitizenAction, IntakeButton, MenuAction, MenuButton, StaffAction
from dialogs.i18n import t
from dialogs.messages import Keyboard, Reply
from handoff.outbox import Button

#: Telegram's limit, counted on the text after entity parsing.
MESSAGE_LIMIT = 4096

Markup = InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove | ForceReply
_M = TypeVar("_M", InlineKeyboardMarkup, ReplyKeyboardMarkup, ReplyKeyboardRemove, ForceReply)

_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class OutMessage:
    text: str
    markup: Markup | None = None


def visible_length(text: str) -> int:
    """Length as Telegram counts it: without tags, entities decoded."""
    return len(html.unescape(_TAG.sub("", text)))


def split_blocks(blocks: list[str], limit: int = MESSAGE_LIMIT) -> list[str]:
    """Join blocks with newlines into as few messages as fit, breaking only
    between blocks (a summary is split between its fields, never inside one)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for block in blocks:
        length = visible_length(block)
        if current and size + 1 + length > limit:
            chunks.append("\n".join(current))
            current, size = [], 0
        current.append(block)
        size += length + (1 if size else 0)
    if current:
        chunks.append("\n".join(current))
    return chunks


#: The JSON of markups built once and shown to many, by identity (each kept
#: with its markup, so that its id is not reused while it is listed); the
#: least recently used go first when it is full (per-case keyboards come and go).
_SHARED_JSON: OrderedDict[int, tuple[Markup, str]] = OrderedDict()
_SHARED_MAX = 2048


def _shared(markup: _M) -> _M:
    _SHARED_JSON[id(markup)] = (markup, markup.model_dump_json(exclude_none=True))
    while len(_SHARED_JSON) > _SHARED_MAX:
        _SHARED_JSON.popitem(last=False)
    return markup


def markup_json(markup: Markup) -> str:
    """The markup as JSON (kept with an update's replies until they are sent)."""
    shared = _SHARED_JSON.get(id(markup))
    if shared is not None and shared[0] is markup:
        _SHARED_JSON.move_to_end(id(markup))
        return shared[1]
    return markup.model_dump_json(exclude_none=True)


@lru_cache(maxsize=1024)
def inline_keyboard(keyboard: Keyboard, locale: str) -> InlineKeyboardMarkup:
    """Built once per keyboard and language (the same few appear to every
    citizen; building the models is a tenth of an update). Never mutated."""
    rows = [
        [InlineKeyboardButton(
            text=button.label if button.label is not None else t(locale, button.label_key or ""),
            callback_data=IntakeButton(step=keyboard.step, value=button.value).pack())
         for button in row]
        for row in keyboard.rows
    ]
    return _shared(InlineKeyboardMarkup(inline_keyboard=rows))


@lru_cache(maxsize=16)
def contact_keyboard(locale: str) -> ReplyKeyboardMarkup:
    return _shared(ReplyKeyboardMarkup(
        keyboard=[[KeyboardButton(text=t(locale, "button.share_phone"), request_contact=True)]],
        resize_keyboard=True, one_time_keyboard=True))


_REMOVE = _shared(ReplyKeyboardRemove())


def render(reply: Reply, locale: str) -> list[OutMessage]:
    texts = split_blocks([t(locale, block.key, **block.params) for block in reply.blocks])
    markup: Markup | None = None
    if reply.keyboard is not None:
        markup = inline_keyboard(reply.keyboard, locale)
    elif reply.request_contact:
        markup = contact_keyboard(locale)
    elif reply.remove_keyboard:
        markup = _REMOVE
    return [OutMessage(text) for text in texts[:-1]] + [OutMessage(texts[-1], markup)]


def main_menu(locale: str) -> InlineKeyboardMarkup:
    def button(action: MenuAction) -> InlineKeyboardButton:
        return InlineKeyboardButton(text=t(locale, f"menu.{action}"),
                                    callback_data=MenuButton(action=action).pack())

    return InlineKeyboardMarkup(inline_keyboard=[
        [button(MenuAction.NEW)], [button(MenuAction.STATUS)],
        [button(MenuAction.HELP), button(MenuAction.LANGUAGE)],
    ])


def language_menu() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=t("zh", "language.zh"),
                             callback_data=MenuButton(action=MenuAction.LANG_ZH).pack()),
        InlineKeyboardButton(text=t("en", "language.en"),
                             callback_data=MenuButton(action=MenuAction.LANG_EN).pack()),
    ]])


def _callback(b: Button) -> str:
    if b.kind == "citizen":
        return CitizenAction(case=b.case_id, action=b.action, v=b.version, arg=b.arg).pack()
    return StaffAction(case=b.case_id, action=b.action, v=b.version, arg=b.arg).pack()


def staff_keyboard(rows: tuple[tuple[Button, ...], ...] | list[list[Button]]) -> InlineKeyboardMarkup:
    """Buttons of the handoff layer (staff cards, and citizens' case buttons)."""
    return InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text=b.label, callback_data=_callback(b)) for b in row] for row in rows])
