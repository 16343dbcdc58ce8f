"""Citizens after filing: /status, /mycases, and the buttons on a case (add
information, withdraw, ask for review, rate, download a notice)."""

from __future__ import annotations

from datetime import datetime

from aiogram import Router
from aiogram.filters import Command, CommandObject, Filter
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.callbacks import CitizenAction
from bot.middlewares import Responder
from bot.render import staff_keyboard
from bot.routers.citizen import PrivateChat, relay_content
from dialogs.bureau import BureauConfig
from dialogs.errors import InputError
from dialogs.i18n import t
from handoff.followup import FollowUpService, View
from handoff.relay import RelayService
from handoff.staff import parse_arg
from state_machine.case import TERMINAL_VALUES
from storage.models import Attachment, Case, CitizenSession

AWAITING_STATUS = "status"
#: Follow-ups that take the citizen's next messages: "<kind>:<case or rating id>[:<stage>]".
FOLLOW_UPS = ("add", "withdraw", "review", "review_files", "comment")
MAX_VIEWED = 5


class AwaitingFollowUp(Filter):
    """A message answering a follow-up question; commands always keep their meaning."""

    async def __call__(self, message: Message, citizen: CitizenSession | None = None) -> bool:
        if message.text is not None and message.text.startswith("/"):
            return False
        return citizen is not None and (citizen.awaiting or "").split(":")[0] in (*FOLLOW_UPS, AWAITING_STATUS)


def _show(responder: Responder, view: View) -> None:
    responder.send(view.text, staff_keyboard(view.buttons) if view.buttons else None)


def _one_button(locale: str, key: str, case_id: int, action: str, arg: str = "") -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(
        text=str(t(locale, key)), callback_data=CitizenAction(case=case_id, action=action, arg=arg).pack())]])


def _remember_viewed(citizen: CitizenSession, case: Case) -> None:
    """This chat showed the right code for the case: it may download its notices."""
    viewed = [c for c in citizen.extra.get("viewed", []) if c != case.id][-(MAX_VIEWED - 1):]
    citizen.extra = {**citizen.extra, "viewed": [*viewed, case.id]}


def build_followup_router() -> Router:
    router = Router(name="followup")
    router.message.filter(PrivateChat())
    router.callback_query.filter(PrivateChat())

    async def lookup(responder: Responder, citizen: CitizenSession, followup: FollowUpService,
                     session: AsyncSession, text: str, now: datetime) -> None:
        parts = text.split()
        if len(parts) < 2:
            citizen.awaiting = AWAITING_STATUS
            responder.say("status.ask")
            return
        citizen.awaiting = None
        view, case = await followup.lookup(session, citizen.user_id, " ".join(parts[:-1]), parts[-1],
                                           citizen.locale, now)
        if case is not None:
            _remember_viewed(citizen, case)
        _show(responder, view)

    @router.message(Command("status"))
    async def on_status(message: Message, command: CommandObject, citizen: CitizenSession, responder: Responder,
                        followup: FollowUpService, session: AsyncSession, now: datetime) -> None:
        await lookup(responder, citizen, followup, session, command.args or "", now)

    @router.message(Command("mycases"))
    async def on_mycases(message: Message, citizen: CitizenSession, responder: Responder,
                         followup: FollowUpService, session: AsyncSession) -> None:
        citizen.awaiting = None
        _show(responder, await followup.my_cases(session, citizen.user_id, citizen.locale))

    @router.callback_query(CitizenAction.filter())
    async def on_button(query: CallbackQuery, callback_data: CitizenAction, citizen: CitizenSession,
                        responder: Responder, followup: FollowUpService, session: AsyncSession,
                        now: datetime) -> None:
        responder.callback = query
        action, args, loc = callback_data.action, parse_arg(callback_data.arg), citizen.locale
        if action == "rate":
            answer, comment = await followup.rate(session, citizen.user_id, _int(args.get("r")), args.get("t", ""),
                                                  args.get("s", ""), loc, now)
            if comment:
                citizen.awaiting = f"comment:{_int(args.get('r'))}"
                responder.send(answer, _one_button(loc, "button.skip", callback_data.case, "skip"))
            else:
                responder.send(answer)
            return
        if action == "doc":
            doc = await session.get(Attachment, _int(args.get("a")))
            case = await session.get(Case, doc.case_id) if doc is not None else None
            allowed = case is not None and (case.citizen_user_id == citizen.user_id
                                            or case.id in citizen.extra.get("viewed", []))
            if doc is None or doc.source != "staff" or not allowed:
                responder.say("followup.not_yours")
                return
            responder.files.append((doc.kind, doc.file_id, doc.caption))
            return
        if action == "skip":
            citizen.awaiting = None
            responder.say("followup.skipped")
            return
        if action == "done":
            citizen.awaiting = None
            responder.say("add.done")
            return
        case = await followup.own_case(session, citizen.user_id, callback_data.case)
        if case is None:
            responder.say("followup.not_yours")
            return
        if action == "view":
            _remember_viewed(citizen, case)
            _show(responder, await followup.view(session, case, loc, now, own=True))
        elif action == "add":
            if case.status in TERMINAL_VALUES:
                responder.say("add.closed", tracking=case.tracking_number)
                return
            citizen.awaiting = f"add:{case.id}"
            responder.send(str(t(loc, "add.prompt", tracking=case.tracking_number)),
                           _one_button(loc, "button.done", case.id, "done"))
        elif action == "withdraw":
            if not followup.can_withdraw(case):
                responder.say("withdraw.not_now", status=t(loc, f"status.name.{case.status}"))
                return
            responder.send(str(t(loc, "withdraw.confirm", tracking=case.tracking_number)), InlineKeyboardMarkup(
                inline_keyboard=[[InlineKeyboardButton(text=str(t(loc, "withdraw.yes")), callback_data=CitizenAction(
                    case=case.id, action="withdraw_yes").pack()),
                    InlineKeyboardButton(text=str(t(loc, "withdraw.no")), callback_data=CitizenAction(
                        case=case.id, action="withdraw_no").pack())]]))
        elif action == "withdraw_yes":
            if not followup.can_withdraw(case):
                responder.say("withdraw.not_now", status=t(loc, f"status.name.{case.status}"))
                return
            citizen.awaiting = f"withdraw:{case.id}"
            responder.send(str(t(loc, "withdraw.reason")), _one_button(loc, "button.skip", case.id, "withdraw_now"))
        elif action == "withdraw_now":
            await _withdraw(responder, citizen, followup, session, case, None, now)
        elif action == "withdraw_no":
            citizen.awaiting = None
            responder.say("withdraw.kept")
        elif action in ("review", "rereview"):
            refusal = followup.review_refusal(case, action, loc, now)
            if refusal:
                responder.send(refusal)
                return
            citizen.awaiting = f"review:{case.id}:{action}"
            responder.say(f"review.ask.{action}", tracking=case.tracking_number)
        elif action == "review_submit":
            await _submit_review(responder, citizen, followup, session, case, now)
        else:
            responder.say("followup.not_yours")

    @router.message(AwaitingFollowUp())
    async def on_follow_up(message: Message, citizen: CitizenSession, responder: Responder,
                           followup: FollowUpService, relay: RelayService, bureau: BureauConfig,
                           session: AsyncSession, now: datetime) -> None:
        kind, _, rest = (citizen.awaiting or "").partition(":")
        loc = citizen.locale
        if kind == AWAITING_STATUS:
            await lookup(responder, citizen, followup, session, message.text or "", now)
            return
        if kind == "comment":
            citizen.awaiting = None
            try:
                saved = bool(message.text) and await followup.comment(
                    session, citizen.user_id, _int(rest), message.text or "", now)
            except InputError as refused:
                citizen.awaiting = f"comment:{rest}"  # keep asking: the comment is not lost, only too long
                responder.say(refused.key, **refused.params)
                return
            responder.say("rating.comment_saved" if saved else "followup.skipped")
            return
        case_id, _, stage = rest.partition(":")
        case = await followup.own_case(session, citizen.user_id, _int(case_id))
        if case is None:
            citizen.awaiting = None
            responder.say("followup.not_yours")
            return
        if kind == "add":
            if case.status in TERMINAL_VALUES:
                citizen.awaiting = None
                responder.say("add.closed", tracking=case.tracking_number)
                return
            content = relay_content(message)
            if content is None:
                responder.say("add.kind")
                return
            said = message.text or message.caption or ""
            urgent = bool(said and bureau.emergency_words.match(said))
            if urgent:
                responder.say("emergency.advice")
            try:
                relay.relay(session, case, content, now, urgent=urgent)
            except InputError as refused:
                responder.say(refused.key, **refused.params)
                return
            responder.send(str(t(loc, "add.received", tracking=case.tracking_number)),
                           _one_button(loc, "button.done", case.id, "done"))
        elif kind == "withdraw":
            await _withdraw(responder, citizen, followup, session, case, message.text, now)
        elif kind == "review":
            if not message.text:
                responder.say(f"review.ask.{stage}", tracking=case.tracking_number)
                return
            citizen.extra = {**citizen.extra, "review": {"reasons": message.text[:3000], "files": []}}
            citizen.awaiting = f"review_files:{case.id}:{stage}"
            responder.send(str(t(loc, "review.files")), _one_button(loc, "review.submit", case.id, "review_submit"))
        elif kind == "review_files":
            content = relay_content(message)
            pending = citizen.extra.get("review") or {"reasons": "", "files": []}
            if content is None or "file_id" not in content:
                responder.send(str(t(loc, "review.files")), _one_button(loc, "review.submit", case.id, "review_submit"))
                return
            pending = {**pending, "files": [*pending["files"], content]}
            citizen.extra = {**citizen.extra, "review": pending}
            responder.send(str(t(loc, "review.file_received", count=len(pending["files"]))),
                           _one_button(loc, "review.submit", case.id, "review_submit"))

    return router


async def _withdraw(responder: Responder, citizen: CitizenSession, followup: FollowUpService, session: AsyncSession,
              case: Case, reason: str | None, now: datetime) -> None:
    citizen.awaiting = None
    if not followup.can_withdraw(case):
        responder.say("withdraw.not_now", status=t(citizen.locale, f"status.name.{case.status}"))
        return
    await followup.withdraw(session, case, (reason or "").strip()[:1000] or None, now)
    responder.say("withdraw.done", tracking=case.tracking_number)


async def _submit_review(responder: Responder, citizen: CitizenSession, followup: FollowUpService,
                         session: AsyncSession, case: Case, now: datetime) -> None:
    kind, _, rest = (citizen.awaiting or "").partition(":")
    stage = rest.partition(":")[2]
    pending = citizen.extra.get("review")
    if kind != "review_files" or not pending or stage not in ("review", "rereview"):
        responder.say("followup.not_yours")
        return
    refusal = followup.review_refusal(case, stage, citizen.locale, now)
    citizen.awaiting = None
    citizen.extra = {k: v for k, v in citizen.extra.items() if k != "review"}
    if refusal:
        responder.send(refusal)
        return
    responder.send(await followup.request_review(session, case, stage, pending["reasons"], pending["files"], now,
                                           citizen.locale))


def _int(value: str | None) -> int:
    try:
        return int(value or "0")
    except ValueError:
        return 0
