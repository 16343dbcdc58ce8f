"""After filing: what the citizen notices when following a petition up — status by
tracking number and query code, /mycases, adding information, withdrawing,
rating the bureau and the unit, and asking for review (复查) and re-review (复核).

Everything goes through the real dispatcher as Telegram updates; staff act by
pressing their card buttons in the staff chat; ``app.deliver()`` runs the outbox.
The test clock starts on Monday 2026-03-02, 09:00 China time.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Any

import pytest
from aiogram.methods import EditMessageText, SendDocument, SendMessage, SendPhoto
from aiogram.types import InlineKeyboardMarkup
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.callbacks import CitizenAction, StaffAction
from bot.simulator import SimUser
from dialogs.tracking import ALPHABET, new_tracking_number
from storage.models import Case, CaseEvent, LookupFailure, Rating
from tests.conftest import STAFF_CHAT, App
from tests.flows import CODE, TRACKING, VALID_ID, file_petition

#: Every test twice: updates fed as a webhook delivers them and as polling does.
BOTH_FEEDS = True


ADMIN = 9001
HUMEN, CHANGPING = "441900121", "441900110"
NOT_YOURS = "这个按钮已失效，或不属于您的信访事项。"
NOT_FOUND = "没有找到与该编号和查询码相符的信访事项"
TOO_MANY = "查询次数过多"
DECISION_TEXT = "经调查，公司已按合同支付工资，诉求不予支持"

# -- small helpers -------------------------------------------------------------------


async def _case(app: App, tracking: str) -> Case:
    async with app.sessionmaker() as session:
        case = await session.scalar(select(Case).where(Case.tracking_number == tracking))
    assert case is not None, tracking
    return case


async def _events(app: App, tracking: str) -> list[CaseEvent]:
    case = await _case(app, tracking)
    async with app.sessionmaker() as session:
        return list(await session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id)
                                          .order_by(CaseEvent.id)))


async def _ratings(app: App, tracking: str) -> list[Rating]:
    case = await _case(app, tracking)
    async with app.sessionmaker() as session:
        return list(await session.scalars(select(Rating).where(Rating.case_id == case.id).order_by(Rating.id)))


def _staff_chat(app: App) -> list[Any]:
    return [c for c in app.telegram.calls if getattr(c, "chat_id", None) == STAFF_CHAT]


def _staff_said(app: App) -> list[str]:
    """Texts and captions the staff chat got (messages, files, card edits)."""
    return [getattr(c, "text", None) or getattr(c, "caption", None) or "" for c in _staff_chat(app)]


def _card_now(app: App) -> str:
    """The staff card as last redrawn (card edits in the staff chat)."""
    edits = [c for c in _staff_chat(app) if isinstance(c, EditMessageText)]
    assert edits, "the card was never refreshed"
    return str(edits[-1].text)


async def _staff_does(app: App, tracking: str, action: str, arg: str = "", text: str | None = None) -> Case:
    """A staff member presses ``action`` on the current card (and answers its prompt); the outbox runs."""
    case = await _case(app, tracking)
    staff = app.sim.staff(ADMIN, STAFF_CHAT)
    await app.sim.feed(staff.callback_update(
        StaffAction(case=case.id, action=action, v=case.version, arg=arg).pack()))
    if text is not None:
        await staff.send(text)
    await app.deliver()
    return await _case(app, tracking)


async def _accepted(app: App, tracking: str) -> Case:
    """Registered, transferred to 虎门镇, received, acceptance notified."""
    await app.deliver()
    for action, arg in (("register", ""), ("transfer", f"u={HUMEN}"), ("receive", ""), ("accept", "")):
        case = await _staff_does(app, tracking, action, arg)
    assert case.status == "acceptance_notified"
    return case


async def _decided(app: App, tracking: str) -> Case:
    """Accepted, handled and decided (不予支持); the decision reached the citizen."""
    await _accepted(app, tracking)
    await _staff_does(app, tracking, "start_handling")
    case = await _staff_does(app, tracking, "decide", "o=reject", text=DECISION_TEXT)
    assert case.status == "review_window" and case.decision_delivered_at is not None
    return case


def _labels(citizen: SimUser) -> list[str]:
    return [label for label, _ in citizen.buttons()]


def _button(citizen: SimUser, label: str) -> str:
    """The callback data of a button on the latest keyboard (to press it later)."""
    [data] = [d for text, d in citizen.buttons() if text == label]
    assert data is not None
    return data


def _markup_of(message: SendMessage) -> dict[str, str]:
    markup = message.reply_markup
    if not isinstance(markup, InlineKeyboardMarkup):
        return {}
    return {b.text: str(b.callback_data) for row in markup.inline_keyboard for b in row}


def _invitation(citizen: SimUser) -> tuple[str, dict[str, str]]:
    """The latest rating invitation: its text and its buttons (label → callback data)."""
    message = next(m for m in reversed(citizen.received) if m.text.startswith("⭐"))
    return message.text, _markup_of(message)


async def _status(citizen: SimUser, tracking: str, code: str) -> str:
    [answer] = await citizen.send(f"/status {tracking} {code}")
    return answer


async def _open_from_mycases(citizen: SimUser, tracking: str) -> str:
    """/mycases, then the case's button: its full status."""
    await citizen.send("/mycases")
    [view] = await citizen.press(tracking)
    return view


def _mistype(tracking: str) -> str:
    """Change one symbol of the random part: the check symbol no longer fits."""
    i = 3
    return tracking[:i] + ALPHABET[(ALPHABET.index(tracking[i]) + 1) % len(ALPHABET)] + tracking[i + 1:]


async def _file_report(citizen: SimUser, title: str, reasons: str) -> tuple[str, str]:
    """A report of wrongdoing (检举控告), as a citizen files it."""
    await citizen.send("/new")
    await citizen.press("✅ 我已阅读并同意")
    await citizen.press("⚠️ 检举控告违纪违法行为")
    await citizen.send("社保")
    if "跳过" in _labels(citizen):
        await citizen.press(1)
    await citizen.send("虎门")
    await citizen.send(title)
    await citizen.send("要求查处")
    await citizen.send("2026年1月在窗口办理业务时被索要好处费")
    await citizen.send(reasons)
    await citizen.press("跳过")  # occurred
    await citizen.press("跳过")  # accused
    await citizen.press("没有")
    await citizen.press("完成，下一步")
    await citizen.send("李四")
    await citizen.send("139 8765 4321")
    if "身份证" in citizen.last_text:
        await citizen.send(VALID_ID)
    await citizen.send("东莞市虎门镇银龙路2号")
    await citizen.press("🔒 不同意公开（默认）")
    receipt = (await citizen.press("✅ 确认提交"))[-1]
    tracking, code = TRACKING.search(receipt), CODE.search(receipt)
    assert tracking and code, receipt
    return tracking.group(0), code.group(1)


# -- status by tracking number and query code ---------------------------------------------


async def test_status_shows_the_statutory_events_the_unit_and_the_next_deadline_in_plain_words(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await app.deliver()
    await _staff_does(app, tracking, "register")
    await _staff_does(app, tracking, "transfer", f"u={HUMEN}")
    answer = await _status(citizen, tracking, code)
    assert "已转送有权处理单位" in answer
    assert "<b>责任单位：</b>虎门镇" in answer
    assert "2026-03-17 前书面告知是否受理" in answer  # 15 days from the next day

    # The unit objects (an internal matter); the bureau routes the case to another unit.
    await _staff_does(app, tracking, "receive")
    await _staff_does(app, tracking, "object", text="本单位内部意见：应由常平镇处理，经办人王五")
    await _staff_does(app, tracking, "reroute")
    await _staff_does(app, tracking, "transfer", f"u={CHANGPING}")
    await _staff_does(app, tracking, "receive")
    await _staff_does(app, tracking, "accept")
    await _staff_does(app, tracking, "start_handling")
    await _staff_does(app, tracking, "ask_info", text="内部：请群众补充劳动合同第3页")
    case = await _staff_does(app, tracking, "extend", "d=15", text="需要调取工资流水")
    assert case.status == "extended"
    answer = await _status(citizen, tracking, code)
    assert "<b>当前状态：</b>办理期限已延长" in answer
    assert "<b>责任单位：</b>常平镇" in answer
    assert "2026-05-18 前作出处理意见" in answer  # 60 + 15 days, Saturday moved to Monday

    await _staff_does(app, tracking, "submit_for_audit")
    await _staff_does(app, tracking, "return_for_rework", text="审核意见：证据链不完整")
    await _staff_does(app, tracking, "decide", "o=reject", text=DECISION_TEXT)
    answer = await _status(citizen, tracking, code)
    assert "<b>当前状态：</b>已作出处理意见（可申请复查）" in answer
    assert "可在 2026-04-01 前申请复查" in answer
    assert "<b>标题：</b>拖欠工资" in answer
    for line in ("2026-03-02 网上提交", "2026-03-02 信访部门登记", "2026-03-02 转送虎门镇",
                 "2026-03-02 转送常平镇", "2026-03-02 受理告知",
                 "2026-03-02 延长办理期限15日（需要调取工资流水）",
                 f"2026-03-02 作出处理意见：不予支持（{DECISION_TEXT}）", "2026-03-02 处理意见送达"):
        assert line in answer.splitlines(), (line, answer)
    lines = answer.splitlines()
    assert lines.index("2026-03-02 转送虎门镇") < lines.index("2026-03-02 转送常平镇") \
        < lines.index("2026-03-02 处理意见送达")


async def test_status_never_shows_staff_internal_notes_or_the_petitioners_personal_data(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await app.deliver()
    await _staff_does(app, tracking, "claim")
    await _staff_does(app, tracking, "register")
    await _staff_does(app, tracking, "transfer", f"u={HUMEN}")
    await _staff_does(app, tracking, "receive")
    await _staff_does(app, tracking, "object", text="异议理由：经办人王五认为不属本单位")
    await _staff_does(app, tracking, "reroute")
    await _staff_does(app, tracking, "transfer", f"u={HUMEN}")
    await _staff_does(app, tracking, "receive")
    await _staff_does(app, tracking, "accept")
    await _staff_does(app, tracking, "start_handling")
    await _staff_does(app, tracking, "ask_info", text="请补充工资条（内部备注：疑似重复访）")
    await _staff_does(app, tracking, "submit_for_audit")
    await _staff_does(app, tracking, "return_for_rework", text="退回：科长赵六要求重新核实")
    await _staff_does(app, tracking, "details")
    for viewer in (citizen, app.sim.citizen(2002)):
        answer = await _status(viewer, tracking, code)
        assert "办理中" in answer
        for secret in ("王五", "不属本单位", "疑似重复访", "工资条", "赵六", "重新核实", str(ADMIN), "Staff",
                       "张三", "13912345678", "139****5678", VALID_ID, "银龙路"):
            assert secret not in answer, secret


async def test_a_relative_with_number_and_code_sees_the_same_status_but_no_petitioner_buttons(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await _decided(app, tracking)
    own = await _status(citizen, tracking, code)
    assert any("补充材料" in label for label in _labels(citizen))
    assert "📝 申请复查" in _labels(citizen)
    relative = app.sim.citizen(2002)
    seen = await _status(relative, tracking, code)
    assert seen == own
    assert relative.received[-1].reply_markup is None
    # Nor can the relative use the petitioner's buttons.
    case = await _case(app, tracking)
    for action in ("add", "withdraw", "review"):
        assert await relative.press_data(CitizenAction(case=case.id, action=action).pack()) == [NOT_YOURS]
    assert (await _case(app, tracking)).status == "review_window"


async def test_a_wrong_code_and_an_unknown_number_get_the_identical_answer(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await _accepted(app, tracking)
    stranger = app.sim.citizen(3003)
    wrong_code = await _status(stranger, tracking, "2" * 10 if code != "2" * 10 else "3" * 10)
    unknown = await _status(stranger, new_tracking_number("DG"), code)
    assert wrong_code == unknown
    assert NOT_FOUND in wrong_code and tracking not in wrong_code and "虎门镇" not in wrong_code
    assert stranger.received[-1].reply_markup is None


async def test_a_mistyped_check_character_asks_to_check_the_number(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    answer = await _status(citizen, _mistype(tracking), code)
    assert "可能输错了一位" in answer and NOT_FOUND not in answer


async def test_a_report_of_wrongdoing_shows_status_and_dates_but_not_its_title_or_reasons(app: App) -> None:
    citizen = app.sim.citizen()
    title = "举报窗口科长索要好处费"
    tracking, code = await _file_report(citizen, title, "收受现金两千元，有录音为证")
    assert (await _case(app, tracking)).matter_class == "report"
    await _accepted(app, tracking)
    await _staff_does(app, tracking, "start_handling")
    await _staff_does(app, tracking, "decide", "o=support", text="经查，科长收受好处费属实，已移送纪检监察机关")
    for viewer in (citizen, app.sim.citizen(2002)):
        answer = await _status(viewer, tracking, code)
        assert tracking in answer and "已作出处理意见（可申请复查）" in answer
        assert "<b>责任单位：</b>虎门镇" in answer and "可在 2026-04-01 前申请复查" in answer
        assert "2026-03-02 网上提交" in answer and "2026-03-02 受理告知" in answer
        assert "2026-03-02 作出处理意见：予以支持" in answer
        for secret in (title, "科长", "好处费", "两千元", "录音", "纪检监察", "标题"):
            assert secret not in answer, secret


# -- limits on failed lookups ---------------------------------------------------------------


async def test_after_too_many_failed_lookups_from_one_account_even_the_right_code_waits(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    guesser = app.sim.citizen(4004)
    limit = app.settings.status_max_failures_per_user
    assert limit == 10
    for _ in range(limit):  # different numbers each time: only the account limit applies
        assert NOT_FOUND in await _status(guesser, new_tracking_number("DG"), code)
    refused = await _status(guesser, tracking, code)
    assert TOO_MANY in refused and "分钟后再试" in refused and tracking not in refused
    # The petitioner's own account is not affected.
    assert tracking in await _status(citizen, tracking, code)
    app.clock.advance(hours=1)
    assert "已提交，等待信访部门登记" in await _status(guesser, tracking, code)


async def test_one_failed_lookup_fewer_than_the_limit_still_answers(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    guesser = app.sim.citizen(4004)
    for _ in range(app.settings.status_max_failures_per_user - 1):
        await _status(guesser, new_tracking_number("DG"), code)
    assert tracking in await _status(guesser, tracking, code)


async def test_after_too_many_wrong_codes_for_one_number_from_different_accounts_the_number_waits(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    limit = app.settings.status_max_failures_per_number
    assert limit == 5
    wrong = "2" * 10 if code != "2" * 10 else "3" * 10
    for n in range(limit):
        assert NOT_FOUND in await _status(app.sim.citizen(5000 + n), tracking, wrong)
    # Even the petitioner with the right code has to wait, and is told for how long.
    refused = await _status(citizen, tracking, code)
    assert TOO_MANY in refused and "分钟后再试" in refused
    assert TOO_MANY in await _status(app.sim.citizen(6006), tracking, code)
    # Other numbers are not affected.
    other, other_code = await file_petition(app.sim.citizen(7007), title="第二件")
    assert other in await _status(citizen, other, other_code)
    app.clock.advance(hours=1)
    assert tracking in await _status(citizen, tracking, code)


async def test_failed_lookups_are_forgotten_by_the_tick_once_their_window_ends(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    guesser = app.sim.citizen(4004)
    wrong = "2" * 10 if code != "2" * 10 else "3" * 10
    for _ in range(app.settings.status_max_failures_per_number):
        await _status(guesser, tracking, wrong)

    async def counted() -> set[str]:
        async with app.sessionmaker() as session:
            return set((await session.scalars(select(LookupFailure.key))).all())

    assert await counted() == {f"u:{guesser.user.id}", f"n:{tracking}"}
    # Within the window the tick keeps them: the number still waits.
    app.clock.advance(minutes=59)
    await app.maintenance.tick()
    assert await counted() == {f"u:{guesser.user.id}", f"n:{tracking}"}
    assert TOO_MANY in await _status(citizen, tracking, code)
    # Once it ends, they are gone (they name an account and a number), and nothing changes for anyone.
    app.clock.advance(minutes=1)
    await app.maintenance.tick()
    assert await counted() == set()
    assert tracking in await _status(citizen, tracking, code)
    assert NOT_FOUND in await _status(guesser, tracking, wrong)
    assert await counted() == {f"u:{guesser.user.id}", f"n:{tracking}"}


async def test_a_failed_lookup_and_the_tick_forgetting_its_ended_window_do_not_collide(
        app: App, db: AsyncEngine) -> None:
    """PostgreSQL, a worker's lookup beside another's tick: the lookup holds the
    ended window it read until it commits, so the tick's deletion waits and
    finds it started again; deleted under it, the lookup's count failed."""
    if db.dialect.name != "postgresql":
        pytest.skip("one writer at a time on SQLite")
    lookups = app.maintenance.lookups
    assert lookups is not None
    now = app.clock()
    async with app.sessionmaker() as session, session.begin():
        session.add(LookupFailure(key="u:4004", window_start=now - timedelta(hours=2), count=3))
    async with app.sessionmaker() as lookup, lookup.begin():
        assert await lookups._blocked_for(lookup, "u:4004", 10, now) is None  # its window ended

        async def tick() -> int:
            async with app.sessionmaker() as session, session.begin():
                return await lookups.forget_ended_windows(session, now)

        forgetting = asyncio.create_task(tick())
        await asyncio.sleep(0.3)
        assert not forgetting.done()  # waits for the lookup
        await lookups._count_failure(lookup, "u:4004", now)
    assert await asyncio.wait_for(forgetting, timeout=10) == 0
    async with app.sessionmaker() as session:
        row = await session.get(LookupFailure, "u:4004")
    assert row is not None and (row.window_start, row.count) == (now, 1)


# -- /mycases -------------------------------------------------------------------------------


async def test_mycases_lists_only_my_cases_with_status_and_next_deadline(app: App) -> None:
    me, neighbour = app.sim.citizen(), app.sim.citizen(2002)
    first, _ = await file_petition(me)
    second, _ = await file_petition(me, title="噪音扰民")
    theirs, _ = await file_petition(neighbour, title="邻居的事")
    await app.deliver()
    await _staff_does(app, first, "register")
    await _staff_does(app, first, "transfer", f"u={HUMEN}")
    [listing] = await me.send("/mycases")
    assert "您提交的信访事项（2 件）" in listing
    assert f"<code>{first}</code> · 已转送有权处理单位 · 2026-03-17 前书面告知是否受理" in listing
    assert f"<code>{second}</code> · 已提交，等待信访部门登记 · 2026-03-17 前登记并转送、交办" in listing
    assert theirs not in listing
    labels = _labels(me)
    assert len(labels) == 2 and any(first in label for label in labels) and any(second in label for label in labels)
    [view] = await me.press(first)
    assert f"<code>{first}</code>" in view and "<b>责任单位：</b>虎门镇" in view
    assert "2026-03-02 转送虎门镇" in view and "<b>标题：</b>拖欠工资" in view
    assert "➕ 补充材料" in _labels(me) and "↩️ 撤回信访事项" in _labels(me)


async def test_mycases_without_cases_says_how_to_file(app: App) -> None:
    [answer] = await app.sim.citizen().send("/mycases")
    assert "还没有" in answer and "/new" in answer


async def test_another_citizen_cannot_open_or_act_on_my_case_by_forging_a_button(app: App) -> None:
    me = app.sim.citizen()
    tracking, _ = await file_petition(me, title="我的私事")
    case = await _case(app, tracking)
    intruder = app.sim.citizen(2002)
    [answer] = await intruder.press_data(CitizenAction(case=case.id, action="view").pack())
    assert answer == NOT_YOURS and tracking not in answer and "我的私事" not in answer
    for action in ("withdraw", "withdraw_yes", "withdraw_now", "add", "review", "review_submit"):
        assert await intruder.press_data(CitizenAction(case=case.id, action=action).pack()) == [NOT_YOURS]
    await intruder.send("我想改掉别人的事项")
    after = await _case(app, tracking)
    assert (after.status, after.version) == ("submitted", case.version)
    assert "citizen_message" not in [e.action for e in await _events(app, tracking)]


# -- adding information ---------------------------------------------------------------------


async def test_added_text_and_photo_reach_the_staff_under_the_card_and_the_timeline(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    before = await _case(app, tracking)
    await _open_from_mycases(citizen, tracking)
    [prompt] = await citizen.press("➕ 补充材料")
    assert tracking in prompt and "完成" in prompt
    [ack] = await citizen.send("补充说明：公司又拖欠了二月份的工资")
    assert "已收到" in ack and tracking in ack
    [ack] = await citizen.send_photo(caption="二月工资条")
    assert "已收到" in ack
    [done] = await citizen.press("完成")
    assert "补充完毕" in done
    await app.deliver()
    after = await _case(app, tracking)
    assert after.attachment_count == before.attachment_count + 1
    to_staff = _staff_chat(app)
    text = next(c for c in to_staff if isinstance(c, SendMessage) and "又拖欠了二月份的工资" in c.text)
    photo = next(c for c in to_staff if isinstance(c, SendPhoto))
    for relayed in (text, photo):
        assert relayed.reply_parameters is not None
        assert relayed.reply_parameters.message_id == after.card_message_id
    assert tracking in text.text and photo.caption is not None and "二月工资条" in photo.caption
    # The card now counts the new attachment.
    assert f"附件：{after.attachment_count} 个" in _card_now(app)
    notes = [e.note for e in await _events(app, tracking) if e.action == "citizen_message"]
    assert notes == ["补充说明：公司又拖欠了二月份的工资", "二月工资条"]
    # After "done" the bot no longer collects: a new message is an ordinary message again.
    [ordinary] = await citizen.send("谢谢")
    assert "已转给办理" in ordinary


async def test_adding_information_is_not_offered_once_the_case_is_over(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await app.deliver()
    await _staff_does(app, tracking, "register")
    await _staff_does(app, tracking, "transfer", f"u={HUMEN}")
    await _staff_does(app, tracking, "receive")
    await _staff_does(app, tracking, "not_accept", text="不属于信访事项，请向劳动仲裁委员会申请仲裁")
    await _staff_does(app, tracking, "close")
    answer = await _status(citizen, tracking, code)
    assert "<b>当前状态：</b>已办结" in answer and "不予受理告知（不属于信访事项" in answer
    assert citizen.received[-1].reply_markup is None


# -- withdrawing ----------------------------------------------------------------------------


async def test_withdrawing_asks_first_and_no_keeps_the_case(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await app.deliver()
    await _staff_does(app, tracking, "register")
    await _open_from_mycases(citizen, tracking)
    [confirm] = await citizen.press("↩️ 撤回信访事项")
    assert "确定要撤回" in confirm and tracking in confirm
    assert _labels(citizen) == ["确定撤回", "不撤回"]
    [kept] = await citizen.press("不撤回")
    assert "继续办理" in kept
    assert (await _case(app, tracking)).status == "registered"
    assert "withdraw" not in [e.action for e in await _events(app, tracking)]


async def test_withdrawing_with_a_reason_tells_the_staff_and_refreshes_the_card(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await app.deliver()
    await _staff_does(app, tracking, "register")
    await _staff_does(app, tracking, "transfer", f"u={HUMEN}")
    await _open_from_mycases(citizen, tracking)
    await citizen.press("↩️ 撤回信访事项")
    [why] = await citizen.press("确定撤回")
    assert "原因" in why and "跳过" in _labels(citizen)
    [done] = await citizen.send("公司已经把工资补发了")
    assert "已撤回" in done and tracking in done
    case = await _case(app, tracking)
    assert case.status == "withdrawn" and case.withdrawn_at is not None
    assert case.ended_at == case.withdrawn_at  # its retention period starts
    [event] = [e for e in await _events(app, tracking) if e.action == "withdraw"]
    assert (event.actor_kind, event.note) == ("citizen", "公司已经把工资补发了")
    await app.deliver()
    said = _staff_said(app)
    assert any("撤回" in s and tracking in s and "公司已经把工资补发了" in s for s in said)
    assert "已撤回" in _card_now(app)
    # The status says so; nothing is left to add or withdraw.
    answer = await _status(citizen, tracking, code)
    assert "<b>当前状态：</b>已撤回" in answer and "2026-03-02 信访人撤回" in answer
    assert citizen.received[-1].reply_markup is None


async def test_withdrawing_without_a_reason_by_skipping(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _open_from_mycases(citizen, tracking)
    await citizen.press("↩️ 撤回信访事项")
    await citizen.press("确定撤回")
    [done] = await citizen.press("跳过")
    assert "已撤回" in done
    assert (await _case(app, tracking)).status == "withdrawn"
    await app.deliver()
    assert any("撤回" in s and "原因：—" in s for s in _staff_said(app))


async def test_withdrawing_is_refused_once_a_decision_was_made(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    await _staff_does(app, tracking, "start_handling")
    await _open_from_mycases(citizen, tracking)
    await citizen.press("↩️ 撤回信访事项")  # the confirmation is on screen …
    yes = _button(citizen, "确定撤回")
    await _staff_does(app, tracking, "decide", "o=reject", text=DECISION_TEXT)  # … when staff decide
    [refused] = await citizen.press_data(yes)
    assert "已不能撤回" in refused and "已作出处理意见" in refused
    assert (await _case(app, tracking)).status == "review_window"
    # The decision's status view no longer offers withdrawing; an old button is refused too.
    await _open_from_mycases(citizen, tracking)
    assert "↩️ 撤回信访事项" not in _labels(citizen)
    case = await _case(app, tracking)
    [refused] = await citizen.press_data(CitizenAction(case=case.id, action="withdraw").pack())
    assert "已不能撤回" in refused
    assert "withdraw" not in [e.action for e in await _events(app, tracking)]


# -- rating ---------------------------------------------------------------------------------


async def test_after_acceptance_the_citizen_rates_the_bureau_and_the_unit_and_may_comment(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    text, buttons = _invitation(citizen)
    assert tracking in text and "受理工作" in text and "信访部门和虎门镇" in text and "2026-04-01" in text
    assert list(buttons) == ["信访部门：满意", "信访部门：基本满意", "信访部门：不满意",
                             "承办单位：满意", "承办单位：基本满意", "承办单位：不满意"]
    [thanks] = await citizen.press_data(buttons["信访部门：满意"])
    assert "谢谢您的评价" in thanks and "评语" not in thanks
    [thanks] = await citizen.press_data(buttons["承办单位：基本满意"])
    assert "谢谢您的评价" in thanks and "评语" in thanks and "跳过" in _labels(citizen)
    [saved] = await citizen.send("办事效率很高，态度也好")
    assert "评语已记录" in saved
    [rating] = await _ratings(app, tracking)
    assert (rating.stage, rating.status, rating.bureau_score, rating.unit_score, rating.unit_code) == (
        "acceptance", "rated", "satisfied", "basic", HUMEN)
    assert rating.comment == "办事效率很高，态度也好"
    # The comment was not passed on as a message about the case.
    assert "citizen_message" not in [e.action for e in await _events(app, tracking)]
    rated = [e.detail for e in await _events(app, tracking) if e.action == "rated"]
    assert rated == [{"stage": "acceptance", "target": "b", "score": "satisfied"},
                     {"stage": "acceptance", "target": "u", "score": "basic"}]


async def test_a_rating_can_be_changed_within_the_window(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    _, buttons = _invitation(citizen)
    await citizen.press_data(buttons["信访部门：满意"])
    await citizen.press_data(buttons["承办单位：满意"])
    [skipped] = await citizen.press("跳过")
    assert skipped == "好的。"
    app.clock.advance(days=20)
    [thanks] = await citizen.press_data(buttons["承办单位：基本满意"])
    assert "谢谢您的评价" in thanks
    [rating] = await _ratings(app, tracking)
    assert (rating.bureau_score, rating.unit_score, rating.comment) == ("satisfied", "basic", None)


async def test_unsatisfied_alerts_the_staff_chat(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    _, buttons = _invitation(citizen)
    [answer] = await citizen.press_data(buttons["承办单位：不满意"])
    assert "不满意告知工作人员" in answer
    await app.deliver()
    alerts = [s for s in _staff_said(app) if "不满意" in s]
    assert len(alerts) == 1 and tracking in alerts[0] and "承办单位" in alerts[0] and "跟进" in alerts[0]
    case = await _case(app, tracking)
    alert = next(c for c in _staff_chat(app) if isinstance(c, SendMessage) and "不满意" in c.text)
    assert alert.reply_parameters is not None and alert.reply_parameters.message_id == case.card_message_id


async def test_unsatisfied_with_a_decision_points_to_the_review_route(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _decided(app, tracking)
    text, buttons = _invitation(citizen)
    assert "办理结果" in text
    [answer] = await citizen.press_data(buttons["信访部门：不满意"])
    assert "不满意告知工作人员" in answer and "/mycases" in answer and "申请复查" in answer
    stages = sorted(r.stage for r in await _ratings(app, tracking))
    assert stages == ["acceptance", "decision"]


async def test_no_rating_for_a_matter_directed_to_a_statutory_route(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    _, buttons = _invitation(citizen)
    case = await _staff_does(app, tracking, "direct_to_route", "r=2", text="请向东莞市劳动人事争议仲裁院申请仲裁")
    assert case.status == "statutory_route"
    assert "通过仲裁解决" in citizen.last_text
    [rating] = await _ratings(app, tracking)
    assert rating.status == "withdrawn"
    [answer] = await citizen.press_data(buttons["信访部门：满意"])
    assert "评价按钮已失效" in answer
    await _staff_does(app, tracking, "close")
    assert [r.status for r in await _ratings(app, tracking)] == ["withdrawn"]
    assert not [m for m in citizen.received if m.text.startswith("⭐") and "办理结果" in m.text]


async def test_an_unrated_invitation_expires_after_the_window_and_a_late_press_is_told_it_closed(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    _, buttons = _invitation(citizen)
    app.clock.advance(days=29)
    await app.maintenance.tick()
    assert [r.status for r in await _ratings(app, tracking)] == ["invited"]
    app.clock.advance(days=2)
    await app.maintenance.tick()
    [rating] = await _ratings(app, tracking)
    assert (rating.status, rating.bureau_score, rating.unit_score) == ("expired", None, None)
    [late] = await citizen.press_data(buttons["信访部门：满意"])
    assert "评价期限已于 2026-04-01 结束" in late
    [rating] = await _ratings(app, tracking)
    assert (rating.status, rating.bureau_score) == ("expired", None)


async def test_a_rated_invitation_is_not_expired_and_can_no_longer_be_changed_after_the_window(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    _, buttons = _invitation(citizen)
    await citizen.press_data(buttons["信访部门：基本满意"])
    app.clock.advance(days=31)
    await app.maintenance.tick()
    [late] = await citizen.press_data(buttons["信访部门：满意"])
    assert "评价期限已于 2026-04-01 结束" in late
    [rating] = await _ratings(app, tracking)
    assert (rating.status, rating.bureau_score) == ("rated", "basic")


# -- review (复查) and re-review (复核) --------------------------------------------------------


async def test_review_is_requested_from_mycases_with_reasons_and_a_file(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    decided = await _decided(app, tracking)
    assert "30日内请求复查" in next(m.text for m in citizen.received if DECISION_TEXT in m.text)
    view = await _open_from_mycases(citizen, tracking)
    assert "可在 2026-04-01 前申请复查" in view and "📝 申请复查" in _labels(citizen)
    [ask] = await citizen.press("📝 申请复查")
    assert "不服的理由" in ask and tracking in ask
    [files] = await citizen.send("处理意见没有核实考勤记录，认定事实不清")
    assert "提交申请" in files and "📨 提交申请" in _labels(citizen)
    [got] = await citizen.send_document(name="考勤记录.pdf", caption="考勤记录")
    assert "已收到 1 份材料" in got
    [requested] = await citizen.press("📨 提交申请")
    assert "已提交" in requested and "复查申请" in requested and tracking in requested
    assert "2026-04-01 前作出复查意见" in requested
    case = await _case(app, tracking)
    assert case.status == "review" and case.review_requested_at is not None
    assert case.attachment_count == decided.attachment_count + 1
    [event] = [e for e in await _events(app, tracking) if e.action == "request_review"]
    assert (event.actor_kind, event.note) == ("citizen", "处理意见没有核实考勤记录，认定事实不清")
    await app.deliver()
    told = next(c for c in _staff_chat(app) if isinstance(c, SendMessage) and "申请复查" in c.text)
    assert tracking in told.text and "认定事实不清" in told.text
    document = next(c for c in _staff_chat(app) if isinstance(c, SendDocument))
    for under_the_card in (told, document):
        assert under_the_card.reply_parameters is not None
        assert under_the_card.reply_parameters.message_id == case.card_message_id
    assert "复查中" in _card_now(app)
    # The status now shows the review and its deadline; no second request is offered.
    view = await _open_from_mycases(citizen, tracking)
    assert "<b>当前状态：</b>复查中" in view and "2026-04-01 前作出复查意见" in view
    assert "2026-03-02 申请复查" in view and "认定事实不清" not in view
    assert "📝 申请复查" not in _labels(citizen)


async def test_review_outside_the_window_is_refused_naming_the_end_date(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await _accepted(app, tracking)
    await _staff_does(app, tracking, "start_handling")
    app.clock.advance(days=30)  # the decision reaches the citizen on Wednesday 2026-04-01
    await _staff_does(app, tracking, "decide", "o=reject", text=DECISION_TEXT)
    # 30 days end on 2026-05-01, a public holiday (劳动节 1–5 May): the window runs to 2026-05-06.
    app.clock.advance(days=35)  # 2026-05-06, the last day
    await _status(citizen, tracking, code)
    assert "可在 2026-05-06 前申请复查" in citizen.last_text
    review = _button(citizen, "📝 申请复查")
    app.clock.advance(days=1)  # 2026-05-07
    await _status(citizen, tracking, code)
    assert "📝 申请复查" not in _labels(citizen)
    [refused] = await citizen.press_data(review)
    assert "申请复查的期限已于 2026-05-06 届满" in refused
    assert (await _case(app, tracking)).status == "review_window"


async def test_review_started_on_the_last_day_and_submitted_the_next_is_refused(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _decided(app, tracking)
    app.clock.advance(days=30)  # 2026-04-01, the last day
    await _open_from_mycases(citizen, tracking)
    await citizen.press("📝 申请复查")
    await citizen.send("不服")
    app.clock.advance(days=1)
    [refused] = await citizen.press("📨 提交申请")
    assert "申请复查的期限已于 2026-04-01 届满" in refused
    assert (await _case(app, tracking)).status == "review_window"


async def test_review_is_not_possible_before_a_decision(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    view = await _open_from_mycases(citizen, tracking)
    assert "申请复查" not in view and "📝 申请复查" not in _labels(citizen)
    case = await _case(app, tracking)
    [refused] = await citizen.press_data(CitizenAction(case=case.id, action="review").pack())
    assert "现在不能申请复查" in refused and "已受理" in refused
    [refused] = await citizen.press_data(CitizenAction(case=case.id, action="rereview").pack())
    assert "现在不能申请复核" in refused


async def test_review_then_rereview_ends_final_and_the_same_matter_filed_again_is_flagged(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await _decided(app, tracking)
    await _open_from_mycases(citizen, tracking)
    await citizen.press("📝 申请复查")
    await citizen.send("认定事实不清")
    await citizen.press("📨 提交申请")
    case = await _staff_does(app, tracking, "decide_review", "o=uphold", text="经复查，原处理意见认定事实清楚")
    # The review decision reached the citizen: the re-review window is open.
    assert case.status == "rereview_window" and case.review_delivered_at is not None
    assert any("复查意见" in m.text and "30日内请求复核" in m.text for m in citizen.received)
    answer = await _status(citizen, tracking, code)
    assert "<b>当前状态：</b>已作出复查意见（可申请复核）" in answer
    assert "可在 2026-04-01 前申请复核" in answer
    assert "2026-03-02 作出复查意见：维持原意见（经复查，原处理意见认定事实清楚）" in answer
    assert "📝 申请复核" in _labels(citizen) and "📝 申请复查" not in _labels(citizen)
    [ask] = await citizen.press("📝 申请复核")
    assert "复查意见不服的理由" in ask
    await citizen.send("复查没有听取证人证言")
    [requested] = await citizen.press("📨 提交申请")
    assert "复核申请" in requested and "2026-04-01 前作出复核意见" in requested
    assert (await _case(app, tracking)).status == "rereview"
    await app.deliver()
    assert any("申请复核" in s and "证人证言" in s for s in _staff_said(app))
    case = await _staff_does(app, tracking, "decide_rereview", "o=uphold", text="经复核，维持复查意见")
    assert case.status == "final" and case.ended_at == case.decision_issued_at
    assert "终结意见" in citizen.last_text
    answer = await _status(citizen, tracking, code)
    assert "<b>当前状态：</b>已复核终结" in answer and "作出复核意见：维持原意见（经复核，维持复查意见）" in answer
    assert citizen.received[-1].reply_markup is None

    # The same citizen files the same matter (category and location) again.
    again, _ = await file_petition(citizen, title="还是拖欠工资")
    assert (await _case(app, again)).final_same_matter == tracking
    await app.deliver()
    card = next(c for c in _staff_chat(app) if isinstance(c, SendMessage) and c.text.startswith(f"📮 <b>{again}"))
    assert "⚖️" in card.text and tracking in card.text


async def test_a_petition_by_someone_else_is_not_flagged_as_the_same_final_matter(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _decided(app, tracking)
    await _open_from_mycases(citizen, tracking)
    await citizen.press("📝 申请复查")
    await citizen.send("不服")
    await citizen.press("📨 提交申请")
    await _staff_does(app, tracking, "decide_review", "o=uphold", text="维持")
    await _open_from_mycases(citizen, tracking)
    await citizen.press("📝 申请复核")
    await citizen.send("仍不服")
    await citizen.press("📨 提交申请")
    assert (await _staff_does(app, tracking, "decide_rereview", "o=uphold", text="终结")).status == "final"
    # Another person (other account and phone, no ID number asked for a suggestion), same category and place.
    other, _ = await file_petition(app.sim.citizen(2002), matter="suggestion", phone="139 8888 7777")
    assert (await _case(app, other)).final_same_matter is None


# -- windows left unused ------------------------------------------------------------------


async def test_an_unused_review_window_is_closed_with_a_notice(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    await _decided(app, tracking)
    app.clock.advance(days=30)  # 2026-04-01: still open
    await app.maintenance.tick()
    assert (await _case(app, tracking)).status == "review_window"
    app.clock.advance(days=1)
    await app.maintenance.tick()
    await app.deliver()
    case = await _case(app, tracking)
    assert case.status == "closed" and case.closed_at is not None and case.ended_at == case.closed_at
    assert "申请复查的期限已届满" in citizen.last_text and tracking in citizen.last_text
    [event] = [e for e in await _events(app, tracking) if e.action == "expire_window"]
    assert (event.actor_kind, event.detail) == ("system", {"stage": "review"})
    answer = await _status(citizen, tracking, code)
    assert "<b>当前状态：</b>已办结" in answer and "2026-04-02 申请期限届满，办结" in answer
    assert citizen.received[-1].reply_markup is None
    [refused] = await citizen.press_data(CitizenAction(case=case.id, action="review").pack())
    assert "现在不能申请复查" in refused
    # The unrated decision invitation expired as well (超期未评价).
    assert [r.status for r in await _ratings(app, tracking)] == ["expired", "expired"]
    # A second run changes nothing and tells nobody again.
    told = len(citizen.received)
    await app.maintenance.tick()
    await app.deliver()
    assert len(citizen.received) == told


async def test_an_unused_rereview_window_is_closed_with_a_notice(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _decided(app, tracking)
    await _open_from_mycases(citizen, tracking)
    await citizen.press("📝 申请复查")
    await citizen.send("不服")
    await citizen.press("📨 提交申请")
    app.clock.advance(days=10)  # the review decision reaches the citizen on 2026-03-12
    await _staff_does(app, tracking, "decide_review", "o=change", text="变更原处理意见，责令补发一个月工资")
    app.clock.advance(days=30)  # 2026-04-11 is a Saturday: the window runs to Monday 2026-04-13
    await app.maintenance.tick()
    assert (await _case(app, tracking)).status == "rereview_window"
    app.clock.advance(days=2)
    await app.maintenance.tick()
    assert (await _case(app, tracking)).status == "rereview_window"
    app.clock.advance(days=1)
    await app.maintenance.tick()
    await app.deliver()
    assert (await _case(app, tracking)).status == "closed"
    assert "申请复核的期限已届满" in citizen.last_text


# -- regressions (bugs found while writing these tests) -------------------------------------


async def test_cancel_at_the_withdraw_reason_step_does_not_withdraw_the_case(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _open_from_mycases(citizen, tracking)
    await citizen.press("↩️ 撤回信访事项")
    await citizen.press("确定撤回")
    answer = await citizen.send("/cancel")  # changed their mind
    assert (await _case(app, tracking)).status == "submitted", answer


async def test_commands_sent_while_adding_information_are_not_relayed_to_staff(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _open_from_mycases(citizen, tracking)
    await citizen.press("➕ 补充材料")
    await citizen.send("/start")
    await app.deliver()
    assert not any("/start" in s for s in _staff_said(app))
    assert "citizen_message" not in [e.action for e in await _events(app, tracking)]


async def test_new_after_choosing_check_progress_starts_a_new_petition(app: App) -> None:
    citizen = app.sim.citizen()
    await citizen.send("/start")
    await citizen.press("🔎 查询办理进度")
    [answer] = await citizen.send("/new")  # changed their mind: file a petition instead
    assert "信访编号和查询码" not in answer and "隐私说明" in answer


async def test_adding_information_to_a_withdrawn_case_is_refused(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _open_from_mycases(citizen, tracking)
    add = _button(citizen, "➕ 补充材料")  # an earlier status view is still on screen
    await citizen.press("↩️ 撤回信访事项")
    await citizen.press("确定撤回")
    await citizen.press("跳过")
    assert (await _case(app, tracking)).status == "withdrawn"
    await citizen.press_data(add)
    [answer] = await citizen.send("再补充一点材料")
    await app.deliver()
    assert "已收到" not in answer
    assert "citizen_message" not in [e.action for e in await _events(app, tracking)]


async def test_the_unsatisfied_alert_names_the_stage_in_the_staff_language(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    _, buttons = _invitation(citizen)
    await citizen.press_data(buttons["承办单位：不满意"])
    await app.deliver()
    [alert] = [s for s in _staff_said(app) if "不满意" in s]
    assert "acceptance" not in alert and "受理" in alert


async def test_a_too_long_comment_is_answered_with_the_limit(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    _, buttons = _invitation(citizen)
    await citizen.press_data(buttons["信访部门：满意"])
    await citizen.press_data(buttons["承办单位：满意"])
    [answer] = await citizen.send("很好" * 300)  # 600 characters; comments keep 500
    assert "系统暂时繁忙" not in answer  # told the limit (or the comment kept shortened), not "try later"


async def test_too_long_added_information_is_answered_with_the_limit(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _open_from_mycases(citizen, tracking)
    await citizen.press("➕ 补充材料")
    [answer] = await citizen.send("补充" * 1800)  # 3,600 characters: a valid Telegram message
    assert "系统暂时繁忙" not in answer  # told the limit (or the text passed on), not "try later"


async def test_hearing_days_during_rereview_are_not_counted_in_its_30_days(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await _decided(app, tracking)
    await _open_from_mycases(citizen, tracking)
    await citizen.press("📝 申请复查")
    await citizen.send("认定事实不清")
    await citizen.press("📨 提交申请")
    await _staff_does(app, tracking, "decide_review", "o=uphold", text="维持")
    await _open_from_mycases(citizen, tracking)
    await citizen.press("📝 申请复核")
    await citizen.send("复查没有听取证人证言")
    await citizen.press("📨 提交申请")
    before = (await _case(app, tracking)).next_due_on
    assert before == date(2026, 4, 1)
    case = await _staff_does(app, tracking, "hearing", "d=10", text="3月10日在市信访局举行听证")
    assert case.hearing_days == 10 and case.next_due_on == date(2026, 4, 13)  # 04-11 is a Saturday
    assert any("不计入复核期限" in m.text for m in citizen.received)
