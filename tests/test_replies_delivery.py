"""Replies are committed with their update and sent after it; what Telegram does
not take is kept and sent again, what it refuses for good is dropped; a polling
batch is one transaction (group commit) and a failure in it costs only the
update that failed."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiogram.exceptions import TelegramForbiddenError, TelegramNetworkError
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import Update
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import middlewares
from bot.app import create_bot, create_dispatcher, create_outbox_worker
from bot.middlewares import RESEND_AFTER, Responder
from bot.polling import process_batch
from bot.settings import Settings
from bot.simulator import FakeTelegram, Simulator, SimUser
from dialogs.bureau import BureauConfig
from dialogs.i18n import t
from handoff.intake import IntakeService
from handoff.pacer import Pacer
from state_machine.intake import Step
from storage import later
from storage.later import insert_at_commit
from storage.models import Case, CaseClock, CaseEvent, OutboxMessage
from tests import conftest
from tests.conftest import App
from tests.flows import ZH, file_petition, to_summary, to_title
from tests.test_intake_validation_e2e import stored


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(middlewares, "RETRY_BACKOFF", 0.001)


def _unreachable(chat_id: int, times: int = 4) -> list[BaseException]:
    return [TelegramNetworkError(SendMessage(chat_id=chat_id, text="x"), "Request timeout error")
            for _ in range(times)]


def _request_question(app: App) -> str:
    return t("zh", "step.request.ask", limit=app.bureau.intake.max_lengths["request"])


async def test_a_reply_telegram_did_not_take_is_sent_by_the_maintenance_tick_once(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    app.telegram.failures.extend(_unreachable(citizen.chat.id))  # longer than the retries
    mark = len(citizen.received)

    assert await citizen.send("拖欠工资") == []
    assert (await stored(app, citizen)).state == Step.REQUEST, "the answer is kept all the same"

    await app.maintenance.tick()
    assert citizen.texts_since(mark) == [], "too soon: the update's own attempt may still be running"
    app.clock.advance(seconds=RESEND_AFTER.total_seconds() + 1)
    await app.maintenance.tick()
    assert citizen.texts_since(mark) == [_request_question(app)]

    app.clock.advance(seconds=RESEND_AFTER.total_seconds() + 1)
    await app.maintenance.tick()
    assert citizen.texts_since(mark) == [_request_question(app)], "sent once"


async def test_a_reply_sent_in_time_is_never_sent_again_by_the_tick(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    mark = len(citizen.received)
    await citizen.send("拖欠工资")
    app.clock.advance(seconds=RESEND_AFTER.total_seconds() + 1)
    await app.maintenance.tick()
    assert citizen.texts_since(mark) == [_request_question(app)]


async def test_a_reply_refused_for_good_is_dropped_not_retried(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    app.telegram.failures.append(TelegramForbiddenError(SendMessage(chat_id=citizen.chat.id, text="x"),
                                                        "Forbidden: bot was blocked by the user"))
    mark = len(citizen.received)
    await citizen.send("拖欠工资")
    calls = len(app.telegram.calls)
    app.clock.advance(seconds=RESEND_AFTER.total_seconds() + 1)
    await app.maintenance.tick()
    assert citizen.texts_since(mark) == [] and len(app.telegram.calls) == calls
    assert (await stored(app, citizen)).state == Step.REQUEST


class _FailsOn(FakeTelegram):
    """Fails every send of one text (Telegram unreachable for that request)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    async def make_request(self, bot: Any, method: TelegramMethod[Any], timeout: int | None = None) -> Any:  # noqa: ASYNC109
        if isinstance(method, SendMessage) and method.text == self.text:
            raise TelegramNetworkError(method, "Request timeout error")
        return await super().make_request(bot, method, timeout)


async def test_only_the_messages_that_failed_are_kept_to_send_again() -> None:
    telegram = _FailsOn("second")
    responder = Responder(77, "zh")
    responder.send("first")
    responder.send("second")
    responder.send("to the staff", chat_id=-100)

    left = await responder.flush(create_bot("1:fake", session=telegram))

    assert [m.text for m in telegram.calls if isinstance(m, SendMessage)] == ["first", "to the staff"]
    assert left is not None and [m.text for m in left.messages] == ["second"] and left.elsewhere == []


# -- group commit ---------------------------------------------------------------------------


async def test_a_batch_of_several_citizens_is_committed_and_answered_in_order(app: App) -> None:
    people = [app.sim.citizen(user_id=2001 + i) for i in range(3)]
    for person in people:
        await to_title(person)
    marks = [len(p.received) for p in people]
    batch = []
    for person in people:
        batch += [person.message_update(text=f"标题{person.user.id}"),
                  person.message_update(text=f"诉求{person.user.id}")]

    await process_batch(app.sim.dp, app.sim.bot, batch)

    for person, mark in zip(people, marks, strict=True):
        now = await stored(app, person)
        assert now.state == Step.FACTS
        assert (now.answers["title"], now.answers["request"]) == (f"标题{person.user.id}", f"诉求{person.user.id}")
        replies = person.texts_since(mark)
        assert replies[0] == _request_question(app) and "<b>事实</b>" in replies[1]


async def test_in_a_batch_each_update_reaches_its_handler_whichever_way_it_is_routed(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    """The pipeline runs first: a filing's answer goes straight to its handler,
    a command on through aiogram's routers, an update not bound to the bot
    through ``feed_update``; aiogram's line is logged for each all the same."""
    person = app.sim.citizen(user_id=2101)
    await to_title(person)
    mark = len(person.received)
    unbound = Update.model_validate(person.message_update(text="诉求").model_dump(exclude_unset=True))
    assert unbound.bot is None
    batch = [person.message_update(text="拖欠工资"), person.message_update(text="/help"), unbound]

    with caplog.at_level(logging.INFO, logger="aiogram.event"):
        await process_batch(app.sim.dp, app.sim.bot, batch)

    now = await stored(app, person)
    assert (now.state, now.answers["title"], now.answers["request"]) == (Step.FACTS, "拖欠工资", "诉求")
    title_answered, helped, request_answered = person.texts_since(mark)
    assert title_answered == _request_question(app)
    assert helped.endswith(_request_question(app)) and helped != _request_question(app)
    assert "<b>事实</b>" in request_answered
    logged = [r.getMessage() for r in caplog.records if r.name == "aiogram.event"]
    assert [line.split(" is ")[0] for line in logged] == [f"Update id={u.update_id}" for u in batch]
    assert all(" is handled." in line for line in logged)


def _fails_for(monkeypatch: pytest.MonkeyPatch, person: SimUser) -> None:
    """The intake handler raises for ``person``'s updates (a bug in one handler)."""
    handle = IntakeService.handle

    async def failing(self: IntakeService, session: Any, citizen: Any, inp: Any, now: Any) -> Any:
        if citizen.user_id == person.user.id:
            raise RuntimeError("a bug in one handler")
        return await handle(self, session, citizen, inp, now)

    monkeypatch.setattr(IntakeService, "handle", failing)


async def test_an_update_that_fails_in_a_batch_costs_only_itself(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = app.sim.citizen(user_id=3001), app.sim.citizen(user_id=3002)
    for person in (good, bad):
        await to_title(person)
    _fails_for(monkeypatch, bad)
    good_mark, bad_mark = len(good.received), len(bad.received)

    await process_batch(app.sim.dp, app.sim.bot, [good.message_update(text="拖欠工资"),
                                                  bad.message_update(text="拖欠工资")])

    assert (await stored(app, good)).answers["title"] == "拖欠工资"
    assert good.texts_since(good_mark) == [_request_question(app)], "answered once, not twice"
    assert (await stored(app, bad)).state == Step.TITLE
    assert bad.texts_since(bad_mark) == [t("zh", "retry_later")]


async def test_an_update_that_fails_alone_in_its_batch_is_told_once_with_its_traceback(
        app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    bad = app.sim.citizen(user_id=3003)
    await to_title(bad)
    _fails_for(monkeypatch, bad)
    mark = len(bad.received)

    with caplog.at_level(logging.DEBUG, logger="bot"):
        await process_batch(app.sim.dp, app.sim.bot, [bad.message_update(text="拖欠工资")])

    assert bad.texts_since(mark) == [t("zh", "retry_later")]
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert len(tracebacks) == 1 and "a bug in one handler" in str(tracebacks[0].exc_info[1])
    [batch] = [r for r in caplog.records if "as one transaction" in r.getMessage()]
    assert batch.levelno == logging.WARNING and "a bug in one handler" in batch.getMessage()


async def _written(app: App) -> list[tuple[Case, list[str], list[str], list[str]]]:
    """Each case with its timeline, its clocks and its outbox rows, as stored."""
    async with app.sessionmaker() as session:
        cases = (await session.scalars(select(Case).order_by(Case.id))).all()
        return [(case,
                 list((await session.scalars(select(CaseEvent.action).where(CaseEvent.case_id == case.id)
                                             .order_by(CaseEvent.id))).all()),
                 list((await session.scalars(select(CaseClock.clock).where(CaseClock.case_id == case.id))).all()),
                 list((await session.scalars(select(OutboxMessage.kind)
                                             .where(OutboxMessage.case_id == case.id))).all()))
                for case in cases]


async def test_filings_confirmed_in_one_batch_are_each_written_whole(app: App) -> None:
    people = [app.sim.citizen(user_id=4001 + i) for i in range(3)]
    for person in people:
        await to_summary(person, phone=f"139 1234 56{person.user.id % 100:02d}")

    await process_batch(app.sim.dp, app.sim.bot, [p.press_update(ZH["confirm"]) for p in people])

    written = await _written(app)
    assert [case.citizen_user_id for case, *_ in written] == [p.user.id for p in people]
    for (case, timeline, clocks, outbox), person in zip(written, people, strict=True):
        assert timeline == ["consented", "submitted"]
        assert clocks == ["route"]
        assert outbox == ["card"]
        assert case.tracking_number in person.last_text and "已提交" in person.last_text
    # Each case's timeline is its own citizen's (the rows find their case by its tracking number).
    async with app.sessionmaker() as session:
        actors = {(case_id, actor) for case_id, actor in (await session.execute(
            select(CaseEvent.case_id, CaseEvent.actor_id))).all()}
    assert actors == {(case.id, case.citizen_user_id) for case, *_ in written}


async def test_a_batch_redone_one_by_one_writes_each_filing_once(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    filer, bad = app.sim.citizen(user_id=4101), app.sim.citizen(user_id=4102)
    await to_summary(filer)
    await to_title(bad)
    _fails_for(monkeypatch, bad)
    await process_batch(app.sim.dp, app.sim.bot, [filer.press_update(ZH["confirm"]),
                                                  bad.message_update(text="拖欠工资")])

    [(case, timeline, clocks, outbox)] = await _written(app)
    assert (timeline, clocks, outbox) == (["consented", "submitted"], ["route"], ["card"])
    assert case.tracking_number in filer.last_text


async def test_a_row_whose_new_case_is_not_there_fails_the_commit_instead_of_losing_its_case(app: App) -> None:
    """The rows of a case filed in the transaction find its id by its tracking
    number; one that found none would be a staff card without its case (the
    outbox's case_id may be NULL): it is refused instead."""
    now = datetime.now(UTC)
    card = {"kind": "card", "chat_id": conftest.STAFF_CHAT, "payload": {}, "priority": 0, "status": "pending",
            "attempts": 0, "next_attempt_at": now, "created_at": now, "new_case_tracking_number": "DG-NONE-0000"}
    async with app.sessionmaker() as session:
        with pytest.raises(IntegrityError):
            async with session.begin():
                await session.execute(later._insert(OutboxMessage.__table__, True), [card])
    async with app.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


async def test_rows_kept_for_the_commit_are_forgotten_when_the_transaction_rolls_back(app: App) -> None:
    await file_petition(app.sim.citizen())
    [(case, before, _, _)] = await _written(app)

    async with app.sessionmaker() as session:
        with pytest.raises(RuntimeError):
            async with session.begin():
                session.add(case)
                insert_at_commit(session, CaseEvent(at=case.submitted_at, actor_kind="system", actor_id=None,
                                                    action="note", status=case.status), case)
                raise RuntimeError("rolled back")
        async with session.begin():  # the next transaction of the same session
            pass

    [(_, after, _, _)] = await _written(app)
    assert after == before


async def test_a_confirm_on_sqlite_sends_its_timeline_clock_and_card_with_the_commit(app: App) -> None:
    engine = app.sessionmaker.kw["bind"]
    if engine.dialect.name != "sqlite":
        pytest.skip("trips to aiosqlite's thread are SQLite's")
    dbapi = engine.sync_engine.dialect.loaded_dbapi
    citizen = app.sim.citizen()
    await to_summary(citizen)
    before = dbapi.trips

    await process_batch(app.sim.dp, app.sim.bot, [citizen.press_update(ZH["confirm"])])

    # The citizen's row (with the BEGIN), the petitioner's earlier cases, and
    # the commit with everything else: the case too, whose id is not read back.
    assert dbapi.trips - before == 3
    [(case, timeline, clocks, outbox)] = await _written(app)
    assert (timeline, clocks, outbox) == (["consented", "submitted"], ["route"], ["card"])
    assert case.tracking_number in citizen.last_text


# -- one count of what goes to Telegram -------------------------------------------------------


async def test_direct_replies_share_the_outbox_pacer_and_wait_for_a_slot_instead_of_a_429(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig,
        clock: conftest.TestClock) -> None:
    pacer = Pacer(global_per_second=3, safety=0.0)
    telegram = FakeTelegram()
    bot = create_bot("1:fake", session=telegram)
    dp = create_dispatcher(settings, sessionmaker, bureau, clock=clock, pacer=pacer)
    sim = Simulator(dp, bot, telegram)
    assert create_outbox_worker(dp, sessionmaker, bot, clock=clock).pacer is pacer
    citizen = sim.citizen()
    for chat in (-100, 501, 502):  # the outbox just used this second's three messages
        pacer.record(chat)
    started = time.monotonic()

    replies = await citizen.send("/start")

    assert replies and time.monotonic() - started >= 0.9, "sent when a slot was free, not into a 429"
    assert pacer.wait_time(citizen.chat.id) > 0, "and counted: the outbox waits before writing to them"


async def test_the_same_update_twice_in_one_batch_has_one_effect(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    mark = len(citizen.received)
    update = citizen.message_update(text="拖欠工资")

    await process_batch(app.sim.dp, app.sim.bot, [update, update, citizen.message_update(text="要求支付工资")])

    now = await stored(app, citizen)
    assert (now.state, now.answers["title"], now.answers["request"]) == (Step.FACTS, "拖欠工资", "要求支付工资")
    replies = citizen.texts_since(mark)
    assert len(replies) == 2 and replies[0] == _request_question(app), replies


async def test_a_replayed_batch_changes_nothing_and_sends_only_what_never_went_out(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    first, second = app.sim.citizen(user_id=4001), app.sim.citizen(user_id=4002)
    for person in (first, second):
        await to_title(person)
    marks = len(first.received), len(second.received)
    batch = [first.message_update(text="拖欠工资"), second.message_update(text="噪音扰民")]
    app.telegram.failures.extend(_unreachable(first.chat.id, times=8))  # both replies, every retry

    await process_batch(app.sim.dp, app.sim.bot, batch)
    assert first.texts_since(marks[0]) == [] and second.texts_since(marks[1]) == []

    caplog.clear()
    caplog.set_level(logging.INFO, logger="bot.middlewares")
    await process_batch(app.sim.dp, app.sim.bot, batch)  # Telegram sends the batch again
    assert first.texts_since(marks[0]) == second.texts_since(marks[1]) == [_request_question(app)]
    assert (await stored(app, first)).answers["title"] == "拖欠工资"
    assert (await stored(app, second)).answers["title"] == "噪音扰民"

    await process_batch(app.sim.dp, app.sim.bot, batch)  # and once more: nothing left to send
    await process_batch(app.sim.dp, app.sim.bot, batch[:1])  # a replay alone too
    assert first.texts_since(marks[0]) == second.texts_since(marks[1]) == [_request_question(app)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a replay is not an error"
    assert any("already processed" in r.getMessage() for r in caplog.records)


def test_kept_replies_hold_the_keyboard_as_sent_shared_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot import render
    from dialogs.messages import Button, Keyboard

    monkeypatch.setattr(render, "_SHARED_MAX", 3)
    keyboards = [render.inline_keyboard(Keyboard(step="lane", rows=((Button(value=str(i), label=str(i)),),)), "zh")
                 for i in range(5)]  # more than the cache holds: the first ones leave it
    assert len(render._SHARED_JSON) == 3
    for markup in [*keyboards, render.staff_keyboard([])]:
        assert render.markup_json(markup) == markup.model_dump_json(exclude_none=True)
    responder = Responder(7, "zh")
    responder.send("…", keyboards[-1])
    assert Responder.load(responder.dump(), "zh").messages == responder.messages
