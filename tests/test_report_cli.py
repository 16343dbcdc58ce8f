"""``petition-bot report`` as an operator runs it, and ``/stats`` in the staff chat."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import STAFF_CHAT, TEST_DATA_KEY, App, sqlite_write_lock
from tests.test_kpi import DONGCHENG, HUMEN, at, routed, store

ADMIN = 9001
CLERK = 9002
OUTSIDER = 9100
FIXED_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PETITION_")}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run_report(database_url: str, cwd: Path, *args: str) -> Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "report", *args, cwd=cwd,
        env={**FIXED_ENV, "PETITION_DATABASE_URL": database_url, "PETITION_DATA_KEYS": TEST_DATA_KEY},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def march(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Four March cases: two accepted in time, one late (Dongcheng), one still without notice."""
    await store(
        sessionmaker,
        routed("2026-03-02", "2026-03-02", ("accept", at("2026-03-05")), unit=HUMEN),
        routed("2026-03-02", "2026-03-02", ("accept", at("2026-03-16")), unit=HUMEN),
        routed("2026-03-02", "2026-03-02", ("accept", at("2026-03-30")), unit=DONGCHENG),
        routed("2026-03-02", "2026-03-02", unit=DONGCHENG),
    )


async def test_report_as_csv(sessionmaker: async_sessionmaker[AsyncSession], database_url: str,
                             tmp_path: Path) -> None:
    await march(sessionmaker)
    result = await run_report(database_url, tmp_path, "--from", "2026-03-01", "--to", "2026-03-31",
                              "--format", "csv", "--other-channels", "4")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["汇总"] and rows[1] == ["指标", "数值", "分子", "分母", "明细"]
    by_metric = {row[0]: row for row in rows if row}
    assert by_metric["及时受理率"][1:4] == ["50.00%", "2", "4"]
    assert by_metric["网上信访占比"][1:4] == ["50.00%", "4", "8"]
    assert by_metric["统计期间"][1] == "2026-03-01 – 2026-03-31"


async def test_report_runs_while_the_bot_holds_the_write_lock(sessionmaker: async_sessionmaker[AsyncSession],
                                                              database_url: str, tmp_path: Path) -> None:
    """SQLite: a report read in a writer's transaction waited for the bot's
    commits to stop and stopped them while it read (a year at a million cases
    is seconds). It reads a snapshot now, and finds the schema current without
    the lock."""
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL readers and writers do not block each other")
    await march(sessionmaker)
    with sqlite_write_lock(database_url):
        result = await run_report(database_url, tmp_path, "--from", "2026-03-01", "--to", "2026-03-31")
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith("及时受理率"))
    assert line.split()[:4] == ["及时受理率", "50.00%", "2", "4"]


async def test_report_as_xlsx_reads_back(sessionmaker: async_sessionmaker[AsyncSession], database_url: str,
                                         tmp_path: Path) -> None:
    await march(sessionmaker)
    out = tmp_path / "march.xlsx"
    result = await run_report(database_url, tmp_path, "--from", "2026-03-01", "--to", "2026-03-31",
                              "--format", "xlsx", "--out", str(out), "--lang", "en")
    assert result.returncode == 0, result.stderr
    book = load_workbook(out)
    assert book.sheetnames == ["Summary", "By unit", "By class", "By category", "By location",
                               "By handling unit", "Most complained-about units", "Overdue"]
    summary = book["Summary"]
    assert [c.value for c in summary[1]] == ["Metric", "Value", "Numerator", "Denominator", "Detail"]
    rows = {row[0]: row for row in summary.iter_rows(min_row=2, values_only=True)}
    assert rows["Timely acceptance"][1:4] == (0.5, 2, 4)
    units = book["By unit"]
    assert units["A1"].value == "Code" and units["D1"].value == "Timely acceptance"
    humen = next(row for row in units.iter_rows(min_row=2) if row[0].value == HUMEN)
    assert humen[1].value == "Humen Town" and humen[3].value == 1.0 and humen[3].number_format == "0.00%"
    overdue = book["Overdue"]
    assert [c.value for c in overdue[2]][:4] == ["Overdue acceptance", overdue["B2"].value, DONGCHENG,
                                                 "Dongcheng Subdistrict"]
    assert str(overdue["B2"].value).startswith("DG-TEST-")


async def test_report_as_a_table_for_one_unit(sessionmaker: async_sessionmaker[AsyncSession], database_url: str,
                                              tmp_path: Path) -> None:
    await march(sessionmaker)
    result = await run_report(database_url, tmp_path, "--from", "2026-03-01", "--to", "2026-03-31",
                              "--unit", DONGCHENG)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("信访工作统计：2026-03-01 至 2026-03-31（东城街道）")
    line = next(row for row in result.stdout.splitlines() if row.startswith("及时受理率"))
    assert line.split()[:4] == ["及时受理率", "0.00%", "0", "2"]


@pytest.mark.parametrize(("args", "named"), [
    (["--from", "2026-02-30", "--to", "2026-03-31"], "--from"),
    (["--from", "2026-03-01", "--to", "March"], "--to"),
    (["--from", "2026-03-31", "--to", "2026-03-01"], "after"),
    (["--from", "2026-03-01", "--to", "2026-03-31", "--unit", "NOPE"], "NOPE"),
    (["--from", "2026-03-01", "--to", "2026-03-31", "--format", "xlsx"], "--out"),
    (["--from", "2026-03-01", "--to", "2026-03-31", "--other-channels", "-1"], "--other-channels"),
])
async def test_bad_arguments_are_one_line_and_exit_2(args: list[str], named: str, database_url: str,
                                                     tmp_path: Path) -> None:
    result = await run_report(database_url, tmp_path, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert result.stdout == ""


# -- /stats -------------------------------------------------------------------------------


async def test_stats_answers_admins_with_the_summary(app: App) -> None:
    await march(app.sessionmaker)
    app.clock.now = at("2026-03-31", 20)
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    [answer] = await admin.send("/stats 2026-03")
    assert answer.startswith("<b>信访工作统计：2026-03-01 至 2026-03-31（全部单位）</b>\n<pre>")
    line = next(row for row in answer.splitlines() if row.startswith("及时受理率"))
    assert line.split() == ["及时受理率", "50.00%", "2/4"]
    assert "网上信访占比" not in answer  # no count of the other channels in the chat
    [default] = await admin.send("/stats")  # this month: the test clock says March 2026
    assert "2026-03-01 至 2026-03-31" in default
    [usage] = await admin.send("/stats last-month")
    assert usage.startswith("用法：/stats")


async def test_stats_is_refused_to_staff_who_are_not_admins(app: App) -> None:
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    await admin.send(f"/staff add {CLERK} {HUMEN}")
    [answer] = await app.sim.staff(CLERK, STAFF_CHAT).send("/stats 2026-03")
    assert answer == "只有管理员可以查看统计。"
    [answer] = await app.sim.staff(OUTSIDER, STAFF_CHAT).send("/stats")
    assert "只有登记的工作人员" in answer


async def test_other_channels_entered_by_an_admin_give_the_online_share(app: App) -> None:
    await march(app.sessionmaker)
    app.clock.now = at("2026-03-31", 20)
    admin = app.sim.staff(ADMIN, STAFF_CHAT)
    [usage] = await admin.send("/channels")
    assert usage.startswith("用法：/channels")
    [entered] = await admin.send("/channels 2026-03 letter 4")
    assert "合计：4" in entered
    await admin.send("/channels 2026-03 visit 2")
    [corrected] = await admin.send("/channels 2026-03 letter 3")
    assert "合计：5" in corrected
    [answer] = await admin.send("/stats 2026-03")
    assert "网上信访占比" in answer
    [refused] = await app.sim.staff(OUTSIDER, STAFF_CHAT).send("/channels 2026-03 letter 1")
    assert "只有登记的工作人员" in refused
