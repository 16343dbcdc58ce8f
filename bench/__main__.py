"""Run the benchmarks: ``python -m bench`` (quick, under ~2 minutes) or
``python -m bench --full`` (the sizes the targets name, about 20 minutes).

Each benchmark runs in a fresh process (:mod:`bench.task`), forked from a
fork server that has imported the code once; results are kept
as JSON in ``bench/results/`` and the tables in ``docs/BENCHMARKS.md`` (between
its ``bench:begin``/``bench:end`` markers) are rewritten from them.
Nothing here is a test: no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import DEFAULT_PG_URL
from bench.report import machine_info, write_doc
from bench.task import forked

ROOT = Path(__file__).resolve().parent.parent


def plan(full: bool, backends: list[str]) -> list[dict[str, Any]]:
    """What to run, in order. Intake and ceiling alternate so both see the same machine state."""
    citizens = [1, 100, 1000] if full else [1, 20]
    # The full mode runs the SQLite bot and its ceiling three times, side by side
    # in alternating order: on a shared host one pair moves by ±10 % (BENCHMARKS.md).
    runs = 3 if full else 1
    tasks: list[dict[str, Any]] = []
    for n in citizens:
        for run in range(runs):
            pair = [*({"kind": "intake", "backend": b, "citizens": n, "run": run} for b in backends
                      if run == 0 or b == "sqlite"), {"kind": "ceiling", "citizens": n, "run": run}]
            tasks.extend(reversed(pair) if run % 2 else pair)
    # The same dialog at a person's pace: latency when the bot is not saturated
    # (bench.feeder.run_paced); the bot three times in the full mode, its ceiling once.
    pace, paced_citizens = ([2.0, 4.0], 1000) if full else ([0.05, 0.15], 50)
    if "sqlite" in backends:
        for run in range(runs):
            tasks.append({"kind": "intake", "backend": "sqlite", "citizens": paced_citizens, "pace": pace,
                          "run": run})
            if run == 0:
                tasks.append({"kind": "ceiling", "citizens": paced_citizens, "pace": pace})
    # (The earlier what-ifs, one pooled SQLite connection and no FSM, are the product's defaults now.)
    if full and "postgresql" in backends:
        tasks.append({"kind": "intake", "backend": "postgresql", "citizens": 100, "variant": "pg-noping"})
    sizes = [10_000, 100_000, 1_000_000] if full else [5_000, 20_000]
    tasks.extend({"kind": "status", "backend": b, "sizes": sizes, "per_kind": 150 if full else 15,
                  "concurrent": 300 if full else 60, "filings": 5 if full else 2,
                  "rounds": 6 if full else 4} for b in backends)
    # What runs under the write lock (the maintenance tick, /stats) over a growing history.
    tasks.extend({"kind": "upkeep", "backend": b, "sizes": [10_000, 1_000_000] if full else [2_000, 20_000],
                  "updates": 200_000 if full else 20_000} for b in backends if full or b == "sqlite")
    tasks.append({"kind": "burst", "backend": "sqlite", "burst": "group", "count": 1000 if full else 40,
                  "factor": 20.0, "citizens": 10 if full else 3})
    tasks.append({"kind": "burst", "backend": "sqlite", "burst": "private", "count": 1000 if full else 60,
                  "factor": 1.0, "citizens": 10 if full else 3})
    if full and "postgresql" in backends:  # webhook workers sharing PostgreSQL (full only: each starts processes)
        tasks.extend({"kind": "webhook", "workers": w, "citizens": 100} for w in (1, 2))
    memory_backend = "postgresql" if "postgresql" in backends else "sqlite"
    tasks.append({"kind": "memory", "backend": memory_backend, "chats": 100_000 if full else 1_000})
    return tasks


#: Imported once by the fork server: every benchmark's process is forked from
#: it with these loaded. Importing them took 2–3 s a process on a fast hour of
#: this host and 7–10 s on a slow one, half of the quick mode's time there
#: (BENCHMARKS.md, finding 37).
PRELOAD = ["bench.task", "bench.common", "bench.intake", "bench.status", "bench.upkeep", "bench.burst",
           "bench.webhook"]
#: Kinds run in a new interpreter instead: the memory benchmark reports the
#: process's RSS before its chats, which a fork would start with PRELOAD in it.
NEW_INTERPRETER = {"memory"}


def run_task(spec: dict[str, Any], context: Any) -> dict[str, Any]:
    """One benchmark in a fresh process: forked from the fork server (``context``,
    which has :data:`PRELOAD` imported), so that each starts as a new process
    that has only imported the code, as ``python -m bench.task`` would; a kind
    in :data:`NEW_INTERPRETER` is that command itself."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = out.name
    log_path = path + ".log"
    try:
        if spec["kind"] in NEW_INTERPRETER:
            with open(log_path, "w") as log:
                exitcode = subprocess.run([sys.executable, "-m", "bench.task", json.dumps(spec), path],
                                          stdout=log, stderr=log).returncode
        else:
            process = context.Process(target=forked, args=(json.dumps(spec), path, log_path))
            process.start()
            process.join()
            exitcode = process.exitcode
        if exitcode != 0:
            try:
                with open(log_path) as f:
                    tail = f.read().strip().splitlines()[-15:]
            except OSError:
                tail = []
            return {"spec": spec, "error": "\n".join([*tail, f"(the benchmark's process exited with {exitcode})"])}
        with open(path) as f:
            return dict(json.load(f))
    finally:
        for leftover in (path, log_path):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def describe(spec: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in spec.items() if k not in ("pg_url", "shape"))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full sizes (about 20 minutes); default: quick")
    parser.add_argument("--quick", action="store_true", help="the quick mode (default)")
    parser.add_argument("--only", default="", help="comma-separated: intake,ceiling,status,upkeep,burst,webhook,memory")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL,
                        help="server for PostgreSQL runs (a database is created and dropped per benchmark)")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"), help="'' to leave the doc alone")
    args = parser.parse_args()
    mode = "full" if args.full else "quick"
    backends = [b for b in args.backends.split(",") if b]
    if "postgresql" in backends and not _pg_available(args.pg_url):
        print(f"PostgreSQL at {args.pg_url} does not answer: SQLite only", file=sys.stderr)
        backends = [b for b in backends if b != "postgresql"]
    only = {k for k in args.only.split(",") if k}
    # Processes a benchmark starts (the webhook workers) find this tree first too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    info = machine_info()
    print(f"bench ({mode}) on {info['cpus']} CPUs, {info['ram_gib']:.0f} GiB, load {info['load_start']}",
          file=sys.stderr)
    results: list[dict[str, Any]] = []
    shape: list[str] | None = None
    started = time.perf_counter()
    for spec in plan(args.full, backends):
        if only and spec["kind"] not in only:
            continue
        spec = {**spec, "pg_url": args.pg_url}
        if spec["kind"] == "ceiling":
            spec["shape"] = shape or ["command"] + ["text"] * 10 + ["press"] * 8 + ["confirm"]
        t0 = time.perf_counter()
        outcome = {**run_task(spec, context), "origin": f"{info['date']}, code at {info['commit']}"}
        if spec["kind"] == "intake" and "result" in outcome and shape is None:
            shape = outcome["result"]["shape"]
        results.append(outcome)
        status = "FAILED: " + outcome["error"].splitlines()[-1] if "error" in outcome else "ok"
        print(f"  {describe(spec):70s} {time.perf_counter() - t0:6.1f} s  {status}", file=sys.stderr)
    info["load_end"] = os.getloadavg()
    info["total_seconds"] = time.perf_counter() - started
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    earlier = out_dir / f"{mode}.json"
    if only and earlier.exists():  # a part re-run: keep the other parts of the last run of this mode
        previous = json.loads(earlier.read_text())
        kept = [r for r in _with_origins(previous) if r["spec"]["kind"] not in only]
        results = kept + results
        from_runs: dict[str, set[str]] = {}
        for r in kept:
            from_runs.setdefault(r["origin"], set()).add(r["spec"]["kind"])
        info["partial"] = f"{', '.join(sorted(only))} re-run; " + "; ".join(
            f"{', '.join(sorted(kinds))} from the {mode} run of {origin}"
            for origin, kinds in sorted(from_runs.items()))
    report = {"mode": mode, "machine": info, "results": results}
    (out_dir / f"{mode}.json").write_text(json.dumps(report, indent=1, default=str))
    if args.doc:
        write_doc(Path(args.doc), report)
        print(f"wrote {args.doc}", file=sys.stderr)
    print(f"done in {info['total_seconds']:.0f} s; results in bench/results/{mode}.json", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


def _with_origins(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's results, each naming the run it came from (``origin``):
    after a part re-run the others come from earlier runs, and a second part
    re-run must not credit them to the first's. Files from before results
    named it: the kinds their ``partial`` line says were re-run are theirs,
    the rest from the run named by ``partial_origin``."""
    m = report["machine"]
    own = f"{m.get('date', '?')}, code at {m.get('commit', '?')}"
    rerun = set(m["partial"].split(" re-run;")[0].split(", ")) if m.get("partial") else None
    return [r if "origin" in r else
            {**r, "origin": own if rerun is None or r["spec"]["kind"] in rerun else m.get("partial_origin", own)}
            for r in report["results"]]


def _pg_available(url: str) -> bool:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def ping() -> bool:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False
        finally:
            await engine.dispose()

    return asyncio.run(ping())


if __name__ == "__main__":
    sys.exit(main())
