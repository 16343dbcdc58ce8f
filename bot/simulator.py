"""A Telegram stand-in for the terminal chat and the tests.

:class:`FakeTelegram` is an aiogram session that answers Bot API calls locally
and records them (and can be told to fail the next calls). :class:`Simulator`
feeds real ``Update`` objects through the real dispatcher as citizens and
staff would produce them: text, button presses, photos, contacts.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.session.base import BaseSession
from aiogram.methods import (
    CopyMessage,
    EditMessageText,
    GetMe,
    SendDocument,
    SendMediaGroup,
    SendMessage,
    SendPhoto,
    TelegramMethod,
)
from aiogram.types import (
    CallbackQuery,
    Chat,
    Contact,
    Document,
    InlineKeyboardMarkup,
    Message,
    MessageId,
    PhotoSize,
    ReplyKeyboardMarkup,
    Sticker,
    Update,
    User,
    Voice,
)

BOT_ID = 4242
BOT_USER = User(id=BOT_ID, is_bot=True, first_name="Petition bot", username="petition_bot")


class FakeTelegram(BaseSession):
    """Answers Bot API methods in-process and records every call."""

    def __init__(self, on_call: Callable[[TelegramMethod[Any]], None] | None = None) -> None:
        super().__init__()
        self.calls: list[TelegramMethod[Any]] = []
        self.on_call = on_call
        #: Exceptions to raise, in order, for the next calls (one per call).
        self.failures: deque[BaseException] = deque()
        self._ids = itertools.count(1)

    async def close(self) -> None:
        return None

    async def make_request(self, bot: Bot, method: TelegramMethod[Any],
                           timeout: int | None = None) -> Any:  # noqa: ASYNC109 - aiogram's signature
        if self.failures:
            raise self.failures.popleft()
        self.calls.append(method)
        if self.on_call is not None:
            self.on_call(method)
        return self._answer(method)

    async def stream_content(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        yield b""

    def _message(self, chat_id: int | str, **fields: Any) -> Message:
        return Message(message_id=next(self._ids), date=datetime.now(UTC),
                       chat=Chat(id=int(chat_id), type="private" if int(chat_id) > 0 else "supergroup"),
                       from_user=BOT_USER, **fields)

    def _answer(self, method: TelegramMethod[Any]) -> Any:
        if isinstance(method, GetMe):
            return BOT_USER
        if isinstance(method, SendMessage):
            return self._message(method.chat_id, text=method.text)
        if isinstance(method, SendPhoto | SendDocument):
            return self._message(method.chat_id, caption=method.caption)
        if isinstance(method, SendMediaGroup):
            return [self._message(method.chat_id) for _ in method.media]
        if isinstance(method, CopyMessage):
            return MessageId(message_id=next(self._ids))
        if isinstance(method, EditMessageText) and method.chat_id is not None:
            return self._message(method.chat_id, text=method.text)
        return True

    # -- reading what was sent ------------------------------------------------------

    def sent(self, chat_id: int | None = None) -> list[SendMessage]:
        return [c for c in self.calls if isinstance(c, SendMessage)
                and (chat_id is None or int(c.chat_id) == chat_id)]

    def shown(self, chat_id: int) -> list[SendMessage | EditMessageText]:
        """Messages sent to a chat and edits made there, in order."""
        return [c for c in self.calls if isinstance(c, SendMessage | EditMessageText)
                and c.chat_id is not None and int(c.chat_id) == chat_id]


@dataclass
class Simulator:
    dp: Dispatcher
    bot: Bot
    telegram: FakeTelegram
    #: Feed each update as polling does, a batch of one through the pipeline's
    #: ``run_batch``; else as a webhook does, through ``feed_update``.
    batches: bool = False
    _update_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _message_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100000))

    def next_update_id(self) -> int:
        return int(next(self._update_ids))

    def start_update_ids(self, first: int) -> None:
        """Continue numbering where an earlier process stopped (ids are never reused)."""
        self._update_ids = itertools.count(first)

    def citizen(self, user_id: int = 1001, language_code: str = "zh", first_name: str = "Citizen") -> SimUser:
        user = User(id=user_id, is_bot=False, first_name=first_name, language_code=language_code)
        return SimUser(self, user, Chat(id=user_id, type="private"))

    def staff(self, user_id: int, chat_id: int, first_name: str = "Staff") -> SimUser:
        """A person in a staff group chat (staff or not: the bot decides)."""
        user = User(id=user_id, is_bot=False, first_name=first_name, language_code="zh")
        return SimUser(self, user, Chat(id=chat_id, type="supergroup", title="Staff"))

    def mount(self, update: Update) -> Update:
        """The update as ``getUpdates`` gives it: every object in it bound to the
        bot (so polling hands it to the pipeline as it is, without re-parsing)."""
        return Update.model_validate(update.model_dump(exclude_unset=True), context={"bot": self.bot})

    async def feed(self, update: Update) -> None:
        pipeline = self.dp.workflow_data.get("pipeline") if self.batches else None
        if pipeline is None:
            await self.dp.feed_update(self.bot, update)
        else:
            await pipeline.run_batch(self.dp, self.bot, [update])


@dataclass
class SimUser:
    sim: Simulator
    user: User
    chat: Chat

    # -- what the bot said to this chat ----------------------------------------

    @property
    def received(self) -> list[SendMessage]:
        return self.sim.telegram.sent(self.chat.id)

    @property
    def last_text(self) -> str:
        return self.received[-1].text

    def texts_since(self, mark: int) -> list[str]:
        return [m.text for m in self.received[mark:]]

    def keyboard(self) -> InlineKeyboardMarkup | ReplyKeyboardMarkup | None:
        for sent in reversed(self.sim.telegram.shown(self.chat.id)):
            if isinstance(sent.reply_markup, InlineKeyboardMarkup | ReplyKeyboardMarkup):
                return sent.reply_markup
        return None

    def buttons(self) -> list[tuple[str, str | None]]:
        """(label, callback data) of the latest keyboard, in reading order."""
        markup = self.keyboard()
        if isinstance(markup, InlineKeyboardMarkup):
            return [(b.text, b.callback_data) for row in markup.inline_keyboard for b in row]
        if isinstance(markup, ReplyKeyboardMarkup):
            return [(b.text, None) for row in markup.keyboard for b in row]
        return []

    # -- acting ----------------------------------------------------------------------

    def _message(self, **fields: Any) -> Message:
        return Message(message_id=next(self.sim._message_ids), date=datetime.now(UTC),
                       chat=self.chat, from_user=self.user, **fields)

    def message_update(self, **fields: Any) -> Update:
        return self.sim.mount(Update(update_id=self.sim.next_update_id(), message=self._message(**fields)))

    async def send(self, text: str) -> list[str]:
        mark = len(self.received)
        await self.sim.feed(self.message_update(text=text))
        return self.texts_since(mark)

    async def reply_to(self, message_id: int, text: str | None = None, *, photo: bool = False) -> list[str]:
        """Answer a message of the bot with Telegram's "reply"."""
        original = Message(message_id=message_id, date=datetime.now(UTC), chat=self.chat,
                           from_user=BOT_USER, text="…")
        fields: dict[str, Any] = {"reply_to_message": original}
        if photo:
            file_id, unique = self._file("photo")
            fields["photo"] = [PhotoSize(file_id=file_id, file_unique_id=unique, width=800, height=600)]
            fields["caption"] = text
        else:
            fields["text"] = text
        mark = len(self.received)
        await self.sim.feed(self.message_update(**fields))
        return self.texts_since(mark)

    def press_update(self, label_or_index: str | int) -> Update:
        buttons = [(label, data) for label, data in self.buttons() if data is not None]
        if isinstance(label_or_index, int):
            if not 1 <= label_or_index <= len(buttons):
                raise LookupError(f"no button {label_or_index}; buttons: {buttons}")
            data = buttons[label_or_index - 1][1]
        else:
            matches = [d for label, d in buttons if label == label_or_index]
            if not matches:
                matches = [d for label, d in buttons if label_or_index in label]
            if not matches:
                raise LookupError(f"no button {label_or_index!r}; buttons: {[b[0] for b in buttons]}")
            data = matches[0]
        return self.callback_update(str(data))

    def callback_update(self, data: str) -> Update:
        anchor = Message(message_id=next(self.sim._message_ids), date=datetime.now(UTC),
                         chat=self.chat, from_user=BOT_USER, text="…")
        query = CallbackQuery(id=str(self.sim.next_update_id()), from_user=self.user,
                              chat_instance="sim", data=data, message=anchor)
        return self.sim.mount(Update(update_id=self.sim.next_update_id(), callback_query=query))

    async def press(self, label_or_index: str | int) -> list[str]:
        mark = len(self.received)
        await self.sim.feed(self.press_update(label_or_index))
        return self.texts_since(mark)

    async def press_data(self, data: str) -> list[str]:
        mark = len(self.received)
        await self.sim.feed(self.callback_update(data))
        return self.texts_since(mark)

    def _file(self, prefix: str) -> tuple[str, str]:
        n = uuid.uuid4().hex[:12]
        return f"{prefix}-{self.user.id}-{n}", f"u{prefix}{n}"

    async def send_photo(self, *, size: int = 150_000, caption: str | None = None,
                         media_group_id: str | None = None) -> list[str]:
        file_id, unique = self._file("photo")
        photo = [PhotoSize(file_id=f"{file_id}-s", file_unique_id=f"{unique}s", width=90, height=90, file_size=2000),
                 PhotoSize(file_id=file_id, file_unique_id=unique, width=1280, height=960, file_size=size)]
        mark = len(self.received)
        await self.sim.feed(self.message_update(photo=photo, caption=caption, media_group_id=media_group_id))
        return self.texts_since(mark)

    async def send_document(self, *, size: int = 300_000, name: str = "contract.pdf",
                            mime: str = "application/pdf", caption: str | None = None) -> list[str]:
        file_id, unique = self._file("doc")
        doc = Document(file_id=file_id, file_unique_id=unique, file_name=name, mime_type=mime, file_size=size)
        mark = len(self.received)
        await self.sim.feed(self.message_update(document=doc, caption=caption))
        return self.texts_since(mark)

    async def share_contact(self, phone: str, *, own: bool = True) -> list[str]:
        contact = Contact(phone_number=phone, first_name=self.user.first_name,
                          user_id=self.user.id if own else self.user.id + 1)
        mark = len(self.received)
        await self.sim.feed(self.message_update(contact=contact))
        return self.texts_since(mark)

    async def send_sticker(self) -> list[str]:
        file_id, unique = self._file("sticker")
        sticker = Sticker(file_id=file_id, file_unique_id=unique, type="regular", width=512,
                          height=512, is_animated=False, is_video=False)
        mark = len(self.received)
        await self.sim.feed(self.message_update(sticker=sticker))
        return self.texts_since(mark)

    async def send_voice(self) -> list[str]:
        file_id, unique = self._file("voice")
        mark = len(self.received)
        await self.sim.feed(self.message_update(voice=Voice(file_id=file_id, file_unique_id=unique, duration=3)))
        return self.texts_since(mark)
