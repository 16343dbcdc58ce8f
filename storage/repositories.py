"""Repositories: queries named by intent. Each works inside the caller's session
(one session, one transaction, per update)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from difflib import SequenceMatcher
from typing import Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.crypto import lookup_hash
from storage.models import Attachment, Case, CaseEvent, CitizenSession, ProcessedUpdate

#: Statuses after which a case is no longer open: the lifecycle's terminal states
#: (storage does not import the machine; tests/test_case_machine.py checks they agree).
CLOSED_STATUSES = ("final", "closed", "duplicate", "not_reaccepted", "withdrawn")


async def claim_update(session: AsyncSession, update_id: int, now: datetime) -> bool:
    """Record ``update_id`` as processed in this transaction; False if it already was.

    One round trip (insert … on conflict do nothing). Committed together with
    the update's effects, so a crash before the commit replays the update and a
    duplicate delivery after it is skipped.
    """
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(ProcessedUpdate).values(update_id=update_id, processed_at=now)
    result = await session.execute(stmt.on_conflict_do_nothing(index_elements=["update_id"]))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def store_replies(session: AsyncSession, update_id: int, replies: dict[str, Any]) -> None:
    """Keep an update's replies with it until they are known to be sent."""
    await session.execute(update(ProcessedUpdate).where(ProcessedUpdate.update_id == update_id)
                          .values(replies=replies, delivered=False))


async def unsent_replies(session: AsyncSession, update_id: int) -> dict[str, Any] | None:
    row = (await session.execute(select(ProcessedUpdate.replies, ProcessedUpdate.delivered)
                                 .where(ProcessedUpdate.update_id == update_id))).one_or_none()
    return row.replies if row is not None and not row.delivered else None


async def mark_delivered(session: AsyncSession, update_ids: Iterable[int]) -> None:
    ids = list(update_ids)
    if ids:
        await session.execute(update(ProcessedUpdate).where(ProcessedUpdate.update_id.in_(ids))
                              .values(delivered=True, replies=None))


async def forget_updates_before(session: AsyncSession, cutoff: datetime) -> int:
    """Drop dedupe records older than Telegram can redeliver (it keeps updates 24 h)."""
    result = await session.execute(delete(ProcessedUpdate).where(ProcessedUpdate.processed_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def citizen_session(session: AsyncSession, user_id: int, *, lock: bool) -> CitizenSession | None:
    """The citizen's row; ``lock`` takes a row lock on PostgreSQL so that two
    workers never run one citizen's updates at the same time."""
    stmt = select(CitizenSession).where(CitizenSession.user_id == user_id)
    if lock and session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


class CaseRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def tracking_number_taken(self, number: str) -> bool:
        return bool(await self.session.scalar(select(exists().where(Case.tracking_number == number))))

    async def by_tracking_number(self, number: str) -> Case | None:
        return await self.session.scalar(select(Case).where(Case.tracking_number == number))

    async def final_same_matter(self, user_id: int, phone: str, id_number: str | None, category: str,
                                location: str) -> str | None:
        """A case of the same petitioner on the same matter that is final after re-review (art. 36 ¶3)."""
        same_person = self._same_person(user_id, phone, id_number)
        return await self.session.scalar(
            select(Case.tracking_number).where(same_person, Case.status == "final", Case.category == category,
                                               Case.location == location)
            .order_by(Case.submitted_at.desc()).limit(1))

    @staticmethod
    def _same_person(user_id: int, phone: str, id_number: str | None) -> Any:
        """The same petitioner: the same account, phone or ID number (compared by keyed hash)."""
        return or_(Case.citizen_user_id == user_id, Case.phone_hash == lookup_hash(phone),
                   *([Case.id_hash == lookup_hash(id_number)] if id_number else []))

    async def has_filed_before(self, user_id: int, phone: str, id_number: str | None) -> bool:
        return bool(await self.session.scalar(select(exists().where(self._same_person(user_id, phone, id_number)))))

    async def open_same_matter(self, user_id: int, phone: str, id_number: str | None, category: str,
                               location: str, text: str, *, similarity: float = 0.6) -> str | None:
        """An open case of the same petitioner with the same category and location,
        or with clearly similar words (art. 19 ¶3)."""
        rows = (await self.session.execute(
            select(Case.tracking_number, Case.category, Case.location, Case.title, Case.request)
            .where(self._same_person(user_id, phone, id_number), Case.status.not_in(CLOSED_STATUSES))
            .order_by(Case.submitted_at.desc()).limit(50))).all()
        for number, cat, loc, title, request in rows:
            if (cat, loc) == (category, location):
                return str(number)
            if SequenceMatcher(None, text, f"{title} {request}").ratio() >= similarity:
                return str(number)
        return None

    async def add(self, case: Case, attachments: Iterable[dict[str, Any]], events: Iterable[CaseEvent]) -> Case:
        self.session.add(case)
        await self.session.flush()
        for position, item in enumerate(attachments):
            self.session.add(Attachment(case_id=case.id, position=position, **item))
        for entry in events:
            entry.case_id = case.id
            self.session.add(entry)
        return case
