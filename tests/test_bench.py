"""The benchmarks still run what they claim to: a few citizens each file a whole
petition through ``python -m bench.task``, as ``python -m bench`` runs it, and
every filing ends with its receipt and its case. Nothing here is timed."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from tests.conftest import BACKENDS, PG_URL

ROOT = Path(__file__).resolve().parent.parent
CITIZENS = 3


#: Seconds a benchmark process may take here (a few on an idle host).
LIMIT = 300


async def _task(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """One benchmark in its own process, as the bench command runs it; stopped
    if the test ends first."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.task", json.dumps(spec), str(out), cwd=ROOT,  # -m finds bench/ there
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), LIMIT)
    finally:
        if process.returncode is None:  # Ctrl-C: asyncio.run unwinds, the scratch database is dropped
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
    assert process.returncode == 0, output.decode()[-3000:]
    result: dict[str, Any] = json.loads(await asyncio.to_thread(out.read_text))["result"]
    return result


async def test_each_simulated_citizen_files_a_whole_petition(tmp_path: Path) -> None:
    specs = [{"kind": "intake", "backend": backend, "citizens": CITIZENS, "pg_url": PG_URL or ""}
             for backend in BACKENDS]
    results = await asyncio.gather(*(_task(spec, tmp_path / f"{spec['backend']}.json") for spec in specs))
    for result in results:
        check = result["check"]
        assert (check["receipts_ok"], check["receipts_failed"]) == (CITIZENS, 0), check["failed_examples"]
        assert check["cases_in_db"] == CITIZENS
        assert check["processed_updates_in_db"] == result["updates"] == CITIZENS * result["updates_per_filing"]
        assert result["errors"] == 0, result["first_error"]

    shape = results[0]["shape"]
    ceiling = await _task({"kind": "ceiling", "citizens": CITIZENS, "shape": shape}, tmp_path / "ceiling.json")
    assert ceiling["updates"] == CITIZENS * len(shape)


def test_a_second_part_re_run_credits_each_kept_result_to_its_own_run() -> None:
    from bench.__main__ import _with_origins

    def result(kind: str) -> dict[str, Any]:
        return {"spec": {"kind": kind}}

    # A file from before results named their run: intake re-run at b over a full run at a.
    older = {"machine": {"date": "day 2", "commit": "b", "partial_origin": "day 1, code at a",
                         "partial": "intake re-run; the rest from the previous full run (day 1, code at a)"},
             "results": [result("intake"), result("status")]}
    assert [r["origin"] for r in _with_origins(older)] == ["day 2, code at b", "day 1, code at a"]
    named = {"machine": {"date": "day 3", "commit": "c"}, "results": [{**result("upkeep"), "origin": "day 0"}]}
    assert [r["origin"] for r in _with_origins(named)] == ["day 0"]
