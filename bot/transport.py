"""The outbox worker's Transport, over aiogram: channel-neutral messages in,
Telegram calls out, Telegram's errors mapped to what the worker should do."""

from __future__ import annotations

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import InputMediaDocument, InputMediaPhoto, ReplyParameters

from bot.render import staff_keyboard
from handoff.outbox import NotModified, Outgoing, Rejected, RetryAfter, Transient, Unreachable

CAPTION_LIMIT = 1024


def _caption(text: str | None) -> str | None:
    if not text:
        return None
    return text if len(text) <= CAPTION_LIMIT else text[: CAPTION_LIMIT - 1] + "…"


class TelegramTransport:
    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def deliver(self, m: Outgoing) -> list[int]:
        try:
            return await self._call(m)
        except TelegramRetryAfter as exc:
            raise RetryAfter(float(exc.retry_after)) from exc
        except TelegramForbiddenError as exc:
            raise Unreachable(exc.message) from exc
        except TelegramBadRequest as exc:
            if "not modified" in exc.message:
                raise NotModified(exc.message) from exc
            raise Rejected(exc.message) from exc
        except (TimeoutError, TelegramServerError, TelegramNetworkError) as exc:
            raise Transient(str(exc)) from exc
        except TelegramAPIError as exc:
            raise Transient(exc.message) from exc

    async def _call(self, m: Outgoing) -> list[int]:
        markup = staff_keyboard(m.buttons) if m.buttons else None
        reply = ReplyParameters(message_id=m.reply_to, allow_sending_without_reply=True) if m.reply_to else None
        if m.edit_message_id is not None:
            await self.bot.edit_message_text(text=m.text, chat_id=m.chat_id, message_id=m.edit_message_id,
                                             reply_markup=markup)
            return [m.edit_message_id]
        if m.album:
            media = [InputMediaPhoto(media=file_id, caption=_caption(caption)) if kind == "photo"
                     else InputMediaDocument(media=file_id, caption=_caption(caption))
                     for kind, file_id, caption in m.album]
            sent = await self.bot.send_media_group(m.chat_id, media=media,  # type: ignore[arg-type]
                                                   reply_parameters=reply, message_thread_id=m.thread_id)
            return [s.message_id for s in sent]
        if m.file_kind == "photo" and m.file_id:
            one = await self.bot.send_photo(m.chat_id, m.file_id, caption=_caption(m.text),
                                            reply_parameters=reply, message_thread_id=m.thread_id)
            return [one.message_id]
        if m.file_kind and m.file_id:
            one = await self.bot.send_document(m.chat_id, m.file_id, caption=_caption(m.text),
                                               reply_parameters=reply, message_thread_id=m.thread_id)
            return [one.message_id]
        one = await self.bot.send_message(m.chat_id, m.text, reply_markup=markup, reply_parameters=reply,
                                          message_thread_id=m.thread_id)
        return [one.message_id]
