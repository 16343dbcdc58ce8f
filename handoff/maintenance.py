"""Time-driven changes, run by the database's clock so a restart neither loses
nor repeats them: expired rating invitations (超期未评价), expired review and
re-review windows (超期未申请复查 / 复核 → closed), old dedupe records, old
outbox rows done with, and counts of failed status lookups whose window ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dialogs.bureau import BureauConfig
from dialogs.i18n import t
from handoff.clocks import Clocks
from handoff.deadlines import BUREAU_TZ, due_date
from handoff.followup import FollowUpService
from handoff.outbox import PRIORITY_CARD_EDIT, PRIORITY_CITIZEN, Wakeup, enqueue, forget_done_before
from handoff.privacy import purge, set_status
from state_machine.case import Action, next_status
from storage.models import Case, CaseEvent, Rating
from storage.repositories import forget_updates_before

log = logging.getLogger(__name__)

#: Telegram keeps undelivered updates for 24 hours; keep their ids a while longer.
DEDUPE_KEEP = timedelta(hours=48)
#: Outbox rows done with (sent, given up, superseded) are kept this long, for
#: looking into a delivery, then deleted: each holds the text it sent.
OUTBOX_KEEP = timedelta(days=30)
#: How often SQLite's planner statistics are brought up to date (SQLite advises every few hours).
OPTIMIZE_EVERY = timedelta(hours=1)
#: Cases the retention purge erases at most each tick: 144,000 a day. Their
#: rows are the oldest ended, spread over the table: at a million cases 500
#: held SQLite's write lock 105–167 ms (docs/BENCHMARKS.md, finding 39).
PURGE_EACH_TICK = 100


@dataclass
class Maintenance:
    sessionmaker: async_sessionmaker[AsyncSession]
    bureau: BureauConfig
    clock: Callable[[], datetime]
    wakeup: Wakeup | None = None
    interval: float = 60.0
    clocks: Clocks | None = None
    #: Whose counts of failed status lookups are forgotten once their window ends.
    lookups: FollowUpService | None = None
    #: Erase personal data of cases ended this many days ago (0: never): up
    #: to ``purge_batch`` each tick (``handoff.privacy.purge``), so a backlog
    #: (retention just turned on over years of cases) is caught up, not left
    #: to grow as one batch a day did.
    retention_days: int = 0
    retention_keep_text: bool = False
    purge_batch: int = PURGE_EACH_TICK
    #: More work for each tick, after its transaction, each failing on its own
    #: (the bot adds sending again the replies Telegram did not take).
    jobs: list[Callable[[datetime], Awaitable[object]]] = field(default_factory=list)
    _last_optimize: datetime | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # keep going: the next tick retries
                log.exception("maintenance tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def tick(self) -> None:
        now = self.clock()
        async with self.sessionmaker() as session:
            async with session.begin():
                expired = await self._expire_ratings(session, now)
                closed = await self._expire_windows(session, now)
                if self.clocks is not None:
                    await self.clocks.remind_due(session, now)
                await forget_updates_before(session, now - DEDUPE_KEEP)
                await forget_done_before(session, now - OUTBOX_KEEP)
                if self.lookups is not None:
                    await self.lookups.forget_ended_windows(session, now)
                if session.bind is not None and session.bind.dialect.name == "sqlite" and (
                        self._last_optimize is None or now - self._last_optimize >= OPTIMIZE_EVERY):
                    # Keeps SQLite's planner statistics current (it has no autovacuum):
                    # without them the same-petitioner query scans every final case.
                    # Not every minute: SQLite analyzes again each time a table with
                    # a partial index that matches no row yet (it gets no statistics),
                    # and sampled (storage.db.ANALYSIS_LIMIT) that is still a few ms.
                    await session.execute(text("PRAGMA optimize"))
                    self._last_optimize = now
                if self.retention_days:
                    await purge(session, now, self.retention_days, self.purge_batch,
                                keep_text=self.retention_keep_text)
            if session.info.pop("outbox_dirty", False) and self.wakeup is not None:
                self.wakeup.set()
        if expired or closed:
            log.info("maintenance: %s rating invitations expired, %s windows closed", expired, closed)
        for job in self.jobs:
            try:
                await job(now)
            except Exception:  # the next tick retries
                log.exception("maintenance job failed")

    async def _expire_ratings(self, session: AsyncSession, now: datetime) -> int:
        result = await session.execute(update(Rating).where(Rating.status == "invited", Rating.expires_at <= now)
                                       .values(status="expired"))
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def _expire_windows(self, session: AsyncSession, now: datetime) -> int:
        limits = self.bureau.time_limits
        today = now.astimezone(BUREAU_TZ).date()
        cases = (await session.scalars(select(Case).where(
            Case.status.in_(("review_window", "rereview_window"))))).all()
        closed = 0
        for case in cases:
            if case.status == "review_window":
                start, days = case.decision_delivered_at or case.decision_issued_at, limits.ask_review_days
            else:
                start, days = case.review_delivered_at, limits.ask_rereview_days
            if start is None or due_date(start, days, strict=False) >= today:
                continue
            new = next_status(case.status, Action.EXPIRE_WINDOW, actor="system")
            if new is None:
                continue
            stage = "review" if case.status == "review_window" else "rereview"
            set_status(case, new, now)
            case.closed_at = now
            session.add(CaseEvent(case_id=case.id, at=now, actor_kind="system", actor_id=None,
                                  action=Action.EXPIRE_WINDOW.value, status=new, note=None, detail={"stage": stage}))
            if self.clocks is not None:
                await self.clocks.on_event(session, case, Action.EXPIRE_WINDOW.value, now)
            enqueue(session, kind="notice", chat_id=case.citizen_chat_id, case_id=case.id, now=now,
                    priority=PRIORITY_CITIZEN, payload={"text": str(t(
                        case.locale, f"notice.expired.{stage}", tracking=case.tracking_number))})
            if case.card_chat_id is not None:
                enqueue(session, kind="card", chat_id=case.card_chat_id, case_id=case.id, now=now,
                        priority=PRIORITY_CARD_EDIT)
            closed += 1
        return closed
