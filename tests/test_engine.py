"""The intake engine without Telegram or a database: inputs in, replies and a
submission out."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from dialogs import steps as S
from dialogs.bureau import BureauConfig, load_bureau_config
from dialogs.conversation import Conversation
from dialogs.engine import IntakeEngine, Outcome
from dialogs.i18n import LOCALES, t
from dialogs.messages import Input, InputKind, Media, Reply
from state_machine.intake import EDITABLE, FLOW, Step
from tests.flows import VALID_ID

CONSENT_TIME = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
HUMEN = "441900121"


@pytest.fixture(scope="module")
def bureau() -> BureauConfig:
    return load_bureau_config()


@pytest.fixture
def engine(bureau: BureauConfig) -> IntakeEngine:
    return IntakeEngine(bureau, clock=lambda: CONSENT_TIME)


# -- what a citizen can do -------------------------------------------------------

Act = Callable[[Conversation], Input]


def press(value: str) -> Act:
    """A button of the question on screen."""
    return lambda conv: Input(InputKind.BUTTON, step=conv.state, value=value)


def typed(text: str) -> Act:
    return lambda conv: Input(InputKind.TEXT, text=text)


_files = iter(range(1, 1_000_000))


def photo(size: int = 150_000) -> Input:
    n = next(_files)
    return Input(InputKind.PHOTO, media=Media(file_id=f"photo-{n}", file_unique_id=f"u{n}",
                                              kind="photo", size=size, mime_type="image/jpeg"))


def document(size: int = 300_000) -> Input:
    n = next(_files)
    return Input(InputKind.DOCUMENT, media=Media(file_id=f"doc-{n}", file_unique_id=f"d{n}",
                                                 kind="document", size=size,
                                                 mime_type="application/pdf",
                                                 file_name="合同.pdf"))


STICKER = Input(InputKind.OTHER, other_type="sticker")

#: One good answer per question (a grievance about unpaid wages in Humen).
ANSWERS: dict[Step, Act] = {
    Step.CONSENT: press("accept"),
    Step.MATTER_CLASS: press("grievance"),
    Step.CATEGORY: typed("社保"),
    Step.SUBCATEGORY: press("0202"),
    Step.LOCATION: typed("虎门"),
    Step.TITLE: typed("拖欠工资"),
    Step.REQUEST: typed("要求公司支付拖欠的三个月工资"),
    Step.FACTS: typed("2025年12月起公司未发工资"),
    Step.REASONS: typed("劳动合同约定每月10日发放工资"),
    Step.OCCURRED: press(S.NAV_SKIP),
    Step.ACCUSED: typed("某某电子厂"),
    Step.LITIGATION: press("none"),
    Step.ATTACHMENTS: press(S.NAV_DONE),
    Step.NAME: typed("张三"),
    Step.PHONE: typed("139 1234 5678"),
    Step.ID_NUMBER: typed(VALID_ID),
    Step.ADDRESS: typed("东莞市虎门镇银龙路1号"),
    Step.PUBLISH: press("no"),
}


def answer(engine: IntakeEngine, conv: Conversation, act: Act | Input,
           locale: str = "zh") -> Outcome:
    inp = act if isinstance(act, Input) else act(conv)
    return engine.handle(conv, inp, locale)


def conversation_at(engine: IntakeEngine, step: Step, *, matter: str = "grievance",
                    locale: str = "zh") -> Conversation:
    """A filing that has answered every question before ``step``."""
    outcome = engine.begin(locale)
    conv = outcome.conversation
    assert conv is not None
    while conv.state != step:
        act = press(matter) if conv.state == Step.MATTER_CLASS else ANSWERS[Step(conv.state)]
        assert answer(engine, conv, act, locale).conversation is conv, conv.state
    return conv


def keys(reply: Reply) -> list[str]:
    return [block.key for block in reply.blocks]


def button_values(reply: Reply) -> list[str]:
    assert reply.keyboard is not None
    return [b.value for row in reply.keyboard.rows for b in row]


# -- a whole filing ----------------------------------------------------------------


def test_a_whole_filing_ends_in_a_submission_with_every_answer(engine: IntakeEngine) -> None:
    conv = conversation_at(engine, Step.ATTACHMENTS)
    answer(engine, conv, photo())
    for step in FLOW[FLOW.index(Step.ATTACHMENTS):]:
        answer(engine, conv, ANSWERS[step])
    assert conv.state == Step.SUMMARY

    outcome = answer(engine, conv, press(S.CONFIRM))

    assert outcome.conversation is None
    sub = outcome.submission
    assert sub is not None
    assert sub.answers == {
        "consent": "accept", "matter_class": "grievance", "category": "02",
        "subcategory": "0202", "location": HUMEN, "title": "拖欠工资",
        "request": "要求公司支付拖欠的三个月工资", "facts": "2025年12月起公司未发工资",
        "reasons": "劳动合同约定每月10日发放工资", "occurred": "", "accused": "某某电子厂",
        "litigation": "none", "attachments": 1, "name": "张三", "phone": "+8613912345678",
        "id_number": VALID_ID, "address": "东莞市虎门镇银龙路1号", "publish": "no",
    }
    [attachment] = sub.attachments
    assert attachment["kind"] == "photo" and attachment["size"] == 150_000
    assert sub.consent_at == CONSENT_TIME.isoformat()
    assert sub.emergency is False and sub.locale == "zh"


def test_a_suggestion_is_submitted_without_an_id_number(engine: IntakeEngine) -> None:
    conv = conversation_at(engine, Step.SUMMARY, matter="suggestion")
    sub = answer(engine, conv, press(S.CONFIRM)).submission
    assert sub is not None
    assert sub.answers["matter_class"] == "suggestion" and "id_number" not in sub.answers


def test_each_question_is_asked_in_order(engine: IntakeEngine) -> None:
    outcome = engine.begin("zh")
    conv = outcome.conversation
    assert conv is not None
    asked = [keys(outcome.replies[-1])[-1]]
    while conv.state != Step.SUMMARY:
        asked.append(keys(answer(engine, conv, ANSWERS[Step(conv.state)]).replies[-1])[-1])
    assert asked == [f"step.{s}.ask" for s in FLOW] + ["summary.confirm_hint"]


# -- refusals change nothing ------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    step: Step
    bad: Act | Input
    #: The catalog keys of the reply, in order.
    reply: tuple[str, ...]
    matter: str = "grievance"
    #: Attachments already sent before the bad input.
    files_before: int = 0


def _refused(step: Step, error: str, bad: Act | Input, **kw: Any) -> Refusal:
    return Refusal(step, bad, (error, f"step.{step}.ask"), **kw)


REFUSALS = {
    "phone invalid": _refused(Step.PHONE, "error.phone.invalid", typed("14012345678")),
    "landline": _refused(Step.PHONE, "error.phone.not_mobile", typed("0769 2222 3333")),
    "foreign number": _refused(Step.PHONE, "error.phone.not_cn", typed("+44 7911 123456")),
    "letters in phone": _refused(Step.PHONE, "error.phone.invalid", typed("139ABCD5678")),
    "old 15-digit ID": _refused(Step.ID_NUMBER, "error.id.old_format", typed("110105491231002")),
    "ID check character": _refused(Step.ID_NUMBER, "error.id.checksum",
                                   typed("110105194912310021")),
    "ID birth date": _refused(Step.ID_NUMBER, "error.id.birth_date", typed("11010519491332002X")),
    "ID length": _refused(Step.ID_NUMBER, "error.id.length", typed("1101051949123100")),
    "title too long": _refused(Step.TITLE, "error.text.too_long", typed("长" * 61)),
    "whitespace only": _refused(Step.FACTS, "error.text.empty", typed(" \n\t ")),
    "zero-width only": _refused(Step.TITLE, "error.text.empty", typed("\u200b\u200d\ufeff")),
    "sticker for text": _refused(Step.TITLE, "error.expected_text", STICKER),
    "photo for text": _refused(Step.NAME, "error.expected_text", photo()),
    "text at fixed choice": _refused(Step.MATTER_CLASS, "error.choice.use_buttons", typed("随便")),
    "forged value": _refused(Step.MATTER_CLASS, "error.choice.unknown", press("hack")),
    "forged skip": _refused(Step.TITLE, "error.choice.unknown", press(S.NAV_SKIP)),
    "stale button": _refused(Step.TITLE, "error.stale_button",
                             Input(InputKind.BUTTON, step="matter_class", value="suggestion")),
    "search finds nothing": _refused(Step.LOCATION, "error.search.none", typed("火星")),
    "search finds several": Refusal(Step.LOCATION, typed("石"), ("search.results",)),
    "consent declined": _refused(Step.CONSENT, "error.consent.required", press("decline")),
    "text for a file": _refused(Step.ATTACHMENTS, "error.attachment.expected", typed("合同")),
    "sticker for a file": _refused(Step.ATTACHMENTS, "error.attachment.kind", STICKER),
    "file too large": _refused(Step.ATTACHMENTS, "error.attachment.too_large",
                               document(size=21 * 1024 * 1024)),
    "one file too many": _refused(Step.ATTACHMENTS, "error.attachment.too_many", photo(),
                                  files_before=10),
    "text at the summary": Refusal(Step.SUMMARY, typed("好的"), ("summary.use_buttons",)),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refused_answer_changes_nothing_and_asks_again(engine: IntakeEngine, case: Refusal) -> None:
    conv = conversation_at(engine, case.step, matter=case.matter)
    for _ in range(case.files_before):
        answer(engine, conv, photo())
    before = copy.deepcopy(conv.to_json())

    outcome = answer(engine, conv, case.bad)

    assert outcome.conversation is conv and outcome.submission is None
    assert conv.to_json() == before
    assert tuple(keys(outcome.replies[-1])) == case.reply
    assert outcome.replies[-1].keyboard is not None or case.step is Step.PHONE


def test_several_search_matches_are_offered_as_buttons(engine: IntakeEngine,
                                                       bureau: BureauConfig) -> None:
    conv = conversation_at(engine, Step.LOCATION)
    [offer] = answer(engine, conv, typed("石")).replies
    matches = [u.code for u in bureau.search_units("石")]
    assert len(matches) > 1
    assert button_values(offer) == [*matches, S.NAV_BACK, S.NAV_CANCEL]
    answer(engine, conv, press(matches[1]))
    assert conv.answers["location"] == matches[1] and conv.state == Step.TITLE


def test_the_limit_and_length_are_given_for_a_too_long_title(engine: IntakeEngine,
                                                            bureau: BureauConfig) -> None:
    limit = bureau.intake.max_lengths["title"]
    conv = conversation_at(engine, Step.TITLE)
    [reply] = answer(engine, conv, typed("长" * (limit + 5))).replies
    assert dict(reply.blocks[0].params) == {"limit": limit, "length": limit + 5}
    assert dict(reply.blocks[1].params) == {"limit": limit}


# -- the location list in pages ------------------------------------------------------------


def location_page(reply: Reply) -> tuple[list[str], list[tuple[str, str | None]]]:
    """(unit codes shown, pager buttons as (value, literal label))."""
    assert reply.keyboard is not None
    units, pager = [], []
    for row in reply.keyboard.rows:
        for button in row:
            if button.value.startswith(S.NAV_PAGE):
                pager.append((button.value, button.label))
            elif not button.value.startswith("~"):
                units.append(button.value)
    return units, pager


def test_the_location_list_is_paged_and_wraps_around(engine: IntakeEngine,
                                                     bureau: BureauConfig) -> None:
    codes = [u.code for u in bureau.enabled_units()]
    pages = -(-len(codes) // S.PAGE_SIZE)
    assert pages >= 3
    conv = conversation_at(engine, Step.LOCATION)
    first, pager = location_page(engine.ask(conv, "zh"))
    assert first == codes[:S.PAGE_SIZE]
    assert pager == [(f"~p{pages - 1}", None), ("~p0", f"1/{pages}"), ("~p1", None)]

    seen, reply = list(first), None
    for n in range(1, pages):
        [reply] = answer(engine, conv, press(f"~p{n}")).replies
        shown, pager = location_page(reply)
        assert pager[1] == (f"~p{n}", f"{n + 1}/{pages}")
        seen += shown
    assert seen == codes  # every unit once, in the bureau's order

    # "Next" on the last page and "previous" on the first wrap around.
    assert pager[2][0] == "~p0"
    [reply] = answer(engine, conv, press(f"~p{pages - 1}")).replies
    last, _ = location_page(reply)
    assert last == codes[(pages - 1) * S.PAGE_SIZE:]
    assert conv.state == Step.LOCATION and "location" not in conv.answers


def test_a_forged_page_number_shows_the_last_page(engine: IntakeEngine,
                                                  bureau: BureauConfig) -> None:
    codes = [u.code for u in bureau.enabled_units()]
    conv = conversation_at(engine, Step.LOCATION)
    [reply] = answer(engine, conv, press("~p999")).replies
    shown, _ = location_page(reply)
    assert shown == codes[-(len(codes) % S.PAGE_SIZE or S.PAGE_SIZE):]


def test_a_unit_on_a_later_page_can_be_chosen_and_the_next_list_starts_at_page_one(
        engine: IntakeEngine, bureau: BureauConfig) -> None:
    codes = [u.code for u in bureau.enabled_units()]
    conv = conversation_at(engine, Step.LOCATION)
    answer(engine, conv, press("~p2"))
    answer(engine, conv, press(codes[2 * S.PAGE_SIZE]))
    assert conv.answers["location"] == codes[2 * S.PAGE_SIZE]
    assert conv.state == Step.TITLE and conv.page == 0


# -- the summary -----------------------------------------------------------------------------


def summary_lines(reply: Reply) -> dict[str, str]:
    return {str(b.params["label"]): str(b.params["value"]) for b in reply.blocks
            if b.key == "summary.line"}


@pytest.mark.parametrize("locale", LOCALES)
def test_the_summary_shows_every_answer_of_a_grievance(engine: IntakeEngine, locale: str) -> None:
    conv = conversation_at(engine, Step.SUMMARY, locale=locale)
    [summary] = engine.summary(conv, locale)
    lines = summary_lines(summary)
    assert list(lines) == [t(locale, f"summary.{step}") for step in EDITABLE]
    assert lines[t(locale, "summary.title")] == "拖欠工资"
    assert lines[t(locale, "summary.matter_class")] == t(locale, "choice.matter_class.grievance")
    assert lines[t(locale, "summary.location")] == ("Humen Town" if locale == "en" else "虎门镇")
    assert lines[t(locale, "summary.occurred")] == t(locale, "summary.empty")
    assert lines[t(locale, "summary.phone")] == "+8613912345678"
    assert lines[t(locale, "summary.id_number")] == VALID_ID
    assert lines[t(locale, "summary.attachments")] == t(locale, "summary.attachment_count", count=0)
    assert keys(summary)[0] == "summary.header" and keys(summary)[-1] == "summary.confirm_hint"
    assert button_values(summary) == [S.CONFIRM, S.EDIT_MENU, S.NAV_CANCEL]


def test_the_summary_of_a_suggestion_has_no_id_number_line(engine: IntakeEngine) -> None:
    conv = conversation_at(engine, Step.SUMMARY, matter="suggestion")
    [summary] = engine.summary(conv, "zh")
    assert list(summary_lines(summary)) == [
        t("zh", f"summary.{step}") for step in EDITABLE if step is not Step.ID_NUMBER]


@pytest.mark.parametrize("locale", LOCALES)
def test_every_question_renders_in_both_languages(engine: IntakeEngine, locale: str) -> None:
    # A placeholder the engine does not fill would raise KeyError here.
    conv = conversation_at(engine, Step.SUMMARY, locale=locale)
    for step in (*FLOW, Step.SUMMARY):
        conv.state = step.value
        for reply in engine.resume(conv, locale):
            for block in reply.blocks:
                assert t(locale, block.key, **block.params)


# -- bugs found while writing these tests -----------------------------------------------------------


def test_back_to_summary_in_the_edit_menu_shows_the_summary_again(engine: IntakeEngine) -> None:
    conv = conversation_at(engine, Step.SUMMARY)
    [menu] = answer(engine, conv, press(S.EDIT_MENU)).replies
    assert S.NAV_BACK in button_values(menu)
    [reply] = answer(engine, conv, press(S.NAV_BACK)).replies
    assert conv.state == Step.SUMMARY
    assert keys(reply)[0] == "summary.header"


def test_a_forged_edit_of_a_question_that_does_not_apply_is_refused(engine: IntakeEngine) -> None:
    conv = conversation_at(engine, Step.SUMMARY, matter="suggestion")
    before = copy.deepcopy(conv.to_json())
    [reply] = answer(engine, conv, press(f"{S.EDIT_PREFIX}id_number")).replies
    assert conv.to_json() == before
    assert keys(reply) == ["error.choice.unknown"]


def test_a_grievance_cannot_be_confirmed_without_its_id_number(engine: IntakeEngine,
                                                               bureau: BureauConfig) -> None:
    conv = conversation_at(engine, Step.SUMMARY, matter="suggestion")
    answer(engine, conv, press(S.EDIT_MENU))
    answer(engine, conv, press(f"{S.EDIT_PREFIX}matter_class"))
    answer(engine, conv, press("grievance"))
    assert conv.state == Step.ID_NUMBER
    answer(engine, conv, press(S.NAV_BACK))  # changes their mind about giving it
    sub = answer(engine, conv, press(S.CONFIRM)).submission
    required = bureau.intake.id_number_required_for
    assert sub is None or sub.answers["matter_class"] not in required or sub.answers.get("id_number")
