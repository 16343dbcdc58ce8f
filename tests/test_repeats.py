"""Repeat petitions, first-time petitions and the leader in charge (DOMAIN.md §9)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.polling import process_batch
from storage.models import Case, CaseEvent
from storage.repositories import CaseRepository, PetitionerQuery
from tests.conftest import STAFF_CHAT, App
from tests.flows import ZH, file_petition, to_summary
from tests.test_handoff_e2e import ADMIN, _press

#: Every test twice: updates fed as a webhook delivers them and as polling does.
BOTH_FEEDS = True


async def _cases(app: App) -> list[Case]:
    async with app.sessionmaker() as session:
        return list((await session.scalars(select(Case).order_by(Case.id))).all())


async def test_the_first_petition_is_flagged_first_time_and_the_next_is_not(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await file_petition(citizen, title="另一件事")
    first, second = await _cases(app)
    assert first.first_time and not second.first_time


async def test_the_same_matter_open_is_shown_and_can_be_added_to_it(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await app.deliver()
    await to_summary(citizen, title="还是拖欠工资")
    [question] = await citizen.press(ZH["confirm"])
    assert tracking in question and "同一事项" in question
    [added] = await citizen.press("➕ 补充到原事项")
    assert tracking in added
    cases = await _cases(app)
    assert len(cases) == 1
    async with app.sessionmaker() as session:
        notes = list(await session.scalars(select(CaseEvent.note).where(CaseEvent.action == "citizen_message")))
    assert notes and "还是拖欠工资" in notes[0]
    await app.deliver()
    relayed = [c for c in app.telegram.sent(STAFF_CHAT) if "还是拖欠工资" in c.text]
    assert relayed


async def test_filing_the_same_matter_anyway_links_and_flags_it_for_staff(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, _ = await file_petition(citizen)
    await to_summary(citizen, title="再次反映拖欠工资")
    await citizen.press(ZH["confirm"])
    [receipt] = await citizen.press("📝 仍作为新事项提交")
    assert "已提交" in receipt
    _, second = await _cases(app)
    assert second.possible_repeat_of == tracking
    await app.deliver()
    card = next(c for c in app.telegram.sent(STAFF_CHAT) if second.tracking_number in c.text)
    assert f"可能与 {tracking} 重复" in card.text
    # staff can mark it a duplicate of the original
    await _press(app, ADMIN, second, "mark_duplicate")
    await app.sim.staff(ADMIN, STAFF_CHAT).send(tracking)
    async with app.sessionmaker() as session:
        marked = await session.get(Case, second.id)
    assert marked is not None and (marked.status, marked.duplicate_of) == ("duplicate", tracking)


async def test_same_petitioner_by_phone_from_another_account_is_recognised(app: App) -> None:
    tracking, _ = await file_petition(app.sim.citizen(1))
    other_account = app.sim.citizen(2)
    await to_summary(other_account, title="拖欠工资")
    [question] = await other_account.press(ZH["confirm"])
    assert tracking in question


async def test_a_different_matter_is_not_called_a_repeat(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await citizen.send("/new")
    await citizen.press(ZH["accept"])
    await citizen.press(ZH["suggestion"])
    await citizen.send("教育")
    await citizen.press(ZH["skip"])
    await citizen.send("东城")
    for answer in ("学校门口设红绿灯", "增设红绿灯", "车多", "安全"):
        await citizen.send(answer)
    await citizen.press(ZH["skip"])
    await citizen.press(ZH["skip"])
    await citizen.press(ZH["no_litigation"])
    await citizen.press(ZH["done"])
    await citizen.send("张三")
    await citizen.send("13912345678")
    await citizen.send("地址")
    await citizen.press(ZH["no_publish"])
    [receipt] = await citizen.press(ZH["confirm"])
    assert "已提交" in receipt


async def test_staff_set_the_leader_in_charge_shown_on_the_card(app: App) -> None:
    await file_petition(app.sim.citizen())
    await app.deliver()
    [case] = await _cases(app)
    await _press(app, ADMIN, case, "leader")
    await app.sim.staff(ADMIN, STAFF_CHAT).send("王局长（副局长）")
    await app.deliver()
    [case] = await _cases(app)
    assert case.leader == "王局长（副局长）"
    edits = [c for c in app.telegram.calls if type(c).__name__ == "EditMessageText"]
    assert "包案领导：王局长（副局长）" in edits[-1].text


async def test_confirms_in_one_polling_batch_see_each_petitioners_earlier_cases(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    """A polling batch reads the earlier cases of all its filers in one query:
    each filer still gets what is theirs."""
    tracking, _ = await file_petition(app.sim.citizen(11))
    returning, newcomer = app.sim.citizen(11), app.sim.citizen(12)
    await to_summary(returning, title="还是拖欠工资")
    await to_summary(newcomer, matter="suggestion", phone="138 0013 8000", title="噪音扰民")
    returning_mark, newcomer_mark = len(returning.received), len(newcomer.received)

    await process_batch(app.sim.dp, app.sim.bot, [returning.press_update(ZH["confirm"]),
                                                  newcomer.press_update(ZH["confirm"])])

    [question] = returning.texts_since(returning_mark)
    assert tracking in question and "同一事项" in question
    [receipt] = newcomer.texts_since(newcomer_mark)
    assert "已提交" in receipt
    first, second = await _cases(app)
    assert first.tracking_number == tracking and second.citizen_user_id == 12 and second.first_time
    assert "one by one" not in caplog.text, "the batch ran as one transaction"


@pytest.mark.parametrize("filings", [1, 3, 9, 17])
async def test_the_petitioner_query_of_any_number_of_filings_tells_each_its_own(app: App, filings: int) -> None:
    """Padded to the next of its compiled shapes (1, 2, 4, 8, 16 filings, then
    chunks of 16): the padding finds no case and takes no number."""
    tracking, _ = await file_petition(app.sim.citizen(11))
    queries = [PetitionerQuery(100 + i, f"1390000{i:04d}", None, "labor", "dongcheng", f"DG-TEST-{i:04d}")
               for i in range(filings)]
    last = filings - 1  # the returning petitioner, whose drawn number is the one already taken
    queries[last] = PetitionerQuery(11, "13900000000", None, "labor", "dongcheng", tracking)

    async with app.sessionmaker() as session, session.begin():
        found = await CaseRepository(session).petitioners(queries)

    assert [(p.number, p.number_taken, p.filed_before) for p in found] == [
        (q.number, i == last, i == last) for i, q in enumerate(queries)]
    assert [c.tracking_number for c in found[last].open_cases] == [tracking]
