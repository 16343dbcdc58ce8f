"""Feeding updates the way long polling delivers them.

Each simulated person is a script (a generator of :class:`Step`) that produces
its next update only after the bot has answered the previous one, as a person
reads the reply before typing. Updates that are ready wait "at Telegram" in
arrival order; the poller takes up to 100 of them (getUpdates' limit), makes
their ``Update`` objects only then (as aiogram parses getUpdates' answer), and
hands the batch to the product's own :func:`bot.polling.process_batch` (each chat's
updates in order, chats concurrently); only when the whole batch is done does
it fetch the next one. A person whose update finished early is therefore
queued ahead of one who finished late.

Latency of an update is the time from the moment polling hands its batch over
until the update is committed and its replies are sent (``process_batch``'s
``done``). The whole batch is one transaction (group commit), so every update
of a batch waits for the batch's commit.

That closed loop has no think time: the bot is saturated, batches are always
full, and latency is the time of a full batch. :func:`run_paced` is the same
feed at a person's pace: each person reads the reply and answers after a think
time drawn between two bounds, the poller takes what has arrived (up to 100)
as soon as it is there, and latency is measured from the moment the update
arrived at Telegram, so the time it waited behind the previous batch counts
(and so does making its ``Update``, ~0.2 ms, for the bot and the ceiling alike).

Updates waiting at Telegram do not exist in this process. Made in advance, a
thousand citizens' next updates (pydantic models, their dicts and sets) lived
through several young collections each and made the garbage collector the bot
shares with the driver pause for up to 18 ms (young) and 22–54 ms (full) in
the middle of batches (BENCHMARKS finding 25).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.types import Chat, Update

from bot.polling import process_batch
from bot.simulator import BOT_USER

_BOT = BOT_USER.model_dump(exclude_none=True)

POLL_LIMIT = 100


class Ids:
    """Update and message ids, shared by everyone in one run (ids are never reused)."""

    def __init__(self, bot: Bot | None = None, first_update: int = 1) -> None:
        self.bot = bot
        self.updates = itertools.count(first_update)
        self.messages = itertools.count(1_000_000)


class Person:
    """Builds the ``Update`` objects a Telegram client would produce for one user.

    Updates are parsed with the bot in their context, as ``bot.get_updates()``
    returns them, so aiogram does not re-create each one (it re-validates an
    update through a JSON round trip when it is not mounted to the bot).
    """

    __slots__ = ("bot", "chat", "ids", "user")

    def __init__(self, ids: Ids, user_id: int, language_code: str = "zh", bot: Bot | None = None) -> None:
        self.ids = ids
        self.bot = bot if bot is not None else ids.bot
        self.user = {"id": user_id, "is_bot": False, "first_name": "Citizen", "language_code": language_code}
        self.chat = Chat(id=user_id, type="private")

    def _update(self, fields: dict[str, Any]) -> Update:
        return Update.model_validate({"update_id": next(self.ids.updates), **fields},
                                     context={"bot": self.bot} if self.bot is not None else None)

    def text(self, text: str) -> Update:
        return self._update({"message": {
            "message_id": next(self.ids.messages), "date": int(time.time()),
            "chat": {"id": self.chat.id, "type": "private"}, "from": self.user, "text": text}})

    def press(self, data: str) -> Update:
        anchor = {"message_id": next(self.ids.messages), "date": int(time.time()),
                  "chat": {"id": self.chat.id, "type": "private"}, "from": _BOT, "text": "…"}
        return self._update({"callback_query": {
            "id": str(next(self.ids.messages)), "from": self.user, "chat_instance": "bench",
            "data": data, "message": anchor}})


@dataclass(frozen=True)
class Step:
    label: str
    update: Update


Script = Iterator[Step]


@dataclass
class FeedResult:
    updates: int = 0
    seconds: float = 0.0
    batches: int = 0
    latencies: list[float] = field(default_factory=list)
    by_label: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0


async def run_closed_loop(dp: Dispatcher, bot: Bot, scripts: list[Script], *,
                          poll_limit: int = POLL_LIMIT) -> FeedResult:
    """Run every script to its end; see the module docstring for the model."""
    result = FeedResult()
    ready: deque[Script] = deque(scripts)  # each has its next update ready "at Telegram"
    started = time.perf_counter()
    done: list[tuple[int, float]] = []  # (update id, seconds since the batch was handed over)
    while ready:
        batch: list[tuple[Script, Step]] = []
        while ready and len(batch) < poll_limit:  # each update made now that polling takes it
            script = ready.popleft()
            if (step := next(script, None)) is not None:
                batch.append((script, step))
        if not batch:
            break
        owners = {step.update.update_id: (script, step) for script, step in batch}
        done.clear()
        handed = time.perf_counter()

        def finished(update_id: int, handed: float = handed) -> None:
            done.append((update_id, time.perf_counter() - handed))

        await process_batch(dp, bot, [step.update for _, step in batch], done=finished)
        result.batches += 1
        for update_id, seconds in done:
            script, step = owners.pop(update_id)
            result.updates += 1
            result.latencies.append(seconds)
            result.by_label.setdefault(step.label, []).append(seconds)
            ready.append(script)
        assert not owners, f"updates not processed: {sorted(owners)}"
    result.seconds = time.perf_counter() - started
    return result


async def run_paced(dp: Dispatcher, bot: Bot, scripts: list[Script], think: tuple[float, float], *,
                    poll_limit: int = POLL_LIMIT, seed: int = 7) -> FeedResult:
    """Run every script to its end at a person's pace (see the module docstring).
    Each person's first update arrives within one think time of the start."""
    rng = random.Random(seed)
    result = FeedResult()
    order = itertools.count()
    started = time.perf_counter()
    pending: list[tuple[float, int, Script]] = []  # (its next update arrives at, tie-break, script)
    for script in scripts:
        heapq.heappush(pending, (started + rng.uniform(0, think[1]), next(order), script))
    done: dict[int, float] = {}
    while pending:
        now = time.perf_counter()
        if pending[0][0] > now:
            await asyncio.sleep(pending[0][0] - now)
            continue
        due: list[tuple[float, int, Script]] = []
        while pending and pending[0][0] <= now and len(due) < poll_limit:
            due.append(heapq.heappop(pending))
        # Each update made now that polling takes it; a script that has ended has none.
        batch = [(arrived, script, step) for arrived, _, script in due if (step := next(script, None)) is not None]
        if not batch:
            continue
        owners = {step.update.update_id: (arrived, script, step) for arrived, script, step in batch}
        done.clear()

        def finished(update_id: int) -> None:
            done[update_id] = time.perf_counter()

        await process_batch(dp, bot, [step.update for _, _, step in batch], done=finished)
        result.batches += 1
        for update_id, at in done.items():
            arrived, script, step = owners.pop(update_id)
            result.updates += 1
            result.latencies.append(at - arrived)
            result.by_label.setdefault(step.label, []).append(at - arrived)
            heapq.heappush(pending, (at + rng.uniform(*think), next(order), script))
        assert not owners, f"updates not processed: {sorted(owners)}"
    result.seconds = time.perf_counter() - started
    return result
