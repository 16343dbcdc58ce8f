"""Pacing policy for sending Telegram messages within Telegram's flood limits.

Pure policy: no I/O, no asyncio, no sleeping. An outbox delivery worker asks
``wait_time(chat_id)`` for the chats it could serve, sends one message to a
chat whose wait is ``0.0`` (or sleeps for the smallest wait), calls
``record(chat_id)`` for every request that puts or changes a message in a chat,
and ``penalize(chat_id, retry_after)`` when Telegram answers 429.

The numbers (Telegram Bot FAQ "My bot is hitting limits", docs/PITFALLS.md):

* about 1 message a second to one chat -> ``per_chat_interval=1.0``, measured
  from the last send to that chat;
* at most 20 messages a minute to one group -> ``group_per_minute=20``, counted
  over the last 60 s. Chat ids < 0 (groups, supergroups, channels) are groups;
  ids > 0 are private chats and get the per-chat interval only;
* about 30 messages a second overall -> ``global_per_second=30``, counted over
  the last 1 s, whichever chats they go to;
* edits count like new messages, so ``record()`` them too;
* a 429 carries ``retry_after`` (seconds, can be minutes); sending earlier only
  prolongs the ban, so it is waited exactly, never shortened.

Decisions:

* Sliding windows, not fixed buckets: a fixed minute bucket allows 20 sends at
  0:59 and 20 more at 1:00, i.e. 40 in two seconds, which Telegram refuses.
  A send at time ``s`` counts in a window of length ``W`` while ``now < s + W``.
* ``safety`` stretches every window and the per-chat interval by
  ``1 + safety`` (0.03: 1.03 s between sends to one chat, 20 per 61.8 s per
  group, 30 per 1.03 s overall), i.e. each limit is used at 1/1.03 = 97.1 %. It
  is headroom in *time* rather than in counts because (a) the risk being
  covered is timing: Telegram counts when a request arrives, we count when we
  issue it, and latency varies by tens of milliseconds; (b) counts are small
  integers, so 3 % of 30 rounds to a whole message (29/s = 97 %, 28/s = 93 %)
  while time scales evenly. ``safety`` does not apply to ``retry_after``, which
  is already exact. (It was 0.05 while sends were counted when a worker
  reserved them rather than when they went out, which let two passes bunch
  into one of Telegram's windows; see ``restamp``.)
* ``record()`` belongs right before the request is awaited, not after the
  answer: it reserves the slot, so concurrent senders sharing the pacer see it,
  and a request that fails later still counted at Telegram's end. A sender
  that reserves slots first and sends a little later (the outbox worker
  reserves a whole pass while it reads the rows) calls ``restamp()`` as each
  request goes out, so the count follows the requests as Telegram sees them.
* ``penalize()`` blocks only that chat, until ``now + retry_after`` exactly. The
  429 answer does not say whether the per-chat or the global limit was hit.
  Holding everything on every 429 would let one flooded group (whose
  retry_after can be minutes) stall every citizen's private reply; and since
  the global window keeps us under ~30/s, a 429 is almost always per chat. If a
  global flood did happen, every chat that tries gets its own 429 and its own
  penalty: at most one wasted request per chat.
* Memory stays flat: a chat's state is dropped as soon as it cannot affect a
  decision (private: ``interval`` after its last send; group: the group window
  after its newest send; penalty: at expiry). Each send appends ``(expiry,
  chat)`` to a FIFO queue per horizon (private / group); with a monotonic clock
  and a fixed horizon these expiries arrive in order, so pruning pops from the
  front: amortised O(1) per call, never a scan of all chats. Penalties have
  arbitrary lengths and go in a heap (rare). Entries are lazy: a popped entry
  drops its chat only if the chat's current expiry has passed; a later send or
  penalty has its own, later entry.
* The clock must be monotonic (``time.monotonic`` by default). A clock going
  backwards would only delay pruning, never allow a send early.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import time
from collections import deque
from collections.abc import Callable

_MINUTE = 60.0
_SECOND = 1.0


class _ChatState:
    __slots__ = ("last_send", "penalty_until", "sends")

    def __init__(self, is_group: bool) -> None:
        self.last_send = -math.inf
        self.penalty_until = -math.inf
        # Send times still inside the group window; private chats need only last_send.
        self.sends: deque[float] | None = deque() if is_group else None


class Pacer:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        per_chat_interval: float = 1.0,
        group_per_minute: int = 20,
        global_per_second: int = 30,
        safety: float = 0.03,
    ) -> None:
        if not (per_chat_interval >= 0 and math.isfinite(per_chat_interval)):
            raise ValueError(f"per_chat_interval must be finite and >= 0, not {per_chat_interval!r}")
        if group_per_minute < 1 or global_per_second < 1:
            raise ValueError("group_per_minute and global_per_second must be >= 1")
        if not (safety >= 0 and math.isfinite(safety)):
            raise ValueError(f"safety must be finite and >= 0, not {safety!r}")
        stretch = 1.0 + safety
        self._clock = clock
        self._interval = per_chat_interval * stretch
        self._group_limit = group_per_minute
        self._group_window = _MINUTE * stretch
        self._global_limit = global_per_second
        self._global_window = _SECOND * stretch
        # How long after its last send a chat's state can still matter.
        self._private_horizon = self._interval
        self._group_horizon = max(self._interval, self._group_window)

        self._chats: dict[int, _ChatState] = {}
        self._global_sends: deque[float] = deque()  # send times inside the global window
        self._private_expiries: deque[tuple[float, int]] = deque()  # FIFO, nondecreasing
        self._group_expiries: deque[tuple[float, int]] = deque()  # FIFO, nondecreasing
        self._penalty_expiries: list[tuple[float, int]] = []  # heap: lengths vary

    def wait_time(self, chat_id: int) -> float:
        """Seconds from now until one message to ``chat_id`` is allowed (0.0 if now)."""
        now = self._clock()
        self._prune(now)
        ready = now
        if len(self._global_sends) >= self._global_limit:
            # Allowed once the limit-th newest send leaves the window.
            ready = max(ready, self._global_sends[-self._global_limit] + self._global_window)
        state = self._chats.get(chat_id)
        if state is not None:
            ready = max(ready, state.last_send + self._interval, state.penalty_until)
            sends = state.sends
            if sends is not None:
                self._trim(sends, self._group_window, now)
                if len(sends) >= self._group_limit:
                    ready = max(ready, sends[-self._group_limit] + self._group_window)
        return ready - now

    def reply_wait_time(self, chat_id: int) -> float:
        """Like :meth:`wait_time` for a direct reply to someone who just wrote:
        a private chat gets the global limit only (a reply of two or three
        messages is not spread a second apart: Telegram allows short bursts to
        one person); a group gets every limit."""
        if chat_id < 0:
            return self.wait_time(chat_id)
        now = self._clock()
        self._prune(now)
        if len(self._global_sends) < self._global_limit:
            return 0.0
        return max(0.0, self._global_sends[-self._global_limit] + self._global_window - now)

    def record(self, chat_id: int) -> float:
        """One message to ``chat_id`` was just sent (or edited): call it as the request is issued.
        Returns the time it was counted at (for :meth:`restamp`)."""
        now = self._clock()
        self._prune(now)
        self._global_sends.append(now)
        is_group = chat_id < 0
        state = self._chats.get(chat_id)
        if state is None:
            state = self._chats[chat_id] = _ChatState(is_group)
        state.last_send = now
        if state.sends is not None:
            state.sends.append(now)
            self._trim(state.sends, self._group_window, now)
            self._group_expiries.append((now + self._group_horizon, chat_id))
        else:
            self._private_expiries.append((now + self._private_horizon, chat_id))
        return now

    def restamp(self, chat_id: int, counted_at: float) -> None:
        """A message counted at ``counted_at`` (a slot reserved by :meth:`record`)
        is only now being sent: count it now instead. Telegram counts a request
        when it arrives; a worker that reserves slots and then does other work
        before sending would otherwise let the sends of two passes bunch into
        one of Telegram's windows."""
        now = self._clock()
        if now <= counted_at:
            return
        self._prune(now)
        with contextlib.suppress(ValueError):  # already out of the window
            self._global_sends.remove(counted_at)
        self._global_sends.append(now)
        state = self._chats.get(chat_id)
        if state is None:
            return
        state.last_send = max(state.last_send, now)
        if state.sends is not None:
            with contextlib.suppress(ValueError):
                state.sends.remove(counted_at)
            state.sends.append(now)
            self._group_expiries.append((now + self._group_horizon, chat_id))
        else:
            self._private_expiries.append((now + self._private_horizon, chat_id))

    def penalize(self, chat_id: int, retry_after: float) -> None:
        """Telegram answered 429: nothing to ``chat_id`` until now + ``retry_after`` exactly.

        Per chat only (see the module docstring). Does not count as a send:
        ``record()`` was already called when the request was issued.
        """
        if not (retry_after >= 0 and math.isfinite(retry_after)):
            raise ValueError(f"retry_after must be finite and >= 0, not {retry_after!r}")
        now = self._clock()
        self._prune(now)
        until = now + retry_after
        state = self._chats.get(chat_id)
        if state is None:
            state = self._chats[chat_id] = _ChatState(chat_id < 0)
        if until > state.penalty_until:  # a shorter, later 429 never shortens a ban
            state.penalty_until = until
            heapq.heappush(self._penalty_expiries, (until, chat_id))

    def tracked_chats(self) -> int:
        """How many chats have state now (after dropping what can no longer matter)."""
        self._prune(self._clock())
        return len(self._chats)

    # -- internals --------------------------------------------------------

    @staticmethod
    def _trim(sends: deque[float], window: float, now: float) -> None:
        while sends and sends[0] + window <= now:
            sends.popleft()

    def _prune(self, now: float) -> None:
        self._trim(self._global_sends, self._global_window, now)
        for queue in (self._private_expiries, self._group_expiries):
            while queue and queue[0][0] <= now:
                self._drop_if_expired(queue.popleft()[1], now)
        heap = self._penalty_expiries
        while heap and heap[0][0] <= now:
            self._drop_if_expired(heapq.heappop(heap)[1], now)

    def _drop_if_expired(self, chat_id: int, now: float) -> None:
        state = self._chats.get(chat_id)
        if state is None:
            return
        horizon = self._private_horizon if state.sends is None else self._group_horizon
        if max(state.last_send + horizon, state.penalty_until) <= now:
            del self._chats[chat_id]
