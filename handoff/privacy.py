"""Personal data over time: key rotation and retention (PIPL: the shortest time needed).

Retention erases the personal data of cases that ended more than the
configured number of days ago — name, phone, ID number, address, the person
or unit complained about, and the attachments — and keeps what statistics need
(dates, status, class, category, location, unit, ratings). The timeline says
when it happened.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.orm.attributes import flag_modified

from state_machine.case import TERMINAL_VALUES
from storage.crypto import lookup_hash
from storage.models import Attachment, Base, Case, CaseEvent, CitizenSession, ProcessedUpdate

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


def _ended_at(case: Case) -> datetime | None:
    return case.closed_at or case.withdrawn_at


async def purge(session: AsyncSession, now: datetime, older_than_days: int) -> int:
    """Erase the personal data of cases that ended more than ``older_than_days`` ago."""
    cutoff = now - timedelta(days=older_than_days)
    last_event = (select(CaseEvent.case_id, func.max(CaseEvent.at).label("at"))
                  .group_by(CaseEvent.case_id).subquery())
    cases = (await session.scalars(
        select(Case).join(last_event, last_event.c.case_id == Case.id)
        .where(Case.status.in_(TERMINAL_VALUES), Case.anonymised_at.is_(None), last_event.c.at < cutoff)
        .limit(BATCH))).all()
    for case in cases:
        case.name, case.phone, case.id_number, case.address = ERASED, ERASED, None, ERASED
        case.accused, case.phone_hash, case.id_hash = None, None, None
        case.anonymised_at = now
        await session.execute(delete(Attachment).where(Attachment.case_id == case.id))
        session.add(CaseEvent(case_id=case.id, at=now, actor_kind="system", actor_id=None, action="anonymised",
                              status=case.status, note=f"personal data erased after {older_than_days} days"))
    if cases:
        log.info("retention: personal data of %s cases erased", len(cases))
    return len(cases)
