"""Key performance indicators for a period (DOMAIN.md §8, domain-notes.md §8).

Pure data in, pure data out: :func:`compute` reads cases, their timelines and
rating invitations and returns a :class:`Report` of frozen dataclasses; it
knows nothing of Telegram, languages or file formats (``bot/report.py``
renders it). Every formula, and what counts where, is in ``docs/KPI.md``.

The rules in one place:

* A case belongs to a period by the date (bureau time) its clock started:
  submission for the bureau's routing clock and for the volume counts, the
  unit's receipt for the acceptance clock, the acceptance for the handling
  clock, the invitation for ratings, the event's own time for transfers,
  assignments and supervisions, the request for reviews and re-reviews.
* A clock counts as *timely* when its closing act falls on or before its last
  day, *late* after it, and *overdue* when there is no act and the last day has
  passed (``now``). A clock still running and not yet due is in no denominator.
* Every deadline comes from :func:`handoff.deadlines.due_date`, counted the way
  the bureau configured (calendar or working days, holidays rolling forward).
* A rate whose denominator is empty is ``None`` (shown as "—"), never 0.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.ext.asyncio import AsyncSession

from dialogs.bureau import BureauConfig
from handoff.deadlines import BUREAU_TZ, estimated_due_date
from storage.models import CLOCK_STARTS, Case, CaseEvent, ChannelCount, Rating

__all__ = [
    "ROUTING_ACTIONS",
    "SATISFIED_SCORES",
    "Count",
    "Overdue",
    "Participation",
    "PeriodError",
    "Report",
    "Satisfaction",
    "Share",
    "Summary",
    "Timeliness",
    "UnitKpis",
    "UnknownUnitError",
    "compute",
    "parse_period",
    "rate",
]

#: Acts that end the bureau's routing clock (art. 22: transferred, assigned, redirected or told).
ROUTING_ACTIONS = frozenset({"transfer", "assign", "redirect", "mark_duplicate", "not_reaccept"})
#: Scores that count as satisfied (满意 + 基本满意).
SATISFIED_SCORES = frozenset({"satisfied", "basic"})
#: The supervision (督办, art. 41) action. The lifecycle has no such action yet, so it counts 0.
SUPERVISE = "supervise"
#: Statutory routes 1–5 (art. 31) leave the petition procedure: no handling clock.
STATUTORY_ROUTES = frozenset({1, 2, 3, 4, 5})
_TIMELINE_ACTIONS = ROUTING_ACTIONS | {"accept", "not_accept", "extend", "decide"}


class UnknownUnitError(ValueError):
    """The unit code is not in the bureau configuration."""


class PeriodError(ValueError):
    """A period that cannot be read; ``str()`` says what was expected."""


def rate(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator``, or None when there is nothing to divide by."""
    return numerator / denominator if denominator else None


# -- the report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Timeliness:
    """A statutory clock over a population: done in time, done late, overdue and not done."""

    timely: int = 0
    late: int = 0
    overdue: int = 0

    @property
    def total(self) -> int:
        return self.timely + self.late + self.overdue

    @property
    def rate(self) -> float | None:
        return rate(self.timely, self.total)

    def __add__(self, other: Timeliness) -> Timeliness:
        return Timeliness(self.timely + other.timely, self.late + other.late, self.overdue + other.overdue)


@dataclass(frozen=True)
class Satisfaction:
    """Scores given (满意 / 基本满意 / 不满意) to one target, the bureau or a unit."""

    satisfied: int = 0
    basic: int = 0
    unsatisfied: int = 0

    @property
    def total(self) -> int:
        return self.satisfied + self.basic + self.unsatisfied

    @property
    def rate(self) -> float | None:
        return rate(self.satisfied + self.basic, self.total)

    def __add__(self, other: Satisfaction) -> Satisfaction:
        return Satisfaction(self.satisfied + other.satisfied, self.basic + other.basic,
                            self.unsatisfied + other.unsatisfied)


@dataclass(frozen=True)
class Participation:
    """Rating invitations answered, and those whose window ended unanswered (超期未评价)."""

    rated: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        return self.rated + self.expired

    @property
    def rate(self) -> float | None:
        return rate(self.rated, self.total)

    def __add__(self, other: Participation) -> Participation:
        return Participation(self.rated + other.rated, self.expired + other.expired)


@dataclass(frozen=True)
class Share:
    part: int
    whole: int

    @property
    def rate(self) -> float | None:
        return rate(self.part, self.whole)


@dataclass(frozen=True)
class Count:
    """Cases with one value of a breakdown; ``code`` None means "not routed to a unit"."""

    code: str | None
    count: int


@dataclass(frozen=True)
class Overdue:
    """A case past a deadline without the act that was due (or that was withdrawn after it)."""

    tracking_number: str
    unit_code: str | None
    status: str
    due: date
    days_overdue: int


@dataclass(frozen=True)
class UnitKpis:
    """One handling unit's indicators for the period."""

    code: str
    #: Cases submitted in the period and now with this unit.
    cases: int = 0
    acceptance: Timeliness = Timeliness()
    completion: Timeliness = Timeliness()
    #: The unit's score (unit_score) on invitations naming this unit.
    satisfaction: Satisfaction = Satisfaction()
    participation: Participation = Participation()


@dataclass(frozen=True)
class Summary:
    """The bureau-wide figures (or one unit's, when the report is for a unit)."""

    #: Cases recorded in this database and submitted in the period (every channel).
    received: int
    #: Of those, submitted online (``channel == "online"``).
    online: int
    #: Petitions through channels not recorded here (letters, visits, calls), as given.
    other_channels: int
    #: 网上信访占比; None for a unit report (the other channels are a bureau-wide number).
    online_share: Share | None
    #: The bureau's own timely routing (submitted → transferred / assigned / redirected / told);
    #: None for a unit report.
    routing: Timeliness | None
    #: 及时受理率 over every unit.
    acceptance: Timeliness
    #: 按期办结率 over every unit.
    completion: Timeliness
    #: 群众满意率 of the bureau (bureau_score) and of the units (unit_score).
    bureau_satisfaction: Satisfaction
    unit_satisfaction: Satisfaction
    #: 参评率.
    participation: Participation
    #: Received cases marked duplicate or flagged "already final after re-review".
    repeats: Share
    transfers: int
    assignments: int
    supervisions: int
    reviews: int
    rereviews: int


@dataclass(frozen=True)
class Report:
    start: date
    end: date
    now: datetime
    unit: str | None
    summary: Summary
    units: tuple[UnitKpis, ...]
    by_class: tuple[Count, ...]
    by_category: tuple[Count, ...]
    by_location: tuple[Count, ...]
    by_unit: tuple[Count, ...]
    #: The units with the most cases in the period (most complained about), most first.
    top_units: tuple[Count, ...]
    overdue_acceptance: tuple[Overdue, ...]
    overdue_decision: tuple[Overdue, ...]
    #: Deadlines past the holiday calendar's last year, counted without holidays (see docs/KPI.md).
    calendar_fallbacks: int = 0


# -- periods -------------------------------------------------------------------------

_MONTH = re.compile(r"^(\d{4})-(\d{1,2})$")
_QUARTER = re.compile(r"^(\d{4})-?[Qq]([1-4])$")
_YEAR = re.compile(r"^(\d{4})$")


def _month_end(year: int, month: int) -> date:
    first_next = date(year + month // 12, month % 12 + 1, 1)
    return first_next - timedelta(days=1)


def parse_period(text: str, today: date) -> tuple[date, date]:
    """``2026-03``, ``2026-Q1``, ``2026``, ``2026-03-05`` or ``2026-03-01..2026-03-31``;
    empty: the month of ``today``. Both ends are included."""
    text = text.strip()
    try:
        if not text:
            return today.replace(day=1), _month_end(today.year, today.month)
        if ".." in text:
            first, _, last = text.partition("..")
            start, end = date.fromisoformat(first.strip()), date.fromisoformat(last.strip())
            if start > end:
                raise PeriodError(f"the period starts after it ends: {text}")
            return start, end
        if match := _MONTH.match(text):
            year, month = int(match[1]), int(match[2])
            return date(year, month, 1), _month_end(year, month)
        if match := _QUARTER.match(text):
            year, quarter = int(match[1]), int(match[2])
            return date(year, 3 * quarter - 2, 1), _month_end(year, 3 * quarter)
        if match := _YEAR.match(text):
            year = int(match[1])
            return date(year, 1, 1), date(year, 12, 31)
        day = date.fromisoformat(text)
        return day, day
    except ValueError as exc:
        if isinstance(exc, PeriodError):
            raise
        raise PeriodError(f"not a period: {text!r} (try 2026-03, 2026-Q1, 2026 or 2026-03-01..2026-03-31)") from None


# -- computing -----------------------------------------------------------------------


@dataclass
class _Facts:
    """What the KPIs need of one case: its columns and the acts on its timeline."""

    id: int
    tracking_number: str
    status: str
    channel: str
    matter_class: str
    category: str
    location: str
    unit_code: str | None
    submitted_at: datetime
    routed_at: datetime | None
    unit_received_at: datetime | None
    acceptance_notice_at: datetime | None
    decision_issued_at: datetime | None
    extension_days: int | None
    route: int | None
    repeat: bool
    review_requested_at: datetime | None
    rereview_requested_at: datetime | None
    withdrawn_at: datetime | None
    #: action → times, oldest first (only the actions in ``_TIMELINE_ACTIONS``).
    acts: dict[str, list[tuple[datetime, dict[str, Any] | None]]] = field(default_factory=dict)

    def first(self, actions: Iterable[str]) -> datetime | None:
        times = [self.acts[a][0][0] for a in actions if a in self.acts]
        return min(times) if times else None

    def last_act(self, actions: Iterable[str]) -> str | None:
        found = [(self.acts[a][-1][0], a) for a in actions if a in self.acts]
        return max(found)[1] if found else None


def _local(moment: datetime) -> date:
    return moment.astimezone(BUREAU_TZ).date()


class _Clock:
    """Deadlines the bureau's way; past the holiday calendar, plain days (counted)."""

    def __init__(self, bureau: BureauConfig) -> None:
        self.limits = bureau.time_limits
        self.fallbacks = 0

    def due(self, start: datetime, days: int) -> date:
        day, estimated = estimated_due_date(start, days, working=self.limits.day_counting == "working",
                                            roll_forward=self.limits.holiday_rolls_forward)
        # The package does not know that year's holidays yet: weekends only (counted).
        self.fallbacks += estimated
        return day


@dataclass
class _Verdict:
    kind: str  # timely | late | overdue
    due: date
    days_overdue: int = 0


def _judge(due: date, done: datetime | None, withdrawn: datetime | None, today: date) -> _Verdict | None:
    """Classify one clock; None when it is in no denominator (still running, not yet due,
    or withdrawn by the citizen before it was due)."""
    if done is not None:
        return _Verdict("timely" if _local(done) <= due else "late", due)
    # A withdrawal stops the clock: withdrawn in time is no one's failure,
    # withdrawn after the last day was overdue already.
    stop = min(_local(withdrawn), today) if withdrawn is not None else today
    if stop > due:
        return _Verdict("overdue", due, (stop - due).days)
    return None


def _tally(verdicts: Iterable[_Verdict]) -> Timeliness:
    kinds = Counter(v.kind for v in verdicts)
    return Timeliness(kinds["timely"], kinds["late"], kinds["overdue"])


def _unit_start(case: _Facts) -> datetime | None:
    """When the current unit's acceptance clock started: its receipt of the case.

    A receipt older than the latest routing belongs to a unit that objected
    before; a case routed but never marked received runs from the routing, as
    the staff card and the citizen's status page show it.
    """
    if case.unit_received_at is not None and (case.routed_at is None or case.unit_received_at >= case.routed_at):
        return case.unit_received_at
    return case.routed_at


def _accepted(case: _Facts) -> bool:
    if case.acceptance_notice_at is None:
        return False
    last = case.last_act(("accept", "not_accept"))
    if last is not None:
        return last == "accept"
    return case.status != "not_accepted"


def _decided(case: _Facts) -> datetime | None:
    """The first decision (``decision_issued_at`` is overwritten by review decisions)."""
    first = case.first(("decide",))
    if first is not None:
        return first
    return case.decision_issued_at if case.review_requested_at is None else None


def _handling_due(case: _Facts, start: datetime, clock: _Clock) -> date:
    """accepted + handling days + an extension approved on or before the original last day."""
    limits = clock.limits
    original = clock.due(start, limits.handling_days)
    extends = case.acts.get("extend")
    if not extends:
        return original
    approved_at, detail = extends[0]
    if _local(approved_at) > original:
        return original  # approved after the deadline had passed: it cannot cure the delay
    days = case.extension_days
    if detail and str(detail.get("d", "")).isdigit():
        days = int(detail["d"])
    if not days:
        return original
    return clock.due(start, limits.handling_days + min(days, limits.max_extension_days))


def _window(start: date, end: date) -> tuple[datetime, datetime]:
    return (datetime.combine(start, time.min, BUREAU_TZ),
            datetime.combine(end + timedelta(days=1), time.min, BUREAU_TZ))


def _counts(values: Iterable[str | None]) -> tuple[Count, ...]:
    counter = Counter(values)
    # Most first; "not routed" (None) last whatever its count.
    return tuple(Count(code, n) for code, n in sorted(
        counter.items(), key=lambda item: (item[0] is None, -item[1], item[0] or "")))


async def _load_cases(session: AsyncSession, begin: datetime, finish: datetime,
                      unit: str | None) -> dict[int, _Facts]:
    columns = (Case.id, Case.tracking_number, Case.status, Case.channel, Case.matter_class, Case.category,
               Case.location, Case.unit_code, Case.submitted_at, Case.routed_at, Case.unit_received_at,
               Case.acceptance_notice_at, Case.decision_issued_at, Case.extension_days, Case.route,
               Case.duplicate_of, Case.final_same_matter, Case.review_requested_at,
               Case.rereview_requested_at, Case.withdrawn_at)
    # Every figure counts a case by one of these times falling inside the period
    # (``in_period`` below): the cases with any of them inside. One read per time,
    # each through its own index (storage.models), and their union; as one WHERE
    # with OR, SQLite read every case submitted before the period's end
    # (docs/BENCHMARKS.md, finding 36).
    # The unit is checked here, on the period's cases: in the query, either
    # database may take the unit's index and read every case the unit ever had.
    starts = (Case.submitted_at, *(getattr(Case, name) for name in CLOCK_STARTS))
    ids = union(*(select(Case.id).where(start >= begin, start < finish) for start in starts))
    rows = (await session.execute(select(*columns).where(Case.id.in_(ids)))).all()
    cases: dict[int, _Facts] = {}
    for r in rows:
        if unit is not None and r.unit_code != unit:
            continue
        cases[r.id] = _Facts(
            id=r.id, tracking_number=r.tracking_number, status=r.status, channel=r.channel,
            matter_class=r.matter_class, category=r.category, location=r.location, unit_code=r.unit_code,
            submitted_at=r.submitted_at, routed_at=r.routed_at, unit_received_at=r.unit_received_at,
            acceptance_notice_at=r.acceptance_notice_at, decision_issued_at=r.decision_issued_at,
            extension_days=r.extension_days, route=r.route,
            repeat=r.duplicate_of is not None or r.final_same_matter is not None,
            review_requested_at=r.review_requested_at, rereview_requested_at=r.rereview_requested_at,
            withdrawn_at=r.withdrawn_at)
    if not cases:
        return cases
    events = await session.execute(
        select(CaseEvent.case_id, CaseEvent.action, CaseEvent.at, CaseEvent.detail)
        .where(CaseEvent.case_id.in_(ids), CaseEvent.action.in_(sorted(_TIMELINE_ACTIONS)))
        .order_by(CaseEvent.at, CaseEvent.id))
    for event in events.all():
        facts = cases.get(event.case_id)
        if facts is not None:
            facts.acts.setdefault(event.action, []).append((event.at, event.detail))
    return cases


async def entered_channel_counts(session: AsyncSession, start: date, end: date) -> tuple[int, bool]:
    """(other channels' petitions entered for periods inside ``start``..``end``,
    whether that is known: something was entered and no entered period straddles the edges)."""
    rows = (await session.scalars(select(ChannelCount).where(
        ChannelCount.period_start <= end, ChannelCount.period_end >= start))).all()
    inside = [r for r in rows if start <= r.period_start and r.period_end <= end]
    return sum(r.count for r in inside), bool(rows) and len(inside) == len(rows)


CHANNELS = ("letter", "visit", "phone", "other")


async def enter_channel_count(session: AsyncSession, start: date, end: date, channel: str, count: int,
                              user_id: int, now: datetime) -> None:
    """Record (or correct) how many petitions came through another channel in a period."""
    if channel not in CHANNELS or count < 0:
        raise ValueError(f"channel must be one of {', '.join(CHANNELS)} and the count not negative")
    row = await session.get(ChannelCount, (start, channel))
    if row is None:
        session.add(ChannelCount(period_start=start, channel=channel, period_end=end, count=count,
                                 recorded_by=user_id, recorded_at=now))
    else:
        row.period_end, row.count, row.recorded_by, row.recorded_at = end, count, user_id, now


async def compute(session: AsyncSession, bureau: BureauConfig, *, start: date, end: date, now: datetime,
                  unit: str | None = None, other_channels: int | None = None, top: int = 10) -> Report:
    """The KPIs of the period ``start``..``end`` (both included, bureau time) as of ``now``.

    ``unit`` restricts every figure to one handling unit's cases and ratings.
    ``other_channels`` is the number of petitions received in the period through
    channels this database does not record (letters, visits, calls), for 网上信访占比;
    None reads the counts admins entered (``channel_counts``): rows lying inside the
    period are summed, and a row straddling its edge leaves the share unknown.
    """
    if start > end:
        raise PeriodError(f"the period starts after it ends: {start}..{end}")
    if unit is not None and bureau.unit(unit) is None:
        raise UnknownUnitError(f"unknown unit code: {unit}")
    share_known = True
    if other_channels is None:
        other_channels, share_known = await entered_channel_counts(session, start, end)
    if other_channels < 0:
        raise ValueError("other_channels cannot be negative")
    begin, finish = _window(start, end)
    today = _local(now)
    clock = _Clock(bureau)
    limits = bureau.time_limits

    def in_period(moment: datetime | None) -> bool:
        return moment is not None and start <= _local(moment) <= end

    cases = await _load_cases(session, begin, finish, unit)
    received = [c for c in cases.values() if in_period(c.submitted_at)]

    # The bureau's routing clock.
    routing: list[_Verdict] = []
    for case in received:
        verdict = _judge(clock.due(case.submitted_at, limits.route_days),
                         case.first(ROUTING_ACTIONS) or case.routed_at, case.withdrawn_at, today)
        if verdict is not None:
            routing.append(verdict)

    # The units' acceptance and handling clocks.
    acceptance: dict[str | None, list[_Verdict]] = {}
    completion: dict[str | None, list[_Verdict]] = {}
    late_acceptance: list[Overdue] = []
    late_decision: list[Overdue] = []
    for case in cases.values():
        started = _unit_start(case)
        if case.unit_code is not None and case.status != "objected" and started is not None \
                and in_period(started):
            verdict = _judge(clock.due(started, limits.acceptance_days), case.acceptance_notice_at,
                             case.withdrawn_at, today)
            if verdict is not None:
                acceptance.setdefault(case.unit_code, []).append(verdict)
                if verdict.kind == "overdue":
                    late_acceptance.append(Overdue(case.tracking_number, case.unit_code, case.status,
                                                   verdict.due, verdict.days_overdue))
        accepted_at = case.acceptance_notice_at
        if accepted_at is not None and _accepted(case) and in_period(accepted_at) \
                and case.route not in STATUTORY_ROUTES and case.status != "statutory_route" \
                and "direct_to_route" not in case.acts:
            verdict = _judge(_handling_due(case, accepted_at, clock), _decided(case), case.withdrawn_at, today)
            if verdict is not None:
                completion.setdefault(case.unit_code, []).append(verdict)
                if verdict.kind == "overdue":
                    late_decision.append(Overdue(case.tracking_number, case.unit_code, case.status,
                                                 verdict.due, verdict.days_overdue))

    # Ratings, by the day the citizen was invited.
    rating_rows = (await session.execute(
        select(Rating.status, Rating.unit_code, Rating.bureau_score, Rating.unit_score, Rating.expires_at,
               Case.unit_code.label("case_unit"))
        .join(Case, Case.id == Rating.case_id)
        .where(Rating.invited_at >= begin, Rating.invited_at < finish, Rating.status != "withdrawn"))).all()
    bureau_scores: Counter[str] = Counter()
    unit_scores: dict[str | None, Counter[str]] = {}
    participation: dict[str | None, Counter[str]] = {}
    for row in rating_rows:
        rated_unit = row.unit_code or row.case_unit
        if unit is not None and rated_unit != unit:
            continue
        if row.status == "rated":
            participation.setdefault(rated_unit, Counter())["rated"] += 1
            if row.bureau_score is not None:
                bureau_scores[row.bureau_score] += 1
            if row.unit_score is not None:
                unit_scores.setdefault(rated_unit, Counter())[row.unit_score] += 1
        elif row.status == "expired" or (row.status == "invited" and row.expires_at <= now):
            # The maintenance tick marks these expired; a report run between ticks agrees.
            participation.setdefault(rated_unit, Counter())["expired"] += 1

    # Timeline counts, by the day of the act.
    event_rows = (await session.execute(
        select(CaseEvent.action, CaseEvent.detail, Case.unit_code)
        .join(Case, Case.id == CaseEvent.case_id)
        .where(CaseEvent.at >= begin, CaseEvent.at < finish,
               CaseEvent.action.in_(("transfer", "assign", SUPERVISE))))).all()
    acts: Counter[str] = Counter()
    for event in event_rows:
        # A transfer names its unit; the case's current unit may have changed since.
        target = (event.detail or {}).get("u") or event.unit_code
        if unit is None or target == unit:
            acts[event.action] += 1

    def satisfaction(counter: Mapping[str, int] | None) -> Satisfaction:
        counter = counter or {}
        return Satisfaction(counter.get("satisfied", 0), counter.get("basic", 0), counter.get("unsatisfied", 0))

    def took_part(counter: Mapping[str, int] | None) -> Participation:
        counter = counter or {}
        return Participation(counter.get("rated", 0), counter.get("expired", 0))

    by_unit = _counts(c.unit_code for c in received)
    per_unit_cases = {c.code: c.count for c in by_unit}
    codes = {code for code in (*acceptance, *completion, *unit_scores, *participation, *per_unit_cases)
             if code is not None}
    order = {u.code: i for i, u in enumerate(bureau.units)}
    units = tuple(
        UnitKpis(code=code, cases=per_unit_cases.get(code, 0), acceptance=_tally(acceptance.get(code, ())),
                 completion=_tally(completion.get(code, ())), satisfaction=satisfaction(unit_scores.get(code)),
                 participation=took_part(participation.get(code)))
        for code in sorted(codes, key=lambda c: (order.get(c, len(order)), c)))

    online = sum(1 for c in received if c.channel == "online")
    all_units_satisfaction = sum((satisfaction(s) for s in unit_scores.values()), Satisfaction())
    summary = Summary(
        received=len(received), online=online, other_channels=other_channels,
        online_share=None if unit is not None or not share_known else Share(online, len(received) + other_channels),
        routing=None if unit is not None else _tally(routing),
        acceptance=_tally(v for vs in acceptance.values() for v in vs),
        completion=_tally(v for vs in completion.values() for v in vs),
        bureau_satisfaction=satisfaction(bureau_scores),
        unit_satisfaction=all_units_satisfaction,
        participation=sum((took_part(p) for p in participation.values()), Participation()),
        repeats=Share(sum(1 for c in received if c.repeat), len(received)),
        transfers=acts["transfer"], assignments=acts["assign"], supervisions=acts[SUPERVISE],
        reviews=sum(1 for c in cases.values() if in_period(c.review_requested_at)),
        rereviews=sum(1 for c in cases.values() if in_period(c.rereview_requested_at)),
    )

    def most_overdue(items: Sequence[Overdue]) -> tuple[Overdue, ...]:
        return tuple(sorted(items, key=lambda o: (-o.days_overdue, o.tracking_number)))

    return Report(
        start=start, end=end, now=now, unit=unit, summary=summary, units=units,
        by_class=_counts(c.matter_class for c in received),
        by_category=_counts(c.category for c in received),
        by_location=_counts(c.location for c in received),
        by_unit=by_unit,
        top_units=tuple(c for c in by_unit if c.code is not None)[:top],
        overdue_acceptance=most_overdue(late_acceptance),
        overdue_decision=most_overdue(late_decision),
        calendar_fallbacks=clock.fallbacks,
    )
