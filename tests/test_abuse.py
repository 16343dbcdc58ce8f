"""Flood control and the admins' ban list."""

from __future__ import annotations

import asyncio
import contextlib

from bot.middlewares import FloodGate, KeyedLocks
from bot.polling import process_batch
from storage.models import CitizenSession
from tests.conftest import STAFF_CHAT, App, make_app
from tests.flows import ZH
from tests.test_handoff_e2e import ADMIN, CLERK


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_flood_gate_admits_the_limit_then_tells_once_then_drops() -> None:
    clock = Clock()
    gate = FloodGate(limit=3, window=10, clock=clock)
    assert [gate.admit(1) for _ in range(3)] == [True, True, True]
    assert gate.admit(1) is False
    assert gate.admit(1) is None
    assert gate.admit(2) is True  # another person is not affected
    clock.now = 10.5
    assert gate.admit(1) is True


def test_the_flood_gate_keeps_nothing_for_people_gone_quiet() -> None:
    clock = Clock()
    gate = FloodGate(limit=5, window=60, clock=clock)
    for user in range(100_000):
        gate.admit(user)
    clock.now = 61
    gate.admit(0)
    assert len(gate) == 1


async def test_one_chat_at_a_time_and_no_lock_kept_once_nobody_holds_or_waits() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def one(name: str, key: int) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            await asyncio.sleep(0.01)
            order.append(f"{name} out")

    await asyncio.gather(one("a", 1), one("b", 1), one("c", 2))
    assert order.index("a out") < order.index("b in")  # the same chat waits its turn
    assert order.index("c in") < order.index("a out")  # another chat does not
    assert len(locks) == 0

    async def hold_then_cancel_a_waiter() -> None:
        async with locks.hold(1):
            waiter = asyncio.ensure_future(one("d", 1))
            await asyncio.sleep(0)
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter

    await hold_then_cancel_a_waiter()
    assert len(locks) == 0 and "d in" not in order


async def test_a_flooding_citizen_is_told_once_and_the_rest_is_dropped(settings, sessionmaker, bureau,  # type: ignore[no-untyped-def]
                                                                      clock) -> None:
    app = make_app(settings.model_copy(update={"flood_limit": 3}), sessionmaker, bureau, clock)
    citizen = app.sim.citizen()
    for text in ("/start", "/help", "/help"):
        await citizen.send(text)
    [warning] = await citizen.send("/help")
    assert "太快" in warning
    assert await citizen.send("/help") == []


async def test_an_admin_bans_and_unbans_a_citizen(app: App) -> None:
    citizen = app.sim.citizen(4321)
    await citizen.send("/start")
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    [done] = await admin.send("/ban 4321 发送辱骂内容")
    assert "已限制用户 4321" in done
    [answer] = await citizen.send("/new")
    assert "限制使用本服务" in answer
    [undone] = await admin.send("/unban 4321")
    assert "解除" in undone
    [answer] = await citizen.send("/new")
    assert "隐私说明" in answer


async def test_a_ban_and_the_citizens_own_answer_in_one_polling_batch_both_hold(app: App) -> None:
    """One transaction for the batch: the admin's ban and the answer the citizen
    gave in the same batch change one row, and neither change is lost."""
    citizen = app.sim.citizen(4321)
    await citizen.send("/new")
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    await process_batch(app.sim.dp, app.sim.bot, [citizen.press_update(ZH["accept"]),
                                                  admin.message_update(text="/ban 4321 发送辱骂内容")])
    async with app.sessionmaker() as session:
        row = await session.get(CitizenSession, 4321)
    assert row is not None and row.banned
    assert row.state == "matter_class" and row.data["answers"]["consent"]
    [answer] = await citizen.send("/new")
    assert "限制使用本服务" in answer


async def test_only_admins_ban(app: App) -> None:
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    await admin.send(f"/staff add {CLERK}")
    [answer] = await app.sim.staff(CLERK, STAFF_CHAT).send("/ban 4321")
    assert "只有管理员" in answer
