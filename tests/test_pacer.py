"""The pacing policy against Telegram's limits, on a fake clock (no sleeping)."""

from __future__ import annotations

import math
from collections import deque

import pytest

from handoff.pacer import Pacer

GROUP = -1001234567
PRIVATE = 42


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def exact_pacer(clock: FakeClock) -> Pacer:
    """No headroom, so the expected waits are Telegram's own numbers."""
    return Pacer(clock=clock, safety=0.0)


def test_first_message_is_immediate() -> None:
    pacer = Pacer(clock=FakeClock(1000.0))
    assert pacer.wait_time(PRIVATE) == 0.0
    assert pacer.wait_time(GROUP) == 0.0
    assert pacer.tracked_chats() == 0  # asking creates no state


def test_second_message_to_a_private_chat_waits_one_second() -> None:
    clock = FakeClock()
    pacer = exact_pacer(clock)
    pacer.record(PRIVATE)
    assert pacer.wait_time(PRIVATE) == 1.0
    assert pacer.wait_time(PRIVATE + 1) == 0.0  # other chats are not held
    clock.advance(0.25)
    assert pacer.wait_time(PRIVATE) == 0.75
    clock.advance(0.75)
    assert pacer.wait_time(PRIVATE) == 0.0


def test_safety_stretches_the_interval() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)  # default safety 0.03
    pacer.record(PRIVATE)
    assert pacer.wait_time(PRIVATE) == pytest.approx(1.03)


def test_private_chats_have_no_per_minute_limit() -> None:
    clock = FakeClock()
    pacer = exact_pacer(clock)
    for _ in range(60):
        assert pacer.wait_time(PRIVATE) == 0.0
        pacer.record(PRIVATE)
        clock.advance(1.0)


def test_a_group_gets_the_per_chat_interval_too() -> None:
    clock = FakeClock()
    pacer = exact_pacer(clock)
    pacer.record(GROUP)
    assert pacer.wait_time(GROUP) == 1.0


def test_group_21st_message_waits_until_the_first_leaves_the_window() -> None:
    clock = FakeClock()
    pacer = exact_pacer(clock)
    for _ in range(20):  # t = 0 .. 19, one a second
        assert pacer.wait_time(GROUP) == 0.0
        pacer.record(GROUP)
        clock.advance(1.0)
    assert clock.now == 20.0
    assert pacer.wait_time(GROUP) == 40.0  # until t = 60, when the t = 0 send leaves
    clock.advance(40.0)
    assert pacer.wait_time(GROUP) == 0.0
    pacer.record(GROUP)
    # Sliding, not a fresh bucket: the 22nd waits for the t = 1 send, not another minute.
    clock.advance(0.5)
    assert pacer.wait_time(GROUP) == 0.5
    # Each group is counted on its own.
    assert pacer.wait_time(GROUP - 1) == 0.0


def test_31st_message_in_a_second_waits_for_the_global_window() -> None:
    clock = FakeClock()
    pacer = exact_pacer(clock)
    for chat in range(1, 31):  # 30 chats within one second, t = 0 .. 0.87
        assert pacer.wait_time(chat) == 0.0
        pacer.record(chat)
        clock.advance(0.03)
    assert clock.now == pytest.approx(0.9)
    assert pacer.wait_time(31) == pytest.approx(0.1)  # until the t = 0 send is 1 s old
    assert pacer.wait_time(-31) == pytest.approx(0.1)  # groups share the global window
    clock.advance(0.1)
    assert pacer.wait_time(31) == 0.0


def test_penalty_blocks_exactly_retry_after() -> None:
    clock = FakeClock(500.0)
    pacer = Pacer(clock=clock)  # safety does not stretch a penalty
    pacer.record(GROUP)
    pacer.penalize(GROUP, 37)
    assert pacer.wait_time(GROUP) == 37.0
    clock.advance(36.5)
    assert pacer.wait_time(GROUP) == 0.5
    clock.advance(0.5)
    assert pacer.wait_time(GROUP) == 0.0
    # Per chat: nobody else was held.
    other = FakeClock(500.0)
    pacer = Pacer(clock=other)
    pacer.penalize(PRIVATE, 300)
    assert pacer.wait_time(PRIVATE) == 300.0
    assert pacer.wait_time(PRIVATE + 1) == 0.0
    assert pacer.wait_time(GROUP) == 0.0


def test_a_short_penalty_never_shortens_a_longer_one_or_the_interval() -> None:
    clock = FakeClock()
    pacer = exact_pacer(clock)
    pacer.penalize(PRIVATE, 120)
    pacer.penalize(PRIVATE, 5)
    assert pacer.wait_time(PRIVATE) == 120.0
    pacer.record(PRIVATE + 1)
    pacer.penalize(PRIVATE + 1, 0.25)
    assert pacer.wait_time(PRIVATE + 1) == 1.0


def test_expired_penalties_are_forgotten() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    for chat in range(1, 1001):
        pacer.penalize(chat, chat % 7 + 1)
    assert pacer.tracked_chats() == 1000
    clock.advance(4.0)
    assert 0 < pacer.tracked_chats() < 1000
    clock.advance(4.0)
    assert pacer.tracked_chats() == 0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_penalty_must_be_a_real_duration(bad: float) -> None:
    with pytest.raises(ValueError):
        Pacer(clock=FakeClock()).penalize(PRIVATE, bad)


# -- a delivery loop over simulated time ------------------------------------

SAFETY = 0.05
STRETCH = 1 + SAFETY
EPS = 1e-9  # float rounding of the simulated clock


class History:
    """Every send so far, kept whole: an independent reference for what the
    pacer (which forgets) must answer."""

    def __init__(self) -> None:
        self.everything: list[float] = []
        self.by_chat: dict[int, list[float]] = {}

    def add(self, now: float, chat: int) -> None:
        self.everything.append(now)
        self.by_chat.setdefault(chat, []).append(now)

    def earliest(self, chat: int, now: float) -> float:
        """When the padded limits allow the next send to chat, from the full history."""
        ready = now
        if len(self.everything) >= 30:
            ready = max(ready, self.everything[-30] + 1.0 * STRETCH)
        mine = self.by_chat.get(chat, [])
        if mine:
            ready = max(ready, mine[-1] + 1.0 * STRETCH)
        if chat < 0 and len(mine) >= 20:
            ready = max(ready, mine[-20] + 60.0 * STRETCH)
        return ready


def deliver(pacer: Pacer, clock: FakeClock, outbox: list[int]) -> History:
    """What an outbox worker does: messages to one chat go in order; of the
    chats allowed now, serve the one whose next message is oldest; when none
    is allowed, sleep until the soonest one is. Every answer of the pacer is
    checked against the full history: never early, and never late."""
    queues: dict[int, deque[int]] = {}
    for seq, chat in enumerate(outbox):
        queues.setdefault(chat, deque()).append(seq)
    history = History()
    while queues:
        ready: int | None = None
        soonest = math.inf
        for chat, queue in queues.items():
            wait = pacer.wait_time(chat)
            assert abs(clock.now + wait - history.earliest(chat, clock.now)) <= EPS
            soonest = min(soonest, wait)
            if wait == 0.0 and (ready is None or queue[0] < queues[ready][0]):
                ready = chat
        if ready is None:
            clock.advance(soonest)
            continue
        pacer.record(ready)
        history.add(clock.now, ready)
        queues[ready].popleft()
        if not queues[ready]:
            del queues[ready]
    return history


def min_span(times: list[float], limit: int) -> float:
    """Shortest time spanned by limit + 1 consecutive sends. A window of length W
    ever holds more than `limit` sends exactly when this is < W."""
    return min((times[i + limit] - times[i] for i in range(len(times) - limit)), default=math.inf)


def test_delivery_loop_respects_every_window_and_uses_the_allowed_rate() -> None:
    start = 7321.125
    clock = FakeClock(start)
    pacer = Pacer(clock=clock, safety=SAFETY)
    # 1,000 to one group; 1,000 private: 500 one-off notifications to distinct
    # citizens (the global limit binds) and 50 each to 10 busy conversations
    # (once the one-offs are out, the per-chat interval binds).
    busy_chats = [1_000_000 + i for i in range(10)]
    one_offs = [2_000_000 + i for i in range(500)]
    privates = [busy_chats[i // 2 % 10] if i % 2 else one_offs[i // 2] for i in range(1000)]
    outbox = [chat for pair in zip([GROUP] * 1000, privates, strict=False) for chat in pair]

    history = deliver(pacer, clock, outbox)
    everything, by_chat = history.everything, history.by_chat
    assert len(everything) == 2000
    assert everything == sorted(everything)

    # Telegram's limits, checked over every window...
    for times in by_chat.values():
        assert min_span(times, 1) >= 1.0
    assert min_span(by_chat[GROUP], 20) >= 60.0
    assert min_span(everything, 30) >= 1.0
    # ...and the headroom really kept.
    for times in by_chat.values():
        assert min_span(times, 1) >= 1.0 * STRETCH - EPS
    assert min_span(by_chat[GROUP], 20) >= 60.0 * STRETCH - EPS
    assert min_span(everything, 30) >= 1.0 * STRETCH - EPS

    # Rates, against the fastest schedule any sender could manage under the
    # exact limits. Group: bursts of 20 one second apart, one burst a minute.
    group = by_chat[GROUP]
    n = len(group)
    fastest = (n - 1) // 20 * 60.0 + (n - 1) % 20 * 1.0
    assert fastest / (group[-1] - start) >= 0.95
    # Overall, while one-off notifications were queued: 30 a second.
    global_bound_until = max(by_chat[chat][-1] for chat in one_offs)
    sends = [t for t in everything if t <= global_bound_until]
    fastest = (len(sends) - 1) // 30 * 1.0
    assert fastest / (global_bound_until - start) >= 0.95
    # Busy conversations afterwards: one a second each.
    for chat in busy_chats:
        later = [t for t in by_chat[chat] if t > global_bound_until]
        assert len(later) >= 10
        assert (len(later) - 1) * 1.0 / (later[-1] - later[0]) >= 0.95


def test_memory_stays_flat_over_100000_chats() -> None:
    clock = FakeClock(100.0)
    pacer = Pacer(clock=clock)
    peak = 0
    for i in range(100_000):
        chat = -(i + 1) if i % 2 else i + 1  # half groups, half private chats
        wait = pacer.wait_time(chat)
        if wait:
            clock.advance(wait)
        pacer.record(chat)
        if i % 997 == 0:
            peak = max(peak, pacer.tracked_chats())
    # At most ~30 sends a second, each kept at most 63 s.
    assert peak <= 30 * 63
    clock.advance(120.0)
    assert pacer.tracked_chats() == 0
    # The bookkeeping behind the dict is gone too (white-box: nothing else may grow).
    assert not pacer._private_expiries
    assert not pacer._group_expiries
    assert not pacer._penalty_expiries
    assert not pacer._global_sends


def test_a_direct_reply_to_a_person_waits_for_the_global_limit_only() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, safety=0.0, global_per_second=3)
    pacer.record(PRIVATE)
    assert pacer.reply_wait_time(PRIVATE) == 0.0, "a second message of one reply is not held a second"
    pacer.record(PRIVATE + 1)
    pacer.record(PRIVATE + 2)
    assert pacer.reply_wait_time(PRIVATE) == 1.0, "the global limit is everyone's"
    clock.advance(0.5)
    assert pacer.reply_wait_time(PRIVATE + 9) == 0.5


def test_a_direct_reply_to_a_group_waits_for_every_limit() -> None:
    clock = FakeClock()
    pacer = exact_pacer(clock)
    pacer.record(GROUP)
    assert pacer.reply_wait_time(GROUP) == pacer.wait_time(GROUP) == 1.0


def test_a_send_reserved_earlier_is_counted_when_it_goes_out() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, safety=0.0, global_per_second=1)
    first = pacer.record(PRIVATE)
    assert pacer.reply_wait_time(PRIVATE + 2) == 1.0
    clock.advance(0.4)
    pacer.restamp(PRIVATE, first)  # it went out only now
    clock.advance(0.7)  # 1.1 s after the reservation, 0.7 s after the request
    assert pacer.reply_wait_time(PRIVATE + 2) == pytest.approx(0.3)
    assert pacer.wait_time(PRIVATE) == pytest.approx(0.3), "the chat's interval runs from the request too"
