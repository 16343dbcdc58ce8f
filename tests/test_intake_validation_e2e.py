"""What a citizen sees when an answer is refused, end to end through the real
dispatcher: the problem named in their language, the same question again, and
nothing already entered lost (the stored step and answers do not move)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiogram.types import Message, Update
from sqlalchemy import select

from bot.callbacks import IntakeButton
from bot.simulator import SimUser
from dialogs.i18n import t
from state_machine.intake import Step
from storage.models import Case, CitizenSession
from tests.conftest import App
from tests.flows import VALID_ID, ZH, labels, to_title

# -- getting a citizen to a question ------------------------------------------------


#: Every test twice: updates fed as a webhook delivers them and as polling does.
BOTH_FEEDS = True


def _send(text: str) -> Callable[[SimUser], Awaitable[Any]]:
    return lambda citizen: citizen.send(text)


def _press(label: str) -> Callable[[SimUser], Awaitable[Any]]:
    return lambda citizen: citizen.press(labels(citizen)[label])


#: From the title to the summary, one good answer per question.
AFTER_LOCATION: list[tuple[Step, Callable[[SimUser], Awaitable[Any]]]] = [
    (Step.TITLE, _send("拖欠工资")),
    (Step.REQUEST, _send("要求公司支付拖欠的三个月工资")),
    (Step.FACTS, _send("2025年12月起公司未发工资")),
    (Step.REASONS, _send("劳动合同约定每月10日发放工资")),
    (Step.OCCURRED, _press("skip")),
    (Step.ACCUSED, _press("skip")),
    (Step.LITIGATION, _press("no_litigation")),
    (Step.ATTACHMENTS, _press("done")),
    (Step.NAME, _send("张三")),
    (Step.PHONE, _send("139 1234 5678")),
    (Step.ID_NUMBER, _send(VALID_ID)),
    (Step.ADDRESS, _send("东莞市虎门镇银龙路1号")),
    (Step.PUBLISH, _press("no_publish")),
]


async def answer_until(citizen: SimUser, step: Step, *, start: Step = Step.TITLE) -> None:
    """Answer the questions from ``start`` up to (not including) ``step``."""
    order = [s for s, _ in AFTER_LOCATION]
    for current, act in AFTER_LOCATION[order.index(start):]:
        if current == step:
            return
        await act(citizen)


async def reach(citizen: SimUser, step: Step) -> None:
    """A grievance filed up to ``step`` (the title or later, or the summary)."""
    await to_title(citizen)
    await answer_until(citizen, step)


# -- reading what was stored ----------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    state: str | None
    answers: dict[str, Any]
    attachments: list[dict[str, Any]]
    emergency: bool


async def stored(app: App, citizen: SimUser) -> Stored:
    async with app.sessionmaker() as session:
        row = await session.get(CitizenSession, citizen.user.id)
    assert row is not None
    return Stored(row.state, row.data.get("answers", {}), row.data.get("attachments", []),
                  bool(row.data.get("emergency")))


def edited(app: App, update: Update, text: str) -> Update:
    """The update Telegram sends when the citizen edits an earlier message."""
    sent = update.message
    assert sent is not None
    return Update(update_id=app.sim.next_update_id(), edited_message=Message(
        message_id=sent.message_id, date=sent.date, edit_date=int(sent.date.timestamp()) + 60,
        chat=sent.chat, from_user=sent.from_user, text=text))


def asked_again(app: App, locale: str, step: Step, error: str, *, files: int = 0,
                **params: Any) -> str:
    """The message a refused answer gets: the reason, then the same question."""
    intake = app.bureau.intake
    if step is Step.ATTACHMENTS:
        ask = {"limit": intake.max_attachments, "size": intake.max_attachment_mb, "count": files}
    elif step in (Step.PHONE, Step.ID_NUMBER, Step.CONSENT, Step.MATTER_CLASS, Step.LOCATION):
        ask = {}
    else:
        ask = {"limit": intake.max_lengths[step.value]}
    return f"{t(locale, error, **params)}\n{t(locale, f'step.{step}.ask', **ask)}"


# -- phone numbers (both languages) -----------------------------------------------------------

PHONE_CASES = {
    "not a number": ("14012345678", "error.phone.invalid",
                     {"zh": "不是有效的手机号码", "en": "not a valid mobile number"}),
    "landline": ("0769 2222 3333", "error.phone.not_mobile",
                 {"zh": "固定电话", "en": "landline"}),
    "foreign": ("+44 7911 123456", "error.phone.not_cn",
                {"zh": "中国大陆手机号码", "en": "mainland China mobile"}),
    "letters": ("139ABCD5678", "error.phone.invalid",
                {"zh": "不是有效的手机号码", "en": "not a valid mobile number"}),
}


async def _refused_phone(app: App, locale: str, case: str) -> None:
    typed, error, says = PHONE_CASES[case]
    citizen = app.sim.citizen(language_code=locale)
    await reach(citizen, Step.PHONE)
    before = await stored(app, citizen)
    assert before.state == Step.PHONE

    [reply] = await citizen.send(typed)

    assert says[locale] in reply
    assert reply == asked_again(app, locale, Step.PHONE, error)
    assert [label for label, _ in citizen.buttons()] == [t(locale, "button.share_phone")]
    assert await stored(app, citizen) == before


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_an_impossible_phone_number_is_refused_and_asked_again(app: App, locale: str) -> None:
    await _refused_phone(app, locale, "not a number")


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_a_landline_is_refused_with_a_request_for_a_mobile(app: App, locale: str) -> None:
    await _refused_phone(app, locale, "landline")


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_a_foreign_mobile_is_refused_asking_for_a_mainland_one(app: App, locale: str) -> None:
    await _refused_phone(app, locale, "foreign")


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_letters_in_a_phone_number_are_refused(app: App, locale: str) -> None:
    await _refused_phone(app, locale, "letters")


# -- resident ID numbers (both languages) -------------------------------------------------------

ID_CASES = {
    "old format": ("110105491231002", "error.id.old_format", {},
                   {"zh": "15位旧身份证号码", "en": "old 15-digit ID number"}),
    "check character": ("110105194912310021", "error.id.checksum", {},
                        {"zh": "校验位不正确", "en": "check character"}),
    "birth date": ("11010519491332002X", "error.id.birth_date", {},
                   {"zh": "出生日期", "en": "birth date"}),
    "length": ("1101051949123100", "error.id.length", {"length": 16},
               {"zh": "您输入了 16 位", "en": "you entered 16"}),
}


async def _refused_id(app: App, locale: str, case: str) -> None:
    typed, error, params, says = ID_CASES[case]
    citizen = app.sim.citizen(language_code=locale)
    await reach(citizen, Step.ID_NUMBER)
    before = await stored(app, citizen)
    assert before.state == Step.ID_NUMBER and before.answers["phone"] == "+8613912345678"

    [reply] = await citizen.send(typed)

    assert says[locale] in reply
    assert reply == asked_again(app, locale, Step.ID_NUMBER, error, **params)
    assert await stored(app, citizen) == before


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_an_old_15_digit_id_number_is_refused(app: App, locale: str) -> None:
    await _refused_id(app, locale, "old format")


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_an_id_number_with_a_wrong_check_character_is_refused(app: App, locale: str) -> None:
    await _refused_id(app, locale, "check character")


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_an_id_number_with_an_impossible_birth_date_is_refused(app: App, locale: str) -> None:
    await _refused_id(app, locale, "birth date")


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_an_id_number_of_the_wrong_length_says_how_long_it_was(app: App, locale: str) -> None:
    await _refused_id(app, locale, "length")


# -- free text ----------------------------------------------------------------------------------


async def test_a_too_long_title_states_the_limit_and_its_length(app: App) -> None:
    limit = app.bureau.intake.max_lengths["title"]
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    before = await stored(app, citizen)

    [reply] = await citizen.send("长" * (limit + 1))

    assert f"最多 {limit} 字，您输入了 {limit + 1} 字" in reply
    assert reply == asked_again(app, "zh", Step.TITLE, "error.text.too_long",
                                limit=limit, length=limit + 1)
    assert await stored(app, citizen) == before


async def test_whitespace_only_text_is_refused_as_empty(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.FACTS)
    before = await stored(app, citizen)

    [reply] = await citizen.send("   \n\t  ")

    assert "内容不能为空" in reply
    assert reply == asked_again(app, "zh", Step.FACTS, "error.text.empty")
    assert await stored(app, citizen) == before


async def test_zero_width_characters_alone_are_refused_as_empty(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    before = await stored(app, citizen)

    [reply] = await citizen.send("\u200b\u200c\u200d\u2060\ufeff")

    assert reply == asked_again(app, "zh", Step.TITLE, "error.text.empty")
    assert await stored(app, citizen) == before


async def test_a_sticker_where_text_is_expected_is_named_and_the_question_repeated(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    before = await stored(app, citizen)

    [reply] = await citizen.send_sticker()

    assert await stored(app, citizen) == before
    assert reply == asked_again(app, "zh", Step.TITLE, "error.expected_text", what="贴纸")


async def test_a_voice_note_where_text_is_expected_is_named_and_the_question_repeated(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.REQUEST)
    before = await stored(app, citizen)

    [reply] = await citizen.send_voice()

    assert await stored(app, citizen) == before
    assert reply == asked_again(app, "zh", Step.REQUEST, "error.expected_text", what="语音")


async def test_a_photo_where_text_is_expected_is_named_and_the_question_repeated(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.NAME)
    before = await stored(app, citizen)

    [reply] = await citizen.send_photo(caption="我的名字")

    assert "暂时不能使用照片" in reply
    assert reply == asked_again(app, "zh", Step.NAME, "error.expected_text", what="照片")
    assert await stored(app, citizen) == before


# -- choices and buttons ----------------------------------------------------------------------


async def test_typing_something_that_is_not_an_option_asks_to_use_the_buttons(app: App) -> None:
    citizen = app.sim.citizen()
    await citizen.send("/new")
    await citizen.press(ZH["accept"])
    before = await stored(app, citizen)
    assert before.state == Step.MATTER_CLASS

    [reply] = await citizen.send("随便")

    assert reply == asked_again(app, "zh", Step.MATTER_CLASS, "error.choice.use_buttons")
    assert ZH["grievance"] in [label for label, _ in citizen.buttons()]
    assert await stored(app, citizen) == before


async def test_a_forged_button_value_is_refused(app: App) -> None:
    citizen = app.sim.citizen()
    await citizen.send("/new")
    await citizen.press(ZH["accept"])
    before = await stored(app, citizen)

    [reply] = await citizen.press_data(IntakeButton(step="matter_class", value="hack").pack())

    assert "不在列表中" in reply
    assert reply == asked_again(app, "zh", Step.MATTER_CLASS, "error.choice.unknown")
    assert await stored(app, citizen) == before


async def test_a_button_of_an_earlier_question_is_refused_as_stale(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.REQUEST)
    before = await stored(app, citizen)
    assert before.answers["matter_class"] == "grievance"

    [reply] = await citizen.press_data(IntakeButton(step="matter_class", value="suggestion").pack())

    assert "之前的问题" in reply
    assert reply == asked_again(app, "zh", Step.REQUEST, "error.stale_button")
    assert await stored(app, citizen) == before


async def _at_location(citizen: SimUser) -> None:
    await citizen.send("/new")
    await citizen.press(ZH["accept"])
    await citizen.press(ZH["grievance"])
    await citizen.send("社保")
    await citizen.press(1)  # the first subcategory


async def test_a_location_search_that_finds_nothing_says_so(app: App) -> None:
    citizen = app.sim.citizen()
    await _at_location(citizen)
    before = await stored(app, citizen)
    assert before.state == Step.LOCATION

    [reply] = await citizen.send("火星")

    assert "没有找到与“火星”相符的选项" in reply
    assert reply == asked_again(app, "zh", Step.LOCATION, "error.search.none", query="火星")
    assert await stored(app, citizen) == before


async def test_a_location_search_with_several_matches_offers_just_those(app: App) -> None:
    citizen = app.sim.citizen()
    await _at_location(citizen)
    before = await stored(app, citizen)
    matches = app.bureau.search_units("石")

    [reply] = await citizen.send("石")

    assert reply == t("zh", "search.results", count=len(matches))
    assert [label for label, _ in citizen.buttons()] == [
        *(u.name_zh for u in matches), ZH["back"], ZH["cancel"]]
    assert await stored(app, citizen) == before
    await citizen.press("石龙镇")
    after = await stored(app, citizen)
    assert after.state == Step.TITLE and after.answers["location"] == "441900102"


async def test_declining_the_consent_explains_and_asks_again(app: App) -> None:
    citizen = app.sim.citizen()
    await citizen.send("/new")
    before = await stored(app, citizen)

    [reply] = await citizen.press("不同意")

    assert "需要您确认已阅读并同意" in reply
    assert reply == asked_again(app, "zh", Step.CONSENT, "error.consent.required")
    assert await stored(app, citizen) == before == Stored("consent", {}, [], False)


# -- attachments -----------------------------------------------------------------------------


async def test_text_at_the_attachment_step_asks_for_a_file(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.ATTACHMENTS)
    before = await stored(app, citizen)

    [reply] = await citizen.send("合同在我这里")

    assert reply == asked_again(app, "zh", Step.ATTACHMENTS, "error.attachment.expected")
    assert await stored(app, citizen) == before


async def test_a_sticker_at_the_attachment_step_is_named_and_refused(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.ATTACHMENTS)
    before = await stored(app, citizen)

    [reply] = await citizen.send_sticker()

    assert await stored(app, citizen) == before
    assert reply == asked_again(app, "zh", Step.ATTACHMENTS, "error.attachment.kind", what="贴纸")


async def test_a_file_over_the_size_limit_is_refused_with_the_limit(app: App) -> None:
    limit = app.bureau.intake.max_attachment_mb
    citizen = app.sim.citizen()
    await reach(citizen, Step.ATTACHMENTS)
    await citizen.send_photo()
    before = await stored(app, citizen)
    assert len(before.attachments) == 1

    [reply] = await citizen.send_document(size=limit * 1024 * 1024 + 1)

    assert f"不能超过 {limit} MB" in reply
    assert reply == asked_again(app, "zh", Step.ATTACHMENTS, "error.attachment.too_large",
                                files=1, limit=limit)
    assert await stored(app, citizen) == before


async def test_one_file_more_than_the_limit_is_refused_and_the_others_kept(app: App) -> None:
    limit = app.bureau.intake.max_attachments
    citizen = app.sim.citizen()
    await reach(citizen, Step.ATTACHMENTS)
    for _ in range(limit):
        await citizen.send_document()
    before = await stored(app, citizen)
    assert len(before.attachments) == limit

    [reply] = await citizen.send_document()

    assert f"最多只能提交 {limit} 个附件" in reply
    assert reply == asked_again(app, "zh", Step.ATTACHMENTS, "error.attachment.too_many",
                                files=limit, limit=limit)
    assert await stored(app, citizen) == before


# -- the summary, edits ---------------------------------------------------------------------------


async def test_typing_at_the_summary_shows_the_buttons_again(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.SUMMARY)
    before = await stored(app, citizen)
    assert before.state == Step.SUMMARY

    [reply] = await citizen.send("确认")

    assert reply == t("zh", "summary.use_buttons")
    assert [label for label, _ in citizen.buttons()] == [ZH["confirm"], ZH["edit"], ZH["cancel"]]
    assert await stored(app, citizen) == before


async def test_an_edited_message_is_explained_and_changes_no_answer(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    original = citizen.message_update(text="旧标题")
    await app.sim.feed(original)
    before = await stored(app, citizen)
    assert before.state == Step.REQUEST and before.answers["title"] == "旧标题"

    mark = len(citizen.received)
    await app.sim.feed(edited(app, original, "新标题"))

    assert citizen.texts_since(mark) == [t("zh", "edited_ignored")]
    assert await stored(app, citizen) == before


# -- emergencies --------------------------------------------------------------------------------

EMERGENCY_NUMBERS = ("110", "119", "120", "122")
EMERGENCIES = {
    "zh": ("着火了，救命", "报警 <b>110</b>"),
    "en": ("there is a fire", "Police <b>110</b>"),
}


@pytest.mark.parametrize("locale", ["zh", "en"])
async def test_emergency_words_get_the_emergency_numbers_first_and_the_filing_goes_on(
        app: App, locale: str) -> None:
    words, advice = EMERGENCIES[locale]
    citizen = app.sim.citizen(language_code=locale)
    await reach(citizen, Step.TITLE)

    [first, question] = await citizen.send(words)

    assert advice in first and all(number in first for number in EMERGENCY_NUMBERS)
    assert first == t(locale, "emergency.advice")
    assert question == t(locale, "step.request.ask", limit=app.bureau.intake.max_lengths["request"])
    now = await stored(app, citizen)
    assert now.state == Step.REQUEST and now.answers["title"] == words and now.emergency

    await answer_until(citizen, Step.SUMMARY, start=Step.REQUEST)
    assert t(locale, "summary.emergency_note") in citizen.last_text
    await citizen.press(labels(citizen)["confirm"])
    async with app.sessionmaker() as session:
        [case] = (await session.scalars(select(Case))).all()
    assert case.emergency is True and case.title == words


async def test_emergency_words_added_by_editing_a_message_get_the_emergency_numbers(app: App) -> None:
    citizen = app.sim.citizen()
    await reach(citizen, Step.TITLE)
    original = citizen.message_update(text="邻居家有烟味")
    await app.sim.feed(original)

    mark = len(citizen.received)
    await app.sim.feed(edited(app, original, "邻居家着火了，救命"))

    first = citizen.texts_since(mark)[0]
    assert all(number in first for number in EMERGENCY_NUMBERS)


async def test_emergency_words_before_any_filing_get_the_emergency_numbers(app: App) -> None:
    citizen = app.sim.citizen()
    replies = await citizen.send("着火了，救命")
    assert all(number in replies[0] for number in EMERGENCY_NUMBERS)
