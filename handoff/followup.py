"""The citizen after filing: status, own cases, adding information, withdrawing,
rating, and asking for review (复查) and re-review (复核).

What a status shows is what the law lets the petitioner see (DOMAIN.md §6):
the statutory events with dates, the responsible unit and the next deadline.
Never staff names, internal notes, other people's data, or the text of a report
of wrongdoing. A wrong code and an unknown number get the same answer and cost
the same time; failed lookups are limited per account and per number.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dialogs.bureau import BureauConfig
from dialogs.errors import InputError
from dialogs.i18n import t
from dialogs.tracking import burn_verify, parse_tracking_number, verify_query_code
from dialogs.validators import clean_text
from handoff.deadlines import BUREAU_TZ, due_date
from handoff.outbox import PRIORITY_CARD_EDIT, PRIORITY_CITIZEN, PRIORITY_STAFF, Button, enqueue
from handoff.privacy import set_status
from state_machine.case import TERMINAL_VALUES, WITHDRAWABLE, Action, Status, next_status
from storage.models import Attachment, Case, CaseEvent, LookupFailure, Rating

log = logging.getLogger(__name__)

#: Timeline entries a petitioner sees (arts. 22–23, 32–36), in their words.
PUBLIC_EVENTS = frozenset({
    "submitted", "register", "transfer", "assign", "accept", "not_accept", "direct_to_route", "redirect",
    "extend", "decide", "deliver_decision", "request_review", "decide_review", "request_rereview",
    "decide_rereview", "close", "withdraw", "mark_duplicate", "not_reaccept", "expire_window",
})
#: Events whose free text the petitioner may read (reasons given to them anyway).
PUBLIC_NOTES = frozenset({"not_accept", "direct_to_route", "redirect", "extend", "decide", "decide_review",
                          "decide_rereview", "not_reaccept"})
SCORES = ("satisfied", "basic", "unsatisfied")
WITHDRAWABLE_VALUES = tuple(s.value for s in WITHDRAWABLE)


@dataclass(frozen=True)
class View:
    """A reply to the citizen: text and the buttons of the handoff layer."""

    text: str
    buttons: tuple[tuple[Button, ...], ...] = ()


@dataclass
class FollowUpService:
    bureau: BureauConfig
    staff_chat_id: int | None
    staff_locale: str
    max_failures_per_user: int = 10
    max_failures_per_number: int = 5
    failure_window: timedelta = timedelta(hours=1)
    clocks: Any = None

    # -- status by number and code ------------------------------------------------------

    async def lookup(self, session: AsyncSession, user_id: int, number_text: str, code: str,
                     locale: str, now: datetime) -> tuple[View, Case | None]:
        """(what to answer, the case if the code was right)."""
        try:
            number = parse_tracking_number(number_text, self.bureau.bureau.code)
        except InputError as refused:
            return View(str(t(locale, refused.key, **refused.params))), None
        user_key, number_key = f"u:{user_id}", f"n:{number}"
        waits = [w for w in (await self._blocked_for(session, user_key, self.max_failures_per_user, now),
                             await self._blocked_for(session, number_key, self.max_failures_per_number, now)) if w]
        if waits:
            blocked = max(waits)
            minutes = max(1, math.ceil(blocked.total_seconds() / 60))
            return View(str(t(locale, "status.too_many", minutes=minutes))), None
        case = await session.scalar(select(Case).where(Case.tracking_number == number))
        # The hash takes a few ms and releases the GIL: off the event loop, so other
        # citizens' updates go on meanwhile (and unknown numbers cost the same).
        if case is None:
            await asyncio.to_thread(burn_verify, code)
        if case is None or not await asyncio.to_thread(verify_query_code, code, case.query_code_hash):
            await self._count_failure(session, user_key, now)
            await self._count_failure(session, number_key, now)
            return View(str(t(locale, "status.not_found"))), None
        return await self.view(session, case, locale, now, own=case.citizen_user_id == user_id), case

    async def _blocked_for(self, session: AsyncSession, key: str, limit: int, now: datetime) -> timedelta | None:
        # Locked on PostgreSQL until the lookup commits: the tick's deletion of an
        # ended window then waits, and finds the window started again if it failed.
        row = await session.get(LookupFailure, key, with_for_update=True)
        if row is None or row.window_start + self.failure_window <= now or row.count < limit:
            return None
        return row.window_start + self.failure_window - now

    async def _count_failure(self, session: AsyncSession, key: str, now: datetime) -> None:
        row = await session.get(LookupFailure, key)
        if row is None:
            session.add(LookupFailure(key=key, window_start=now, count=1))
        elif row.window_start + self.failure_window <= now:
            row.window_start, row.count = now, 1
        else:
            row.count += 1

    async def forget_ended_windows(self, session: AsyncSession, now: datetime) -> int:
        """Delete the counts of failed lookups whose window has ended (run by the
        maintenance tick). They no longer hold anyone back (a failure after
        the window starts a new one), and each names an account or a
        tracking number: kept, they piled up for good."""
        result = await session.execute(delete(LookupFailure)
                                       .where(LookupFailure.window_start <= now - self.failure_window))
        return int(result.rowcount)  # type: ignore[attr-defined]

    # -- the status view ------------------------------------------------------------

    async def view(self, session: AsyncSession, case: Case, locale: str, now: datetime, *, own: bool) -> View:
        events = (await session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id)
                                        .order_by(CaseEvent.id))).all()
        report = case.matter_class == "report"
        lines = [str(t(locale, "status.header", tracking=case.tracking_number,
                       status=t(locale, f"status.name.{case.status}"),
                       unit=self._unit(case.unit_code, locale) or t(locale, "status.unit_pending"),
                       deadline=self.next_deadline(case, locale)))]
        if not report:
            lines.append(str(t(locale, "status.title", title=case.title)))
        lines.append(str(t(locale, "status.timeline")))
        for e in events:
            if e.action not in PUBLIC_EVENTS:
                continue
            day = e.at.astimezone(BUREAU_TZ).strftime("%Y-%m-%d")
            what = t(locale, f"status.event.{e.action}", **self._event_params(e, locale))
            line = f"{day} {what}"
            if e.note and e.action in PUBLIC_NOTES and not report:
                line += str(t(locale, "status.event_note", note=e.note))
            lines.append(line)
        rows: list[tuple[Button, ...]] = []
        documents = (await session.scalars(select(Attachment).where(
            Attachment.case_id == case.id, Attachment.source == "staff").order_by(Attachment.id))).all()
        for doc in documents:
            rows.append((Button(str(t(locale, "status.button.document", name=doc.file_name or doc.kind)),
                                case.id, "doc", 0, f"a={doc.id}", "citizen"),))
        if own:
            rows.extend(self._own_buttons(case, locale, now))
        return View("\n".join(lines), tuple(rows))

    def _own_buttons(self, case: Case, locale: str, now: datetime) -> list[tuple[Button, ...]]:
        def button(action: str) -> Button:
            return Button(str(t(locale, f"status.button.{action}")), case.id, action, 0, "", "citizen")

        rows: list[tuple[Button, ...]] = []
        if case.status not in TERMINAL_VALUES:
            rows.append((button("add"),))
        if case.status in WITHDRAWABLE_VALUES:
            rows.append((button("withdraw"),))
        if case.status == Status.REVIEW_WINDOW and self._window_end(case, Action.REQUEST_REVIEW) >= _day(now):
            rows.append((button("review"),))
        if case.status == Status.REREVIEW_WINDOW and self._window_end(case, Action.REQUEST_REREVIEW) >= _day(now):
            rows.append((button("rereview"),))
        return rows

    def _event_params(self, e: CaseEvent, locale: str) -> dict[str, Any]:
        detail = e.detail or {}
        params: dict[str, Any] = {}
        if "u" in detail:
            params["unit"] = self._unit(detail["u"], locale) or detail["u"]
        else:
            params["unit"] = ""
        params["decision"] = t(locale, f"decision.{detail['o']}") if "o" in detail else ""
        params["days"] = detail.get("d", "")
        params["route"] = t(locale, f"route.{detail['r']}") if "r" in detail else ""
        params["channel"] = t(locale, f"channel.{detail['c']}") if "c" in detail else ""
        return params

    def _unit(self, code: str | None, locale: str) -> str | None:
        unit = self.bureau.unit(code or "")
        if unit is None:
            return None
        return unit.name_en if locale == "en" else unit.name_zh

    def next_deadline(self, case: Case, locale: str) -> str:
        """The next date the petitioner can hold someone to, in words (kept by handoff/clocks.py)."""
        if case.next_due_clock is None or case.next_due_on is None:
            return str(t(locale, "status.deadline.none"))
        text = str(t(locale, f"status.deadline.{case.next_due_clock}", date=case.next_due_on.isoformat()))
        return text + (str(t(locale, "clock.estimated")) if case.next_due_estimated else "")

    def _window_end(self, case: Case, action: Action) -> Any:
        limits = self.bureau.time_limits
        if action is Action.REQUEST_REVIEW:
            start = case.decision_delivered_at or case.decision_issued_at or case.submitted_at
            return due_date(start, limits.ask_review_days, strict=False)
        start = case.review_delivered_at or case.submitted_at
        return due_date(start, limits.ask_rereview_days, strict=False)

    # -- the citizen's own cases --------------------------------------------------------

    async def own_case(self, session: AsyncSession, user_id: int, case_id: int) -> Case | None:
        case = await session.get(Case, case_id)
        return case if case is not None and case.citizen_user_id == user_id else None

    async def my_cases(self, session: AsyncSession, user_id: int, locale: str) -> View:
        cases = (await session.scalars(select(Case).where(Case.citizen_user_id == user_id)
                                       .order_by(Case.submitted_at.desc()).limit(20))).all()
        if not cases:
            return View(str(t(locale, "mycases.none")))
        lines = [str(t(locale, "mycases.header", count=len(cases)))]
        rows = []
        for c in cases:
            lines.append(str(t(locale, "mycases.line", tracking=c.tracking_number,
                               status=t(locale, f"status.name.{c.status}"), deadline=self.next_deadline(c, locale))))
            rows.append((Button(f"{c.tracking_number} · {c.title[:24]}", c.id, "view", 0, "", "citizen"),))
        return View("\n".join(lines), tuple(rows))

    # -- withdrawing -----------------------------------------------------------------

    def can_withdraw(self, case: Case) -> bool:
        return next_status(case.status, Action.WITHDRAW, actor="citizen") is not None

    async def withdraw(self, session: AsyncSession, case: Case, reason: str | None, now: datetime) -> None:
        new = next_status(case.status, Action.WITHDRAW, actor="citizen")
        assert new is not None, "checked by can_withdraw in the same transaction"
        set_status(case, new, now)
        case.withdrawn_at = now
        session.add(CaseEvent(case_id=case.id, at=now, actor_kind="citizen", actor_id=case.citizen_user_id,
                              action="withdraw", status=new, note=reason))
        if self.clocks is not None:
            await self.clocks.on_event(session, case, "withdraw", now)
        self._tell_staff(session, case, "staff.withdrawn", now, reason=reason or "—")

    # -- review and re-review ------------------------------------------------------------

    def review_refusal(self, case: Case, stage: str, locale: str, now: datetime) -> str | None:
        action = Action.REQUEST_REVIEW if stage == "review" else Action.REQUEST_REREVIEW
        if next_status(case.status, action, actor="citizen") is None:
            return str(t(locale, f"review.not_now.{stage}", status=t(locale, f"status.name.{case.status}")))
        end = self._window_end(case, action)
        if end < _day(now):
            return str(t(locale, f"review.too_late.{stage}", date=end))
        return None

    async def request_review(self, session: AsyncSession, case: Case, stage: str, reasons: str,
                       files: list[dict[str, Any]], now: datetime, locale: str) -> str:
        action = Action.REQUEST_REVIEW if stage == "review" else Action.REQUEST_REREVIEW
        new = next_status(case.status, action, actor="citizen")
        assert new is not None
        set_status(case, new, now)
        if stage == "review":
            case.review_requested_at = now
            days = self.bureau.time_limits.review_days
        else:
            case.rereview_requested_at = now
            days = self.bureau.time_limits.rereview_days
        session.add(CaseEvent(case_id=case.id, at=now, actor_kind="citizen", actor_id=case.citizen_user_id,
                              action=action.value, status=new, note=reasons))
        if self.clocks is not None:
            await self.clocks.on_event(session, case, action.value, now)
        self._tell_staff(session, case, f"staff.review_requested.{stage}", now, reasons=reasons)
        chat = case.card_chat_id or self.staff_chat_id
        caption = str(t(self.staff_locale, f"staff.review_file.{stage}", tracking=case.tracking_number))
        for item in files:
            if chat is not None:
                enqueue(session, kind="file", chat_id=chat, case_id=case.id, now=now, priority=PRIORITY_STAFF,
                        payload={"reply_to_card": True, "map_replies": True, **item,
                                 "caption": caption + (f"\n{item['caption']}" if item.get("caption") else "")})
            case.attachment_count += 1
        return str(t(locale, f"review.requested.{stage}", tracking=case.tracking_number,
                     date=due_date(now, days, strict=False)))

    # -- ratings ---------------------------------------------------------------------

    async def invite(self, session: AsyncSession, case: Case, stage: str, now: datetime) -> None:
        """Invite the citizen to rate the bureau and the unit (not for statutory channels)."""
        if case.route in (1, 2, 3, 4, 5) or case.status in ("statutory_route", "redirected"):
            return
        rating = Rating(case_id=case.id, stage=stage, unit_code=case.unit_code, invited_at=now,
                        expires_at=now + timedelta(days=self.bureau.rating_window_days), status="invited")
        session.add(rating)
        await session.flush()  # the buttons carry the invitation's id
        text, buttons = self.rating_prompt(case, rating, case.locale)
        enqueue(session, kind="notice", chat_id=case.citizen_chat_id, case_id=case.id, now=now,
                priority=PRIORITY_CITIZEN, payload={"text": text, "buttons": [
                    [dict(b.__dict__) for b in row] for row in buttons]})

    def rating_prompt(self, case: Case, rating: Rating, locale: str) -> tuple[str, tuple[tuple[Button, ...], ...]]:
        unit = self._unit(rating.unit_code, locale) or t(locale, "rating.unit_generic")
        text = str(t(locale, f"rating.invite.{rating.stage}", tracking=case.tracking_number, unit=unit,
                     date=rating.expires_at.astimezone(BUREAU_TZ).date()))
        rows = []
        for target in ("b", "u"):
            rows.append(tuple(Button(str(t(locale, f"rating.{target}.{score}")), case.id, "rate", 0,
                                     f"r={rating.id},t={target},s={score}", "citizen") for score in SCORES))
        return text, tuple(rows)

    async def rate(self, session: AsyncSession, user_id: int, rating_id: int, target: str, score: str,
                   locale: str, now: datetime) -> tuple[str, bool]:
        """Record one score; (answer, whether the citizen may now add a comment)."""
        rating = await session.get(Rating, rating_id)
        case = await session.get(Case, rating.case_id) if rating is not None else None
        if rating is None or case is None or case.citizen_user_id != user_id or target not in ("b", "u") \
                or score not in SCORES or rating.status == "withdrawn":
            return str(t(locale, "rating.invalid")), False
        if rating.expires_at <= now or rating.status == "expired":
            return str(t(locale, "rating.closed", date=rating.expires_at.astimezone(BUREAU_TZ).date())), False
        if target == "b":
            rating.bureau_score = score
        else:
            rating.unit_score = score
        rating.status, rating.rated_at = "rated", now
        session.add(CaseEvent(case_id=case.id, at=now, actor_kind="citizen", actor_id=user_id, action="rated",
                              status=case.status, note=None,
                              detail={"stage": rating.stage, "target": target, "score": score}))
        answer = str(t(locale, "rating.thanks"))
        if score == "unsatisfied":
            self._tell_staff(session, case, "staff.unsatisfied", now,
                             target=t(self.staff_locale, f"rating.target.{target}"),
                             stage=t(self.staff_locale, f"rating.stage.{rating.stage}"))
            key = "rating.unsatisfied_review" if case.status == "review_window" else "rating.unsatisfied"
            answer += "\n" + str(t(locale, key))
        both = rating.bureau_score is not None and rating.unit_score is not None
        if both:
            answer += "\n" + str(t(locale, "rating.comment_ask"))
        return answer, both

    async def comment(self, session: AsyncSession, user_id: int, rating_id: int, text: str, now: datetime) -> bool:
        rating = await session.get(Rating, rating_id)
        case = await session.get(Case, rating.case_id) if rating is not None else None
        # An erased case (a retention shorter than the rating window) keeps its
        # scores, not new words.
        if (rating is None or case is None or case.citizen_user_id != user_id or rating.expires_at <= now
                or case.anonymised_at is not None):
            return False
        rating.comment = clean_text(text, max_length=500)
        return True

    async def withdraw_invitations(self, session: AsyncSession, case: Case) -> None:
        await session.execute(update(Rating).where(Rating.case_id == case.id, Rating.status == "invited")
                              .values(status="withdrawn"))

    # -- shared ------------------------------------------------------------------------

    def _tell_staff(self, session: AsyncSession, case: Case, key: str, now: datetime, **params: Any) -> None:
        chat = case.card_chat_id or self.staff_chat_id
        if chat is None:
            return
        enqueue(session, kind="text", chat_id=chat, case_id=case.id, now=now, priority=PRIORITY_STAFF,
                payload={"reply_to_card": True, "map_replies": True,
                         "text": str(t(self.staff_locale, key, tracking=case.tracking_number, **params))})
        if case.card_chat_id is not None:
            enqueue(session, kind="card", chat_id=case.card_chat_id, case_id=case.id, now=now,
                    priority=PRIORITY_CARD_EDIT)


def _day(now: datetime) -> Any:
    return now.astimezone(BUREAU_TZ).date()
