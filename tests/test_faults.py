"""Fault injection: one test (or a few) per row of the reliability table in
docs/RELIABILITY.md.

Two kinds of tests:

* in-process: the real dispatcher, outbox worker and database, with
  :class:`~bot.simulator.FakeTelegram` raising the Bot API errors we want
  (``app.telegram.failures``);
* real processes: ``python -m bot run`` long polling the HTTP stand-in in
  tests/fake_bot_api.py, killed with SIGKILL or stopped with SIGTERM, then
  started again on the same database.

Every test runs on SQLite and, with PETITION_TEST_DATABASE_URL set, on
PostgreSQL; the few that only make sense on one of them skip on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter
from aiogram.methods import AnswerCallbackQuery, SendMessage
from aiogram.types import MessageOriginUser, Update, User, Video
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from bot.callbacks import IntakeButton, StaffAction
from bot.polling import process_batch
from bot.render import visible_length
from bot.settings import Settings
from bot.simulator import SimUser
from dialogs.bureau import BureauConfig
from dialogs.i18n import t
from dialogs.tracking import ALPHABET, new_tracking_number
from handoff.outbox import LEASE
from state_machine.intake import Step
from storage.db import create_engine, create_sessionmaker
from storage.models import Case, CaseEvent, CitizenSession, LookupFailure, OutboxMessage
from tests import conftest
from tests.conftest import STAFF_CHAT, App, make_app
from tests.fake_bot_api import TOKEN, FakeBotAPI
from tests.flows import VALID_ID, ZH, file_petition, to_title
from tests.test_intake_validation_e2e import Stored, answer_until, asked_again, reach, stored

ADMIN = 9001  # in the ``settings`` fixture's admin_ids
CLERK = 9002
OUTSIDER = 9100
ANONYMOUS_ADMIN = 1087968824


# =====================================================================================
# helpers
# =====================================================================================


async def _cases(app: App) -> list[Case]:
    async with app.sessionmaker() as session:
        return list((await session.scalars(select(Case))).all())


async def _the_case(app: App) -> Case:
    [case] = await _cases(app)
    return case


async def _actions(sessionmaker: async_sessionmaker[AsyncSession], case_id: int) -> list[str]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(CaseEvent.action).where(CaseEvent.case_id == case_id)
                                          .order_by(CaseEvent.id)))


def _toasts(app: App, since: int = 0) -> list[str]:
    return [c.text or "" for c in app.telegram.calls[since:] if isinstance(c, AnswerCallbackQuery)]


def _staff_sends(app: App) -> list[SendMessage]:
    return app.telegram.sent(STAFF_CHAT)


async def _wait_until(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.05)


# =====================================================================================
# real processes: `python -m bot run` against the HTTP fake Bot API
# =====================================================================================

CITIZEN = 8801
STAFF = -100777
STAFF_ADMIN = 4040

#: A whole suggestion filed with the buttons' real callback data ("cb") or typed text.
FILING: list[tuple[str, str]] = [
    ("text", "/new"), ("cb", "consent:accept"), ("cb", "matter_class:suggestion"), ("text", "教育"),
    ("cb", "subcategory:~skip"), ("text", "东城"), ("text", "标题"), ("text", "诉求"), ("text", "事实"),
    ("text", "理由"), ("cb", "occurred:~skip"), ("cb", "accused:~skip"), ("cb", "litigation:none"),
    ("cb", "attachments:~done"), ("text", "李四"), ("text", "13912345678"), ("text", "地址"),
    ("cb", "publish:no"), ("cb", "summary:~confirm")]
#: Messages the citizen has after step n of FILING (the phone step adds a "saved" line).
FILING_REPLIES = [n if n < 16 else n + 1 for n in range(1, len(FILING) + 1)]


def _push(api: FakeBotAPI, user: int, kind: str, value: str) -> int:
    if kind == "text":
        return api.push_text(user, value)
    step, _, choice = value.partition(":")
    return api.push_callback(user, IntakeButton(step=step, value=choice).pack())


class BotProcess:
    """``python -m bot run`` on a database, talking to the fake Bot API."""

    def __init__(self, api: FakeBotAPI, database_url: str, log: Path, *, staff: bool = False) -> None:
        # PETITION_DATA_KEYS (set by conftest) stays: the process reads what the tests read.
        self.env = {k: v for k, v in os.environ.items() if k not in ("PETITION_STAFF_CHAT_ID", "PETITION_ADMIN_IDS")}
        self.env.update({"PETITION_BOT_TOKEN": TOKEN, "PETITION_TELEGRAM_API_URL": f"http://127.0.0.1:{api.port}",
                         "PETITION_DATABASE_URL": database_url, "PETITION_POLLING_TIMEOUT": "1",
                         "PETITION_LOG_LEVEL": "INFO"})
        if staff:
            self.env.update({"PETITION_STAFF_CHAT_ID": str(STAFF), "PETITION_ADMIN_IDS": str(STAFF_ADMIN)})
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(b"\n----- start -----\n")
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", env=self.env, stdout=out, stderr=out,
                cwd=self.log.parent)  # not the checkout: a developer's .env there would apply

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, sig: int = signal.SIGTERM, limit: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), limit)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def cleanup(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()



@pytest.fixture
async def spawn(api: FakeBotAPI, database_url: str, db: AsyncEngine,
                tmp_path: Path) -> AsyncIterator[Callable[..., BotProcess]]:
    """Makes bot processes on the test database (migrated by ``db``); kills any left running."""
    made: list[BotProcess] = []

    def _make(*, staff: bool = False) -> BotProcess:
        made.append(BotProcess(api, database_url, tmp_path / "bot.log", staff=staff))
        return made[-1]

    yield _make
    for bot in made:
        await bot.cleanup()


async def _file_over_http(api: FakeBotAPI, user: int = CITIZEN) -> None:
    for (kind, value), replies in zip(FILING, FILING_REPLIES, strict=True):
        _push(api, user, kind, value)
        await api.wait_for(user, replies)


async def _citizen_row(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> CitizenSession | None:
    async with sessionmaker() as session:
        return await session.get(CitizenSession, user_id)


# -- kill -9 mid-dialog ----------------------------------------------------------------


async def test_kill_9_mid_dialog_then_restart_the_conversation_continues_with_the_answers_intact(
        api: FakeBotAPI, spawn: Callable[..., BotProcess], sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Like tests/test_run_polling.py's kill -9 test, on both databases, checking the stored answers."""
    bot = spawn()
    await bot.start()
    for kind, value in FILING[:3]:
        _push(api, CITIZEN, kind, value)
        await api.wait_for(CITIZEN, len(api.to_chat(CITIZEN)) + 1)
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL

    _push(api, CITIZEN, "text", "教育")  # sent while the bot is down
    await bot.start()
    messages = await api.wait_for_replies(CITIZEN, 4)
    assert "更具体的分类" in messages[3].text
    _push(api, CITIZEN, "cb", "subcategory:~skip")
    messages = await api.wait_for_replies(CITIZEN, 5)
    assert "问题发生在哪里" in messages[4].text
    row = await _citizen_row(sessionmaker, CITIZEN)
    assert row is not None and row.state == Step.LOCATION
    assert row.data["answers"]["matter_class"] == "suggestion" and row.data["answers"]["category"]
    assert await bot.stop() == 0
    assert len(api.replies_to(CITIZEN)) == 5, "an update was answered twice"
    assert api.resends_to(CITIZEN) <= 1, "only the reply the kill interrupted may be sent again"
    assert "Traceback" not in bot.log_text()


# -- kill -9 between the case commit and the staff notification ---------------------------


@pytest.mark.parametrize("fault", ["fail", "stall"])
async def test_kill_9_between_the_case_commit_and_the_staff_card_sends_the_card_once_after_restart(
        api: FakeBotAPI, spawn: Callable[..., BotProcess], sessionmaker: async_sessionmaker[AsyncSession],
        fault: str) -> None:
    """The card cannot reach the staff chat (500s, or a request that never returns); the
    process is killed; it starts again with Telegram healthy: exactly one card."""
    bot = spawn(staff=True)
    if fault == "fail":
        api.fail_chats.add(STAFF)
    else:
        api.stall_chats.add(STAFF)
    await bot.start()
    await _file_over_http(api)
    receipt = api.to_chat(CITIZEN)[-1].text
    assert "已提交" in receipt

    async def card_row() -> OutboxMessage:
        async with sessionmaker() as session:
            return (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "card"))).one()

    if fault == "fail":
        # Killed between two attempts (the next one is a back-off of at least 1 s away).
        async def failed_once() -> bool:
            row = await card_row()
            return row.attempts >= 1 and row.lease_until is None
        await _wait_until(failed_once, 10, "a failed attempt recorded")
    else:
        async def in_flight() -> bool:
            return any(kind == "stall" and chat == STAFF for kind, chat, _ in api.refused)
        await _wait_until(in_flight, 10, "the card request to hang")
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
    assert api.to_chat(STAFF) == []
    row = await card_row()
    assert row.status == "pending"
    if fault == "stall":
        # The dead process still holds the row's lease (LEASE = 60 s, so that no two
        # workers send it): let it run out instead of waiting a minute.
        assert row.lease_until is not None
        async with sessionmaker() as session, session.begin():
            await session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id).values(lease_until=None))

    api.fail_chats.clear()
    api.stall_chats.clear()
    await bot.start()
    [card] = await api.wait_for(STAFF, 1, limit=15)
    assert "待登记" in card.text
    await asyncio.sleep(1.5)  # a second card would have been sent by now
    assert len(api.to_chat(STAFF)) == 1
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Case)) == 1
        case = (await session.scalars(select(Case))).one()
    assert case.tracking_number in card.text and case.tracking_number in receipt
    assert case.card_message_id is not None
    assert (await card_row()).status == "sent"
    assert await bot.stop() == 0
    assert len(api.to_chat(CITIZEN)) == FILING_REPLIES[-1], "the citizen was answered twice"


async def test_kill_9_between_the_commit_of_an_answer_and_its_reply_the_reply_comes_after_restart(
        api: FakeBotAPI, spawn: Callable[..., BotProcess], sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    bot = spawn()
    await bot.start()
    _push(api, CITIZEN, "text", "/new")
    await api.wait_for(CITIZEN, 1)
    api.stall_chats.add(CITIZEN)
    _push(api, CITIZEN, "cb", "consent:accept")

    async def in_flight() -> bool:
        return any(kind == "stall" and chat == CITIZEN for kind, chat, _ in api.refused)
    await _wait_until(in_flight, 10, "the reply request to hang")
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
    row = await _citizen_row(sessionmaker, CITIZEN)
    assert row is not None and row.state == Step.MATTER_CLASS  # the answer was committed

    api.stall_chats.clear()
    await bot.start()
    with contextlib.suppress(TimeoutError):
        await api.wait_for(CITIZEN, 2, limit=20)  # a restart on a busy machine takes seconds
    messages = api.to_chat(CITIZEN)
    assert len(messages) == 2 and "哪一类" in messages[1].text, "the question after the consent never came"


# -- SIGTERM with handlers in flight ------------------------------------------------------------


async def test_sigterm_with_handlers_in_flight_every_update_gets_exactly_one_reply(
        api: FakeBotAPI, spawn: Callable[..., BotProcess]) -> None:
    bot = spawn()
    await bot.start()
    api.push_text(CITIZEN, "/start")
    await api.wait_for(CITIZEN, 1)

    others = list(range(8802, 8807))
    api.send_delay = 0.4  # every reply takes a while: handlers are still running at SIGTERM
    sends_before = api.calls.count("sendMessage")
    for kind, value in FILING[:3]:  # one chat's updates go one after another: about 1.2 s
        _push(api, CITIZEN, kind, value)
    for user in others:
        api.push_text(user, "/new")

    async def replying() -> bool:
        return api.calls.count("sendMessage") > sends_before
    await _wait_until(replying, 10, "the first reply request")
    bot.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    answered_at_sigterm = len(api.sent)
    late = 8899
    api.push_text(late, "/new")  # arrives while the bot is stopping
    assert await asyncio.wait_for(bot.proc.wait(), 15) == 0  # type: ignore[union-attr]
    # The batch in flight was finished before the exit; the late update waits for the restart.
    assert answered_at_sigterm < 1 + 3 + len(others), "no handler was in flight at SIGTERM"
    assert {chat: len(api.to_chat(chat)) for chat in (CITIZEN, *others, late)} == {
        CITIZEN: 4, **dict.fromkeys(others, 1), late: 0}

    api.send_delay = 0.0
    await bot.start()
    expected = {CITIZEN: 4, **dict.fromkeys(others, 1), late: 1}
    for chat, count in expected.items():
        await api.wait_for(chat, count)
    await asyncio.sleep(1.0)  # replays would have been answered by now
    assert {chat: len(api.to_chat(chat)) for chat in expected} == expected
    assert "哪一类" in api.to_chat(CITIZEN)[2].text and "问题分类" in api.to_chat(CITIZEN)[3].text
    assert await bot.stop() == 0
    log = bot.log_text()
    assert "Traceback" not in log and log.count("stopped") == 2


# -- a second poller on the same token (409 Conflict) ------------------------------------------


async def test_409_conflict_is_logged_backs_off_and_polling_resumes_when_it_ends(
        api: FakeBotAPI, spawn: Callable[..., BotProcess]) -> None:
    bot = spawn()
    api.conflict = True
    await bot.start()

    async def conflict_logged() -> bool:
        return "409 Conflict" in bot.log_text()
    await _wait_until(conflict_logged, 15, "the conflict to be logged")
    started = time.monotonic()
    polls_at_first_conflict = api.calls.count("getUpdates")
    await asyncio.sleep(2.5)
    polls = api.calls.count("getUpdates") - polls_at_first_conflict
    assert bot.running, "the process exited on a 409"
    assert polls <= 3, f"{polls} getUpdates calls in {time.monotonic() - started:.1f} s: not backing off"

    api.conflict = False
    api.push_text(CITIZEN, "/start")
    [welcome] = await api.wait_for(CITIZEN, 1, limit=20)
    assert "东莞市信访局" in welcome.text
    assert await bot.stop() == 0
    log = bot.log_text()
    assert log.count("409 Conflict") >= 2 and "Traceback" not in log


# =====================================================================================
# in-process faults
# =====================================================================================

# -- double tap on staff buttons ---------------------------------------------------------


async def test_a_double_tapped_staff_button_acts_once_and_the_second_tap_is_told(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await app.deliver()
    case = await _the_case(app)
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    register = StaffAction(case=case.id, action="register", v=case.version).pack()
    mark = len(app.telegram.calls)

    await asyncio.gather(app.sim.feed(admin.callback_update(register)), app.sim.feed(admin.callback_update(register)))
    await app.deliver()

    after = await _the_case(app)
    assert (after.status, after.version) == ("registered", case.version + 1)
    assert (await _actions(app.sessionmaker, case.id)).count("register") == 1
    assert len([m for m in citizen.received if "已登记" in m.text]) == 1
    toasts = _toasts(app, mark)
    assert len(toasts) == 2 and sum("刚刚有变化" in toast for toast in toasts) == 1

    # The same in sequence, on the refreshed card's buttons.
    claim = StaffAction(case=case.id, action="claim", v=after.version).pack()
    mark = len(app.telegram.calls)
    await app.sim.feed(admin.callback_update(claim))
    await app.sim.feed(admin.callback_update(claim))
    await app.deliver()
    claimed = await _the_case(app)
    assert (claimed.assignee_id, claimed.version) == (ADMIN, after.version + 1)
    assert (await _actions(app.sessionmaker, case.id)).count("claim") == 1
    assert "刚刚有变化" in _toasts(app, mark)[-1]


# -- 11 answers in one burst ------------------------------------------------------------------


async def test_eleven_answers_in_one_burst_are_processed_in_order(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    burst = [
        citizen.message_update(text="拖欠工资"), citizen.message_update(text="要求支付工资"),
        citizen.message_update(text="公司三个月未发工资"), citizen.message_update(text="合同约定按月发放"),
        citizen.message_update(text="2025年12月起"), citizen.message_update(text="某某电子厂"),
        citizen.callback_update(IntakeButton(step="litigation", value="none").pack()),
        citizen.callback_update(IntakeButton(step="attachments", value="~done").pack()),
        citizen.message_update(text="张三"), citizen.message_update(text="139 1234 5678"),
        citizen.message_update(text=VALID_ID)]
    assert len(burst) == 11
    mark = len(citizen.received)

    await asyncio.gather(*(app.sim.feed(u) for u in burst))

    now = await stored(app, citizen)
    assert now.state == Step.ADDRESS
    assert [now.answers[k] for k in ("title", "request", "facts", "reasons", "occurred", "accused")] == [
        "拖欠工资", "要求支付工资", "公司三个月未发工资", "合同约定按月发放", "2025年12月起", "某某电子厂"]
    assert (now.answers["litigation"], now.answers["name"], now.answers["phone"], now.answers["id_number"]) == (
        "none", "张三", "+8613912345678", VALID_ID)
    replies = citizen.texts_since(mark)
    questions = ["<b>诉求</b>", "<b>事实</b>", "<b>理由</b>", "什么时候发生", "被反映的人或单位", "法院诉讼",
                 "如有照片", "请输入您的姓名", "请提供您的手机号码", "18位居民身份证号码", "住址或通讯地址"]
    where = [next(i for i, r in enumerate(replies) if q in r) for q in questions]
    assert where == sorted(where), replies
    assert t("zh", "retry_later") not in replies


# -- Bot API 429, 500 and timeouts -----------------------------------------------------------


async def test_timeouts_while_notifying_the_staff_are_retried_and_the_card_is_sent_once(app: App) -> None:
    await file_petition(app.sim.citizen())
    method = SendMessage(chat_id=STAFF_CHAT, text="x")
    app.telegram.failures.extend([TelegramNetworkError(method, "Request timeout error"), TimeoutError()])

    await app.deliver()

    assert len(_staff_sends(app)) == 1
    async with app.sessionmaker() as session:
        row = (await session.scalars(select(OutboxMessage))).one()
    assert (row.status, row.attempts, row.last_error) == ("sent", 2, None)
    # Two back-offs of base 2 s (x0.5 to x1.5 jitter): the clock was moved over both.
    assert row.sent_at is not None and (row.sent_at - row.created_at).total_seconds() >= 1.0 + 2.0


async def _lease_the_card_as_a_dead_process_would(app: App) -> datetime:
    """The card row as a worker killed mid-send leaves it: pending, leased for LEASE."""
    until = app.clock() + LEASE
    async with app.sessionmaker() as session, session.begin():
        await session.execute(update(OutboxMessage).where(OutboxMessage.kind == "card").values(lease_until=until))
    return until


async def test_a_card_leased_by_a_process_killed_mid_send_goes_out_once_when_the_lease_ends(app: App) -> None:
    """The in-process twin of the "stall" case above, with the lease waited out on the test clock."""
    await file_petition(app.sim.citizen())
    await _lease_the_card_as_a_dead_process_would(app)
    restarted = app.restart()
    await restarted.worker.deliver_due()
    assert restarted.telegram.sent(STAFF_CHAT) == []  # the lease is respected: no second sender
    app.clock.advance(seconds=LEASE.total_seconds() + 1)
    await restarted.deliver()
    assert len(restarted.telegram.sent(STAFF_CHAT)) == 1
    await restarted.deliver()
    assert len(restarted.telegram.sent(STAFF_CHAT)) == 1


async def test_the_worker_wakes_up_when_a_dead_processs_lease_ends(app: App) -> None:
    await file_petition(app.sim.citizen())
    until = await _lease_the_card_as_a_dead_process_would(app)
    restarted = app.restart()
    assert await restarted.worker.deliver_due() == (until - app.clock()).total_seconds()


async def test_a_429_on_the_reply_to_the_citizen_waits_exactly_retry_after_and_sends_once(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    app.telegram.failures.append(TelegramRetryAfter(SendMessage(chat_id=citizen.chat.id, text="x"),
                                                    "Too Many Requests: retry after 1", 1))
    started = time.monotonic()

    replies = await citizen.send("拖欠工资")

    waited = time.monotonic() - started
    assert 1.0 <= waited < 2.5
    assert replies == [t("zh", "step.request.ask", limit=app.bureau.intake.max_lengths["request"])]
    now = await stored(app, citizen)
    assert now.state == Step.REQUEST and now.answers["title"] == "拖欠工资"


async def test_a_timeout_on_the_reply_to_the_citizen_is_retried_and_nothing_is_lost(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    app.telegram.failures.append(TelegramNetworkError(SendMessage(chat_id=citizen.chat.id, text="x"),
                                                      "Request timeout error"))
    mark = len(citizen.received)

    # As the poller runs it: an exception after the commit is logged and the batch goes on.
    await process_batch(app.sim.dp, app.sim.bot, [citizen.message_update(text="拖欠工资")])

    now = await stored(app, citizen)
    assert now.state == Step.REQUEST and now.answers["title"] == "拖欠工资"
    assert citizen.texts_since(mark) == [
        t("zh", "step.request.ask", limit=app.bureau.intake.max_lengths["request"])], "the reply was lost"


# -- the database locked longer than the busy timeout (SQLite) -------------------------------


async def test_a_database_locked_past_the_busy_timeout_asks_to_retry_and_changes_nothing(
        database_url: str, db: AsyncEngine, settings: Settings, bureau: BureauConfig, clock: conftest.TestClock,
        caplog: pytest.LogCaptureFixture) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite only: PostgreSQL has no busy timeout (a row lock simply waits)")
    engine = create_engine(database_url, busy_timeout_ms=500)
    try:
        app = make_app(settings, create_sessionmaker(engine), bureau, clock)
        citizen = app.sim.citizen()
        await reach(citizen, Step.TITLE)
        before = await stored(app, citizen)
        path = make_url(database_url).database
        assert path
        locker = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
        try:
            locker.execute("BEGIN IMMEDIATE")  # another writer holds the lock, for longer than 500 ms
            started = time.monotonic()
            replies = await citizen.send("拖欠工资")
            assert time.monotonic() - started >= 0.5
            assert replies == [t("zh", "retry_later")]
            assert "rolled back" in caplog.text and "database is locked" in caplog.text
            # A short lock is absorbed by the busy timeout.
            asyncio.get_running_loop().call_later(0.2, locker.execute, "ROLLBACK")
            [state_then] = locker.execute("SELECT state FROM citizen_sessions WHERE user_id = ?",
                                          (citizen.user.id,)).fetchone()
            assert state_then == Step.TITLE
            replies = await citizen.send("拖欠工资")
        finally:
            locker.close()
        assert replies == [t("zh", "step.request.ask", limit=app.bureau.intake.max_lengths["request"])]
        after = await stored(app, citizen)
        assert after.state == Step.REQUEST
        assert after == Stored(Step.REQUEST, {**before.answers, "title": "拖欠工资"}, before.attachments,
                               before.emergency)
    finally:
        await engine.dispose()


async def test_the_database_locked_state_is_left_as_it_was(
        database_url: str, db: AsyncEngine, settings: Settings, bureau: BureauConfig,
        clock: conftest.TestClock) -> None:
    """The refused update leaves nothing behind: same state and answers, no update id recorded."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite only: PostgreSQL has no busy timeout (a row lock simply waits)")
    async with conftest.impatient_app(database_url, settings, bureau, clock) as app:
        citizen = app.sim.citizen()
        await reach(citizen, Step.REQUEST)
        before = await stored(app, citizen)
        refused = citizen.message_update(text="要求支付工资")
        with conftest.sqlite_write_lock(database_url):
            await process_batch(app.sim.dp, app.sim.bot, [refused])  # nothing escapes
        assert citizen.last_text == t("zh", "retry_later")
        assert await stored(app, citizen) == before
        # Not recorded as processed: if Telegram delivered it again it would be handled.
        await app.sim.feed(refused)
        assert (await stored(app, citizen)).answers["request"] == "要求支付工资"


# -- PostgreSQL connections dropped while the bot runs ------------------------------------------


async def _terminate_backends(database_url: str) -> int:
    """What a PostgreSQL restart does to the bot's pool: every connection dropped."""
    admin = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            killed = await conn.scalar(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    finally:
        await admin.dispose()
    return int(killed or 0)


async def test_postgresql_connections_dropped_while_running_the_bot_recovers_without_restart(
        app: App, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    citizen = app.sim.citizen()
    await to_title(citizen)
    assert await _terminate_backends(database_url) >= 1

    [question] = await citizen.send("拖欠工资")

    assert question == t("zh", "step.request.ask", limit=app.bureau.intake.max_lengths["request"])
    assert (await stored(app, citizen)).answers["title"] == "拖欠工资"
    await answer_until(citizen, Step.SUMMARY, start=Step.REQUEST)
    await citizen.press(ZH["confirm"])
    assert "已提交" in citizen.last_text
    # Again, between the commit and the outbox's turn.
    assert await _terminate_backends(database_url) >= 1
    await app.deliver()
    case = await _the_case(app)
    [card] = _staff_sends(app)
    assert case.tracking_number in card.text and case.card_message_id is not None
    assert t("zh", "retry_later") not in [m.text for m in citizen.received]


# -- malformed input -----------------------------------------------------------------------------


def _video_update(citizen: SimUser) -> Update:
    return citizen.message_update(video=Video(file_id=f"video-{citizen.user.id}", file_unique_id="uvideo",
                                              width=640, height=480, duration=5))


def _forwarded_update(citizen: SimUser, said: str) -> Update:
    origin = MessageOriginUser(type="user", date=datetime.now(UTC),
                               sender_user=User(id=777, is_bot=False, first_name="Someone else"))
    return citizen.message_update(text=said, forward_origin=origin)


async def _feed(app: App, citizen: SimUser, update: Update) -> list[str]:
    mark = len(citizen.received)
    await app.sim.feed(update)
    return citizen.texts_since(mark)


@pytest.mark.parametrize("typed", ["\u202e资工欠拖", "拖欠\u202e工资\u202c", "\u2067拖欠工资\u2069"])
async def test_right_to_left_override_characters_are_removed_from_free_text(app: App, typed: str) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    await citizen.send(typed)
    now = await stored(app, citizen)
    assert now.state == Step.REQUEST
    assert now.answers["title"] == typed.translate(dict.fromkeys(map(ord, "\u202e\u202c\u2067\u2069")))


async def test_right_to_left_override_characters_alone_are_refused_as_empty(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    before = await stored(app, citizen)
    [reply] = await citizen.send("\u202e\u202d\u2066\u200f")
    assert reply == asked_again(app, "zh", Step.TITLE, "error.text.empty")
    assert await stored(app, citizen) == before


@pytest.mark.parametrize(("step", "typed", "error"), [
    (Step.PHONE, "\u202e87654321931", "error.phone.invalid"),  # shows as 13912345678
    (Step.ID_NUMBER, "\u202eX20013219491501011", "error.id.characters"),  # shows as the valid example
])
async def test_a_number_disguised_by_a_right_to_left_override_is_refused(
        app: App, step: Step, typed: str, error: str) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, step)
    before = await stored(app, citizen)
    [reply] = await citizen.send(typed)
    assert reply == asked_again(app, "zh", step, error)
    assert await stored(app, citizen) == before


@pytest.mark.parametrize(("step", "typed", "key", "value"), [
    (Step.PHONE, "\u202a139 1234 5678\u202c", "phone", "+8613912345678"),
    (Step.PHONE, "+86 139-1234-5678", "phone", "+8613912345678"),
    (Step.ID_NUMBER, f"\u2066{VALID_ID}\u2069", "id_number", VALID_ID),
])
async def test_a_correct_number_in_another_spelling_or_wrapped_in_direction_marks_is_accepted(
        app: App, step: Step, typed: str, key: str, value: str) -> None:
    """Some clients wrap copied numbers in direction marks: they are removed, not refused."""
    citizen = app.sim.citizen()
    await reach(citizen, step)
    await citizen.send(typed)
    assert (await stored(app, citizen)).answers.get(key) == value


async def test_answers_of_4096_characters_and_more_get_the_limit_and_change_nothing(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    before = await stored(app, citizen)
    limit = app.bureau.intake.max_lengths["title"]
    [reply] = await citizen.send("长" * 4097)
    assert reply == asked_again(app, "zh", Step.TITLE, "error.text.too_long", limit=limit, length=4097)
    assert await stored(app, citizen) == before

    await answer_until(citizen, Step.FACTS)
    before = await stored(app, citizen)
    limit = app.bureau.intake.max_lengths["facts"]
    [reply] = await citizen.send("<&>" * 2000)  # 6000 characters, every one of them escaped in HTML
    assert reply == asked_again(app, "zh", Step.FACTS, "error.text.too_long", limit=limit, length=6000)
    assert visible_length(reply) <= 4096
    assert await stored(app, citizen) == before

    idle = app.sim.citizen(2002)
    [hint] = await idle.send("字" * 5000)
    assert hint == t("zh", "idle_hint")
    assert await _cases(app) == []


async def test_emoji_only_answers_are_kept_as_free_text_and_refused_where_a_number_or_choice_is_needed(
        app: App) -> None:
    citizen = app.sim.citizen()
    await citizen.send("/new")
    await citizen.press(ZH["accept"])
    before = await stored(app, citizen)
    [reply] = await citizen.send("👍")
    assert reply == asked_again(app, "zh", Step.MATTER_CLASS, "error.choice.use_buttons")
    assert await stored(app, citizen) == before

    other = app.sim.citizen(2002)
    await reach(other, Step.TITLE)
    await other.send("😡😡😡👨\u200d👩\u200d👧")  # a family emoji keeps its joiners
    assert (await stored(app, other)).answers["title"] == "😡😡😡👨\u200d👩\u200d👧"
    await answer_until(other, Step.PHONE, start=Step.REQUEST)
    for step, error, then in ((Step.PHONE, "error.phone.invalid", Step.ID_NUMBER),
                              (Step.ID_NUMBER, "error.id.characters", Step.ADDRESS)):
        before = await stored(app, other)
        assert before.state == step
        [reply] = await other.send("📱🆔")
        assert reply == asked_again(app, "zh", step, error)
        assert await stored(app, other) == before
        await answer_until(other, then, start=step)


async def test_a_video_where_text_or_a_file_is_expected_is_named_and_refused(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    before = await stored(app, citizen)
    assert await _feed(app, citizen, _video_update(citizen)) == [
        asked_again(app, "zh", Step.TITLE, "error.expected_text", what="视频")]
    assert await stored(app, citizen) == before

    await answer_until(citizen, Step.ATTACHMENTS)
    before = await stored(app, citizen)
    assert await _feed(app, citizen, _video_update(citizen)) == [
        asked_again(app, "zh", Step.ATTACHMENTS, "error.attachment.kind", what="视频")]
    assert await stored(app, citizen) == before


async def test_a_forwarded_message_is_taken_as_the_answer_without_an_error(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    replies = await _feed(app, citizen, _forwarded_update(citizen, "转发来的标题"))
    assert replies[-1] == t("zh", "step.request.ask", limit=app.bureau.intake.max_lengths["request"])
    now = await stored(app, citizen)
    assert now.state == Step.REQUEST and now.answers["title"] == "转发来的标题"


async def test_a_forwarded_message_is_told_it_was_taken_as_the_citizens_own_answer(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    replies = await _feed(app, citizen, _forwarded_update(citizen, "转发来的标题"))
    assert t("zh", "forwarded_note") in replies


def _forged_private(case_id: int) -> list[str]:
    return ["i:", "i:title", "i:title:x", "i:nonexistent:x", "i:matter_class:suggestion", "i:title:" + "x" * 56,
            "i:consent:accept:extra", "m:", "m:hack", "m:new:extra", "s:", "s:1:register:1", "s:abc:register:x",
            f"s:{case_id}:register:1", "c:", "c:999999:view", "c:abc:view:0:", f"c:{case_id}:withdraw_now:0:",
            "r:", "r:999999", "r:abc", f"r:{case_id}", "garbage", ":::", "x" * 64, "\u202e", "🙂" * 16]


async def test_forged_callback_data_of_every_prefix_from_a_citizen_is_answered_and_changes_nothing(
        app: App) -> None:
    owner = app.sim.citizen(3003)
    await file_petition(owner)
    case = await _the_case(app)
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    before = await stored(app, citizen)

    for data in _forged_private(case.id):
        mark_calls, mark = len(app.telegram.calls), len(citizen.received)
        await app.sim.feed(citizen.callback_update(data))
        assert len(_toasts(app, mark_calls)) == 1, f"{data!r}: the button was not answered"
        said = citizen.texts_since(mark)
        assert said, f"{data!r}: no message"
        assert all(case.tracking_number not in s and case.title not in s for s in said), data
        assert await stored(app, citizen) == before, data
    after = await _the_case(app)
    assert (after.status, after.version) == (case.status, case.version)
    assert len(await _cases(app)) == 1


async def test_forged_callback_data_in_the_staff_chat_is_answered_and_changes_nothing(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await app.deliver()
    case = await _the_case(app)
    v = case.version
    forged = ["s:", "s:abc:register:1", "s:999999:register:1", f"s:{case.id}:register:{v + 7}",
              f"s:{case.id}:__class__:{v}", f"s:{case.id}:transfer:{v}:u=999999999", f"s:{case.id}:decide:{v}:o=x",
              "i:consent:accept", "m:new", f"c:{case.id}:withdraw_now", f"r:{case.id}", "garbage", "x" * 64]
    notices = len(citizen.received)
    for user in (ADMIN, OUTSIDER):
        staff = app.sim.staff(user, STAFF_CHAT)
        for data in forged:
            mark = len(app.telegram.calls)
            await app.sim.feed(staff.callback_update(data))
            assert len(_toasts(app, mark)) == 1, f"{data!r} by {user}: the button was not answered"
    await app.deliver()
    after = await _the_case(app)
    assert (after.status, after.version, after.assignee_id) == (case.status, v, None)
    assert len(citizen.received) == notices
    assert await _actions(app.sessionmaker, case.id) == ["consented", "submitted"]


# -- refusals are logged -------------------------------------------------------------------------


async def test_refused_staff_actions_are_logged_with_who_and_what(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bot.routers.staff")
    await file_petition(app.sim.citizen())
    await app.deliver()
    case = await _the_case(app)
    outsider = app.sim.staff(OUTSIDER, STAFF_CHAT)
    await app.sim.feed(outsider.callback_update(StaffAction(case=case.id, action="register", v=case.version).pack()))
    await outsider.send("/queue")
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    await admin.send(f"/staff add {CLERK}")
    clerk = app.sim.staff(CLERK, STAFF_CHAT)
    await clerk.send(f"/staff add {OUTSIDER}")
    await admin.send(f"/staff remove {CLERK}")
    await app.sim.feed(clerk.callback_update(StaffAction(case=case.id, action="claim", v=case.version).pack()))

    denials = [r.getMessage() for r in caplog.records if r.name == "bot.routers.staff" and r.levelno == logging.WARNING]
    assert f"denied button register to non-staff user {OUTSIDER}" in denials
    assert f"denied /queue to non-staff user {OUTSIDER}" in denials
    assert f"denied /staff to non-admin {CLERK}" in denials
    assert f"denied button claim to non-staff user {CLERK}" in denials
    after = await _the_case(app)
    assert (after.status, after.version, after.assignee_id) == (case.status, case.version, None)


async def test_a_refused_anonymous_admin_is_logged(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    anonymous = app.sim.staff(ANONYMOUS_ADMIN, STAFF_CHAT)
    [answer] = await anonymous.send("/queue")
    assert "匿名" in answer
    assert any(r.name.startswith("bot") and r.levelno >= logging.WARNING for r in caplog.records)


# -- 1,000 guessed tracking numbers ----------------------------------------------------------------


async def test_a_thousand_guessed_tracking_numbers_disclose_nothing_and_are_rate_limited(app: App) -> None:
    owner = app.sim.citizen()
    tracking, code = await file_petition(owner)
    case = await _the_case(app)
    guesser = app.sim.citizen(4004)
    rng = random.Random(20260302)
    not_found = t("zh", "status.not_found")
    limited = t("zh", "status.too_many", minutes=60)
    limit = app.settings.status_max_failures_per_user

    flood = ({t("zh", "flood", seconds=app.settings.flood_window_seconds)}
             if hasattr(app.settings, "flood_window_seconds") else set())

    replies: list[list[str]] = []
    for n in range(1000):
        number = tracking if n == 3 else new_tracking_number("DG")  # the real number once, with a wrong code
        guess = "".join(rng.choice(ALPHABET) for _ in range(10))
        if guess == code:
            guess = guess[::-1]
        replies.append(await guesser.send(f"/status {number} {guess}"))

    assert all(len(r) <= 1 for r in replies)
    answers = [r[0] for r in replies if r]
    assert answers[:limit] == [not_found] * limit
    assert answers[limit] == limited
    # Then the same refusal; past the per-person flood limit, one notice and then silence.
    assert set(answers[limit:]) <= {limited, *flood}
    assert sum(a in flood for a in answers) <= 1
    for secret in (tracking, case.title, "张", "虎门", "139", code):
        assert not any(secret in a for a in answers), secret
    assert all(m.reply_markup is None for m in guesser.received)
    async with app.sessionmaker() as session:
        counted = (await session.scalars(select(LookupFailure)
                                         .where(LookupFailure.key == f"u:{guesser.user.id}"))).one()
    assert counted.count == limit  # refused lookups are not even counted (no unbounded growth)
    # The owner is not locked out by someone else's guessing.
    [status] = await owner.send(f"/status {tracking} {code}")
    assert tracking in status
