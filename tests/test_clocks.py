"""Statutory clocks: computed when their event happens, reminders sent once each, overdue shown."""

from __future__ import annotations

from datetime import UTC, date, datetime

from aiogram.methods import AnswerCallbackQuery
from sqlalchemy import select

from storage.models import Case, CaseClock, OutboxMessage
from tests import conftest
from tests.conftest import STAFF_CHAT, App, make_app
from tests.flows import file_petition
from tests.test_handoff_e2e import ADMIN, _act, _case


async def _clocks(app: App) -> dict[str, CaseClock]:
    async with app.sessionmaker() as session:
        return {c.clock: c for c in (await session.scalars(select(CaseClock).order_by(CaseClock.id))).all()}


async def _reminders(app: App) -> list[str]:
    async with app.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "text"))).all()
    return [r.payload["text"] for r in rows if "提醒" in r.payload["text"] or "超期" in r.payload["text"]]


async def test_the_route_clock_starts_at_submission_and_stops_at_transfer(app: App) -> None:
    await file_petition(app.sim.citizen())
    clocks = await _clocks(app)
    assert clocks["route"].due_on == date(2026, 3, 17) and clocks["route"].stopped_at is None
    await app.deliver()
    await _act(app, ADMIN, "register")
    case = await _act(app, ADMIN, "transfer", "u=441900121")
    clocks = await _clocks(app)
    assert clocks["route"].stopped_at is not None
    assert clocks["acceptance"].due_on == date(2026, 3, 17)
    # 5 working days from Monday 2026-03-02: Tue..Mon.
    assert clocks["objection"].due_on == date(2026, 3, 9)
    assert (case.next_due_clock, case.next_due_on) == ("acceptance", date(2026, 3, 17))


async def test_a_deadline_on_national_day_moves_to_the_next_working_day(settings, sessionmaker, bureau) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import TestClock

    app = make_app(settings, sessionmaker, bureau, TestClock(datetime(2026, 9, 20, 2, 0, tzinfo=UTC)))
    await file_petition(app.sim.citizen())
    clocks = await _clocks(app)
    # 15 days after 2026-09-20 is 2026-10-05, inside the National Day holiday.
    assert clocks["route"].due_on == date(2026, 10, 8)


async def test_the_handling_clock_is_60_days_plus_the_extension(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    for action, arg in (("register", ""), ("assign", "u=441900121,d=15"), ("receive", ""), ("accept", ""),
                        ("start_handling", "")):
        await _act(app, ADMIN, action, arg)
    # 60 days from 2026-03-02 is 2026-05-01, Labour Day: the last day moves to 2026-05-06.
    assert (await _clocks(app))["handling"].due_on == date(2026, 5, 6)
    await _act(app, ADMIN, "extend", "d=30", text="案情复杂")
    after = (await _clocks(app))["handling"].due_on
    # 90 days is Sunday 2026-05-31: the next working day.
    assert after == date(2026, 6, 1)
    assert (await _case(app)).next_due_on == after


async def test_reminders_go_out_once_each_even_across_restarts(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    app.clock.advance(days=11)  # past 2/3 of the 15-day route period
    await app.maintenance.tick()
    assert len(await _reminders(app)) == 1
    restarted = app.restart()
    await restarted.maintenance.tick()
    await app.maintenance.tick()
    assert len(await _reminders(app)) == 1
    app.clock.advance(days=3)  # two days before the end
    await restarted.maintenance.tick()
    assert len(await _reminders(app)) == 2
    app.clock.advance(days=3)  # past the deadline
    await restarted.maintenance.tick()
    texts = await _reminders(app)
    assert len(texts) == 3 and "超期" in texts[-1]
    await restarted.deliver()
    case = await _case(app)
    assert case.overdue == "route"
    cards = [c for c in restarted.telegram.calls if getattr(c, "chat_id", None) == STAFF_CHAT]
    assert any("超期未转送" in (getattr(c, "text", "") or "") for c in cards)
    await restarted.maintenance.tick()
    assert len(await _reminders(app)) == 3


async def test_reminders_go_to_the_assignee_when_there_is_one(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    await _act(app, ADMIN, "claim")
    app.clock.advance(days=11)
    await app.maintenance.tick()
    async with app.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "text"))).all()
    assert [r.chat_id for r in rows] == [ADMIN]


async def test_a_stopped_clock_sends_no_more_reminders(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    await _act(app, ADMIN, "register")
    await _act(app, ADMIN, "redirect", "c=discipline", text="属纪检监察机关处理")
    app.clock.advance(days=20)
    await app.maintenance.tick()
    assert await _reminders(app) == []
    async with app.sessionmaker() as session:
        case = (await session.scalars(select(Case))).one()
    assert case.overdue is None


async def test_queue_lists_overdue_cases_first_with_their_label(app: App) -> None:
    first, _ = await file_petition(app.sim.citizen(1))
    app.clock.advance(days=10)
    second, _ = await file_petition(app.sim.citizen(2), title="后来的")
    await app.deliver()
    app.clock.advance(days=7)  # the first is now past its 15 days, the second is not
    await app.maintenance.tick()
    from tests.conftest import STAFF_CHAT as CHAT

    [listing] = await app.sim.staff(ADMIN, CHAT).send("/queue")
    assert listing.index(first) < listing.index(second)
    assert "超期未转送" in listing.split(second)[0]


async def test_a_deadline_beyond_the_holiday_calendar_is_estimated_not_refused(settings, sessionmaker, bureau) -> None:  # type: ignore[no-untyped-def]
    from handoff.deadlines import calendar_covers, calendar_warning
    from tests.conftest import TestClock

    late = datetime(2026, 12, 28, 2, 0, tzinfo=UTC)
    if calendar_covers(date(2027, 1, 12)):  # a newer chinesecalendar knows 2027: nothing to estimate
        return
    app = make_app(settings, sessionmaker, bureau, TestClock(late))
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    case = await _case(app)
    assert case.next_due_estimated and case.next_due_on is not None and case.next_due_on.weekday() < 5
    [status] = await citizen.send(f"/status {tracking} {code}")
    assert "按周末推算" in status
    assert calendar_warning(late.date()) is not None and "chinesecalendar" in str(calendar_warning(late.date()))


async def _received_by_the_unit(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    for action, arg in (("register", ""), ("transfer", "u=441900121"), ("receive", "")):
        await _act(app, ADMIN, action, arg)


async def test_an_objection_within_five_working_days_sends_the_case_back(app: App) -> None:
    await _received_by_the_unit(app)
    app.clock.advance(days=7)  # Monday 2026-03-09, the window's last day
    case = await _act(app, ADMIN, "object", text="不属于本单位职责")
    assert case.status == "objected"


async def test_a_late_objection_is_refused_with_the_day_the_window_ended(app: App) -> None:
    await _received_by_the_unit(app)
    app.clock.advance(days=8)  # Tuesday 2026-03-10
    mark = len(app.telegram.calls)
    case = await _act(app, ADMIN, "object")
    assert case.status == "unit_received"
    toasts = [c.text or "" for c in app.telegram.calls[mark:] if isinstance(c, AnswerCallbackQuery)]
    assert any("异议期已过" in toast and "2026-03-09" in toast for toast in toasts), toasts


async def test_a_bureau_may_allow_late_objections(settings, sessionmaker, bureau) -> None:  # type: ignore[no-untyped-def]
    allowing = bureau.model_copy(update={"time_limits": bureau.time_limits.model_copy(
        update={"late_objection": "allow"})})
    app = make_app(settings, sessionmaker, allowing, conftest.TestClock())
    await _received_by_the_unit(app)
    app.clock.advance(days=8)
    case = await _act(app, ADMIN, "object", text="不属于本单位职责")
    assert case.status == "objected"
