"""Benchmark 3: a notification burst under Telegram's flood limits, in scaled time.

The fake Bot API (:class:`TelegramLimits`) enforces 1 message a second per
chat, 20 a minute per group and 30 a second overall, over sliding windows, and
answers 429 (``TelegramRetryAfter``) to a request that would exceed one.
Time runs ``factor`` times faster than the wall clock: the same scaled clock
drives the limits, the worker's ``clock`` and its ``Pacer(clock=...)``.

``OutboxWorker.run`` sleeps between passes with real ``asyncio`` timeouts taken
from those clocks' waits, which would be ``factor`` times too long here, so
:func:`run_worker` repeats ``run``'s loop line for line (pass, clear wakeup,
sleep until the next row is due or new rows arrive) with the sleep divided by
``factor``. Everything else is the product's worker: claim, lease, pacing,
sending through ``TelegramTransport``, marking, 429 handling.

Two bursts:

* ``group``: N cases submitted at once, i.e. N staff cards for the one staff
  group (the group's 20/minute is the binding limit);
* ``private``: N status notices to N different citizens (30/second overall).

Meanwhile citizens confirm their own filings; their receipts go straight back
after the commit (not through the outbox) and their latency is reported.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import (
    CopyMessage,
    EditMessageText,
    SendDocument,
    SendMediaGroup,
    SendMessage,
    SendPhoto,
    TelegramMethod,
)
from sqlalchemy import delete, func, select

from bench.common import STAFF_CHAT, BenchTelegram, BotUnderTest, build_bot, scratch_database, summary_ms
from bench.feeder import Ids, Person, run_closed_loop
from bench.fill import make_filler
from bench.scripts import TRACKING, Receipts, filing, steps_to_summary
from bot.app import create_outbox_worker
from handoff.outbox import PRIORITY_CITIZEN, OutboxWorker, enqueue
from handoff.pacer import Pacer
from storage.models import Case, OutboxMessage

log = logging.getLogger(__name__)

SENDS = (SendMessage, SendPhoto, SendDocument, SendMediaGroup, CopyMessage, EditMessageText)
FIRST_CITIZEN = 4_000_000
PRIVATE_BASE = 7_000_000_000  #: notice recipients: one private chat per case


class ScaledTime:
    """Monotonic and wall clocks running ``factor`` times faster than real time."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.real0 = time.monotonic()
        # Starts at the real time: rows the dispatcher writes (on the real clock) are due at once,
        # and scaled time never falls behind real time (factor >= 1).
        self.wall0 = datetime.now(UTC)

    def restart(self) -> None:
        self.wall0 = self.now()
        self.real0 = time.monotonic()

    def monotonic(self) -> float:
        return 1000.0 + (time.monotonic() - self.real0) * self.factor

    def now(self) -> datetime:
        return self.wall0 + timedelta(seconds=(time.monotonic() - self.real0) * self.factor)


class TelegramLimits:
    """Telegram's flood limits, checked when a request arrives, on the scaled clock."""

    def __init__(self, clock: ScaledTime, *, per_chat: float = 1.0, group_per_minute: int = 20,
                 global_per_second: int = 30) -> None:
        self.clock = clock
        self.per_chat = per_chat
        self.group_limit = group_per_minute
        self.global_limit = global_per_second
        self.last: dict[int, float] = {}
        self.groups: dict[int, deque[float]] = {}
        self.overall: deque[float] = deque()
        self.rejected: Counter[str] = Counter()
        self.accepted: list[tuple[float, int, str]] = []
        #: Names where a request to ``chat`` came from (for the report).
        self.origin: Callable[[int], str] = lambda chat: "group" if chat < 0 else "private"
        #: For each 429: how much too early the request came (scaled seconds).
        self.early: list[float] = []
        self.enabled = False

    def check(self, method: TelegramMethod[Any]) -> None:
        if not self.enabled or not isinstance(method, SENDS):
            return
        chat = int(method.chat_id)  # type: ignore[arg-type]
        now = self.clock.monotonic()
        while self.overall and self.overall[0] <= now - 1.0:
            self.overall.popleft()
        ready, rule = now, ""
        if len(self.overall) >= self.global_limit and self.overall[-self.global_limit] + 1.0 > ready:
            ready, rule = self.overall[-self.global_limit] + 1.0, "30/s overall"
        if chat in self.last and self.last[chat] + self.per_chat > ready:
            ready, rule = self.last[chat] + self.per_chat, "1/s per chat"
        window = self.groups.setdefault(chat, deque()) if chat < 0 else None
        if window is not None:
            while window and window[0] <= now - 60.0:
                window.popleft()
            if len(window) >= self.group_limit and window[-self.group_limit] + 60.0 > ready:
                ready, rule = window[-self.group_limit] + 60.0, "20/min per group"
        if ready > now:
            self.rejected[f"{self.origin(chat)}: {rule}"] += 1
            self.early.append(ready - now)
            raise TelegramRetryAfter(method=method, message="Too Many Requests",  # type: ignore[misc]
                                     retry_after=max(1, math.ceil(ready - now)))
        self.last[chat] = now
        self.overall.append(now)
        if window is not None:
            window.append(now)
        text = getattr(method, "text", None) or getattr(method, "caption", None) or ""
        self.accepted.append((now, chat, text))


def ideal_span(count: int, kind: str) -> float:
    """Seconds from the first to the last of ``count`` messages sent as fast as the limits allow."""
    if count <= 1:
        return 0.0
    last = count - 1
    if kind == "group":  # 1/s per chat and 20 per sliding minute: 20 a second apart, then wait for the window
        return 60.0 * (last // 20) + (last % 20) * 1.0
    return float(last // 30)  # 30 per sliding second, each to its own chat


async def run_worker(worker: OutboxWorker, scaled: ScaledTime, stop: asyncio.Event) -> int:
    """``OutboxWorker.run`` with its sleeps divided by the time factor (see the module docstring)."""
    passes = 0
    while not stop.is_set():
        try:
            wait = await worker.deliver_due()
        except Exception:
            log.exception("outbox pass failed")
            wait = 5.0
        passes += 1
        worker.wakeup.event.clear()
        sleep = 30.0 if wait is None else max(wait, 0.01)
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(worker.wakeup.event.wait())]
        await asyncio.wait(waiters, timeout=sleep / scaled.factor, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
    return passes


async def _pending(app: BotUnderTest) -> int:
    async with app.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxMessage)
                                        .where(OutboxMessage.status == "pending")) or 0)


async def run_burst(backend: str, kind: str, count: int, factor: float, citizens: int, pg_url: str,
                    limit_s: float = 1200.0) -> dict[str, Any]:
    scaled = ScaledTime(factor)
    limits = TelegramLimits(scaled)
    async with scratch_database(backend, pg_url) as url:
        app = await build_bot(url, telegram=BenchTelegram(track_chats=True, limits=limits))
        try:
            ids = Ids(app.bot)
            template = Receipts()
            for step in filing(Person(ids, FIRST_CITIZEN - 1), app.telegram, template):
                await app.dp.feed_update(app.bot, step.update)
            filler = await make_filler(app, template_case_id=1)
            await filler.grow_to(count)
            now = scaled.now()
            async with app.sessionmaker() as session, session.begin():
                await session.execute(delete(OutboxMessage))  # the template's own card
                case_rows = (await session.execute(select(Case.id, Case.citizen_chat_id, Case.tracking_number)
                                                   .where(Case.id != 1).order_by(Case.id))).all()
                for case_id, _chat_id, number in case_rows:
                    if kind == "group":
                        enqueue(session, kind="card", chat_id=STAFF_CHAT, case_id=case_id, now=now)
                    else:  # a distinct chat per notice
                        enqueue(session, kind="notice", chat_id=PRIVATE_BASE + case_id, case_id=case_id,
                                now=now, priority=PRIORITY_CITIZEN,
                                payload={"text": f"您的信访事项 {number} 状态已更新。"})
            # Citizens get to their summary before the burst (untimed, limits off).
            receipts = Receipts()
            persons = [Person(ids, FIRST_CITIZEN + i) for i in range(citizens)]
            await run_closed_loop(app.dp, app.bot, [steps_to_summary(p, app.telegram, receipts) for p in persons])

            citizen_chats = {p.chat.id for p in persons}
            limits.origin = lambda chat: ("direct reply to a citizen" if chat in citizen_chats
                                          else "outbox to the staff group" if chat < 0 else "outbox to a citizen")
            limits.enabled = True
            scaled.restart()
            pacer = Pacer(clock=scaled.monotonic)
            app.dp["pipeline"].pacer = pacer  # as production shares it (create_dispatcher(pacer=…))
            worker = create_outbox_worker(app.dp, app.sessionmaker, app.bot, clock=scaled.now, pacer=pacer)
            stop = asyncio.Event()
            worker_task = asyncio.create_task(run_worker(worker, scaled, stop))
            # Citizens confirm one after another, spread over the first part of the burst.
            confirm_latency: list[float] = []
            replies_lost = 0
            gap = min(2.0, max(0.2, ideal_span(count, kind) / factor / max(1, citizens) / 2))
            started = time.monotonic()
            for person in persons:
                await asyncio.sleep(gap)
                markup = app.telegram.keyboards.get(person.chat.id)
                data = next(b.callback_data for row in (markup.inline_keyboard if markup else [])
                            for b in row if b.text == "✅ 确认提交")
                t0 = time.perf_counter()
                try:
                    await app.dp.feed_update(app.bot, person.press(str(data)))
                except TelegramRetryAfter:  # escaped the pipeline after its commit: the reply is lost
                    replies_lost += 1
                confirm_latency.append(time.perf_counter() - t0)
                receipt = TRACKING.search(app.telegram.last_text.get(person.chat.id, ""))
                if receipt:
                    receipts.ok.append((receipt.group(0), ""))
                else:
                    receipts.failed.append(app.telegram.last_text.get(person.chat.id, "")[:120])
            while await _pending(app) and time.monotonic() - started < limit_s:  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.25)
            stop.set()
            passes = await worker_task
            real_seconds = time.monotonic() - started

            # What arrived, and what the database says.
            outbox_sends = [(t, chat, text) for t, chat, text in limits.accepted
                            if (chat == STAFF_CHAT) == (kind == "group") and chat not in citizen_chats]
            async with app.sessionmaker() as session:
                statuses = dict((await session.execute(
                    select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status))).all())
                burst_kind = "card" if kind == "group" else "notice"
                expected_numbers = {n for (n,) in (await session.execute(
                    select(Case.tracking_number).join(OutboxMessage, OutboxMessage.case_id == Case.id)
                    .where(OutboxMessage.kind == burst_kind))).all()}
            seen: Counter[str] = Counter()
            for _, _, text in outbox_sends:
                found = TRACKING.search(text)
                if found:
                    seen[found.group(0)] += 1
            delivered = len([n for n in expected_numbers if seen[n] >= 1])
            duplicated = sum(c - 1 for c in seen.values() if c > 1)
            times = [t for t, _, _ in outbox_sends]
            span = (max(times) - min(times)) if len(times) > 1 else 0.0
            ideal = ideal_span(len(times), kind)
            # Every message Telegram accepted within that span: the citizens' receipts
            # and their staff cards share the 30-a-second limit with the notices.
            in_span = len([t for t, _, _ in limits.accepted if times and min(times) <= t <= max(times)])
            return {
                "backend": backend, "kind": kind, "count": count, "factor": factor,
                "expected": len(expected_numbers), "sent_requests": len(outbox_sends), "delivered_distinct": delivered,
                "lost": len(expected_numbers) - delivered, "duplicated": duplicated,
                "outbox_status": statuses,
                "rejected_429": dict(limits.rejected),
                "rejected_early_by_s": sorted(limits.early)[-5:],
                "span_scaled_s": span, "ideal_span_s": ideal,
                "efficiency": (ideal / span) if span else math.nan,
                "messages_in_span": in_span,
                "efficiency_all_messages": (ideal_span(in_span, "private") / span
                                            if span and kind == "private" else None),
                "rate_per_min": (len(times) - 1) / span * 60 if span else math.nan,
                "real_seconds": real_seconds, "worker_passes": passes,
                "citizens": citizens, "confirm": summary_ms(confirm_latency),
                "receipts_ok": len(receipts.ok), "receipts_failed": len(receipts.failed),
                "confirm_replies_lost_to_429": replies_lost,
            }
        finally:
            await app.close()
