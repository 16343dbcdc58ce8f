"""Repositories: queries named by intent. Each works inside the caller's session
(one session, one transaction, per update)."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from difflib import SequenceMatcher
from typing import Any, NamedTuple

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    case,
    delete,
    event,
    exists,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, object_session

from storage.crypto import lookup_hash
from storage.later import insert_at_commit
from storage.models import Attachment, Case, CaseEvent, CitizenSession, ProcessedUpdate
from storage.onetrip import ANY_ROWS, WRITES_RIDE_ALONG

#: Statuses after which a case is no longer open: the lifecycle's terminal states
#: (storage does not import the machine; tests/test_case_machine.py checks they agree).
CLOSED_STATUSES = ("final", "closed", "duplicate", "not_reaccepted", "withdrawn")


# The hot path's statements, built once (building a statement costs more than
# running it). Core statements on the table: the ORM adds nothing here.
_UPDATES: Table = ProcessedUpdate.__table__  # type: ignore[assignment]
_CLAIM = {
    dialect: insert(_UPDATES).values(update_id=bindparam("update_id"), processed_at=bindparam("now"))
    .on_conflict_do_nothing(index_elements=["update_id"])
    for dialect, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
_STORE_REPLIES = (update(_UPDATES).where(_UPDATES.c.update_id == bindparam("id"))
                  .values(replies=bindparam("replies"), delivered=False))
_RECORD = _UPDATES.insert().values(update_id=bindparam("update_id"), processed_at=bindparam("now"),
                                   replies=bindparam("replies"), delivered=bindparam("delivered"))
_MARK_DELIVERED = (update(_UPDATES).where(_UPDATES.c.update_id == bindparam("id"))
                   .values(delivered=True, replies=None).execution_options(**{WRITES_RIDE_ALONG: ANY_ROWS}))
_ALREADY_CLAIMED = select(_UPDATES.c.update_id).where(_UPDATES.c.update_id.in_(bindparam("ids", expanding=True)))
_UNSENT_REPLIES = (select(_UPDATES.c.replies, _UPDATES.c.delivered)
                   .where(_UPDATES.c.update_id == bindparam("update_id")))
_CITIZEN = select(CitizenSession).where(CitizenSession.user_id == bindparam("user_id"))
_CITIZEN_LOCKED = _CITIZEN.with_for_update()
_CITIZENS = (select(CitizenSession).where(CitizenSession.user_id.in_(bindparam("ids", expanding=True)))
             .order_by(CitizenSession.user_id))
_CITIZENS_LOCKED = _CITIZENS.with_for_update()
_CITIZENS_TABLE: Table = CitizenSession.__table__  # type: ignore[assignment]
#: A cached row is still as this process committed it: every write of a
#: citizen's row sets ``updated_at``, so this changes one row per cached row
#: only if none was written elsewhere (nor deleted) since. It rides along with
#: the transaction's next trip and is counted there (storage.onetrip): a row
#: that changed fails the transaction before anything in it is committed.
_UNCHANGED = (update(_CITIZENS_TABLE)
              .where(_CITIZENS_TABLE.c.user_id == bindparam("uid"), _CITIZENS_TABLE.c.updated_at == bindparam("at"))
              .values(updated_at=_CITIZENS_TABLE.c.updated_at)
              .execution_options(**{WRITES_RIDE_ALONG: True}))


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind else "sqlite"


async def claim_update(session: AsyncSession, update_id: int, now: datetime) -> bool:
    """Record ``update_id`` as processed in this transaction; False if it already was.

    One round trip (insert … on conflict do nothing). Committed together with
    the update's effects, so a crash before the commit replays the update and a
    duplicate delivery after it is skipped.
    """
    result = await session.execute(_CLAIM[_dialect(session)], {"update_id": update_id, "now": now})
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def processed_among(session: AsyncSession, update_ids: Iterable[int]) -> set[int]:
    """Which of these update ids are already recorded (one query for a batch)."""
    ids = sorted(set(update_ids))
    if not ids:
        return set()
    found: list[int] = list((await session.scalars(_ALREADY_CLAIMED, {"ids": ids})).all())
    return set(found)


def record_updates_sync(session: Session, rows: list[tuple[int, dict[str, Any] | None]], now: datetime) -> None:
    """Record a batch's update ids with their replies, in one statement
    (executemany); called inside ``AsyncSession.run_sync``, with the batch's
    commit. An id already recorded (a replay, or another process that
    recorded it meanwhile) fails the insert, and with it the batch."""
    if rows:
        session.execute(_RECORD, [{"update_id": i, "now": now, "replies": r, "delivered": r is None}
                                  for i, r in rows])


async def store_replies(session: AsyncSession, update_id: int, replies: dict[str, Any]) -> None:
    """Keep an update's replies with it until they are known to be sent."""
    await session.execute(_STORE_REPLIES, {"id": update_id, "replies": replies})


async def unsent_replies(session: AsyncSession, update_id: int) -> dict[str, Any] | None:
    row = (await session.execute(_UNSENT_REPLIES, {"update_id": update_id})).one_or_none()
    return row.replies if row is not None and not row.delivered else None


async def mark_delivered(session: AsyncSession, update_ids: Iterable[int]) -> None:
    """The replies of these recorded updates went out: forget them. One statement
    per id (executemany), which on SQLite rides along with the transaction's next
    trip: a statement with an IN list of a hundred ids cost ~1 ms of the event
    loop's CPU to render at every batch, and a trip. An id whose row is gone
    (forgotten after a day) changes nothing and fails nothing, as before."""
    ids = sorted(update_ids)
    if ids:
        await session.execute(_MARK_DELIVERED, [{"id": i} for i in ids])


async def claim_unsent(session: AsyncSession, before: datetime, now: datetime,
                       limit: int) -> list[tuple[int, dict[str, Any]]]:
    """Updates committed before ``before`` whose replies are still unsent, leased
    by setting their time to ``now`` (rows another worker holds are skipped)."""
    stmt = (select(_UPDATES.c.update_id, _UPDATES.c.replies)
            .where(_UPDATES.c.delivered.is_(False), _UPDATES.c.replies.is_not(None),
                   _UPDATES.c.processed_at < before)
            .order_by(_UPDATES.c.update_id).limit(limit))
    if _dialect(session) == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = [(int(r.update_id), r.replies) for r in (await session.execute(stmt)).all()]
    if rows:
        await session.execute(update(_UPDATES).where(_UPDATES.c.update_id.in_([r[0] for r in rows]))
                              .values(processed_at=now))
    return rows


async def forget_updates_before(session: AsyncSession, cutoff: datetime) -> int:
    """Drop dedupe records older than Telegram can redeliver (it keeps updates 24 h)."""
    result = await session.execute(delete(ProcessedUpdate).where(ProcessedUpdate.processed_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def citizen_session(session: AsyncSession, user_id: int, *, lock: bool) -> CitizenSession | None:
    """The citizen's row; ``lock`` takes a row lock on PostgreSQL so that two
    workers never run one citizen's updates at the same time."""
    stmt = _CITIZEN_LOCKED if lock and _dialect(session) == "postgresql" else _CITIZEN
    return (await session.execute(stmt, {"user_id": user_id})).scalar_one_or_none()


class StaleCitizen(Exception):
    """A cached citizen's row was changed or deleted by someone else."""


class CitizenCache:
    """Citizens' rows as this process last committed them, so that a polling
    batch need not read them again: reading the rows was a trip to the
    database's thread and an ORM load with two decryptions per update, a tenth
    of the event loop's work for one citizen alone (docs/BENCHMARKS.md,
    finding 34).

    A row is taken out while a transaction uses it and put back only after that
    transaction committed (:meth:`keep`), so a rollback never leaves behind what
    it undid. Each row taken is checked, in the same transaction, to be
    unchanged in the database (:data:`_UNCHANGED`), so a write made elsewhere
    (another process, another path of this one) costs a redo, never a lost
    change. Least recently used rows go first past ``size``.

    For SQLite through ``storage.db``'s engine only (:func:`citizen_cache`),
    where that check makes no trip of its own."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: OrderedDict[int, CitizenSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def take(self, user_ids: Iterable[int]) -> dict[int, CitizenSession]:
        """Those of these citizens' rows that are cached, no longer cached."""
        rows = self._rows
        return {user_id: rows.pop(user_id) for user_id in user_ids if user_id in rows}

    def keep(self, session: AsyncSession, rows: Iterable[CitizenSession]) -> None:
        """After ``session`` committed: ``rows`` (a batch's citizens) and every
        citizen's row it wrote, as committed."""
        kept = self._rows
        for row in (*_written(session), *rows):
            kept[row.user_id] = row
            kept.move_to_end(row.user_id)
        while len(kept) > self.size:
            kept.popitem(last=False)

    def forget(self, session: AsyncSession) -> None:
        """Every citizen's row ``session`` read or wrote: this path did not use the cache."""
        if not self._rows:  # nothing to forget (a webhook worker never fills it)
            return
        for row in _written(session):
            self._rows.pop(row.user_id, None)
        for key in list(session.identity_map.keys()):  # keys: a rolled-back row's attributes are gone
            if key[0] is CitizenSession:
                self._rows.pop(key[1][0], None)

    def clear(self) -> None:
        self._rows.clear()


#: ``Session.info`` key: the citizens' rows a session wrote (``_note_written``).
_WRITTEN = "citizens_written"


@event.listens_for(CitizenSession, "after_insert")
@event.listens_for(CitizenSession, "after_update")
def _note_written(_mapper: Any, _connection: Any, row: CitizenSession) -> None:
    """Remember each citizen's row a session writes: the identity map holds a
    row only while something else does, so a row written and let go (an
    admin's ban of a citizen who is not in the batch) would be missed there."""
    session = object_session(row)
    if session is not None:
        session.info.setdefault(_WRITTEN, []).append(row)


def _written(session: AsyncSession) -> list[CitizenSession]:
    written: list[CitizenSession] = session.info.pop(_WRITTEN, [])
    return written


def citizen_cache(sessionmaker: async_sessionmaker[AsyncSession], size: int) -> CitizenCache | None:
    """A cache of ``size`` rows where it is safe and free: SQLite, whose check
    rides along; None for PostgreSQL (where several workers share the rows and
    each read also takes the row's lock) or a size of 0."""
    bind = sessionmaker.kw.get("bind")
    return CitizenCache(size) if size > 0 and bind is not None and bind.dialect.name == "sqlite" else None


async def citizen_sessions(session: AsyncSession, user_ids: Iterable[int], *, lock: bool,
                           cache: CitizenCache | None = None) -> dict[int, CitizenSession]:
    """:func:`citizen_session` for a batch, in one query (rows locked in id order);
    with ``cache`` (SQLite only), the rows it holds are taken from it instead,
    checked in this transaction (see :class:`CitizenCache`)."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    found = cache.take(ids) if cache is not None and _dialect(session) == "sqlite" else {}
    if found:
        for row in found.values():
            session.add(row)
        checked = await session.execute(_UNCHANGED, [{"uid": r.user_id, "at": r.updated_at} for r in found.values()])
        # Riding along, the count is the one promised and checked at the trip; else the real one.
        if checked.rowcount != len(found):  # type: ignore[attr-defined]
            raise StaleCitizen(f"{len(found) - checked.rowcount} cached citizens' rows changed")  # type: ignore[attr-defined]
        ids = [i for i in ids if i not in found]
        if not ids:
            return found
    stmt = _CITIZENS_LOCKED if lock and _dialect(session) == "postgresql" else _CITIZENS
    found.update((row.user_id, row) for row in (await session.scalars(stmt, {"ids": ids})).all())
    return found


#: Petitioners asked for in one statement at most (CaseRepository.petitioners).
_CHUNK = 16
#: The statement's shapes: a chunk is padded to the next. Padding is not free:
#: each petitioner is a ranked subquery and five parameters, and measured here
#: two filings cost ~0.4 ms (0.3 ms of the event loop's CPU) in the shape of
#: two, ~1.1 ms (0.8 ms) padded to sixteen (BENCHMARKS finding 35).
_SHAPES = (1, 2, 4, 8, _CHUNK)


def _shape(count: int) -> int:
    return next(size for size in _SHAPES if size >= count)


@functools.cache
def _petitioners_statement(count: int) -> Any:
    """The cases of ``count`` petitioners, each tagged with its petitioner's
    position and ranked most relevant first (see CaseRepository.petitioners),
    and rows tagged -1 for the tracking numbers drawn that are taken. The same
    petitioner: the same account, phone or ID number (compared by keyed hash;
    no ID number is a NULL that matches nothing)."""
    parts: list[Any] = []
    for i in range(count):
        same_person = or_(Case.citizen_user_id == bindparam(f"user_{i}"),
                          Case.phone_hash == bindparam(f"phone_{i}"), Case.id_hash == bindparam(f"id_{i}"))
        final_same = and_(Case.status == "final", Case.category == bindparam(f"category_{i}"),
                          Case.location == bindparam(f"location_{i}"))
        # Closed statuses as bound values of the statement, not an expanding list
        # (which SQLAlchemy renders into the SQL again at every execution).
        rank = case((final_same, 0), (Case.status.not_in([literal(s) for s in CLOSED_STATUSES]), 1), else_=2)
        parts.append(select(select(literal(i).label("who"), rank.label("rank"), Case.submitted_at,
                                   Case.tracking_number, Case.category, Case.location, Case.title, Case.request)
                            .where(same_person).order_by(rank, Case.submitted_at.desc())
                            .limit(bindparam("limit")).subquery()))
    parts.append(select(literal(-1), literal(-1), null(), Case.tracking_number, null(), null(), null(), null())
                 .where(Case.tracking_number.in_([bindparam(f"number_{i}", type_=Case.tracking_number.type)
                                                  for i in range(count)])))
    return union_all(*parts)


@dataclass(frozen=True)
class PetitionerQuery:
    """A new filing's petitioner, and the tracking number drawn for it."""

    user_id: int
    phone: str
    id_number: str | None
    category: str
    location: str
    number: str


#: Padding for a chunk: no account 0, no phone or ID number (a NULL hash matches nothing).
_NOBODY = PetitionerQuery(0, "", None, "", "", "")


class OpenCase(NamedTuple):
    tracking_number: str
    category: str
    location: str
    title: str
    request: str


@dataclass(frozen=True)
class Petitioner:
    """A petitioner's earlier cases, as far as a new filing is concerned."""

    #: The tracking number drawn for the new case, and whether a case has it already.
    number: str
    number_taken: bool
    #: Any earlier case of the same account, phone or ID number.
    filed_before: bool
    #: The latest case on the same matter that is final after re-review (art. 36 ¶3).
    final_same_matter: str | None
    #: Open cases, newest first.
    open_cases: list[OpenCase]

    def open_same_matter(self, category: str, location: str, text: str, *,
                         similarity: float = 0.6) -> str | None:
        """An open case with the same category and location, or with clearly
        similar words (art. 19 ¶3)."""
        for number, cat, loc, title, request in self.open_cases:
            if (cat, loc) == (category, location):
                return number
            if SequenceMatcher(None, text, f"{title} {request}").ratio() >= similarity:
                return number
        return None


def _petitioner(query: PetitionerQuery, rows: list[Any], number_taken: bool, limit: int) -> Petitioner:
    mine = sorted(rows, key=lambda r: r.submitted_at, reverse=True)
    mine.sort(key=lambda r: r.rank)  # stable: newest first within a rank
    return Petitioner(
        number=query.number, number_taken=number_taken, filed_before=bool(mine),
        final_same_matter=str(mine[0].tracking_number) if mine and mine[0].rank == 0 else None,
        open_cases=[OpenCase(*r[3:]) for r in mine if r.rank == 1][:limit],
    )


class CaseRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def tracking_number_taken(self, number: str) -> bool:
        """Whether a stored case has this number. Cases filed in this
        transaction are written at its commit (:meth:`add`), where the unique
        constraint refuses a clash; nothing pending needs flushing first."""
        with self.session.no_autoflush:
            return bool(await self.session.scalar(select(exists().where(Case.tracking_number == number))))

    async def by_tracking_number(self, number: str) -> Case | None:
        return await self.session.scalar(select(Case).where(Case.tracking_number == number))

    async def petitioner(self, query: PetitionerQuery, *, limit: int = 50) -> Petitioner:
        """:meth:`petitioners` for one filing."""
        return (await self.petitioners([query], limit=limit))[0]

    async def petitioners(self, queries: Sequence[PetitionerQuery], *, limit: int = 50) -> list[Petitioner]:
        """What each new filing must know of its petitioner's earlier cases, and
        whether the tracking number drawn for it is taken: one query for them all.

        Most relevant first: a case on the same matter (category and location)
        that is final after re-review, then open cases (newest first, at most
        ``limit``), then any other case (only its existence counts). Cases
        filed in this transaction are not written yet (:meth:`add`), so two
        filings of one petitioner in one polling batch are not compared (one
        chat's second filing waits for the first's reply anyway).
        """
        found: list[Petitioner] = []
        for start in range(0, len(queries), _CHUNK):
            found += await self._petitioners(queries[start:start + _CHUNK], limit)
        return found

    async def compile_ahead(self) -> None:
        """Run the petitioner query once in each of its shapes, for nobody.

        SQLAlchemy compiles a statement the first time it runs and keeps it for
        the engine's life. The shape for a chunk of petitioners is a union of
        sixteen ranked subqueries and takes ~17 ms to compile (measured here),
        the smaller ones about 1 ms per petitioner, paid by the first batch
        that confirms that many filings at once, and with group commit by every
        update of that batch and those queued behind it.
        Done at start-up, before the first update (``bot.app.ready_to_serve``)."""
        for size in _SHAPES:
            await self.petitioners([_NOBODY] * size)

    async def _petitioners(self, queries: Sequence[PetitionerQuery], limit: int) -> list[Petitioner]:
        # Padded to the next shape (_SHAPES), each compiled at start-up; the
        # padding's numbers are empty and its hashes NULL, so it finds nothing.
        size = _shape(len(queries))
        padded = [*queries, *[_NOBODY] * (size - len(queries))]
        params: dict[str, Any] = {"limit": limit + 1}
        for i, q in enumerate(padded):
            params.update({f"number_{i}": q.number, f"user_{i}": q.user_id, f"phone_{i}": lookup_hash(q.phone),
                           f"id_{i}": lookup_hash(q.id_number), f"category_{i}": q.category,
                           f"location_{i}": q.location})
        with self.session.no_autoflush:
            rows = (await self.session.execute(_petitioners_statement(size), params)).all()
        taken = {r.tracking_number for r in rows if r.who < 0}
        found: list[list[Any]] = [[] for _ in queries]
        for r in rows:
            if 0 <= r.who < len(queries):
                found[r.who].append(r)
        return [_petitioner(q, mine, q.number in taken, limit) for q, mine in zip(queries, found, strict=True)]

    def add(self, case: Case, attachments: Iterable[dict[str, Any]], events: Iterable[CaseEvent]) -> Case:
        """A new case with its files and first events, written when the
        transaction commits (:mod:`storage.later`): until then this
        transaction's queries do not see it."""
        insert_at_commit(self.session, case)
        for position, item in enumerate(attachments):
            insert_at_commit(self.session, Attachment(position=position, **item), case)
        for entry in events:
            insert_at_commit(self.session, entry, case)
        return case
