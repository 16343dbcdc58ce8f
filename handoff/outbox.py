"""The outbox: notifications written with the change that causes them, delivered
by a paced background worker that survives restarts.

Delivery guarantees:
* nothing is lost: a row is written in the same transaction as the case change,
  and stays ``pending`` until a send succeeded;
* nothing is sent twice, except in one unavoidable window: the process dying
  after Telegram accepted a message and before the row was marked ``sent``
  (Telegram has no idempotency key). Rows are leased while in flight, so two
  workers never send the same row;
* per chat, rows go out in order (priority, then id): a card before its
  attachments, a notice before the next one;
* Telegram's limits are respected by :class:`~handoff.pacer.Pacer`; a 429 waits
  exactly ``retry_after``; 5xx and network errors are retried with back-off and
  jitter; after ``max_attempts`` failures a row is marked ``failed`` and the
  admins are told.

The worker knows nothing of aiogram: it talks to a :class:`Transport`
implemented in ``bot/``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoff.pacer import Pacer
from storage import later
from storage.models import Case, CaseEvent, OutboxMessage, StaffMessage

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

PRIORITY_URGENT = 0
PRIORITY_CITIZEN = 10
PRIORITY_STAFF = 50
PRIORITY_CARD_EDIT = 60

#: How long a claimed row is reserved for the worker sending it.
LEASE = timedelta(seconds=60)
BATCH = 200


# -- what the transport raises ------------------------------------------------------


class DeliveryError(Exception):
    pass


class RetryAfter(DeliveryError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"flood limit: retry after {seconds} s")
        self.seconds = seconds


class Transient(DeliveryError):
    """5xx, timeouts, network: try again later."""


class Unreachable(DeliveryError):
    """The recipient blocked the bot or cannot be written to."""


class Rejected(DeliveryError):
    """A request Telegram will never accept as it is (bad request)."""


class NotModified(DeliveryError):
    """An edit that changes nothing: as good as sent."""


@dataclass(frozen=True)
class Button:
    label: str
    #: Opaque callback payload built by ``bot/`` from the case and action.
    case_id: int
    action: str
    version: int
    arg: str = ""
    #: Whose button: "staff" (card actions) or "citizen" (ratings, review requests).
    kind: str = "staff"


@dataclass(frozen=True)
class Outgoing:
    """One Bot API call, channel-neutral."""

    chat_id: int
    text: str = ""
    buttons: tuple[tuple[Button, ...], ...] = ()
    reply_to: int | None = None
    #: For files: "photo" or "document" and Telegram's file id.
    file_kind: str | None = None
    file_id: str | None = None
    #: For albums: (kind, file_id, caption) items, sent together.
    album: tuple[tuple[str, str, str | None], ...] = ()
    #: For an edit of a message already sent.
    edit_message_id: int | None = None
    #: A forum topic of the chat.
    thread_id: int | None = None


class Transport(Protocol):
    async def deliver(self, message: Outgoing) -> list[int]:
        """Send (or edit); return the message ids now showing it."""


# -- writing to the outbox ------------------------------------------------------------


def enqueue(session: AsyncSession, *, kind: str, chat_id: int, now: datetime,
            case_id: int | None = None, payload: dict[str, Any] | None = None,
            priority: int = PRIORITY_STAFF, case: Case | None = None) -> OutboxMessage:
    """Queue a message in the caller's transaction. ``case`` instead of
    ``case_id`` for a case created in this transaction: the row is then written
    at the commit (:mod:`storage.later`)."""
    row = OutboxMessage(kind=kind, chat_id=chat_id, case_id=case.id if case is not None else case_id,
                        payload=payload or {}, priority=priority, status="pending", attempts=0,
                        next_attempt_at=now, created_at=now)
    later.add(session, row, case)
    session.info["outbox_dirty"] = True
    return row


class Wakeup:
    """Lets the update pipeline tell the worker that new rows were committed."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def set(self) -> None:
        self.event.set()


# -- the worker -----------------------------------------------------------------------

@dataclass
class OutboxWorker:
    sessionmaker: async_sessionmaker[AsyncSession]
    transport: Transport
    #: Builds the staff card (text and buttons) for a case, at send time.
    render_card: Callable[[Case], tuple[str, tuple[tuple[Button, ...], ...]]]
    clock: Clock
    pacer: Pacer = field(default_factory=Pacer)
    alert_chat_ids: Sequence[int] = ()
    max_attempts: int = 8
    base_backoff: float = 2.0
    max_backoff: float = 600.0
    wakeup: Wakeup = field(default_factory=Wakeup)
    alert_text: Callable[[OutboxMessage], str] = lambda row: f"outbox #{row.id} failed: {row.last_error}"
    #: Called in the marking transaction when a row with ``payload["on_sent"]`` went
    #: out (e.g. a decision reached the citizen, which starts the review window).
    on_sent: Callable[[AsyncSession, Case, str, datetime], Any] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; sleeps until the next row is due or new rows arrive."""
        while not stop.is_set():
            try:
                wait = await self.deliver_due()
            except Exception:  # the database may be away for a moment; keep the worker alive
                log.exception("outbox pass failed")
                wait = 5.0
            self.wakeup.event.clear()
            sleep = 30.0 if wait is None else max(wait, 0.01)
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wakeup.event.wait())]
            await asyncio.wait(waiters, timeout=sleep, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    async def deliver_due(self) -> float | None:
        """One pass: send every row that may go now.

        Returns seconds until another row may go (0 when some were sent and
        more may follow), or None when nothing is pending.
        """
        now = self.clock()
        picked, wait = await self._claim(now)
        if picked:
            await asyncio.gather(*(self._deliver(*item) for item in picked))
            return 0.0
        return wait

    async def _claim(self, now: datetime) -> tuple[list[tuple[int, Outgoing | None, float]], float | None]:
        """Lease the first due row of each chat that the pacer lets through, and
        compose its message here, so the send follows the pacer's count at once."""
        chosen: list[tuple[OutboxMessage, float]] = []
        wait: float | None = None
        async with self.sessionmaker() as session, session.begin():
            stmt = (select(OutboxMessage)
                    .where(OutboxMessage.status == "pending")
                    .order_by(OutboxMessage.priority, OutboxMessage.id).limit(BATCH))
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = (await session.scalars(stmt)).all()
            seen: set[int] = set()
            for row in rows:
                if row.chat_id in seen:
                    continue
                seen.add(row.chat_id)  # later rows of this chat wait for this one
                if row.lease_until is not None and row.lease_until > now:
                    # In flight here, or leased by a process that died: look again when the lease ends.
                    left = (row.lease_until - now).total_seconds()
                    wait = left if wait is None else min(wait, left)
                    continue
                if row.next_attempt_at > now:
                    due = (row.next_attempt_at - now).total_seconds()
                    wait = due if wait is None else min(wait, due)
                    continue
                pace = self.pacer.wait_time(row.chat_id)
                if pace > 0:
                    wait = pace if wait is None else min(wait, pace)
                    continue
                chosen.append((row, self.pacer.record(row.chat_id)))
                row.lease_until = now + LEASE
            # The chosen rows' cases in one query, not one each.
            case_ids = {row.case_id for row, _ in chosen if row.case_id is not None}
            cases: dict[int | None, Case] = (
                {case.id: case for case in await session.scalars(select(Case).where(Case.id.in_(case_ids)))}
                if case_ids else {})
            picked = [(row.id, self._compose(row, cases.get(row.case_id)), counted_at) for row, counted_at in chosen]
        return picked, wait

    async def _deliver(self, row_id: int, message: Outgoing | None, counted_at: float) -> None:
        if message is not None:
            self.pacer.restamp(message.chat_id, counted_at)  # counted when it really goes out
        async with self.sessionmaker() as session:
            try:
                ids = await self.transport.deliver(message) if message is not None else []
                error: DeliveryError | None = None
            except NotModified:
                ids, error = [], None
            except DeliveryError as exc:
                ids, error = [], exc
            now = self.clock()
            async with session.begin():
                row = await session.get(OutboxMessage, row_id)
                assert row is not None
                if error is None:
                    await self._sent(session, row, ids, now)
                else:
                    await self._failed(session, row, error, now)

    def _compose(self, row: OutboxMessage, case: Case | None) -> Outgoing | None:
        p = row.payload
        reply_to = (case.card_message_id if case is not None and p.get("reply_to_card")
                    and case.card_chat_id == row.chat_id else None)
        thread = p.get("thread_id")
        if row.kind == "card":
            if case is None:
                return None
            text, buttons = self.render_card(case)
            if case.card_message_id is not None and case.card_chat_id == row.chat_id:
                return Outgoing(row.chat_id, text, buttons, edit_message_id=case.card_message_id)
            return Outgoing(row.chat_id, text, buttons, thread_id=thread)
        if row.kind == "file":
            return Outgoing(row.chat_id, p.get("caption") or "", reply_to=reply_to, thread_id=thread,
                            file_kind=p["file_kind"], file_id=p["file_id"])
        if row.kind == "album":
            items = tuple((i["kind"], i["file_id"], i.get("caption")) for i in p["items"])
            return Outgoing(row.chat_id, reply_to=reply_to, album=items, thread_id=thread)
        buttons = tuple(tuple(Button(**b) for b in row) for row in p.get("buttons", ()))
        return Outgoing(row.chat_id, p.get("text", ""), buttons, reply_to=reply_to, thread_id=thread)

    async def _sent(self, session: AsyncSession, row: OutboxMessage, ids: list[int], now: datetime) -> None:
        row.status, row.sent_at, row.lease_until, row.last_error = "sent", now, None, None
        case = await session.get(Case, row.case_id) if row.case_id is not None else None
        if case is None:
            return
        if row.kind == "card":
            if ids and (case.card_message_id is None or case.card_chat_id != row.chat_id):
                # Not a case change: keep the version (and staff buttons) as they are.
                await session.execute(update(Case).where(Case.id == case.id).values(
                    card_chat_id=row.chat_id, card_message_id=ids[0]).execution_options(synchronize_session=False))
            # Later refreshes of the same card are covered by this one.
            await session.execute(update(OutboxMessage).where(
                OutboxMessage.case_id == case.id, OutboxMessage.kind == "card",
                OutboxMessage.status == "pending", OutboxMessage.id != row.id,
                OutboxMessage.created_at <= now).values(status="superseded"))
        if row.payload.get("map_replies") and ids:
            for message_id in ids:
                await session.merge(StaffMessage(chat_id=row.chat_id, message_id=message_id, case_id=case.id))
        if row.kind == "card" and ids:
            await session.merge(StaffMessage(chat_id=row.chat_id, message_id=ids[0], case_id=case.id))
        if row.payload.get("on_sent") and self.on_sent is not None:
            await self.on_sent(session, case, str(row.payload["on_sent"]), now)

    async def _failed(self, session: AsyncSession, row: OutboxMessage, error: DeliveryError,
                      now: datetime) -> None:
        row.lease_until = None
        row.last_error = str(error)[:500]
        if isinstance(error, RetryAfter):
            # Telegram said exactly when: not a failure of ours, no attempt counted.
            self.pacer.penalize(row.chat_id, error.seconds)
            row.next_attempt_at = now + timedelta(seconds=error.seconds)
            return
        if isinstance(error, Unreachable) and row.kind == "notice" and row.case_id is not None:
            row.status = "failed"
            case = await session.get(Case, row.case_id)
            if case is not None and not case.citizen_unreachable:
                case.citizen_unreachable = True
                session.add(CaseEvent(case_id=case.id, at=now, actor_kind="system", actor_id=None,
                                      action="citizen_unreachable", status=case.status,
                                      note="the citizen blocked the bot; notices cannot be delivered"))
                if case.card_chat_id is not None:
                    enqueue(session, kind="card", chat_id=case.card_chat_id, case_id=case.id, now=now,
                            priority=PRIORITY_CARD_EDIT)
            return
        row.attempts += 1
        if isinstance(error, Transient) and row.attempts < self.max_attempts:
            delay = min(self.base_backoff * 2 ** (row.attempts - 1), self.max_backoff)
            row.next_attempt_at = now + timedelta(seconds=delay * (0.5 + random.random()))
            return
        row.status = "failed"
        log.error("outbox #%s (%s to %s) failed for good: %s", row.id, row.kind, row.chat_id, row.last_error)
        for chat_id in self.alert_chat_ids:
            if chat_id != row.chat_id:
                enqueue(session, kind="text", chat_id=chat_id, now=now, priority=PRIORITY_URGENT,
                        payload={"text": self.alert_text(row)})


#: Rows no longer waiting to go out (``pending`` is the only state that leads anywhere).
DONE = ("sent", "failed", "superseded")


async def forget_done_before(session: AsyncSession, cutoff: datetime) -> int:
    """Delete the rows done with (sent, given up or superseded) whose last
    attempt was before ``cutoff`` (maintenance tick). Nothing reads a row
    once it is done, and each kept the text it sent, often a citizen's
    words, for good. Through ``ix_outbox_due``: only the rows deleted are read."""
    result = await session.execute(delete(OutboxMessage).where(OutboxMessage.status.in_(DONE),
                                                               OutboxMessage.next_attempt_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def pending_count(session: AsyncSession) -> int:
    from sqlalchemy import func

    return int(await session.scalar(select(func.count()).select_from(OutboxMessage)
                                    .where(OutboxMessage.status == "pending")) or 0)
