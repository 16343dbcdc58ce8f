"""The statutory clocks of a case (DOMAIN.md §5), started and stopped by its events.

Each clock is stored when its starting event happens (``case_clocks``), with the
day it is due, counted the bureau's way (``handoff/deadlines.py``). Staff
clocks carry reminders — at the configured fractions of the period, some days
before the end, and an overdue alert — each sent once through the outbox by
the maintenance tick, which works from the database: a restart neither loses
nor repeats one. The case keeps the next due date and any overdue labels, so
cards, /queue and /status read them without further queries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dialogs.bureau import BureauConfig
from dialogs.i18n import t
from handoff.deadlines import BUREAU_TZ, estimated_due_date
from handoff.outbox import PRIORITY_STAFF, enqueue
from storage import later
from storage.models import Case, CaseClock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClockRule:
    #: Name of the time limit in ``TimeLimits`` (``<name>_days``).
    limit: str
    working: bool = False
    #: Staff are reminded and alerted (citizens' own windows are not reminded).
    remind: bool = True


RULES: dict[str, ClockRule] = {
    "route": ClockRule("route_days"),
    "acceptance": ClockRule("acceptance_days"),
    "objection": ClockRule("objection_working_days", working=True, remind=False),
    "handling": ClockRule("handling_days"),
    "ask_review": ClockRule("ask_review_days", remind=False),
    "review": ClockRule("review_days"),
    "ask_rereview": ClockRule("ask_rereview_days", remind=False),
    "rereview": ClockRule("rereview_days"),
}

#: event → clocks it starts / stops. Events are lifecycle actions plus "submitted".
#: The unit's clocks run from the transfer or assignment, which hands the matter to
#: the unit through the system: reading it as received then is the reading that
#: protects the petitioner (a late "receive" click does not buy the unit time).
STARTS: dict[str, tuple[str, ...]] = {
    "submitted": ("route",),
    "reroute": ("route",),
    "transfer": ("acceptance", "objection"),
    "assign": ("acceptance", "objection"),
    "accept": ("handling",),
    "deliver_decision": ("ask_review",),
    "request_review": ("review",),
    "deliver_review": ("ask_rereview",),
    "request_rereview": ("rereview",),
}
STOPS: dict[str, tuple[str, ...]] = {
    "transfer": ("route",), "assign": ("route",), "redirect": ("route",),
    "mark_duplicate": ("route",), "not_reaccept": ("route",),
    "accept": ("acceptance", "objection"), "not_accept": ("acceptance", "objection"),
    "object": ("acceptance", "objection"),
    "decide": ("handling",), "direct_to_route": ("handling",),
    "request_review": ("ask_review",), "decide_review": ("review",),
    "request_rereview": ("ask_rereview",), "decide_rereview": ("rereview",),
}
#: Events that end every running clock.
ENDS_ALL = frozenset({"withdraw", "close", "expire_window"})


def _local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=BUREAU_TZ)


@dataclass
class Clocks:
    bureau: BureauConfig
    staff_chat_id: int | None
    staff_locale: str

    def _days(self, clock: str, case: Case) -> int:
        days = int(getattr(self.bureau.time_limits, RULES[clock].limit))
        if clock == "handling":
            days += case.extension_days or 0
        if clock == "rereview":
            days += case.hearing_days or 0
        return days

    def _due(self, clock: str, case: Case, start: datetime) -> tuple[date, bool]:
        """(the last day, whether it is estimated because the holiday calendar ends before it)."""
        limits = self.bureau.time_limits
        working = RULES[clock].working or limits.day_counting == "working"
        day, estimated = estimated_due_date(start, self._days(clock, case), working=working,
                                            roll_forward=limits.holiday_rolls_forward)
        if estimated:
            log.warning("case %s: %s deadline %s estimated without the holiday calendar",
                        case.tracking_number, clock, day)
        return day, estimated

    def _reminder_points(self, clock: CaseClock) -> list[tuple[str, datetime]]:
        """(name, when) of every reminder of a staff clock, in time order."""
        if not RULES[clock.clock].remind:
            return []
        reminders = self.bureau.reminders
        end = _local_midnight(clock.due_on + timedelta(days=1))  # the end of the last day
        length = end - clock.started_at
        points = [(f"f{f:g}", clock.started_at + length * f) for f in reminders.fractions]
        points += [(f"d{d}", end - timedelta(days=d)) for d in reminders.days_before]
        if reminders.overdue_alert:
            points.append(("overdue", end))
        return sorted(((n, at) for n, at in points if at > clock.started_at), key=lambda p: p[1])

    def _schedule(self, clock: CaseClock) -> None:
        pending = [at for name, at in self._reminder_points(clock) if name not in clock.reminders_sent]
        clock.next_reminder_at = pending[0] if pending and clock.stopped_at is None else None

    async def on_event(self, session: AsyncSession, case: Case, event: str, now: datetime) -> None:
        """Start and stop the clocks an event moves; refresh the case's next due date.
        A case filed in this transaction (no id yet: written at the commit) has
        no clocks to look up, and its new ones are written with it."""
        running: list[CaseClock] = [] if case.id is None else list((await session.scalars(select(CaseClock).where(
            CaseClock.case_id == case.id, CaseClock.stopped_at.is_(None)))).all())
        stops = set(RULES) if event in ENDS_ALL else set(STOPS.get(event, ()))
        for clock in running:
            if clock.clock in stops:
                clock.stopped_at, clock.next_reminder_at = now, None
        lengthened = {"extend": "handling", "hearing": "rereview"}.get(event)
        for clock in running:
            if clock.clock == lengthened and clock.stopped_at is None:
                clock.due_on, clock.estimated = self._due(clock.clock, case, clock.started_at)
                self._schedule(clock)
        for name in STARTS.get(event, ()):
            due_on, estimated = self._due(name, case, now)
            clock = CaseClock(case_id=case.id, clock=name, started_at=now, due_on=due_on, estimated=estimated,
                              stopped_at=None, reminders_sent=[])
            self._schedule(clock)
            later.add(session, clock, case)  # a new case's: written with its events at the commit
            running.append(clock)
        self._summarise(case, [c for c in running if c.stopped_at is None], now)

    def _summarise(self, case: Case, running: Iterable[CaseClock], now: datetime) -> None:
        today = now.astimezone(BUREAU_TZ).date()
        open_clocks = sorted(running, key=lambda c: c.due_on)
        staff_clocks = [c for c in open_clocks if c.clock != "objection"]
        case.next_due_clock = staff_clocks[0].clock if staff_clocks else None
        case.next_due_on = staff_clocks[0].due_on if staff_clocks else None
        case.next_due_estimated = bool(staff_clocks and staff_clocks[0].estimated)
        overdue = [c.clock for c in open_clocks if RULES[c.clock].remind and c.due_on < today]
        case.overdue = ",".join(overdue) or None

    async def remind_due(self, session: AsyncSession, now: datetime) -> int:
        """Send every reminder that has come due (each once); mark overdue cases."""
        due = (await session.scalars(select(CaseClock).where(
            CaseClock.stopped_at.is_(None), CaseClock.next_reminder_at.is_not(None),
            CaseClock.next_reminder_at <= now).order_by(CaseClock.next_reminder_at).limit(500))).all()
        for clock in due:
            case = await session.get(Case, clock.case_id)
            if case is None:
                continue
            for name, at in self._reminder_points(clock):
                if at <= now and name not in clock.reminders_sent:
                    self._send(session, case, clock, name, now)
                    clock.reminders_sent = [*clock.reminders_sent, name]
            self._schedule(clock)
            running = (await session.scalars(select(CaseClock).where(
                CaseClock.case_id == case.id, CaseClock.stopped_at.is_(None)))).all()
            before = case.overdue
            self._summarise(case, running, now)
            if case.overdue != before and case.card_chat_id is not None:
                enqueue(session, kind="card", chat_id=case.card_chat_id, case_id=case.id, now=now, priority=60)
        return len(due)

    def _send(self, session: AsyncSession, case: Case, clock: CaseClock, name: str, now: datetime) -> None:
        unit = self.bureau.unit(case.unit_code or "")
        chat: int | None
        if case.assignee_id is not None:
            chat = case.assignee_id
        elif unit is not None and unit.chat_id is not None:
            chat = unit.chat_id
        else:
            chat = case.card_chat_id or self.staff_chat_id
        if chat is None:
            return
        left = (clock.due_on - now.astimezone(BUREAU_TZ).date()).days
        key = "clock.reminder.overdue" if name == "overdue" else "clock.reminder.due"
        text = t(self.staff_locale, key, tracking=case.tracking_number,
                 clock=t(self.staff_locale, f"clock.name.{clock.clock}"), date=clock.due_on.isoformat(), days=left)
        enqueue(session, kind="text", chat_id=chat, case_id=case.id, now=now, priority=PRIORITY_STAFF,
                payload={"text": str(text)})
