"""Query codes made ahead of the confirm.

A query code is stored only as a salted Argon2id hash (``dialogs.tracking``),
and one hash costs a few ms of CPU (4 MiB of memory on purpose). Computed
inside the confirm, it adds those ms to the update and, with group commit, to
every update of its batch. So codes are made ahead, in a worker thread (the
hash releases the GIL, so the event loop keeps running on the other core): a
new filing asks for one when it begins, and its confirm, some twenty steps
later, takes one that is ready. When none is ready the confirm makes its own, off the event loop as
before. A filing abandoned half-way leaves its code for the next confirm; at
most ``limit`` codes wait, so starting filings without end costs at most that
many hashes.

The codes waiting here are random and belong to no case; they live only in
this process's memory, and a restart simply makes new ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from dialogs.tracking import hash_query_code, new_query_code

log = logging.getLogger(__name__)


def _make() -> tuple[str, str]:
    code = new_query_code()
    return code, hash_query_code(code)


class QueryCodes:
    """(code, hash) pairs made ahead, at most ``limit`` of them."""

    def __init__(self, limit: int = 2048) -> None:
        # One code per filing in progress, for a surge of a couple of thousand
        # filings at once; a pair takes about 200 bytes, so 2,048 take ~0.4 MB.
        self.limit = limit
        self._ready: deque[tuple[str, str]] = deque()
        #: How many confirms are expected (filings begun, not yet confirmed).
        self._wanted = 0
        self._filling: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._ready)

    def expect(self) -> None:
        """A filing began: have a code ready for its confirm."""
        self._wanted = min(self._wanted + 1, self.limit)
        self._fill_soon()

    async def take(self) -> tuple[str, str]:
        """A fresh code and its hash."""
        self._wanted = max(self._wanted - 1, 0)
        if self._ready:
            pair = self._ready.popleft()
        else:
            pair = await asyncio.to_thread(_make)
        self._fill_soon()
        return pair

    def _fill_soon(self) -> None:
        if len(self._ready) >= self._wanted:
            return
        if self._filling is None or self._filling.done():
            self._filling = asyncio.get_running_loop().create_task(self._fill(), name="query-codes")

    async def _fill(self) -> None:
        try:
            await asyncio.to_thread(self._make_wanted)
        except Exception:  # the confirm makes its own; nothing is lost
            log.exception("making query codes ahead failed")

    def _make_wanted(self) -> None:
        """In the worker thread: make codes until as many are ready as are wanted.
        One thread call for them all, so a busy event loop does not slow the making
        (appending to and taking from a deque are atomic)."""
        while len(self._ready) < self._wanted:
            self._ready.append(_make())
