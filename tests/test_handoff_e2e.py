"""Every petition reaches the staff chat; staff work it there; the citizen hears of each step."""

from __future__ import annotations

import asyncio

from aiogram.exceptions import TelegramForbiddenError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import EditMessageText, SendMediaGroup, SendMessage, SendPhoto
from aiogram.methods import SendMessage as Method
from sqlalchemy import select

from bot.callbacks import StaffAction
from storage.models import Case, CaseEvent, OutboxMessage, Staff, StaffMessage
from tests.conftest import STAFF_CHAT, App
from tests.flows import VALID_ID, ZH, file_petition, to_summary

#: Every test twice: updates fed as a webhook delivers them and as polling does.
BOTH_FEEDS = True


ADMIN = 9001
CLERK = 9002
OUTSIDER = 9100


async def _case(app: App) -> Case:
    async with app.sessionmaker() as session:
        return (await session.scalars(select(Case))).one()


async def _events(app: App, case_id: int) -> list[str]:
    async with app.sessionmaker() as session:
        return list(await session.scalars(select(CaseEvent.action).where(CaseEvent.case_id == case_id)
                                          .order_by(CaseEvent.id)))


def _staff_calls(app: App) -> list[object]:
    return [c for c in app.telegram.calls if getattr(c, "chat_id", None) == STAFF_CHAT]


async def _press(app: App, user_id: int, case: Case, action: str, arg: str = "") -> list[str]:
    staff = app.sim.staff(user_id, STAFF_CHAT)
    mark = len(app.telegram.calls)
    await app.sim.feed(staff.callback_update(StaffAction(case=case.id, action=action, v=case.version, arg=arg).pack()))
    return [getattr(c, "text", "") or "" for c in app.telegram.calls[mark:]]


def _toasts(app: App) -> list[str]:
    return [c.text for c in app.telegram.calls if type(c).__name__ == "AnswerCallbackQuery" and c.text]


async def _act(app: App, user_id: int, action: str, arg: str = "", text: str | None = None) -> Case:
    """Press an action on the current card (and answer its prompt); deliver the outbox."""
    case = await _case(app)
    await _press(app, user_id, case, action, arg)
    if text is not None:
        await app.sim.staff(user_id, STAFF_CHAT).send(text)
    await app.deliver()
    return await _case(app)


async def test_a_new_petition_posts_a_masked_card_then_its_attachments(app: App) -> None:
    citizen = app.sim.citizen()
    await to_summary(citizen)
    # add attachments by editing the attachments answer from the summary
    await citizen.press(ZH["edit"])
    await citizen.press("附件材料")
    await citizen.send_photo(caption="工资条")
    for _ in range(3):
        await citizen.send_photo(media_group_id="album-7")
    await citizen.press(ZH["done"])
    await citizen.press(ZH["confirm"])
    await app.deliver()
    calls = _staff_calls(app)
    card = calls[0]
    assert isinstance(card, SendMessage)
    assert "待登记" in card.text and "拖欠工资" in card.text and "虎门镇" in card.text
    assert "张三" not in card.text and "张*" in card.text
    assert "139****5678" in card.text and "13912345678" not in card.text and VALID_ID not in card.text
    assert "附件：4 个" in card.text
    photo, album = calls[1], calls[2]
    assert isinstance(photo, SendPhoto) and isinstance(album, SendMediaGroup) and len(album.media) == 3
    case = await _case(app)
    assert photo.reply_parameters is not None and photo.reply_parameters.message_id == case.card_message_id
    assert "认领" in str(card.reply_markup)


async def test_submission_writes_the_outbox_row_in_the_case_transaction(app: App) -> None:
    await file_petition(app.sim.citizen())
    async with app.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxMessage))).all()
    assert [(r.kind, r.chat_id, r.status) for r in rows] == [("card", STAFF_CHAT, "pending")]


async def test_outbox_survives_a_restart_between_commit_and_send(app: App) -> None:
    await file_petition(app.sim.citizen())
    restarted = app.restart()
    await restarted.deliver()
    await restarted.deliver()
    cards = [c for c in _staff_calls(restarted) if isinstance(c, SendMessage)]
    assert len(cards) == 1 and _staff_calls(app) == []


async def test_the_tick_forgets_outbox_rows_a_month_after_they_were_done_with(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    await _act(app, ADMIN, "register")  # the citizen's notice and the card's refresh
    await app.deliver()
    async with app.sessionmaker() as session, session.begin():  # one still trying, its retries spaced out
        stuck = OutboxMessage(kind="text", chat_id=STAFF_CHAT, payload={"text": "仍在重试"}, priority=50,
                              status="pending", attempts=5, next_attempt_at=app.clock(), created_at=app.clock())
        session.add(stuck)

    async def rows() -> dict[int, str]:
        async with app.sessionmaker() as session:
            return {r.id: r.status for r in await session.scalars(select(OutboxMessage))}

    done = {i for i, status in (await rows()).items() if status != "pending"}
    assert len(done) >= 2
    app.clock.advance(days=29)
    await app.maintenance.tick()
    assert done <= set(await rows())  # looked into within the month
    app.clock.advance(days=2)
    await app.maintenance.tick()
    left = await rows()
    assert not done & set(left)
    assert left[stuck.id] == "pending"  # not done with: kept, however old


async def test_the_whole_path_with_the_citizen_told_at_every_step(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await app.deliver()
    before = len(citizen.received)
    case = await _act(app, ADMIN, "claim")
    assert case.assignee_id == ADMIN
    edits = [c for c in _staff_calls(app) if isinstance(c, EditMessageText)]
    assert edits and str(ADMIN) in edits[-1].text
    case = await _act(app, ADMIN, "register")
    case = await _act(app, ADMIN, "transfer", "u=441900121")
    assert (case.status, case.unit_code) == ("transferred", "441900121")
    case = await _act(app, ADMIN, "receive")
    case = await _act(app, ADMIN, "accept")
    case = await _act(app, ADMIN, "start_handling")
    assert case.status == "in_handling" and case.route == 6
    case = await _act(app, ADMIN, "extend", "d=15", text="需要调取工资流水")
    assert case.status == "extended" and case.extension_days == 15
    case = await _act(app, ADMIN, "decide", "o=support", text="责令公司支付拖欠工资")
    # The decision reached the citizen: the review window is open.
    assert case.status == "review_window" and case.decision == "support"
    assert case.decision_delivered_at is not None
    notices = citizen.texts_since(before)
    assert any("已登记" in n for n in notices)
    assert any("转送" in n and "虎门镇" in n for n in notices)
    assert any("已受理" in n for n in notices)
    assert any("延长 15 日" in n and "需要调取工资流水" in n for n in notices)
    assert any("予以支持" in n and "责令公司支付拖欠工资" in n and "30日内请求复查" in n for n in notices)
    assert all(str(ADMIN) not in n for n in notices)
    events = await _events(app, case.id)
    for action in ("claim", "register", "transfer", "receive", "accept", "start_handling", "extend",
                   "decide", "deliver_decision"):
        assert action in events


async def test_citizen_notices_are_in_the_citizens_language(app: App) -> None:
    citizen = app.sim.citizen(language_code="en")
    await file_petition(citizen)
    await app.deliver()
    await _act(app, ADMIN, "register")
    assert "has been registered" in citizen.last_text


async def test_an_action_not_allowed_from_the_status_is_refused_and_nothing_changes(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    case = await _case(app)
    await _press(app, ADMIN, case, "accept")
    assert any("当前状态为“待登记”" in toast and "受理告知" in toast for toast in _toasts(app))
    after = await _case(app)
    assert (after.status, after.version) == ("submitted", case.version)


async def test_two_staff_pressing_at_once_one_wins_the_other_is_told(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    async with app.sessionmaker() as session, session.begin():
        session.add(Staff(user_id=CLERK, role="staff", unit_code=None, active=True, added_by=ADMIN,
                          added_at=app.clock()))
    case = await _case(app)
    register = StaffAction(case=case.id, action="register", v=case.version).pack()
    claim = StaffAction(case=case.id, action="claim", v=case.version).pack()
    a = app.sim.staff(ADMIN, STAFF_CHAT).callback_update(register)
    b = app.sim.staff(CLERK, STAFF_CHAT).callback_update(claim)
    await asyncio.gather(app.sim.feed(a), app.sim.feed(b))
    after = await _case(app)
    assert after.version == case.version + 1
    assert any("刚刚有变化" in toast for toast in _toasts(app))


async def test_non_staff_and_forged_buttons_are_refused(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    case = await _case(app)
    await _press(app, OUTSIDER, case, "register")
    assert _toasts(app)[-1] == "只有登记的工作人员可以操作信访事项。"
    await _press(app, ADMIN, case, "not_a_real_action")
    await _press(app, ADMIN, case, "transfer", "u=999999999")
    after = await _case(app)
    assert (after.status, after.version) == ("submitted", case.version)


async def test_anonymous_admins_and_non_staff_commands_are_refused(app: App) -> None:
    outsider = app.sim.staff(OUTSIDER, STAFF_CHAT)
    [answer] = await outsider.send("/queue")
    assert "只有登记的工作人员" in answer
    anonymous = app.sim.staff(1087968824, STAFF_CHAT)
    [answer] = await anonymous.send("/queue")
    assert "匿名" in answer


async def test_staff_removed_while_a_button_is_on_screen_is_refused(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    [added] = await admin.send(f"/staff add {CLERK}")
    assert "已添加" in added
    case = await _case(app)
    await admin.send(f"/staff remove {CLERK}")
    await _press(app, CLERK, case, "claim")
    assert _toasts(app)[-1] == "只有登记的工作人员可以操作信访事项。"
    assert (await _case(app)).assignee_id is None


async def test_non_admin_staff_cannot_manage_staff(app: App) -> None:
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    await admin.send(f"/staff add {CLERK} 441900121")
    clerk = app.sim.staff(CLERK, STAFF_CHAT)
    [answer] = await clerk.send(f"/staff add {OUTSIDER}")
    assert "只有管理员" in answer
    [listing] = await admin.send("/staff list")
    assert f"{CLERK} · staff · 441900121" in listing and str(OUTSIDER) not in listing


async def test_a_staff_reply_to_the_card_reaches_the_citizen_without_the_staff_name(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await app.deliver()
    case = await _case(app)
    assert case.card_message_id is not None
    await app.sim.staff(ADMIN, STAFF_CHAT).reply_to(case.card_message_id, "请补充劳动合同照片")
    await app.deliver()
    assert "请补充劳动合同照片" in citizen.last_text and "Staff" not in citizen.last_text
    assert "reply" in await _events(app, case.id)


async def test_a_citizen_message_is_relayed_under_the_card_and_the_answer_comes_back(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await app.deliver()
    [ack] = await citizen.send("我又找到了工资条")
    assert "已转给办理" in ack
    await app.deliver()
    relayed = [c for c in _staff_calls(app) if isinstance(c, SendMessage) and "我又找到了工资条" in c.text]
    case = await _case(app)
    assert relayed and relayed[0].reply_parameters is not None
    assert relayed[0].reply_parameters.message_id == case.card_message_id
    # The staff member answers the relayed message itself (not the card).
    async with app.sessionmaker() as session:
        links = (await session.scalars(select(StaffMessage))).all()
    relay_link = [link.message_id for link in links if link.message_id != case.card_message_id]
    assert len(relay_link) == 1
    await app.sim.staff(ADMIN, STAFF_CHAT).reply_to(relay_link[0], "收到，谢谢")
    await app.deliver()
    assert "收到，谢谢" in citizen.last_text
    assert "citizen_message" in await _events(app, case.id)


async def test_a_citizen_with_two_open_cases_is_asked_which_one(app: App) -> None:
    citizen = app.sim.citizen()
    first, _ = await file_petition(citizen)
    second, _ = await file_petition(citizen, title="第二件")
    [question] = await citizen.send("补充说明")
    assert "哪一件" in question
    [ack] = await citizen.press(first)
    assert first in ack
    async with app.sessionmaker() as session:
        case = await session.scalar(select(Case).where(Case.tracking_number == first))
        assert case is not None
        notes = list(await session.scalars(select(CaseEvent.note).where(
            CaseEvent.case_id == case.id, CaseEvent.action == "citizen_message")))
    assert notes == ["补充说明"] and second != first


async def test_a_429_waits_exactly_retry_after_and_sends_once(app: App) -> None:
    await file_petition(app.sim.citizen())
    app.telegram.failures.append(TelegramRetryAfter(Method(chat_id=STAFF_CHAT, text="x"), "Too Many Requests", 37))
    start = app.clock()
    await app.deliver()
    cards = [c for c in _staff_calls(app) if isinstance(c, SendMessage)]
    assert len(cards) == 1
    assert (app.clock() - start).total_seconds() == 37


async def test_5xx_is_retried_with_backoff_and_sent_once(app: App) -> None:
    await file_petition(app.sim.citizen())
    for _ in range(3):
        app.telegram.failures.append(TelegramServerError(Method(chat_id=STAFF_CHAT, text="x"), "Bad Gateway"))
    await app.deliver()
    assert len([c for c in _staff_calls(app) if isinstance(c, SendMessage)]) == 1
    async with app.sessionmaker() as session:
        row = (await session.scalars(select(OutboxMessage))).one()
    assert (row.status, row.attempts) == ("sent", 3)


async def test_after_too_many_failures_the_row_fails_and_the_admins_are_told(app: App) -> None:
    await file_petition(app.sim.citizen())
    for _ in range(app.worker.max_attempts):
        app.telegram.failures.append(TelegramServerError(Method(chat_id=STAFF_CHAT, text="x"), "Bad Gateway"))
    app.worker.alert_chat_ids = [ADMIN]
    await app.deliver()
    async with app.sessionmaker() as session:
        statuses = sorted((r.kind, r.status) for r in (await session.scalars(select(OutboxMessage))).all())
    assert ("card", "failed") in statuses
    alert = app.telegram.sent(ADMIN)
    assert alert and "通知发送失败" in alert[-1].text


async def test_a_citizen_who_blocked_the_bot_is_shown_on_the_card(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    case = await _case(app)
    await _press(app, ADMIN, case, "register")
    app.telegram.failures.append(TelegramForbiddenError(Method(chat_id=1001, text="x"),
                                                        "Forbidden: bot was blocked by the user"))
    await app.deliver()
    case = await _case(app)
    assert case.citizen_unreachable
    edits = [c for c in _staff_calls(app) if isinstance(c, EditMessageText)]
    assert "屏蔽" in edits[-1].text
    assert "citizen_unreachable" in await _events(app, case.id)


async def test_details_go_to_the_staff_members_private_chat_and_are_recorded(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    case = await _case(app)
    await _press(app, ADMIN, case, "details")
    private = app.telegram.sent(ADMIN)
    assert private and "张三" in private[-1].text and VALID_ID in private[-1].text
    assert "viewed_personal_data" in await _events(app, case.id)


async def test_queue_lists_open_cases_unclaimed_first_and_case_reposts_the_card(app: App) -> None:
    first, _ = await file_petition(app.sim.citizen(1))
    second, _ = await file_petition(app.sim.citizen(2), title="第二件")
    await app.deliver()
    async with app.sessionmaker() as session:
        case = await session.scalar(select(Case).where(Case.tracking_number == first))
    assert case is not None
    await _press(app, ADMIN, case, "claim")
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    [listing] = await admin.send("/queue")
    assert listing.index(second) < listing.index(first)
    [mine] = await admin.send("/mine")
    assert first in mine and second not in mine
    [answer] = await admin.send(f"/case {second}")
    assert second in answer
    await app.deliver()
    cards = [c for c in _staff_calls(app) if isinstance(c, SendMessage) and c.text.startswith(f"📮 <b>{second}")]
    assert len(cards) == 2


async def test_a_reason_prompt_can_be_cancelled_and_nothing_changes(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    case = await _case(app)
    await _press(app, ADMIN, case, "redirect", "c=litigation")
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    [answer] = await admin.send("/cancel")
    assert "已放弃" in answer
    await admin.send("这句话只是聊天")
    after = await _case(app)
    assert (after.status, after.version) == ("submitted", case.version)


async def test_redirect_to_the_litigation_channel_tells_the_citizen_why(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await app.deliver()
    case = await _act(app, ADMIN, "redirect", "c=litigation", text="该事项已在法院审理，请向法院反映")
    assert case.status == "redirected" and case.redirect_channel == "litigation"
    assert "政法机关" in citizen.last_text and "已在法院审理" in citizen.last_text


async def test_only_one_extension_is_allowed(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    for action, arg in (("register", ""), ("assign", "u=441900121,d=15"), ("receive", ""), ("accept", ""),
                        ("start_handling", "")):
        await _act(app, ADMIN, action, arg)
    await _act(app, ADMIN, "extend", "d=30", text="复杂")
    await _act(app, ADMIN, "submit_for_audit")
    await _act(app, ADMIN, "return_for_rework", text="证据不足")
    case = await _case(app)
    assert case.status == "in_handling"
    await _press(app, ADMIN, case, "extend", "d=10")
    assert "只能延长一次" in _toasts(app)[-1]


async def test_a_decision_document_sent_with_the_decision_text_reaches_the_citizen(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await app.deliver()
    for action, arg in (("register", ""), ("transfer", "u=441900121"), ("receive", ""), ("accept", ""),
                        ("start_handling", "")):
        await _act(app, ADMIN, action, arg)
    case = await _case(app)
    await _press(app, ADMIN, case, "decide", "o=explain")
    await app.sim.staff(ADMIN, STAFF_CHAT).send_document(name="处理意见书.pdf", caption="依据劳动合同法作出解释说明")
    await app.deliver()
    to_citizen = [c for c in app.telegram.calls if getattr(c, "chat_id", None) == citizen.chat.id]
    kinds = [type(c).__name__ for c in to_citizen]
    decision = next(i for i, c in enumerate(to_citizen) if "解释说明" in (getattr(c, "text", "") or ""))
    assert kinds[decision + 1] == "SendDocument"
    assert (await _case(app)).status == "review_window"


async def test_a_unit_with_its_own_chat_gets_the_card_on_transfer(settings, sessionmaker, clock) -> None:  # type: ignore[no-untyped-def]
    from importlib import resources

    from dialogs.bureau import parse_bureau_config
    from tests.conftest import make_app

    text = (resources.files("dialogs") / "dongguan.toml").read_text("utf-8").replace(
        'code = "441900121"\n', 'code = "441900121"\nchat_id = -100555\ntopic_id = 7\n')
    unit_chat = -100555
    app = make_app(settings, sessionmaker, parse_bureau_config(text), clock)
    await file_petition(app.sim.citizen())
    await app.deliver()
    await _act(app, ADMIN, "register")
    await _act(app, ADMIN, "transfer", "u=441900121")
    cards = [c for c in app.telegram.calls if isinstance(c, SendMessage) and c.chat_id == unit_chat]
    assert cards and cards[0].message_thread_id == 7 and "虎门镇" in cards[0].text
    case = await _case(app)
    assert case.card_chat_id == unit_chat
    # Unit staff act in their own chat.
    await app.sim.feed(app.sim.staff(ADMIN, unit_chat).callback_update(
        StaffAction(case=case.id, action="receive", v=case.version).pack()))
    assert (await _case(app)).status == "unit_received"


async def test_emergency_words_mid_filing_page_the_staff_ahead_of_everything(app: App) -> None:
    await file_petition(app.sim.citizen(1))  # a normal card is waiting in the outbox
    citizen = app.sim.citizen(2)
    await citizen.send("/new")
    await citizen.press(ZH["accept"])
    [advice, question] = await citizen.send("救命，有人打人")
    assert "110" in advice and "哪一类" in question
    await app.deliver()
    staff = [c for c in app.telegram.sent(STAFF_CHAT)]
    assert "紧急" in staff[0].text and "有人打人" in staff[0].text


async def test_the_bureau_supervises_the_handling_unit_and_it_counts(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    await _act(app, ADMIN, "register")
    await _act(app, ADMIN, "transfer", "u=441900121")
    case = await _act(app, ADMIN, "supervise", text="请于3日内报告办理进展")
    assert "supervise" in await _events(app, case.id)
    said = [c.text for c in app.telegram.sent(STAFF_CHAT)]
    assert any("督办" in s and "3日内报告" in s for s in said)
    from datetime import date

    from handoff.kpi import compute

    async with app.sessionmaker() as session:
        report = await compute(session, app.bureau, start=date(2026, 3, 1), end=date(2026, 3, 31), now=app.clock())
    assert report.summary.supervisions == 1
