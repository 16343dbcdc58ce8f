"""A citizen files a petition through the real dispatcher, end to end."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from bot.callbacks import MenuAction, MenuButton
from bot.render import visible_length
from handoff import intake
from storage.models import Attachment, Case, CaseEvent, CitizenSession
from tests.conftest import App
from tests.flows import EN, VALID_ID, ZH, file_petition, to_attachments, to_summary, to_title

#: Every test twice: updates fed as a webhook delivers them and as polling does.
BOTH_FEEDS = True


async def _cases(app: App) -> list[Case]:
    async with app.sessionmaker() as session:
        return list((await session.scalars(select(Case))).all())


async def _session_row(app: App, user_id: int) -> CitizenSession | None:
    async with app.sessionmaker() as session:
        return await session.get(CitizenSession, user_id)


async def test_start_greets_in_the_clients_language_with_the_main_menu(app: App) -> None:
    zh = app.sim.citizen(1, language_code="zh-hans")
    en = app.sim.citizen(2, language_code="en")
    [greeting] = await zh.send("/start")
    assert "东莞市信访局" in greeting and "🔒" in greeting
    menu = ["📝 提交信访事项", "🔎 查询办理进度", "❓ 帮助", "🌐 Language / 语言"]
    assert [label for label, _ in zh.buttons()] == menu
    [greeting] = await en.send("/start")
    assert "Dongguan Petition Bureau" in greeting
    assert "📝 File a petition" in [label for label, _ in en.buttons()]


async def test_full_filing_in_chinese_creates_a_submitted_case(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    assert "请妥善保存" in citizen.last_text and f"/status {tracking} {code}" in citizen.last_text
    [case] = await _cases(app)
    assert case.tracking_number == tracking
    assert case.status == "submitted"
    assert (case.matter_class, case.category, case.location) == ("grievance", "02", "441900121")
    assert case.title == "拖欠工资" and case.phone == "+8613912345678" and case.id_number == VALID_ID
    assert case.publish is False and case.litigation == "none"
    assert code not in case.query_code_hash
    async with app.sessionmaker() as session:
        actions = list(await session.scalars(select(CaseEvent.action).where(CaseEvent.case_id == case.id)))
    assert actions == ["consented", "submitted"]
    row = await _session_row(app, citizen.user.id)
    assert row is not None and row.state is None and row.data == {}


async def test_full_filing_in_english(app: App) -> None:
    citizen = app.sim.citizen(language_code="en")
    tracking, _ = await file_petition(citizen)
    assert "Your petition has been submitted" in citizen.last_text and tracking in citizen.last_text
    [case] = await _cases(app)
    assert case.locale == "en"


async def test_suggestion_does_not_ask_for_an_id_number(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen, matter="suggestion")
    [case] = await _cases(app)
    assert case.matter_class == "suggestion" and case.id_number is None


async def test_grievance_asks_for_the_id_number_and_says_why(app: App) -> None:
    citizen = app.sim.citizen()
    await to_attachments(citizen)
    await citizen.press(ZH["done"])
    await citizen.send("张三")
    [saved, question] = await citizen.share_contact("+86 139 1234 5678")
    assert "手机号码已记录" in saved
    assert "为什么需要" in question


async def test_language_switch_is_stored_and_used(app: App) -> None:
    citizen = app.sim.citizen()
    await citizen.send("/language")
    await citizen.press("English")
    assert citizen.last_text.startswith("File a petition") or "Please choose" in citizen.last_text
    row = await _session_row(app, citizen.user.id)
    assert row is not None and row.locale == "en"
    [greeting] = await citizen.send("/start")
    assert "online petition service" in greeting


async def test_cancel_asks_first_and_keeps_everything_when_declined(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    await citizen.send("标题一")
    [question] = await citizen.send("/cancel")
    assert "确定要取消" in question
    [kept] = await citizen.press(ZH["no_cancel"])
    assert "继续填写" in kept and "诉求" in kept
    row = await _session_row(app, citizen.user.id)
    assert row is not None and row.data["answers"]["title"] == "标题一"
    await citizen.send("/cancel")
    [done] = await citizen.press(ZH["yes_cancel"])
    assert "已取消" in done
    row = await _session_row(app, citizen.user.id)
    assert row is not None and row.state is None and row.data == {}
    assert await _cases(app) == []


async def test_back_returns_to_the_previous_step_without_losing_answers(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    await citizen.send("第一个标题")
    [question] = await citizen.press(ZH["back"])
    assert "标题" in question
    [question] = await citizen.send("/back")
    assert "问题发生在哪里" in question
    row = await _session_row(app, citizen.user.id)
    assert row is not None and row.data["answers"]["title"] == "第一个标题"


async def test_back_on_the_first_step_says_so(app: App) -> None:
    citizen = app.sim.citizen()
    await citizen.send("/new")
    [answer] = await citizen.send("/back")
    assert "第一步" in answer and "隐私说明" in answer


async def test_help_explains_the_current_step_and_asks_again(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    [answer] = await citizen.send("/help")
    assert "标题例如" in answer and "请用一句话概括" in answer


async def test_change_one_answer_from_the_summary_and_come_back(app: App) -> None:
    citizen = app.sim.citizen()
    await to_summary(citizen)
    await citizen.press(ZH["edit"])
    [question] = await citizen.press("标题")
    assert "当前内容：拖欠工资" in question
    [summary] = await citizen.send("新的标题")
    assert "请核对" in summary and "新的标题" in summary and "拖欠工资</b>" not in summary


async def test_changing_the_category_asks_for_its_subcategory_then_returns(app: App) -> None:
    citizen = app.sim.citizen()
    await to_summary(citizen)
    await citizen.press(ZH["edit"])
    await citizen.press("问题分类")
    [question] = await citizen.send("生态环境")
    assert "更具体的分类" in question
    [summary] = await citizen.press(1)
    assert "请核对" in summary and "生态环境" in summary


async def test_switching_a_grievance_to_a_suggestion_drops_the_id_number(app: App) -> None:
    citizen = app.sim.citizen()
    await to_summary(citizen)
    await citizen.press(ZH["edit"])
    await citizen.press("事项类型")
    [summary] = await citizen.press(ZH["suggestion"])
    assert "身份证号码" not in summary
    await citizen.press(ZH["confirm"])
    [case] = await _cases(app)
    assert case.id_number is None


async def test_switching_a_suggestion_to_a_grievance_asks_for_the_id_then_returns(app: App) -> None:
    citizen = app.sim.citizen()
    await to_summary(citizen, matter="suggestion")
    await citizen.press(ZH["edit"])
    await citizen.press("事项类型")
    [question] = await citizen.press(ZH["grievance"])
    assert "身份证号码" in question
    [summary] = await citizen.send(VALID_ID)
    assert "请核对" in summary and VALID_ID in summary


async def test_citizen_text_is_escaped_everywhere_it_is_shown(app: App) -> None:
    citizen = app.sim.citizen()
    await to_summary(citizen, title="<b>大字</b> & <script>alert(1)</script>")
    summary = "\n".join(m.text for m in citizen.received[-1:])
    assert "&lt;b&gt;大字&lt;/b&gt; &amp; &lt;script&gt;" in summary
    assert "<script>" not in summary


async def test_a_long_summary_is_split_between_fields(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    await citizen.send("标题")
    await citizen.send("诉" * 1000)
    await citizen.send("事" * 3000)
    await citizen.send("理" * 2000)
    await citizen.press(ZH["skip"])
    await citizen.press(ZH["skip"])
    await citizen.press(ZH["no_litigation"])
    await citizen.press(ZH["done"])
    await citizen.send("张三")
    await citizen.send("13912345678")
    await citizen.send(VALID_ID)
    await citizen.send("地址")
    parts = await citizen.press(ZH["no_publish"])
    assert len(parts) >= 2
    assert all(visible_length(p) <= 4096 for p in parts)
    joined = "\n".join(parts)
    assert "事" * 3000 in joined and "理" * 2000 in joined and "诉" * 1000 in joined
    assert citizen.keyboard() is not None and "确认提交" in citizen.buttons()[0][0]


async def test_restart_mid_dialog_continues_where_the_citizen_was(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    await citizen.send("重启前的标题")
    restarted = app.restart()
    same = restarted.sim.citizen(citizen.user.id)
    [question] = await same.send("重启后的诉求")
    assert "事实" in question
    row = await _session_row(restarted, citizen.user.id)
    assert row is not None
    assert row.data["answers"]["title"] == "重启前的标题"
    assert row.data["answers"]["request"] == "重启后的诉求"


async def test_the_same_update_delivered_twice_has_one_effect(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    update = citizen.message_update(text="只说一次")
    await app.sim.feed(update)
    before = len(citizen.received)
    await app.sim.feed(update)
    assert len(citizen.received) == before
    row = await _session_row(app, citizen.user.id)
    assert row is not None and row.state == "request"


async def test_the_same_update_delivered_twice_concurrently_has_one_effect(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    update = citizen.message_update(text="并发重复")
    before = len(citizen.received)
    await asyncio.gather(app.sim.feed(update), app.sim.feed(update))
    assert len(citizen.received) == before + 1
    row = await _session_row(app, citizen.user.id)
    assert row is not None and row.state == "request"


async def test_two_confirm_taps_at_once_make_one_case(app: App) -> None:
    citizen = app.sim.citizen()
    await to_summary(citizen)
    first = citizen.press_update(ZH["confirm"])
    second = citizen.press_update(ZH["confirm"])
    await asyncio.gather(app.sim.feed(first), app.sim.feed(second))
    assert len(await _cases(app)) == 1
    receipts = [m.text for m in citizen.received if "已提交" in m.text]
    assert len(receipts) == 1


async def test_a_burst_of_answers_is_processed_in_order(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    answers = ["标题", "诉求", "事实", "理由", "去年", "某公司"]
    updates = [citizen.message_update(text=a) for a in answers]
    await asyncio.gather(*(app.sim.feed(u) for u in updates))
    row = await _session_row(app, citizen.user.id)
    assert row is not None
    stored = row.data["answers"]
    assert [stored[k] for k in ("title", "request", "facts", "reasons", "occurred", "accused")] == answers
    assert row.state == "litigation"


async def test_many_citizens_at_once_each_get_their_own_case(app: App) -> None:
    citizens = [app.sim.citizen(5000 + i) for i in range(12)]
    results = await asyncio.gather(*(file_petition(c) for c in citizens))
    assert len({tracking for tracking, _ in results}) == 12
    cases = await _cases(app)
    assert sorted(c.citizen_user_id for c in cases) == [c.user.id for c in citizens]


async def test_english_labels_typed_at_a_chinese_prompt_are_understood(app: App) -> None:
    citizen = app.sim.citizen()
    await citizen.send("/new")
    [question] = await citizen.send(EN["accept"])
    assert "哪一类" in question


async def test_attachments_photos_documents_and_an_album(app: App) -> None:
    citizen = app.sim.citizen()
    await to_attachments(citizen)
    [ack] = await citizen.send_photo(caption="工资条")
    assert "1/10" in ack
    [ack] = await citizen.send_document(name="合同.pdf")
    assert "2/10" in ack
    album = [await citizen.send_photo(media_group_id="album-1") for _ in range(3)]
    assert [len(replies) for replies in album] == [1, 0, 0]
    await citizen.press(ZH["done"])
    await citizen.send("张三")
    await citizen.send("13912345678")
    await citizen.send(VALID_ID)
    await citizen.send("地址")
    [summary] = await citizen.press(ZH["no_publish"])
    assert "附件材料：</b>5 个" in summary
    await citizen.press(ZH["confirm"])
    async with app.sessionmaker() as session:
        rows = list(await session.scalars(select(Attachment).order_by(Attachment.position)))
    assert [a.kind for a in rows] == ["photo", "document", "photo", "photo", "photo"]
    assert rows[0].caption == "工资条" and rows[1].file_name == "合同.pdf"
    assert {a.media_group_id for a in rows[2:]} == {"album-1"}


async def test_restart_keeps_attachments_already_sent(app: App) -> None:
    citizen = app.sim.citizen()
    await to_attachments(citizen)
    await citizen.send_photo()
    restarted = app.restart().sim.citizen(citizen.user.id)
    [ack] = await restarted.send_photo()
    assert "2/10" in ack


async def test_case_count_is_one_row_per_confirm(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await file_petition(citizen)
    async with app.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Case)) == 2


async def test_a_tracking_number_already_given_is_never_given_again(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = await file_petition(app.sim.citizen())
    free = next(n for n in iter(lambda: intake.new_tracking_number("DG"), None) if n != first)
    fresh = iter([first, first, free])  # drawn: taken, taken again, then free
    monkeypatch.setattr(intake, "new_tracking_number", lambda prefix: next(fresh))

    second, _ = await file_petition(app.sim.citizen(), phone="138 0013 8000", title="噪音扰民")

    assert second == free
    async with app.sessionmaker() as session:
        numbers = (await session.scalars(select(Case.tracking_number).order_by(Case.id))).all()
    assert numbers == [first, second]


async def test_mid_filing_a_question_asked_elsewhere_takes_the_next_message_then_the_filing_goes_on(
        app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    await citizen.press_data(MenuButton(action=MenuAction.STATUS).pack())
    [answer] = await citizen.send("DG-2345-6789 ABCDEFGHJK")
    assert "信访编号有误" in answer  # the lookup checked it: not taken as the petition's title
    row = await _session_row(app, citizen.user.id)
    assert row is not None and "title" not in row.data.get("answers", {})
    answers = await citizen.send("/new")  # back to the filing, where it was
    assert "请用一句话概括" in answers[-1]
    await citizen.send("拖欠工资")
    row = await _session_row(app, citizen.user.id)
    assert row is not None and row.data["answers"]["title"] == "拖欠工资"


async def test_mid_filing_a_command_in_a_caption_or_after_spaces_is_a_command(app: App) -> None:
    citizen = app.sim.citizen()
    await to_title(citizen)
    [answer] = await citizen.send_photo(caption="/help")
    assert "标题例如" in answer and "请用一句话概括" in answer
    [answer] = await citizen.send("  /help")
    assert "标题例如" in answer and "请用一句话概括" in answer
