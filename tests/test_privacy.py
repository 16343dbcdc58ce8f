"""Personal data at rest: encrypted, found by keyed hash, keys rotated, erased after retention."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from handoff.privacy import purge, rotate_keys
from storage import crypto
from storage.db import downgrade, migrate
from storage.models import Attachment, Case, CaseEvent, OutboxMessage, Rating
from storage.repositories import record_updates_sync, unsent_replies
from tests.conftest import TEST_DATA_KEY, App
from tests.flows import VALID_ID, file_petition, to_title
from tests.test_followup_e2e import _accepted, _invitation, _open_from_mycases, _staff_does, _status
from tests.test_handoff_e2e import ADMIN, _act


async def test_phone_id_and_the_filing_in_progress_are_not_stored_in_clear(app: App) -> None:
    citizen = app.sim.citizen()
    await file_petition(citizen)
    await to_title(citizen)
    await citizen.send("第二件的标题 13987654321")
    async with app.sessionmaker() as session:
        raw = (await session.execute(text("SELECT phone, id_number, phone_hash FROM cases"))).one()
        drafts = (await session.execute(text("SELECT data FROM citizen_sessions"))).scalars().all()
    assert raw.phone.startswith(crypto.PREFIX) and "13912345678" not in raw.phone
    assert raw.id_number.startswith(crypto.PREFIX) and VALID_ID not in raw.id_number
    assert raw.phone_hash and "13912345678" not in raw.phone_hash
    assert all("13987654321" not in d and "第二件" not in d for d in drafts)
    assert all(d.startswith(crypto.PREFIX) or d == "{}" for d in drafts)  # only an empty document is plain
    async with app.sessionmaker() as session:
        case = (await session.scalars(select(Case))).one()
    assert (case.phone, case.id_number) == ("+8613912345678", VALID_ID)


async def test_keys_rotate_without_losing_anything(app: App) -> None:
    await file_petition(app.sim.citizen())
    newer = crypto.new_key()
    try:
        crypto.configure([newer, TEST_DATA_KEY])
        assert await rotate_keys(app.sessionmaker) >= 2
        crypto.configure([newer])  # the old key is gone: everything still reads
        async with app.sessionmaker() as session:
            case = (await session.scalars(select(Case))).one()
        # the hashes follow the newest key, so the same petitioner is still recognised
        assert case.phone == "+8613912345678" and case.phone_hash == crypto.lookup_hash("+8613912345678")
    finally:
        crypto.configure([TEST_DATA_KEY])


async def test_values_written_with_fernet_still_read_and_rotation_rewrites_them(app: App) -> None:
    await file_petition(app.sim.citizen())
    fernet = crypto.Fernet(TEST_DATA_KEY.encode())
    old_phone = crypto.FERNET_PREFIX + fernet.encrypt(b"+8613912345678").decode()
    async with app.sessionmaker() as session, session.begin():
        await session.execute(text("UPDATE cases SET phone = :p"), {"p": old_phone})
    async with app.sessionmaker() as session:
        assert (await session.scalars(select(Case))).one().phone == "+8613912345678"
    await rotate_keys(app.sessionmaker)
    async with app.sessionmaker() as session:
        raw = (await session.execute(text("SELECT phone FROM cases"))).scalar_one()
        assert raw.startswith(crypto.PREFIX)
        assert (await session.scalars(select(Case))).one().phone == "+8613912345678"


def test_nonces_from_the_pool_are_never_handed_out_twice_across_refills() -> None:
    pool = crypto._RandomPool(chunk=40)  # a refill every three nonces
    nonces = [pool.take() for _ in range(300)]
    assert all(len(n) == 12 for n in nonces) and len(set(nonces)) == 300
    sealed = {crypto.CIPHER.encrypt("same words") for _ in range(1000)}
    assert len(sealed) == 1000  # a fresh nonce each time


def test_a_damaged_value_or_one_under_an_unknown_key_is_refused_not_misread() -> None:
    sealed = crypto.CIPHER.encrypt("13912345678")
    assert crypto.CIPHER.decrypt(sealed) == "13912345678"
    body = bytearray(base64.b64decode(sealed[len(crypto.PREFIX):]))
    body[-1] ^= 1
    with pytest.raises(crypto.DataKeyError, match="damaged"):
        crypto.CIPHER.decrypt(crypto.PREFIX + base64.b64encode(bytes(body)).decode())
    try:
        crypto.configure([crypto.new_key()])
        with pytest.raises(crypto.DataKeyError, match="not configured"):
            crypto.CIPHER.decrypt(sealed)
    finally:
        crypto.configure([TEST_DATA_KEY])
    assert crypto.CIPHER.encrypt("13912345678") != sealed  # a fresh nonce each time


def test_a_value_not_base64_too_short_or_from_a_newer_version_is_refused() -> None:
    for stored in (crypto.PREFIX + "not base64!", crypto.PREFIX + base64.b64encode(b"short").decode(),
                   "enc9:" + base64.b64encode(bytes(64)).decode()):
        with pytest.raises(crypto.DataKeyError):
            crypto.CIPHER.decrypt(stored)
    assert crypto.CIPHER.decrypt("plain, written before encryption") == "plain, written before encryption"


def test_a_document_reads_back_whoever_wrote_it() -> None:
    column = crypto.EncryptedJSON()
    document: dict[Any, Any] = {"answers": {"title": "工资 \"拖欠\"\n三个月", "attachments": 2}, "page": 0,
                                "gone": None, "big": 2**70}
    for written in (document, {**document, 7: "a key that is not text"}):
        stored = column.process_bind_param(written, None)
        assert stored is not None and "工资" not in stored
        assert column.process_result_value(stored, None) == {str(k): v for k, v in written.items()}
    # Written by the json module before orjson, spaces and all.
    older = crypto.CIPHER.encrypt('{"answers": {"title": "标题"}, "page": 18446744073709551617}')
    assert column.process_result_value(older, None) == {"answers": {"title": "标题"}, "page": 2**64 + 1}
    assert column.process_bind_param({}, None) == "{}" and column.process_result_value("{}", None) == {}


async def test_rotation_re_writes_replies_still_waiting_to_be_sent(app: App) -> None:
    async with app.sessionmaker() as session, session.begin():
        await session.run_sync(record_updates_sync, [(77, {"chat": 5, "messages": [["您好", None]]})], app.clock())
    newer = crypto.new_key()
    try:
        crypto.configure([newer, TEST_DATA_KEY])
        await rotate_keys(app.sessionmaker)
        crypto.configure([newer])
        async with app.sessionmaker() as session:
            assert await unsent_replies(session, 77) == {"chat": 5, "messages": [["您好", None]]}
    finally:
        crypto.configure([TEST_DATA_KEY])


async def test_retention_erases_personal_data_of_ended_cases_and_keeps_statistics(app: App) -> None:
    await file_petition(app.sim.citizen(1))
    await app.deliver()
    await _act(app, ADMIN, "register")
    await _act(app, ADMIN, "redirect", "c=litigation", text="请向法院起诉")
    await _act(app, ADMIN, "close")
    open_tracking, _ = await file_petition(app.sim.citizen(2))
    app.clock.advance(days=400)
    async with app.sessionmaker() as session, session.begin():
        assert await purge(session, app.clock(), 365) == 1
    async with app.sessionmaker() as session:
        closed, still_open = (await session.scalars(select(Case).order_by(Case.id))).all()
        events = list(await session.scalars(select(CaseEvent.action).where(CaseEvent.case_id == closed.id)))
        attachments = (await session.scalars(select(Attachment))).all()
    assert (closed.name, closed.phone, closed.id_number, closed.address) == ("—", "—", None, "—")
    assert closed.anonymised_at is not None and "anonymised" in events
    assert (closed.status, closed.category, closed.location) == ("closed", "02", "441900121")
    assert still_open.name == "张三" and still_open.tracking_number == open_tracking
    assert attachments == []
    async with app.sessionmaker() as session, session.begin():
        assert await purge(session, app.clock() + timedelta(days=1), 365) == 0


async def _withdrawn_after_words(app: App) -> tuple[str, str]:
    """A case accepted, rated with a comment, added to by its petitioner and
    withdrawn with a reason, every message about it sent: (number, code)."""
    citizen = app.sim.citizen(21)
    tracking, code = await file_petition(citizen, title="张三被拖欠工资")
    await _accepted(app, tracking)
    buttons = _invitation(citizen)[1]
    await citizen.press_data(buttons["信访部门：满意"])
    await citizen.press_data(buttons["承办单位：不满意"])
    await citizen.send("经办人李四态度差")
    await _open_from_mycases(citizen, tracking)
    await citizen.press("➕ 补充材料")
    await citizen.send("我的工友王五也没拿到工资")
    await citizen.press("完成")
    await _open_from_mycases(citizen, tracking)
    await citizen.press("↩️ 撤回信访事项")
    await citizen.press("确定撤回")
    await citizen.send("老板赵六已经补发")
    await app.deliver()
    return tracking, code


#: What the petitioner wrote in :func:`_withdrawn_after_words`, all of it naming someone.
WORDS = ("张三被拖欠工资", "李四", "王五", "赵六")


async def _kept_words(app: App, tracking: str) -> dict[str, list[str]]:
    """Where each of :data:`WORDS` is still kept for the case."""
    async with app.sessionmaker() as session:
        case = (await session.scalars(select(Case).where(Case.tracking_number == tracking))).one()
        places = {
            "case": [case.title, case.request, case.facts, case.reasons, case.occurred or ""],
            "timeline": [e.note or "" for e in await session.scalars(select(CaseEvent)
                                                                     .where(CaseEvent.case_id == case.id))],
            "ratings": [r.comment or "" for r in await session.scalars(select(Rating)
                                                                       .where(Rating.case_id == case.id))],
            "outbox": [str(o.payload) for o in await session.scalars(select(OutboxMessage)
                                                                     .where(OutboxMessage.case_id == case.id))],
        }
    return {place: [w for w in WORDS if any(w in value for value in values)] for place, values in places.items()}


async def test_retention_erases_the_petitioners_words_wherever_they_were_kept(app: App) -> None:
    tracking, code = await _withdrawn_after_words(app)
    before = await _kept_words(app, tracking)
    assert before["case"] == ["张三被拖欠工资"] and before["ratings"] == ["李四"]
    assert {"王五", "赵六"} <= set(before["timeline"]) and {"王五", "赵六"} <= set(before["outbox"])
    app.clock.advance(days=400)
    app.maintenance.retention_days = 365
    await app.maintenance.tick()
    assert await _kept_words(app, tracking) == {"case": [], "timeline": [], "ratings": [], "outbox": []}
    [rating] = await _ratings_of(app, tracking)
    assert (rating.bureau_score, rating.unit_score, rating.comment) == ("satisfied", "unsatisfied", None)
    # The petitioner's status still answers, with what is left: the steps and their dates.
    answer = await _status(app.sim.citizen(21), tracking, code)
    assert tracking in answer and "已撤回" in answer and "信访人撤回" in answer
    assert not any(word in answer for word in WORDS)


async def test_a_bureau_may_keep_the_text_of_the_matter_when_erasing(app: App) -> None:
    tracking, _ = await _withdrawn_after_words(app)
    app.clock.advance(days=400)
    app.maintenance.retention_days, app.maintenance.retention_keep_text = 365, True
    await app.maintenance.tick()
    kept = await _kept_words(app, tracking)
    assert kept["case"] == ["张三被拖欠工资"] and kept["ratings"] == ["李四"]
    assert {"王五", "赵六"} <= set(kept["timeline"])
    assert kept["outbox"] == []  # copies of messages already sent go whatever the setting
    case = (await _erased_cases(app))[0]
    assert (case.tracking_number, case.name, case.phone) == (tracking, "—", "—")


async def test_a_comment_sent_after_the_case_was_erased_is_not_kept(app: App) -> None:
    """A retention shorter than the rating window: the case is erased while its
    petitioner is still asked for a comment."""
    citizen = app.sim.citizen(21)
    tracking, _ = await file_petition(citizen)
    await _accepted(app, tracking)
    buttons = _invitation(citizen)[1]
    await citizen.press_data(buttons["信访部门：满意"])
    [ask] = await citizen.press_data(buttons["承办单位：基本满意"])
    assert "评语" in ask
    async with app.sessionmaker() as session, session.begin():  # ended since (staff's steps are tested elsewhere)
        case = (await session.scalars(select(Case).where(Case.tracking_number == tracking))).one()
        case.status, case.ended_at = "closed", app.clock()
    app.clock.advance(days=8)
    async with app.sessionmaker() as session, session.begin():
        assert await purge(session, app.clock(), 7) == 1
    [answer] = await citizen.send("经办人李四态度差")
    assert "评语已记录" not in answer
    [rating] = await _ratings_of(app, tracking)
    assert (rating.bureau_score, rating.unit_score, rating.comment) == ("satisfied", "basic", None)


async def _ratings_of(app: App, tracking: str) -> list[Rating]:
    async with app.sessionmaker() as session:
        return list(await session.scalars(select(Rating).join(Case, Rating.case_id == Case.id)
                                          .where(Case.tracking_number == tracking)))


async def _erased_cases(app: App) -> list[Case]:
    async with app.sessionmaker() as session:
        return list(await session.scalars(select(Case).where(Case.anonymised_at.is_not(None))))


async def _closed(app: App, user_id: int) -> str:
    """A petition filed by ``user_id`` and closed by staff at once; its tracking number."""
    tracking, _ = await file_petition(app.sim.citizen(user_id), phone=f"139{user_id:08d}")
    await app.deliver()
    await _staff_does(app, tracking, "register")
    await _staff_does(app, tracking, "redirect", "c=litigation", text="请向法院起诉")
    await _staff_does(app, tracking, "close")
    return tracking


async def _erased(app: App) -> list[str]:
    async with app.sessionmaker() as session:
        return list(await session.scalars(select(Case.tracking_number).where(Case.anonymised_at.is_not(None))
                                          .order_by(Case.id)))


async def test_the_tick_erases_a_backlog_a_batch_at_a_time_oldest_first(app: App) -> None:
    """Retention turned on over years of ended cases: every tick takes a
    batch, so the backlog is gone within minutes (it was a batch a day)."""
    first = await _closed(app, 11)
    app.clock.advance(days=1)
    second = await _closed(app, 12)
    app.clock.advance(days=1)
    third = await _closed(app, 13)
    async with app.sessionmaker() as session, session.begin():
        cases = {c.tracking_number: c for c in await session.scalars(select(Case))}
        for case in cases.values():  # a photo each, erased with the case
            session.add(Attachment(case_id=case.id, position=1, kind="photo", file_id=f"f{case.id}",
                                   file_unique_id=f"u{case.id}"))
    ended = [cases[t].ended_at for t in (first, second, third)]
    assert None not in ended and ended == sorted(ended)
    app.clock.advance(days=400)
    app.maintenance.retention_days, app.maintenance.purge_batch = 365, 2
    await app.maintenance.tick()
    assert await _erased(app) == [first, second]
    async with app.sessionmaker() as session:
        assert list(await session.scalars(select(Attachment.case_id))) == [cases[third].id]
        erased = (await session.scalars(select(Case).where(Case.tracking_number == first))).one()
        events = list(await session.scalars(select(CaseEvent.action).where(CaseEvent.case_id == erased.id)))
    assert (erased.name, erased.phone, erased.id_number, erased.address) == ("—", "—", None, "—")
    assert (erased.phone_hash, erased.id_hash, erased.status) == (None, None, "closed")
    assert erased.version == cases[first].version + 1 and events[-1] == "anonymised"
    app.clock.advance(minutes=1)
    await app.maintenance.tick()
    assert await _erased(app) == [first, second, third]
    async with app.sessionmaker() as session:
        assert list(await session.scalars(select(Attachment))) == []


async def test_a_case_with_an_event_after_it_ended_is_kept_until_that_event_is_old(app: App) -> None:
    tracking = await _closed(app, 11)
    app.clock.advance(days=300)
    async with app.sessionmaker() as session, session.begin():
        case = (await session.scalars(select(Case))).one()
        session.add(CaseEvent(case_id=case.id, at=app.clock(), actor_kind="citizen", actor_id=11,
                              action="message", status=case.status, note="还有一件事"))
    app.clock.advance(days=100)  # 400 days after the end, 100 after the last event
    async with app.sessionmaker() as session, session.begin():
        assert await purge(session, app.clock(), 365) == 0
    app.clock.advance(days=300)
    async with app.sessionmaker() as session, session.begin():
        assert await purge(session, app.clock(), 365) == 1
    assert await _erased(app) == [tracking]


async def test_two_workers_purging_at_once_erase_each_case_once(app: App, db: AsyncEngine) -> None:
    if db.dialect.name != "postgresql":
        pytest.skip("one writer at a time on SQLite: the second waits for the first's commit")
    await _closed(app, 11)
    await _closed(app, 12)
    app.clock.advance(days=400)
    async with app.sessionmaker() as first, first.begin():
        assert await purge(first, app.clock(), 365) == 2
        async with app.sessionmaker() as second, second.begin():  # while the first has not committed
            # Without skipping the first's rows it would wait for them, here for ever.
            assert await asyncio.wait_for(purge(second, app.clock(), 365), timeout=10) == 0
    async with app.sessionmaker() as session, session.begin():
        assert await purge(session, app.clock(), 365) == 0
        events = list(await session.scalars(select(CaseEvent.case_id).where(CaseEvent.action == "anonymised")))
    assert len(events) == len(set(events)) == 2


async def test_upgrading_dates_the_end_of_cases_already_ended_by_their_last_event(app: App, db: AsyncEngine) -> None:
    closed = await _closed(app, 11)
    still_open, _ = await file_petition(app.sim.citizen(12), phone="13900000012")
    await downgrade(db, "0003")  # a database from before cases kept when they ended
    await migrate(db)
    async with app.sessionmaker() as session:
        cases = {c.tracking_number: c for c in await session.scalars(select(Case))}
        last = await session.scalar(select(func.max(CaseEvent.at)).where(CaseEvent.case_id == cases[closed].id))
    assert last is not None and cases[closed].ended_at == last and cases[still_open].ended_at is None
    app.clock.advance(days=400)
    async with app.sessionmaker() as session, session.begin():
        assert await purge(session, app.clock(), 365) == 1
    assert await _erased(app) == [closed]


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PETITION_")}
    return subprocess.run([sys.executable, "-m", "bot", *args], env={**base, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_postgresql_without_a_data_key_is_refused_in_one_line(tmp_path: Path) -> None:
    result = _cli("purge", "--days", "30",
                  env={"PETITION_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/test"}, cwd=tmp_path)
    assert result.returncode == 2 and "PETITION_DATA_KEYS" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_embedded_default_generates_a_key_file_next_to_the_database(tmp_path: Path) -> None:
    result = _cli("purge", "--days", "30", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    key = (tmp_path / "petitions.db.key").read_text().strip()
    crypto.Fernet(key.encode())  # a real key
    assert "generated a data key" in result.stderr
    new = _cli("new-key", env={}, cwd=tmp_path)
    crypto.Fernet(new.stdout.strip().encode())
