"""Query codes made ahead of the confirm.

A query code is stored only as a salted Argon2id hash (``dialogs.tracking``),
and one hash costs a few ms of CPU (4 MiB of memory on purpose). Computed
inside the confirm, it adds those ms to the update and, with group commit, to
every update of its batch. So codes are made ahead, in a thread of their own
(the hash releases the GIL, so the event loop keeps running on another core):
a new filing asks for one when it begins, and its confirm, some twenty steps
later, takes one that is ready. When none is ready the confirm makes its own,
off the event loop as before. A filing abandoned half-way leaves its code for
the next confirm; at most ``limit`` codes wait, so starting filings without
end costs at most that many hashes.

The maker thread runs at the lowest CPU priority the OS has for it (Linux's
``SCHED_IDLE``): it is work for later, and it must not take a core from what a
citizen is waiting for now. At normal priority it did: a commit's thread,
woken when its fsync completed, was placed behind a hash running on the other
core and waited out the hash's time slice, ~2.5 ms added to a 0.3 ms commit
(BENCHMARKS finding 31). With nothing to make for a while the thread ends,
and the next filing starts another.

The codes waiting here are random and belong to no case; they live only in
this process's memory, and a restart simply makes new ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque

from dialogs.tracking import hash_query_code, new_query_code

log = logging.getLogger(__name__)

#: How long the maker thread waits for more to make before it ends.
IDLE_SECONDS = 30.0


def _make() -> tuple[str, str]:
    code = new_query_code()
    return code, hash_query_code(code)


def background_priority() -> None:
    """Run the calling thread only on CPU time nothing else wants (Linux:
    ``SCHED_IDLE``, which an unprivileged thread may always move to). Elsewhere
    the thread keeps its priority: macOS and Windows have no per-thread call
    for it in ``os``."""
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is None:
        return
    try:
        os.sched_setscheduler(0, idle, os.sched_param(0))  # 0: this thread, on Linux
    except OSError as exc:  # a sandbox that forbids it: only slower, never wrong
        log.debug("query-code maker keeps its priority: %s", exc)


class QueryCodes:
    """(code, hash) pairs made ahead, at most ``limit`` of them."""

    def __init__(self, limit: int = 2048) -> None:
        # One code per filing in progress, for a surge of a couple of thousand
        # filings at once; a pair takes about 200 bytes, so 2,048 take ~0.4 MB.
        self.limit = limit
        self._ready: deque[tuple[str, str]] = deque()
        #: How many confirms are expected (filings begun, not yet confirmed).
        self._wanted = 0
        #: Set when there may be codes to make; the maker thread, while it runs.
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._maker: threading.Thread | None = None

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
            pair = await asyncio.to_thread(_make)  # the confirm waits for this one: normal priority
        self._fill_soon()
        return pair

    def _fill_soon(self) -> None:
        if len(self._ready) >= self._wanted:
            return
        with self._lock:
            self._wake.set()
            if self._maker is None:
                self._maker = threading.Thread(target=self._run, name="query-codes", daemon=True)
                self._maker.start()

    def _run(self) -> None:
        """The maker thread: make codes until as many are ready as are wanted,
        then wait for more; end after :data:`IDLE_SECONDS` with nothing to do.
        One thread for them all, so a busy event loop does not slow the making
        (appending to and taking from a deque are atomic). A daemon: a process
        that stops loses only codes it would have thrown away."""
        background_priority()
        while True:
            if not self._wake.wait(IDLE_SECONDS):
                with self._lock:
                    if not self._wake.is_set():  # else a filing asked meanwhile: go on
                        self._maker = None
                        return
            self._wake.clear()
            try:
                while len(self._ready) < self._wanted:
                    self._ready.append(_make())
            except Exception:  # the confirm makes its own; nothing is lost
                log.exception("making query codes ahead failed")
