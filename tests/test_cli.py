"""The command line as an operator meets it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bot.cli import logging_off_the_event_loop

FIXED_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PETITION_")}


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", *args], input=stdin, text=True,
                          capture_output=True, env={**FIXED_ENV, **(env or {})}, cwd=cwd, timeout=120)


def test_while_the_bot_runs_log_lines_are_written_by_another_thread_and_none_is_lost() -> None:
    written: list[tuple[str, str]] = []

    class Remember(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            written.append((threading.current_thread().name, self.format(record)))

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [Remember()]
    try:
        with logging_off_the_event_loop():
            for i in range(100):
                logging.getLogger("bot").warning("line %d", i)
        assert [text for _, text in written] == [f"line {i}" for i in range(100)]
        assert all(thread != threading.main_thread().name for thread, _ in written)
        assert [type(h) for h in root.handlers] == [Remember]  # as it was
    finally:
        root.handlers = saved


def test_without_a_configured_handler_logging_is_left_as_it_is() -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        with logging_off_the_event_loop():
            assert root.handlers == []  # logging's last resort still writes warnings
    finally:
        root.handlers = saved


@pytest.mark.parametrize(("env", "named"), [
    ({"PETITION_BOT_TOKEN": "not-a-token"}, "PETITION_BOT_TOKEN"),
    ({"PETITION_DEFAULT_LOCALE": "fr"}, "PETITION_DEFAULT_LOCALE"),
    ({"PETITION_STAFF_CHAT_ID": "staff"}, "PETITION_STAFF_CHAT_ID"),
    ({"PETITION_ADMIN_IDS": "1,two"}, "PETITION_ADMIN_IDS"),
    ({"PETITION_BUREAU_CONFIG": "/nonexistent/bureau.toml"}, "PETITION_BUREAU_CONFIG"),
])
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(env: dict[str, str], named: str, tmp_path: Path) -> None:
    result = run_cli("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_bureau_file_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bureau.toml"
    bad.write_text('[bureau]\ncode = "DG"\n', encoding="utf-8")
    result = run_cli("migrate", env={"PETITION_BUREAU_CONFIG": str(bad)}, cwd=tmp_path)
    assert result.returncode == 2
    assert str(bad) in result.stderr and "bureau" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_without_a_token_says_so(tmp_path: Path) -> None:
    result = run_cli("run", cwd=tmp_path)
    assert result.returncode == 2 and "PETITION_BOT_TOKEN" in result.stderr


def test_migrate_creates_the_embedded_database(tmp_path: Path) -> None:
    result = run_cli("migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "petitions.db").exists()


def test_chat_reads_a_scripted_filing_from_stdin(tmp_path: Path) -> None:
    script = "\n".join([
        "/new", "/press 1", "/press 1", "教育", "/press 跳过", "东城", "学校门口交通拥堵", "增设红绿灯",
        "上学时段车多人多", "保障学生安全", "/press 跳过", "/press 跳过", "/press 1", "/photo 路口照片",
        "/press 1", "李四", "/contact +86 139-1234-5678", "东莞市东城街道某路2号", "/press 1", "/press 1",
    ]) + "\n"
    result = run_cli("chat", stdin=script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "信访编号：DG-" in result.stdout and "查询码：" in result.stdout
    assert "[1] ✅ 确认提交" in result.stdout


def test_chat_continues_a_filing_after_a_restart(tmp_path: Path) -> None:
    first = run_cli("chat", stdin="/new\n/press 1\n/press 1\n", cwd=tmp_path)
    assert "问题分类" in first.stdout
    second = run_cli("chat", stdin="教育\n", cwd=tmp_path)
    assert "更具体的分类" in second.stdout
