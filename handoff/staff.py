"""Staff work cases: every status change goes through the lifecycle machine,
lands on the timeline, refreshes the card and tells the citizen.

An action is collected in small steps — a button, maybe a choice (a unit, a
route, a decision), maybe a short text (a reason, a reply) — and applied in
one transaction. The case version travels with every button: a press on a card
that changed since it was drawn is refused ("the case changed"), so two staff
acting at the same moment cannot both win (optimistic locking; the ORM's
version column guards the write as well).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dialogs.bureau import BureauConfig
from dialogs.errors import InputError
from dialogs.i18n import t
from dialogs.tracking import parse_tracking_number
from dialogs.validators import clean_text
from handoff.deadlines import BUREAU_TZ
from handoff.outbox import PRIORITY_CARD_EDIT, PRIORITY_CITIZEN, PRIORITY_STAFF, Button, enqueue
from handoff.privacy import set_status
from state_machine.case import TERMINAL, Action, Status, allowed_actions, next_status
from storage.models import Attachment, Case, CaseClock, CaseEvent, Staff, StaffPrompt

log = logging.getLogger(__name__)

TEXT_LIMIT = 2000

#: Actions that do not change the status.
CLAIM, UNASSIGN, GIVE_TO, ASK_INFO, REPLY, DETAILS, LEADER, HEARING, SUPERVISE = (
    "claim", "unassign", "give_to", "ask_info", "reply", "details", "leader", "hearing", "supervise")
EXTRA_ACTIONS = (CLAIM, UNASSIGN, GIVE_TO, ASK_INFO, REPLY, DETAILS, LEADER, HEARING, SUPERVISE)

#: A choice an action needs before it can run: (parameter, values). Units and
#: staff members are listed from the configuration and the staff table.
CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    Action.ASSIGN: ("d", ("7", "15", "30")),
    Action.REDIRECT: ("c", ("litigation", "discipline", "other")),
    Action.DIRECT_TO_ROUTE: ("r", ("1", "2", "3", "4", "5")),
    Action.EXTEND: ("d", ("10", "15", "30")),
    Action.DECIDE: ("o", ("support", "explain", "reject")),
    Action.DECIDE_REVIEW: ("o", ("uphold", "change")),
    Action.DECIDE_REREVIEW: ("o", ("uphold", "change")),
    HEARING: ("d", ("5", "10", "15", "30")),
}
NEEDS_UNIT = frozenset({Action.TRANSFER, Action.ASSIGN})
NEEDS_TEXT = frozenset({
    Action.REDIRECT, Action.NOT_ACCEPT, Action.DIRECT_TO_ROUTE, Action.OBJECT, Action.EXTEND,
    Action.DECIDE, Action.DECIDE_REVIEW, Action.DECIDE_REREVIEW, Action.RETURN_FOR_REWORK,
    Action.NOT_REACCEPT, Action.MARK_DUPLICATE, ASK_INFO, REPLY, LEADER, HEARING, SUPERVISE,
})
#: Status changes the citizen is told about with a message of their own
#: (``notice.<action>``); the others get the generic ``notice.status``.
OWN_NOTICE = frozenset({
    Action.REGISTER, Action.TRANSFER, Action.ASSIGN, Action.ACCEPT, Action.NOT_ACCEPT,
    Action.DIRECT_TO_ROUTE, Action.START_HANDLING, Action.EXTEND, Action.DECIDE,
    Action.DECIDE_REVIEW, Action.DECIDE_REREVIEW, Action.CLOSE, Action.REDIRECT,
    Action.MARK_DUPLICATE, Action.NOT_REACCEPT,
})
PAGE = 8


@dataclass
class Outcome:
    """What the acting staff member sees (everyone else hears through the outbox)."""

    #: A short answer (the callback toast, or a line in the chat).
    toast: str | None = None
    #: A message in the staff chat: text and optional buttons (a picker, a prompt).
    text: str | None = None
    buttons: tuple[tuple[Button, ...], ...] = ()
    force_reply: bool = False
    #: A message to the staff member's private chat (full personal details).
    private_text: str | None = None
    done: bool = False


def parse_arg(arg: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in arg.split(",") if "=" in part)


def format_arg(params: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


@dataclass
class StaffService:
    bureau: BureauConfig
    locale: str
    admin_ids: frozenset[int] = frozenset()
    staff_chat_id: int | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(BUREAU_TZ))
    #: Rating invitations (set by the app; the staff side works without it in unit tests).
    followup: Any = None
    #: The statutory clocks (set by the app).
    clocks: Any = None

    # -- who may act -------------------------------------------------------------

    async def member(self, session: AsyncSession, user_id: int) -> Staff | None:
        """The active staff record of ``user_id`` (admins from the settings always count)."""
        staff = await session.get(Staff, user_id)
        if staff is not None and staff.active:
            return staff
        if user_id in self.admin_ids:
            return Staff(user_id=user_id, role="admin", unit_code=None, active=True,
                         added_by=None, added_at=self.clock())
        return None

    def is_admin(self, staff: Staff) -> bool:
        return staff.role == "admin" or staff.user_id in self.admin_ids

    # -- buttons on the card ----------------------------------------------------------

    def card_actions(self, case: Case) -> list[str]:
        if Status(case.status) in TERMINAL:
            return [DETAILS]
        actions: list[str] = [CLAIM if case.assignee_id is None else UNASSIGN, GIVE_TO]
        actions += [a.value for a in allowed_actions(case.status, "staff")]
        if case.status == Status.REREVIEW:
            actions.append(HEARING)
        if case.unit_code is not None:
            actions.append(SUPERVISE)  # 督办 (art. 40): the bureau presses the handling unit
        actions += [ASK_INFO, REPLY, LEADER, DETAILS]
        return actions

    def card_buttons(self, case: Case) -> tuple[tuple[Button, ...], ...]:
        buttons = [Button(t(self.locale, f"staff.button.{a}"), case.id, a, case.version)
                   for a in self.card_actions(case)]
        return tuple(tuple(buttons[i:i + 3]) for i in range(0, len(buttons), 3))

    # -- acting --------------------------------------------------------------------

    async def press(self, session: AsyncSession, staff: Staff, chat_id: int, case_id: int,
                    action: str, version: int, arg: str, now: datetime) -> Outcome:
        """A button on a card or a picker was pressed."""
        case = await session.get(Case, case_id)
        if case is None:
            return Outcome(toast=t(self.locale, "staff.refused.no_case"))
        if case.version != version:
            self._refresh_card(session, case, now)
            return Outcome(toast=t(self.locale, "staff.refused.changed"))
        refusal = self._refusal(case, action) or await self._too_late(session, case, action, now)
        if refusal:
            return Outcome(toast=refusal)
        params = parse_arg(arg)
        if "p" in params or (action in NEEDS_UNIT and "u" not in params):
            return self._unit_picker(case, action, params)
        if action == GIVE_TO and "s" not in params:
            return await self._staff_picker(session, case)
        if action in CHOICES:
            key, values = CHOICES[action]
            if key not in params:
                return self._choice_picker(case, action, params, key, values)
            if params[key] not in values:
                return Outcome(toast=t(self.locale, "staff.refused.bad_choice"))
        if action == DETAILS:
            return self._details(session, case, staff, now)
        if action in NEEDS_TEXT:
            await session.merge(StaffPrompt(chat_id=chat_id, user_id=staff.user_id, case_id=case.id,
                                            action=action, params=params, case_version=case.version,
                                            created_at=now))
            return Outcome(text=t(self.locale, f"staff.prompt.{action}", tracking=case.tracking_number),
                           force_reply=True, toast=t(self.locale, "staff.prompt.toast"))
        return await self._apply(session, case, staff, action, params, None, now)

    async def pending_prompt(self, session: AsyncSession, chat_id: int, user_id: int) -> StaffPrompt | None:
        return await session.get(StaffPrompt, (chat_id, user_id))

    async def answer_prompt(self, session: AsyncSession, staff: Staff, prompt: StaffPrompt, text: str,
                            now: datetime, file: tuple[str, str, str | None] | None = None) -> Outcome:
        """The free text an action was waiting for."""
        case = await session.get(Case, prompt.case_id)
        await session.delete(prompt)
        if case is None:
            return Outcome(text=t(self.locale, "staff.refused.no_case"))
        if case.version != prompt.case_version:
            self._refresh_card(session, case, now)
            return Outcome(text=t(self.locale, "staff.refused.changed"))
        refusal = self._refusal(case, prompt.action) or await self._too_late(session, case, prompt.action, now)
        if refusal:
            return Outcome(text=refusal)
        try:
            cleaned = clean_text(text, max_length=TEXT_LIMIT)
        except InputError as err:
            # Keep the prompt: the staff member can simply send the text again.
            session.add(StaffPrompt(chat_id=prompt.chat_id, user_id=prompt.user_id, case_id=prompt.case_id,
                                    action=prompt.action, params=prompt.params,
                                    case_version=prompt.case_version, created_at=prompt.created_at))
            return Outcome(text=t(self.locale, err.key, **err.params))
        outcome = await self._apply(session, case, staff, prompt.action, dict(prompt.params), cleaned, now)
        if outcome.done and file is not None:
            # A written notice or decision document sent with the text goes to the citizen after it.
            self._send_document(session, case, file, "", now)
        return outcome

    def _send_document(self, session: AsyncSession, case: Case, file: tuple[str, str, str | None],
                       text: str, now: datetime) -> None:
        """A notice or decision document: to the citizen now, and kept for download from /status."""
        kind, file_id, name = file
        caption = str(t(case.locale, "notice.file", tracking=case.tracking_number, text=text))
        enqueue(session, kind="file", chat_id=case.citizen_chat_id, case_id=case.id, now=now,
                priority=PRIORITY_CITIZEN, payload={"file_kind": kind, "file_id": file_id, "caption": caption})
        session.add(Attachment(case_id=case.id, position=0, kind=kind,
                               file_id=file_id, file_unique_id=file_id[-64:], size=None, mime_type=None,
                               file_name=name, media_group_id=None, caption=text or None, source="staff"))

    async def cancel_prompt(self, session: AsyncSession, chat_id: int, user_id: int) -> bool:
        prompt = await self.pending_prompt(session, chat_id, user_id)
        if prompt is None:
            return False
        await session.delete(prompt)
        return True

    async def staff_reply(self, session: AsyncSession, staff: Staff, case: Case, text: str | None,
                          file: tuple[str, str, str | None] | None, now: datetime) -> Outcome:
        """A staff member answered a card or a relayed message: it goes to the citizen."""
        if Status(case.status) in TERMINAL:
            return Outcome(text=t(self.locale, "staff.refused.closed", tracking=case.tracking_number))
        note = clean_text(text, max_length=TEXT_LIMIT) if text else None
        if file is not None:
            self._send_document(session, case, file, note or "", now)
        elif note:
            self._notify(session, case, "notice.reply", now, text=note)
        self._event(session, case, staff.user_id, REPLY, note or "(file)", now)
        return Outcome(toast=t(self.locale, "staff.done.reply", tracking=case.tracking_number), done=True)

    async def delivered(self, session: AsyncSession, case: Case, what: str, now: datetime) -> None:
        """A decision reached the citizen: the review window opens (the system acts)."""
        action = {"decision_delivered": Action.DELIVER_DECISION,
                  "review_delivered": Action.DELIVER_REVIEW}.get(what)
        if action is None:
            return
        new = next_status(case.status, action, actor="system")
        if new is None:  # the case moved on meanwhile (e.g. staff closed it)
            return
        if action is Action.DELIVER_DECISION:
            case.decision_delivered_at = now
        else:
            case.review_delivered_at = now
        set_status(case, new, now)
        if self.clocks is not None:
            await self.clocks.on_event(session, case, action.value, now)
        if action is Action.DELIVER_DECISION and self.followup is not None:
            await self.followup.invite(session, case, "decision", now)
        session.add(CaseEvent(case_id=case.id, at=now, actor_kind="system", actor_id=None,
                              action=action.value, status=new, note=None))
        self._refresh_card(session, case, now)

    # -- internals -----------------------------------------------------------------

    def _refusal(self, case: Case, action: str) -> str | None:
        status_name = t(self.locale, f"staff.status.{case.status}")
        if action in EXTRA_ACTIONS:
            if action == HEARING and case.status != Status.REREVIEW:
                return t(self.locale, "staff.refused.status", status=status_name,
                         action=t(self.locale, f"staff.button.{action}"))
            if action != DETAILS and Status(case.status) in TERMINAL:
                return t(self.locale, "staff.refused.status", status=status_name,
                         action=t(self.locale, f"staff.button.{action}"))
            return None
        if action == Action.EXTEND and case.extension_days:
            return t(self.locale, "staff.refused.already_extended")
        if action not in Action.__members__.values() or next_status(case.status, action, actor="staff") is None:
            label = t(self.locale, f"staff.button.{action}") if action in Action.__members__.values() else action
            return t(self.locale, "staff.refused.status", status=status_name, action=label)
        return None

    async def _too_late(self, session: AsyncSession, case: Case, action: str, now: datetime) -> str | None:
        """An objection after the unit's objection window (art. 23 ¶3), unless the bureau allows it."""
        limits = self.bureau.time_limits
        if action != Action.OBJECT or limits.late_objection == "allow":
            return None
        due = await session.scalar(select(CaseClock.due_on).where(
            CaseClock.case_id == case.id, CaseClock.clock == "objection", CaseClock.stopped_at.is_(None)))
        if due is None or now.astimezone(BUREAU_TZ).date() <= due:
            return None
        return t(self.locale, "staff.refused.objection_late", days=limits.objection_working_days,
                 due=due.isoformat())

    def _unit_picker(self, case: Case, action: str, params: dict[str, str]) -> Outcome:
        units = [u for u in self.bureau.units if u.kind != "city"]
        pages = max(1, -(-len(units) // PAGE))
        page = min(max(int(params.pop("p", "0") or 0), 0), pages - 1)
        rows: list[tuple[Button, ...]] = [
            (Button(u.name_en if self.locale == "en" else u.name_zh, case.id, action, case.version,
                    format_arg({**params, "u": u.code})),)
            for u in units[page * PAGE:(page + 1) * PAGE]]
        if pages > 1:
            rows.append(tuple(Button(label, case.id, action, case.version, format_arg({**params, "p": str(p)}))
                              for label, p in (("◀", (page - 1) % pages), (f"{page + 1}/{pages}", page),
                                               ("▶", (page + 1) % pages))))
        return Outcome(text=t(self.locale, "staff.pick.unit", tracking=case.tracking_number,
                              action=t(self.locale, f"staff.button.{action}")), buttons=tuple(rows))

    async def _staff_picker(self, session: AsyncSession, case: Case) -> Outcome:
        members = (await session.scalars(select(Staff).where(Staff.active.is_(True)).order_by(Staff.user_id))).all()
        if not members:
            return Outcome(toast=t(self.locale, "staff.refused.no_staff"))
        rows = tuple((Button(str(m.user_id) + (f" · {m.unit_code}" if m.unit_code else ""), case.id, GIVE_TO,
                             case.version, format_arg({"s": str(m.user_id)})),) for m in members[:20])
        return Outcome(text=t(self.locale, "staff.pick.staff", tracking=case.tracking_number), buttons=rows)

    def _choice_picker(self, case: Case, action: str, params: dict[str, str], key: str,
                       values: tuple[str, ...]) -> Outcome:
        rows = tuple((Button(t(self.locale, f"staff.choice.{action}.{v}"), case.id, action, case.version,
                             format_arg({**params, key: v})),) for v in values)
        return Outcome(text=t(self.locale, "staff.pick.choice", tracking=case.tracking_number,
                              action=t(self.locale, f"staff.button.{action}")), buttons=rows)

    def _details(self, session: AsyncSession, case: Case, staff: Staff, now: datetime) -> Outcome:
        self._event(session, case, staff.user_id, "viewed_personal_data", None, now)
        return Outcome(private_text=self.full_details(case), toast=t(self.locale, "staff.done.details"))

    def full_details(self, case: Case) -> str:
        loc = self.locale
        unit = self.bureau.unit(case.location)
        return t(loc, "staff.details", tracking=case.tracking_number, name=case.name, phone=case.phone,
                 id_number=case.id_number or "—", address=case.address,
                 location=(unit.name_en if loc == "en" else unit.name_zh) if unit else case.location,
                 title=case.title, request=case.request, facts=case.facts, reasons=case.reasons,
                 occurred=case.occurred or "—", accused=case.accused or "—")

    async def _apply(self, session: AsyncSession, case: Case, staff: Staff, action: str,
                     params: dict[str, str], text: str | None, now: datetime) -> Outcome:
        toast_params: dict[str, Any] = {"tracking": case.tracking_number}
        if action == CLAIM:
            case.assignee_id = staff.user_id
        elif action == UNASSIGN:
            case.assignee_id = None
        elif action == GIVE_TO:
            target = await self.member(session, int(params.get("s", "0") or 0))
            if target is None:
                return Outcome(toast=t(self.locale, "staff.refused.no_staff"))
            case.assignee_id = target.user_id
        elif action == ASK_INFO:
            self._notify(session, case, "notice.ask_info", now, text=text or "")
        elif action == REPLY:
            self._notify(session, case, "notice.reply", now, text=text or "")
        elif action == LEADER:
            case.leader = (text or "")[:100] or None
        elif action == SUPERVISE:
            unit = self.bureau.unit(case.unit_code or "")
            chat = unit.chat_id if unit is not None and unit.chat_id is not None else case.card_chat_id
            if chat is not None:
                enqueue(session, kind="text", chat_id=chat, case_id=case.id, now=now, priority=PRIORITY_STAFF,
                        payload={"reply_to_card": True, "map_replies": True, "text": str(t(
                            self.locale, "staff.supervised", tracking=case.tracking_number, text=text or ""))})
        elif action == HEARING:
            case.hearing_days = (case.hearing_days or 0) + int(params["d"])
            if self.clocks is not None:
                await self.clocks.on_event(session, case, "hearing", now)
            self._notify(session, case, "notice.hearing", now, days=params["d"], text=text or "")
        else:
            problem = await self._transition(session, case, Action(action), params, text, now)
            if problem:
                return Outcome(text=problem)
        self._event(session, case, staff.user_id, action, text, now, params or None)
        self._refresh_card(session, case, now)
        log.info("case %s: %s by staff %s", case.tracking_number, action, staff.user_id)
        return Outcome(toast=t(self.locale, "staff.done.action", action=t(self.locale, f"staff.button.{action}"),
                               **toast_params), done=True)

    async def _transition(self, session: AsyncSession, case: Case, action: Action, params: dict[str, str],
                          text: str | None, now: datetime) -> str | None:
        new = next_status(case.status, action, actor="staff")
        if new is None:  # checked before; the status cannot have moved within this transaction
            return t(self.locale, "staff.refused.status", status=case.status, action=action.value)
        notice: dict[str, Any] = {"text": text or ""}
        if action is Action.MARK_DUPLICATE:
            try:
                original = parse_tracking_number(text or "", self.bureau.bureau.code)
            except InputError as err:
                return t(self.locale, err.key, **err.params)
            other = await session.scalar(select(Case).where(Case.tracking_number == original))
            if other is None or other.id == case.id:
                return t(self.locale, "staff.refused.no_original", tracking=original)
            case.duplicate_of = notice["original"] = original
        if action in (Action.TRANSFER, Action.ASSIGN):
            unit = self.bureau.unit(params.get("u", ""))
            if unit is None or unit.kind == "city":
                return t(self.locale, "staff.refused.bad_choice")
            case.unit_code, case.routed_at = unit.code, now
            notice["unit"] = unit.name_en if case.locale == "en" else unit.name_zh
            if unit.chat_id is not None and unit.chat_id != case.card_chat_id:
                # The unit works in its own chat (or forum topic): the card moves there.
                enqueue(session, kind="card", chat_id=unit.chat_id, case_id=case.id, now=now,
                        payload={"thread_id": unit.topic_id} if unit.topic_id else {})
            if action is Action.ASSIGN:
                case.due_at = now + timedelta(days=int(params["d"]))
        if action is Action.REDIRECT:
            case.redirect_channel, case.routed_at = params["c"], now
            notice["channel"] = t(case.locale, f"channel.{params['c']}")
        if action is Action.REGISTER:
            case.registered_at = now
        if action is Action.RECEIVE:
            case.unit_received_at = now
        if action is Action.REROUTE:
            case.unit_code = None
        if action in (Action.ACCEPT, Action.NOT_ACCEPT):
            case.acceptance_notice_at = now
        if action is Action.DIRECT_TO_ROUTE:
            case.route = int(params["r"])
            notice["route"] = t(case.locale, f"route.{params['r']}")
        if action is Action.START_HANDLING:
            case.route = 6 if case.matter_class == "grievance" else None
        if action is Action.EXTEND:
            case.extension_days = int(params["d"])
            notice["days"] = params["d"]
        if action in (Action.DECIDE, Action.DECIDE_REVIEW, Action.DECIDE_REREVIEW):
            case.decision = params["o"]
            case.decision_issued_at = now
            notice["decision"] = t(case.locale, f"decision.{params['o']}")
        if action is Action.CLOSE:
            case.closed_at = now
        set_status(case, new, now)
        if self.clocks is not None:
            await self.clocks.on_event(session, case, action.value, now)
        if self.followup is not None:
            if action is Action.ACCEPT:
                await self.followup.invite(session, case, "acceptance", now)
            if action in (Action.DIRECT_TO_ROUTE, Action.REDIRECT):
                # Matters sent to courts or other statutory channels are not rated.
                await self.followup.withdraw_invitations(session, case)
        on_sent = {Action.DECIDE: "decision_delivered", Action.DECIDE_REVIEW: "review_delivered"}.get(action)
        key = f"notice.{action.value}" if action in OWN_NOTICE else "notice.status"
        notice["status"] = t(case.locale, f"status.name.{new}")
        self._notify(session, case, key, now, on_sent=on_sent, **notice)
        return None

    def _notify(self, session: AsyncSession, case: Case, key: str, now: datetime, *,
                on_sent: str | None = None, **params: Any) -> None:
        text = t(case.locale, key, tracking=case.tracking_number, **params)
        payload: dict[str, Any] = {"text": str(text)}
        if on_sent:
            payload["on_sent"] = on_sent
        enqueue(session, kind="notice", chat_id=case.citizen_chat_id, case_id=case.id, now=now,
                priority=PRIORITY_CITIZEN, payload=payload)

    def _refresh_card(self, session: AsyncSession, case: Case, now: datetime) -> None:
        if case.card_chat_id is not None:
            enqueue(session, kind="card", chat_id=case.card_chat_id, case_id=case.id, now=now,
                    priority=PRIORITY_CARD_EDIT)

    @staticmethod
    def _event(session: AsyncSession, case: Case, actor_id: int, action: str, note: str | None,
               now: datetime, detail: dict[str, str] | None = None) -> None:
        session.add(CaseEvent(case_id=case.id, at=now, actor_kind="staff", actor_id=actor_id,
                              action=action, status=case.status, note=note, detail=detail))

