"""Staff in their chats: buttons on case cards, free-text follow-ups, replies to
citizens, /queue, /case, /mine, /staff, /stats. Every event is authorized on the
sender's user id; everyone else gets one short line and nothing changes."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime

from aiogram import Router
from aiogram.filters import Command, CommandObject, Filter
from aiogram.types import CallbackQuery, ForceReply, Message, TelegramObject
from sqlalchemy.ext.asyncio import AsyncSession

from bot.callbacks import StaffAction
from bot.middlewares import Responder
from bot.render import staff_keyboard
from bot.report import channels_reply, stats_reply
from dialogs.bureau import BureauConfig
from dialogs.i18n import t
from handoff.cards import CardRenderer
from handoff.queue import QueueService
from handoff.staff import Outcome, StaffService
from storage.models import Staff

log = logging.getLogger(__name__)

#: The user Telegram shows for anonymous group admins.
ANONYMOUS_ADMIN = 1087968824


class StaffChat(Filter):
    def __init__(self, chat_ids: Collection[int]) -> None:
        self.chat_ids = frozenset(chat_ids)

    async def __call__(self, event: TelegramObject) -> bool:
        if isinstance(event, Message):
            return event.chat.id in self.chat_ids
        if isinstance(event, CallbackQuery):
            return event.message is not None and event.message.chat.id in self.chat_ids
        return False


def _anonymous(message: Message) -> bool:
    return message.sender_chat is not None or (
        message.from_user is not None and message.from_user.id == ANONYMOUS_ADMIN)


def _file_of(message: Message) -> tuple[str, str, str | None] | None:
    if message.photo:
        return "photo", message.photo[-1].file_id, None
    if message.document is not None:
        return "document", message.document.file_id, message.document.file_name
    return None


def show(responder: Responder, outcome: Outcome, user_id: int) -> None:
    if outcome.toast and responder.callback is not None:
        responder.callback_text = outcome.toast
    elif outcome.toast:
        responder.send(outcome.toast)
    if outcome.text:
        if outcome.buttons:
            responder.send(outcome.text, staff_keyboard(outcome.buttons))
        elif outcome.force_reply:
            responder.send(outcome.text, ForceReply(selective=True))
        else:
            responder.send(outcome.text)
    if outcome.private_text:
        responder.send(outcome.private_text, chat_id=user_id)


def build_staff_router(chat_ids: Collection[int]) -> Router:
    router = Router(name="staff")
    router.message.filter(StaffChat(chat_ids))
    router.callback_query.filter(StaffChat(chat_ids))

    async def authorized(session: AsyncSession, staff_service: StaffService, user_id: int | None,
                         responder: Responder, what: str) -> Staff | None:
        member = await staff_service.member(session, user_id) if user_id is not None else None
        if member is None:
            log.warning("denied %s to non-staff user %s", what, user_id)
            text = t(responder.locale, "staff.refused.not_staff")
            if responder.callback is not None:
                responder.callback_text = text
            else:
                responder.send(text)
        return member

    async def commander(message: Message, command: CommandObject, session: AsyncSession,
                        staff_service: StaffService, responder: Responder, *, admin: bool = False,
                        refusal: str = "staff.refused.not_admin") -> Staff | None:
        """The staff member (or admin) giving a command; everyone else gets one line, logged."""
        if _anonymous(message):
            log.warning("denied /%s to an anonymous admin in chat %s", command.command, message.chat.id)
            responder.say("staff.refused.anonymous")
            return None
        member = await authorized(session, staff_service, message.from_user.id if message.from_user else None,
                                  responder, "/" + command.command)
        if member is not None and admin and not staff_service.is_admin(member):
            log.warning("denied /%s to non-admin %s", command.command, member.user_id)
            responder.say(refusal)
            return None
        return member

    @router.callback_query(StaffAction.filter())
    async def on_button(query: CallbackQuery, callback_data: StaffAction, session: AsyncSession,
                        responder: Responder, staff_service: StaffService, now: datetime) -> None:
        responder.callback = query
        member = await authorized(session, staff_service, query.from_user.id, responder,
                                  f"button {callback_data.action}")
        if member is None:
            return
        chat_id = query.message.chat.id if query.message else query.from_user.id
        outcome = await staff_service.press(session, member, chat_id, callback_data.case, callback_data.action,
                                            callback_data.v, callback_data.arg, now)
        show(responder, outcome, member.user_id)

    @router.callback_query()
    async def on_other_button(query: CallbackQuery, responder: Responder) -> None:
        responder.callback = query

    @router.message(Command("queue", "mine"))
    async def on_queue(message: Message, command: CommandObject, session: AsyncSession,
                       responder: Responder, staff_service: StaffService, queue: QueueService) -> None:
        member = await commander(message, command, session, staff_service, responder)
        if member is None:
            return
        page = int(command.args) - 1 if command.args and command.args.strip().isdigit() else 0
        mine = member.user_id if command.command == "mine" else None
        responder.send(await queue.listing(session, page=max(page, 0), assignee=mine))

    @router.message(Command("case"))
    async def on_case(message: Message, command: CommandObject, session: AsyncSession, responder: Responder,
                      staff_service: StaffService, queue: QueueService, now: datetime) -> None:
        if await commander(message, command, session, staff_service, responder) is None:
            return
        responder.send(await queue.repost(session, command.args or "", message.chat.id, now))

    @router.message(Command("staff"))
    async def on_staff(message: Message, command: CommandObject, session: AsyncSession, responder: Responder,
                       staff_service: StaffService, queue: QueueService, now: datetime) -> None:
        member = await commander(message, command, session, staff_service, responder, admin=True)
        if member is None:
            return
        responder.send(await queue.manage_staff(session, command.args or "", member.user_id, now))

    # -- /stats (KPIs; bot/report.py) --
    @router.message(Command("stats"))
    async def on_stats(message: Message, command: CommandObject, session: AsyncSession, responder: Responder,
                       staff_service: StaffService, bureau: BureauConfig, now: datetime) -> None:
        member = await commander(message, command, session, staff_service, responder, admin=True,
                                 refusal="kpi.refused_not_admin")
        if member is None:
            return
        responder.send(await stats_reply(session, bureau, command.args or "", now, responder.locale))

    @router.message(Command("channels"))
    async def on_channels(message: Message, command: CommandObject, session: AsyncSession, responder: Responder,
                          staff_service: StaffService, now: datetime) -> None:
        member = await commander(message, command, session, staff_service, responder, admin=True,
                                 refusal="kpi.refused_not_admin")
        if member is None:
            return
        responder.send(await channels_reply(session, command.args or "", member.user_id, now, responder.locale))

    @router.message(Command("ban", "unban"))
    async def on_ban(message: Message, command: CommandObject, session: AsyncSession, responder: Responder,
                     staff_service: StaffService, queue: QueueService, now: datetime) -> None:
        member = await commander(message, command, session, staff_service, responder, admin=True)
        if member is None:
            return
        responder.send(await queue.ban(session, command.args or "", member.user_id, now,
                                       banned=command.command == "ban"))

    @router.message(Command("cancel"))
    async def on_cancel(message: Message, session: AsyncSession, responder: Responder,
                        staff_service: StaffService) -> None:
        user = message.from_user
        if user is not None and await staff_service.cancel_prompt(session, message.chat.id, user.id):
            responder.say("staff.done.cancelled")

    @router.message()
    async def on_message(message: Message, session: AsyncSession, responder: Responder,
                         staff_service: StaffService, queue: QueueService, now: datetime) -> None:
        user = message.from_user
        replied = message.reply_to_message
        to_bot = replied is not None and replied.from_user is not None and replied.from_user.is_bot
        prompt = (await staff_service.pending_prompt(session, message.chat.id, user.id)
                  if user is not None and not _anonymous(message) else None)
        if prompt is None and not to_bot:
            return  # ordinary conversation among staff
        if _anonymous(message):
            log.warning("denied a message to an anonymous admin in chat %s", message.chat.id)
            responder.say("staff.refused.anonymous")
            return
        member = await authorized(session, staff_service, user.id if user else None, responder, "message")
        if member is None:
            return
        if prompt is not None:
            answer = message.text or message.caption
            if not answer:
                responder.say("staff.refused.text_needed")
                return
            show(responder, await staff_service.answer_prompt(session, member, prompt, answer, now,
                                                              _file_of(message)), member.user_id)
            return
        assert replied is not None
        case = await queue.case_for_message(session, message.chat.id, replied.message_id)
        if case is None:
            responder.say("staff.refused.not_a_case_message")
            return
        file = _file_of(message)
        text = message.text or message.caption
        if file is None and not text:
            responder.say("staff.refused.text_needed")
            return
        show(responder, await staff_service.staff_reply(session, member, case, text, file, now), member.user_id)

    return router


__all__ = ["CardRenderer", "build_staff_router"]
