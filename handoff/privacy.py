"""Personal data over time: key rotation and retention (PIPL: the shortest time needed).

Retention erases the personal data of cases that ended more than the
configured number of days ago and keeps what statistics need (dates, status,
class, category, location, unit, the timeline's actions, ratings' scores).
Erased: name, phone, ID number, address, the person or unit complained about,
the attachments, and the copies of the case's messages the outbox kept once
it was done with them (sent or given up). Free text may name anyone, so by
default it goes too: the petition's title, request, facts, reasons and when
it happened, the notes of the timeline (the citizen's messages and reasons,
staff's reasons) and rating comments; a bureau whose archive must keep the
matter's text sets ``PETITION_RETENTION_KEEP_TEXT``. The timeline says when
it happened.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.orm.attributes import flag_modified

from handoff.outbox import DONE
from state_machine.case import TERMINAL_VALUES
from storage.crypto import lookup_hash
from storage.models import Attachment, Base, Case, CaseEvent, CitizenSession, OutboxMessage, ProcessedUpdate, Rating

log = logging.getLogger(__name__)

ERASED = "—"
BATCH = 500


async def rotate_keys(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Re-write every encrypted value under the newest key (and re-hash for lookups),
    the replies still kept for sending included."""
    sealed: tuple[tuple[type[Base], InstrumentedAttribute[int], tuple[str, ...], ColumnElement[bool] | None], ...] = (
        (Case, Case.id, ("phone", "id_number"), None),
        (CitizenSession, CitizenSession.user_id, ("data", "extra"), None),
        (ProcessedUpdate, ProcessedUpdate.update_id, ("replies",), ProcessedUpdate.replies.is_not(None)),
    )
    rewritten = 0
    for model, key, columns, only in sealed:
        last = None
        while True:
            async with sessionmaker() as session, session.begin():
                stmt = select(model).order_by(key).limit(BATCH)
                if only is not None:
                    stmt = stmt.where(only)
                if last is not None:
                    stmt = stmt.where(key > last)
                rows = (await session.scalars(stmt)).all()
                for row in rows:
                    for column in columns:
                        flag_modified(row, column)
                    if isinstance(row, CitizenSession):  # every write of the row sets it (CitizenCache)
                        row.updated_at = datetime.now(UTC)
                    if isinstance(row, Case) and row.anonymised_at is None:
                        row.phone_hash, row.id_hash = lookup_hash(row.phone), lookup_hash(row.id_number)
                rewritten += len(rows)
            if len(rows) < BATCH:
                break
            last = getattr(rows[-1], key.key)
    log.info("re-encrypted %s rows under the newest key", rewritten)
    return rewritten


def set_status(case: Case, status: str, now: datetime) -> None:
    """``case`` moves to ``status``; if that ends it, its retention period starts now.

    Every change of status that can end a case goes through here: a case
    that ended without ``ended_at`` would never be erased."""
    case.status = status
    if status in TERMINAL_VALUES and case.ended_at is None:
        case.ended_at = now


async def purge(session: AsyncSession, now: datetime, older_than_days: int, limit: int = BATCH, *,
                keep_text: bool = False) -> int:
    """Erase the personal data of up to ``limit`` cases that ended more than
    ``older_than_days`` ago and have had no event since (a citizen's rating or
    message after the end counts from then), their free text too unless
    ``keep_text``. Returns how many; the oldest first.

    It reads only the ended cases not yet erased, oldest first
    (``ix_cases_ended_at``), so its cost is the batch's, not the history's;
    ``ended_at`` is set only as a case ends (:func:`set_status`; terminal
    statuses are final), so the status is not asked for again: SQLite took
    its index, every case ever ended, for a condition on it. The batch is
    written in a few statements, each for the whole batch, not a few per case
    (a batch of 500 took 150–250 ms under the write lock as objects of the
    unit of work); objects of these cases already in ``session`` are not
    updated."""
    cutoff = now - timedelta(days=older_than_days)
    later = select(CaseEvent.id).where(CaseEvent.case_id == Case.id, CaseEvent.at >= cutoff)
    due = (await session.execute(
        select(Case.id, Case.status)
        .where(Case.anonymised_at.is_(None), Case.ended_at.is_not(None), Case.ended_at < cutoff, ~later.exists())
        .order_by(Case.ended_at).limit(limit)
        # Workers sharing PostgreSQL each run the tick: a case another is erasing is left to it.
        .with_for_update(skip_locked=True))).all()
    if not due:
        return 0
    ids = [case_id for case_id, _ in due]
    await session.execute(delete(Attachment).where(Attachment.case_id.in_(ids)))
    text = {} if keep_text else {"title": ERASED, "request": ERASED, "facts": ERASED, "reasons": ERASED,
                                 "occurred": None}
    await session.execute(
        update(Case).where(Case.id.in_(ids))
        .values(name=ERASED, phone=ERASED, id_number=None, address=ERASED, accused=None, phone_hash=None,
                id_hash=None, anonymised_at=now, version=Case.version + 1,  # a card shown before is stale
                **text)
        .execution_options(synchronize_session=False))
    if not keep_text:
        await session.execute(update(CaseEvent).where(CaseEvent.case_id.in_(ids), CaseEvent.note.is_not(None))
                              .values(note=None).execution_options(synchronize_session=False))
        await session.execute(update(Rating).where(Rating.case_id.in_(ids), Rating.comment.is_not(None))
                              .values(comment=None).execution_options(synchronize_session=False))
    # Done with: nothing reads a row's payload again, and it holds the message's text.
    await session.execute(update(OutboxMessage).where(OutboxMessage.case_id.in_(ids),
                                                      OutboxMessage.status.in_(DONE))
                          .values(payload={}).execution_options(synchronize_session=False))
    note = f"personal data erased after {older_than_days} days"
    await session.execute(insert(CaseEvent), [
        {"case_id": case_id, "at": now, "actor_kind": "system", "actor_id": None, "action": "anonymised",
         "status": status, "note": note} for case_id, status in due])
    log.info("retention: personal data of %s cases erased", len(due))
    return len(due)
