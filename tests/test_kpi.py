"""KPIs on synthetic case timelines whose answers are known (docs/KPI.md)."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.report import display_width, render_csv, render_summary, render_table, sheets
from dialogs.bureau import BureauConfig
from handoff.deadlines import BUREAU_TZ, due_date
from handoff.kpi import (
    Participation,
    PeriodError,
    Report,
    Satisfaction,
    Share,
    Timeliness,
    UnknownUnitError,
    compute,
    parse_period,
)
from state_machine.case import transition
from storage.models import Case, CaseEvent, Rating

HUMEN = "441900121"  # 虎门镇
DONGCHENG = "441900003"  # 东城街道
CHANGAN = "441900119"  # 长安镇
_numbers = itertools.count(1)

Act = tuple[str, datetime] | tuple[str, datetime, dict[str, str]]


def at(day: str, hour: int = 10) -> datetime:
    """A moment in the bureau's time zone: ``at("2026-03-02")`` is 10:00 in Dongguan."""
    return datetime.fromisoformat(f"{day}T{hour:02d}:00").replace(tzinfo=BUREAU_TZ)


def petition(submitted: datetime, *acts: Act, unit: str = HUMEN, **columns: Any) -> tuple[Case, list[CaseEvent]]:
    """A case and its timeline, act by act, moved through the real lifecycle machine
    (an impossible sequence raises) and with the columns staff actions set."""
    n = next(_numbers)
    case = Case(
        tracking_number=f"DG-TEST-{n:04d}", query_code_hash="x", status="submitted", channel="online",
        locale="zh", citizen_user_id=5000 + n, citizen_chat_id=5000 + n, matter_class="grievance",
        category="02", subcategory=None, location=unit, title="拖欠工资", request="r", facts="f", reasons="r",
        litigation="none", name="张三", phone="13912345678", address="东莞", consent_at=submitted,
        submitted_at=submitted)
    events = [CaseEvent(at=submitted, actor_kind="citizen", action="submitted", status="submitted")]
    for act in acts:
        action, when = act[0], act[1]
        detail: dict[str, str] = dict(act[2]) if len(act) == 3 else {}  # type: ignore[misc]
        if action == "supervise":  # not a lifecycle action (yet): a timeline entry only
            events.append(CaseEvent(at=when, actor_kind="staff", action=action, status=case.status, detail=detail))
            continue
        case.status = transition(case.status, action)
        if action in ("transfer", "assign"):
            detail.setdefault("u", unit)
            case.unit_code, case.routed_at = detail["u"], when
        elif action == "redirect":
            case.routed_at = when
        elif action == "register":
            case.registered_at = when
        elif action == "receive":
            case.unit_received_at = when
        elif action == "reroute":
            case.unit_code = None
        elif action in ("accept", "not_accept"):
            case.acceptance_notice_at = when
        elif action == "direct_to_route":
            case.route = int(detail.get("r", "1"))
        elif action == "start_handling":
            case.route = 6
        elif action == "extend":
            case.extension_days = int(detail.get("d", "30"))
        elif action in ("decide", "decide_review", "decide_rereview"):
            case.decision_issued_at = when
        elif action == "deliver_decision":
            case.decision_delivered_at = when
        elif action == "request_review":
            case.review_requested_at = when
        elif action == "request_rereview":
            case.rereview_requested_at = when
        elif action == "withdraw":
            case.withdrawn_at = when
        events.append(CaseEvent(at=when, actor_kind="staff", action=action, status=case.status,
                                detail=detail or None))
    for name, value in columns.items():
        setattr(case, name, value)
    return case, events


def routed(submitted: str, received: str | None = None, *acts: Act, unit: str = HUMEN,
           **columns: Any) -> tuple[Case, list[CaseEvent]]:
    """Submitted, registered and transferred the same day, received by the unit on ``received``."""
    start = at(submitted)
    head: list[Act] = [("register", start), ("transfer", start)]
    if received is not None:
        head.append(("receive", at(received)))
    return petition(start, *head, *acts, unit=unit, **columns)


async def store(sessionmaker: async_sessionmaker[AsyncSession], *items: tuple[Case, list[CaseEvent]],
                ratings: Sequence[tuple[int, Rating]] = ()) -> list[Case]:
    """Save cases with their timelines; ``ratings`` are (index of the case, rating)."""
    async with sessionmaker() as session, session.begin():
        cases = []
        for case, events in items:
            session.add(case)
            await session.flush()
            for event in events:
                event.case_id = case.id
                session.add(event)
            cases.append(case)
        for index, rating in ratings:
            rating.case_id = cases[index].id
            session.add(rating)
    return cases


async def report(sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig, start: str, end: str,
                 now: datetime, **options: Any) -> Report:
    async with sessionmaker() as session:
        return await compute(session, bureau, start=date.fromisoformat(start), end=date.fromisoformat(end),
                             now=now, **options)


# -- 及时受理率 -------------------------------------------------------------------------


async def test_an_acceptance_deadline_on_national_day_rolls_to_the_next_working_day(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    # 15 days from 2026-09-20 is 2026-10-05, inside the National Day holiday (10-01..10-07).
    assert due_date(at("2026-09-20"), 15) == date(2026, 10, 8)
    await store(
        sessionmaker,
        routed("2026-09-20", "2026-09-20", ("accept", at("2026-10-08", 17))),  # the holiday's extra days: timely
        routed("2026-09-20", "2026-09-20"),  # no notice yet
    )
    # On the last day the open case is not yet due: in no denominator.
    on_last_day = await report(sessionmaker, bureau, "2026-09-01", "2026-09-30", at("2026-10-08", 23))
    assert on_last_day.summary.acceptance == Timeliness(timely=1, late=0, overdue=0)
    assert on_last_day.summary.acceptance.rate == 1.0 and on_last_day.overdue_acceptance == ()

    await store(sessionmaker, routed("2026-09-20", "2026-09-20", ("accept", at("2026-10-09", 9))))  # a day late
    later = await report(sessionmaker, bureau, "2026-09-01", "2026-09-30", at("2026-10-09", 12))
    assert later.summary.acceptance == Timeliness(timely=1, late=1, overdue=1)
    assert later.summary.acceptance.rate == pytest.approx(1 / 3)
    [overdue] = later.overdue_acceptance
    assert (overdue.due, overdue.days_overdue, overdue.unit_code) == (date(2026, 10, 8), 1, HUMEN)
    [unit] = later.units
    assert unit.code == HUMEN and unit.acceptance == later.summary.acceptance


async def test_a_non_acceptance_notice_in_time_is_timely_and_an_objection_leaves_the_unit_pool(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    await store(
        sessionmaker,
        routed("2026-03-02", "2026-03-03", ("not_accept", at("2026-03-10"))),
        routed("2026-03-02", "2026-03-03", ("object", at("2026-03-05"))),  # waiting to be routed again
    )
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-06-01"))
    assert result.summary.acceptance == Timeliness(timely=1)


async def test_after_an_objection_the_new_units_clock_starts_at_the_new_transfer(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    # The old unit received it on 03-03 and objected; the bureau sent it to Dongcheng on 03-20,
    # which never pressed "received": its clock runs from 03-20 (due 04-04 → 04-07 after 清明).
    await store(sessionmaker, routed(
        "2026-03-02", "2026-03-03", ("object", at("2026-03-04")), ("reroute", at("2026-03-05")),
        ("transfer", at("2026-03-20"), {"u": DONGCHENG})))
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-05-01"))
    [overdue] = result.overdue_acceptance
    assert overdue.unit_code == DONGCHENG and overdue.due == due_date(at("2026-03-20"), 15)
    assert result.summary.acceptance == Timeliness(overdue=1)


# -- 按期办结率 ------------------------------------------------------------------------


async def test_on_time_completion_counts_an_extension_only_if_approved_before_the_original_deadline(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    accepted = at("2026-03-02")
    original = due_date(accepted, 60)
    extended = due_date(accepted, 90)
    assert original < extended

    def day(d: date, hour: int = 10) -> datetime:
        return at(d.isoformat(), hour)

    def handled(*acts: Act, accepted_on: datetime = accepted) -> tuple[Case, list[CaseEvent]]:
        return routed("2026-02-27", "2026-02-28", ("accept", accepted_on),
                      ("start_handling", accepted_on), *acts)

    await store(
        sessionmaker,
        # decided on the original last day: on time
        handled(("decide", day(original, 18))),
        # extended in time by 30 days, decided 10 days after the original deadline: on time
        handled(("extend", day(original - timedelta(days=1)), {"d": "30"}),
                ("decide", day(original + timedelta(days=10)))),
        # extended a day after the original deadline: the extension cannot cure the delay
        handled(("extend", day(original + timedelta(days=1)), {"d": "30"}),
                ("decide", day(original + timedelta(days=10)))),
        # still open, past its deadline
        handled(accepted_on=at("2026-03-05")),
        # still open, not yet due: in no denominator
        handled(accepted_on=at("2026-03-30")),
        # accepted, then directed to a statutory route (art. 31 routes 1–5): no handling clock
        routed("2026-02-27", "2026-02-28", ("accept", accepted), ("direct_to_route", accepted, {"r": "1"})),
        # not accepted: no handling clock
        routed("2026-02-27", "2026-02-28", ("not_accept", accepted)),
    )
    now = day(due_date(at("2026-03-05"), 60) + timedelta(days=1), 12)
    assert now.date() < due_date(at("2026-03-30"), 60)
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", now)
    assert result.summary.completion == Timeliness(timely=2, late=1, overdue=1)
    assert result.summary.completion.rate == 0.5
    [overdue] = result.overdue_decision
    assert overdue.due == due_date(at("2026-03-05"), 60) and overdue.days_overdue == 1


async def test_the_first_decision_counts_not_the_review_decision(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    # decision_issued_at is overwritten by the review decision; the timeline keeps the first one.
    accepted = at("2026-03-02")
    await store(sessionmaker, routed(
        "2026-02-27", "2026-02-28", ("accept", accepted), ("start_handling", accepted),
        ("decide", at("2026-03-20")), ("deliver_decision", at("2026-03-20")),
        ("request_review", at("2026-04-01")), ("decide_review", at("2026-08-01"))))
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-09-01"))
    assert result.summary.completion == Timeliness(timely=1)
    assert result.summary.reviews == 0  # requested in April, outside the period


async def test_a_withdrawal_before_the_deadline_leaves_the_denominator_and_after_it_is_overdue(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    await store(
        sessionmaker,
        routed("2026-03-02", "2026-03-02", ("withdraw", at("2026-03-10"))),
        routed("2026-03-02", "2026-03-02", ("withdraw", at("2026-03-25"))),  # due 03-17
    )
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-06-01"))
    assert result.summary.acceptance == Timeliness(overdue=1)
    assert result.overdue_acceptance[0].days_overdue == 8 and result.overdue_acceptance[0].status == "withdrawn"


async def test_a_deadline_past_the_holiday_calendar_is_counted_without_holidays_and_said_so(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    # chinesecalendar knows the holidays of a few years only: far beyond them, weekends still roll.
    # 60 days from 2098-11-18 is Saturday 2099-01-17, which rolls to Monday 2099-01-19.
    accepted = at("2098-11-18")
    await store(sessionmaker, routed("2098-11-17", "2098-11-17", ("accept", accepted),
                                     ("start_handling", accepted)))
    result = await report(sessionmaker, bureau, "2098-11-01", "2098-11-30", at("2099-03-01"))
    assert result.summary.completion == Timeliness(overdue=1)
    assert result.overdue_decision[0].due == date(2099, 1, 19)
    assert result.calendar_fallbacks >= 1
    assert "只跳过了周末" in render_table(result, bureau, "zh")


# -- the bureau's routing --------------------------------------------------------------


async def test_the_bureaus_timely_routing_rate(sessionmaker: async_sessionmaker[AsyncSession],
                                               bureau: BureauConfig) -> None:
    await store(
        sessionmaker,
        petition(at("2026-03-02"), ("register", at("2026-03-03")), ("transfer", at("2026-03-10"))),
        petition(at("2026-03-02"), ("register", at("2026-03-03")), ("assign", at("2026-03-30"), {"d": "15"})),
        petition(at("2026-03-02"), ("redirect", at("2026-03-05"), {"c": "litigation"})),
        petition(at("2026-03-02"), ("mark_duplicate", at("2026-03-04")), duplicate_of="DG-TEST-0001"),
        petition(at("2026-03-02"), ("register", at("2026-03-03"))),  # never routed: overdue
        petition(at("2026-03-30"), ("register", at("2026-03-31"))),  # not yet due on 04-05
    )
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-04-05"))
    assert result.summary.routing == Timeliness(timely=3, late=1, overdue=1)
    assert result.summary.routing is not None and result.summary.routing.rate == 0.6
    assert (result.summary.transfers, result.summary.assignments, result.summary.supervisions) == (1, 1, 0)


# -- 群众满意率 and 参评率 ---------------------------------------------------------------


def rating(invited: datetime, status: str, *, bureau_score: str | None = None, unit_score: str | None = None,
           unit: str = HUMEN, days: int = 30) -> Rating:
    return Rating(stage="decision", unit_code=unit, invited_at=invited, expires_at=invited + timedelta(days=days),
                  bureau_score=bureau_score, unit_score=unit_score, status=status,
                  rated_at=invited + timedelta(days=1) if status == "rated" else None)


async def test_satisfaction_for_bureau_and_unit_and_participation_with_an_expired_invitation(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    invited = at("2026-03-10")
    await store(
        sessionmaker,
        routed("2026-03-02", "2026-03-02", unit=HUMEN),
        routed("2026-03-02", "2026-03-02", unit=DONGCHENG),
        ratings=[
            (0, rating(invited, "rated", bureau_score="satisfied", unit_score="basic")),
            (0, rating(invited, "rated", bureau_score="unsatisfied", unit_score="unsatisfied")),
            (1, rating(invited, "rated", bureau_score="basic", unit=DONGCHENG)),  # the unit left unrated
            (1, rating(invited, "expired", unit=DONGCHENG)),  # 超期未评价
            (0, rating(invited, "invited", days=10)),  # window over, not yet marked expired: expired
            (0, rating(at("2026-03-30"), "invited")),  # window still open: in no denominator
            (0, rating(invited, "withdrawn")),  # the matter went to a statutory route
            (0, rating(at("2026-04-02"), "rated", bureau_score="unsatisfied")),  # invited after the period
        ])
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-04-05"))
    s = result.summary
    assert s.bureau_satisfaction == Satisfaction(satisfied=1, basic=1, unsatisfied=1)
    assert s.bureau_satisfaction.rate == pytest.approx(2 / 3)
    assert s.unit_satisfaction == Satisfaction(basic=1, unsatisfied=1)
    assert s.unit_satisfaction.rate == 0.5
    assert s.participation == Participation(rated=3, expired=2)
    assert s.participation.rate == 0.6
    units = {u.code: u for u in result.units}
    assert units[HUMEN].satisfaction == Satisfaction(basic=1, unsatisfied=1)
    assert units[HUMEN].participation == Participation(rated=2, expired=1)
    assert units[DONGCHENG].satisfaction == Satisfaction()
    assert units[DONGCHENG].satisfaction.rate is None
    assert units[DONGCHENG].participation == Participation(rated=1, expired=1)


# -- 网上信访占比 ----------------------------------------------------------------------


async def test_the_seed_reports_online_share(sessionmaker: async_sessionmaker[AsyncSession],
                                             bureau: BureauConfig) -> None:
    # 2021: 23,716 petitions, 16,741 of them online = 70.59 % (DOMAIN.md §1).
    start = datetime(2021, 1, 1, 2, tzinfo=UTC)
    rows = [dict(tracking_number=f"DG-2021-{i:05d}", query_code_hash="x", status="closed", channel="online",
                 locale="zh", citizen_user_id=i, citizen_chat_id=i, matter_class="grievance", category="02",
                 location=HUMEN, title="t", request="r", facts="f", reasons="r", litigation="none", name="n",
                 phone="13912345678", address="a", consent_at=start, publish=False, emergency=False,
                 attachment_count=0, citizen_unreachable=False, version=1,
                 submitted_at=start + timedelta(minutes=31 * i)) for i in range(16_741)]
    async with sessionmaker() as session, session.begin():
        for first in range(0, len(rows), 2000):
            await session.execute(insert(Case), rows[first:first + 2000])
    result = await report(sessionmaker, bureau, "2021-01-01", "2021-12-31", at("2022-02-23"),
                          other_channels=23_716 - 16_741)
    assert result.summary.online_share == Share(16_741, 23_716)
    assert result.summary.online_share.rate == pytest.approx(0.7059, abs=5e-5)
    summary = render_summary(result, bureau, "zh")
    assert "网上信访占比" in summary and "70.59%" in summary and "16741/23716" in summary


# -- counts ------------------------------------------------------------------------------


async def test_counts_repeats_breakdowns_top_units_and_reviews(sessionmaker: async_sessionmaker[AsyncSession],
                                                              bureau: BureauConfig) -> None:
    d = at("2026-03-02")
    await store(
        sessionmaker,
        routed("2026-03-02", "2026-03-02", unit=HUMEN, matter_class="suggestion", category="01"),
        routed("2026-03-03", "2026-03-03", ("supervise", at("2026-03-09")), unit=HUMEN),
        routed("2026-03-04", "2026-03-04", unit=HUMEN, final_same_matter="DG-OLD-0001"),
        routed("2026-03-04", "2026-03-04", unit=DONGCHENG),
        routed("2026-03-05", "2026-03-05", unit=CHANGAN, matter_class="report"),
        routed("2026-03-05", "2026-03-05", unit=CHANGAN),
        petition(d, ("mark_duplicate", d), duplicate_of="DG-TEST-0001", location=DONGCHENG),
        petition(d, ("register", d)),  # not routed yet
        routed("2026-01-05", "2026-01-05", ("accept", at("2026-01-06")), ("start_handling", at("2026-01-06")),
               ("decide", at("2026-02-01")), ("deliver_decision", at("2026-02-01")),
               ("request_review", at("2026-03-01")), ("decide_review", at("2026-03-10")),
               ("deliver_review", at("2026-03-10")), ("request_rereview", at("2026-03-20"))),
        routed("2026-04-01", "2026-04-01", unit=CHANGAN),  # after the period
    )
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-04-05"))
    s = result.summary
    assert s.received == 8
    assert s.repeats == Share(2, 8) and s.repeats.rate == 0.25
    assert (s.transfers, s.assignments, s.supervisions) == (6, 0, 1)
    assert (s.reviews, s.rereviews) == (1, 1)
    assert {c.code: c.count for c in result.by_class} == {"grievance": 6, "suggestion": 1, "report": 1}
    assert {c.code: c.count for c in result.by_category} == {"02": 7, "01": 1}
    assert {c.code: c.count for c in result.by_location} == {HUMEN: 4, CHANGAN: 2, DONGCHENG: 2}
    assert [(c.code, c.count) for c in result.by_unit] == [(HUMEN, 3), (CHANGAN, 2), (DONGCHENG, 1), (None, 2)]
    assert [(c.code, c.count) for c in result.top_units] == [(HUMEN, 3), (CHANGAN, 2), (DONGCHENG, 1)]


async def test_an_empty_period_has_no_rates_only_dashes(sessionmaker: async_sessionmaker[AsyncSession],
                                                        bureau: BureauConfig) -> None:
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-04-05"))
    s = result.summary
    assert s.received == 0 and s.routing == Timeliness()
    assert None is s.acceptance.rate is s.completion.rate is s.bureau_satisfaction.rate is s.participation.rate
    # Nobody entered other channels' counts: the online share is unknown, not 100 %.
    assert s.online_share is None and s.repeats.rate is None
    table = render_table(result, bureau, "zh")
    assert "及时受理率" in table and "0.00%" not in table
    line = next(row for row in table.splitlines() if row.startswith("及时受理率"))
    assert line.split() == ["及时受理率", "—", "0", "0", "及时", "0，超期受理", "0，超期未受理", "0"]


async def test_a_unit_report_keeps_only_that_units_cases(sessionmaker: async_sessionmaker[AsyncSession],
                                                         bureau: BureauConfig) -> None:
    await store(
        sessionmaker,
        routed("2026-03-02", "2026-03-02", ("accept", at("2026-03-05")), unit=HUMEN),
        routed("2026-03-02", "2026-03-02", ("accept", at("2026-03-30")), unit=DONGCHENG),
        ratings=[(1, rating(at("2026-03-30"), "rated", bureau_score="basic", unit_score="unsatisfied",
                            unit=DONGCHENG))])
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-04-05"), unit=DONGCHENG)
    assert result.summary.received == 1 and result.summary.acceptance == Timeliness(late=1)
    assert result.summary.online_share is None and result.summary.routing is None
    assert result.summary.unit_satisfaction == Satisfaction(unsatisfied=1)
    assert [u.code for u in result.units] == [DONGCHENG]
    with pytest.raises(UnknownUnitError):
        await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-04-05"), unit="NOPE")


# -- periods and rendering ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("", (date(2026, 2, 1), date(2026, 2, 28))),
    ("2026-03", (date(2026, 3, 1), date(2026, 3, 31))),
    ("2026-12", (date(2026, 12, 1), date(2026, 12, 31))),
    ("2026-Q1", (date(2026, 1, 1), date(2026, 3, 31))),
    ("2026q4", (date(2026, 10, 1), date(2026, 12, 31))),
    ("2026", (date(2026, 1, 1), date(2026, 12, 31))),
    ("2026-03-05", (date(2026, 3, 5), date(2026, 3, 5))),
    ("2026-03-01..2026-03-31", (date(2026, 3, 1), date(2026, 3, 31))),
])
def test_periods(text: str, expected: tuple[date, date]) -> None:
    assert parse_period(text, date(2026, 2, 14)) == expected


@pytest.mark.parametrize("text", ["2026-13", "2026-Q5", "March", "2026-03-31..2026-03-01", "2026-02-30"])
def test_a_bad_period_is_refused(text: str) -> None:
    with pytest.raises(PeriodError):
        parse_period(text, date(2026, 2, 14))


async def test_every_sheet_is_labelled_in_both_languages_and_the_table_is_aligned(
        sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig) -> None:
    await store(sessionmaker, routed("2026-03-02", "2026-03-02"), routed("2026-03-02", "2026-03-02"))
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-04-05"))
    zh = sheets(result, bureau, "zh")
    en = sheets(result, bureau, "en")
    assert [s.title for s in zh] == ["汇总", "按单位", "按信访类别", "按内容分类", "按问题属地", "按承办单位",
                                     "信访较多的单位", "超期清单"]
    assert en[0].title == "Summary" and en[0].headers[0] == "Metric"
    overdue = next(s for s in zh if s.key == "overdue")
    assert [row[3] for row in overdue.rows] == ["虎门镇", "虎门镇"]
    table = render_table(result, bureau, "zh").splitlines()
    block = table[table.index("== 按单位 ==") + 1:table.index("== 按单位 ==") + 4]
    assert len({display_width(line) for line in block[:2]}) == 1  # header and rule are as wide
    parsed = list(csv.reader(io.StringIO(render_csv(result, bureau, "en"))))
    assert ["Summary"] in parsed and ["By unit"] in parsed
    overdue_header = parsed.index(["Overdue"]) + 1
    assert parsed[overdue_header][:2] == ["Kind", "Tracking number"]
    assert parsed[overdue_header + 1][0] == "Overdue acceptance"


async def test_the_worked_example_in_docs_kpi_md(sessionmaker: async_sessionmaker[AsyncSession],
                                                 bureau: BureauConfig) -> None:
    def handled(accepted: str, *acts: Act, unit: str) -> tuple[Case, list[CaseEvent]]:
        return routed("2026-03-02", "2026-03-02", ("accept", at(accepted)), ("start_handling", at(accepted)),
                      *acts, unit=unit)

    extend: Act = ("extend", at("2026-05-20"), {"d": "30"})
    await store(
        sessionmaker,
        handled("2026-03-05", ("decide", at("2026-04-01")), unit=HUMEN),  # A
        handled("2026-03-16", extend, ("decide", at("2026-05-25")), unit=HUMEN),  # B
        handled("2026-03-30", extend, ("decide", at("2026-06-20")), unit=DONGCHENG),  # C
        routed("2026-03-02", "2026-03-02", unit=CHANGAN),  # D
        petition(at("2026-03-03"), ("register", at("2026-03-04"))),  # E
        petition(at("2026-03-25"), ("register", at("2026-03-26")), ("transfer", at("2026-03-26")),  # F
                 ("receive", at("2026-03-27")), ("accept", at("2026-04-03"))),
        ratings=[(0, rating(at("2026-03-05"), "rated", bureau_score="satisfied", unit_score="basic")),
                 (1, rating(at("2026-03-16"), "expired")),
                 (2, rating(at("2026-03-30"), "rated", bureau_score="unsatisfied", unit_score="unsatisfied",
                            unit=DONGCHENG))])
    assert [due_date(at(d), n) for d, n in (("2026-03-05", 60), ("2026-03-16", 60), ("2026-03-30", 60),
                                           ("2026-03-30", 90))] == [
        date(2026, 5, 6), date(2026, 5, 15), date(2026, 5, 29), date(2026, 6, 29)]
    result = await report(sessionmaker, bureau, "2026-03-01", "2026-03-31", at("2026-07-01"), other_channels=2)
    s = result.summary
    assert (s.received, s.online, s.other_channels) == (6, 6, 2)
    assert s.online_share == Share(6, 8)
    assert s.routing == Timeliness(timely=5, overdue=1)
    assert s.acceptance == Timeliness(timely=3, late=1, overdue=1) and s.acceptance.rate == 0.6
    assert s.completion == Timeliness(timely=2, late=1)
    assert s.bureau_satisfaction == Satisfaction(satisfied=1, unsatisfied=1)
    assert s.unit_satisfaction == Satisfaction(basic=1, unsatisfied=1)
    assert s.participation == Participation(rated=2, expired=1)
    assert s.transfers == 5
    assert [(o.unit_code, o.days_overdue) for o in result.overdue_acceptance] == [(CHANGAN, 106)]
    assert result.overdue_decision == ()
    humen = next(u for u in result.units if u.code == HUMEN)
    assert (humen.cases, humen.acceptance.rate, humen.completion.rate) == (3, 1.0, 0.5)
