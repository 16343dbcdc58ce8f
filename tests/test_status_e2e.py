"""Looking up a petition by tracking number and query code."""

from __future__ import annotations

from dialogs.tracking import ALPHABET, new_tracking_number
from tests.conftest import App
from tests.flows import file_petition

#: Every test twice: updates fed as a webhook delivers them and as polling does.
BOTH_FEEDS = True


def _mistype(tracking: str) -> str:
    """Change one symbol of the random part (the check symbol then fails)."""
    i = 3
    replacement = ALPHABET[(ALPHABET.index(tracking[i]) + 1) % len(ALPHABET)]
    return tracking[:i] + replacement + tracking[i + 1:]


async def test_status_with_the_right_code_shows_the_case(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    relative = app.sim.citizen(2002)
    [answer] = await relative.send(f"/status {tracking} {code}")
    assert tracking in answer and "等待信访部门登记" in answer and "拖欠工资" in answer
    assert "2026-03-02 网上提交" in answer  # dates in China time
    assert "2026-03-17 前登记并转送、交办" in answer  # 15 days, counted from the next day


async def test_status_asks_for_number_and_code_then_takes_them(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    [ask] = await citizen.send("/status")
    assert "信访编号和查询码" in ask
    [answer] = await citizen.send(f"{tracking.lower()} {code.lower()}")
    assert tracking in answer


async def test_wrong_code_and_unknown_number_get_the_same_answer(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    [wrong_code] = await citizen.send(f"/status {tracking} {'2' * 10}")
    # A well-formed number that does not exist: any fresh number will do.
    [unknown_number] = await citizen.send(f"/status {new_tracking_number('DG')} {code}")
    assert wrong_code == unknown_number
    assert "没有找到" in wrong_code


async def test_a_mistyped_number_is_caught_by_its_check_symbol(app: App) -> None:
    citizen = app.sim.citizen()
    tracking, code = await file_petition(citizen)
    [answer] = await citizen.send(f"/status {_mistype(tracking)} {code}")
    assert "可能输错了一位" in answer


async def test_status_in_english(app: App) -> None:
    citizen = app.sim.citizen(language_code="en")
    tracking, code = await file_petition(citizen)
    [answer] = await citizen.send(f"/status {tracking} {code}")
    assert "waiting for the bureau to register it" in answer
