"""Machine facts and the tables of ``docs/BENCHMARKS.md``.

The doc's hand-written text stays; only the part between the markers
``<!-- bench:begin -->`` and ``<!-- bench:end -->`` is rewritten, one block per
mode (quick and full keep their own blocks).
"""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any


def machine_info() -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    snapshot = Path(".commit")  # a run from an exported tree (git archive) names its commit here
    if snapshot.exists():
        commit, dirty = snapshot.read_text().strip() + " (exported tree)", False
    else:
        commit = git("rev-parse", "--short", "HEAD") or "?"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(), "cpu": cpu, "ram_gib": ram,
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("aiogram", "SQLAlchemy", "aiosqlite", "asyncpg",
                                                       "pydantic", "transitions")},
        "sqlite": sqlite3.sqlite_version,
        "commit": commit + (" + uncommitted changes" if dirty else ""),
        "load_start": tuple(round(x, 2) for x in os.getloadavg()),
    }


# -- formatting ---------------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ok(flag: bool | None) -> str:
    return "–" if flag is None else ("**met**" if flag else "**missed**")


def _results(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The results of one kind of benchmark, each with ``run``: its round (0, 1, …)
    where the same task is repeated, interleaved with its ceiling."""
    return [{**r["result"], "run": r["spec"].get("run", 0)} for r in report["results"]
            if r["spec"]["kind"] == kind and "result" in r]


def _runs_label(n: int, run: int, runs: int) -> str:
    return f"{n:,} · run {run + 1}" if runs > 1 else f"{n:,}"


def _commit_trip(r: dict[str, Any]) -> str:
    """The SQLite commit's trip (its riding writes, the WAL write, the fsync): p50 / p99 / max ms."""
    trip = r.get("sqlite_commit_trip")
    if not trip:
        return "–"
    return f"{trip['p50_ms']:.2f} / {trip['p99_ms']:.1f} / {trip['max_ms']:.0f}"


def _stalls(r: dict[str, Any]) -> str:
    """Commit trips longer than the p99 target: how many, and their share of the run's time."""
    stalls = r.get("sqlite_commit_stalls")
    if not stalls:
        return "–"
    return f"{stalls['count']} · {stalls['share_of_run'] * 100:.1f} %"


def _paced(report: dict[str, Any]) -> list[str]:
    """Table 1b: the same dialog at a person's pace (think time between replies and answers)."""
    runs = [r for kind in ("ceiling", "intake") for r in _results(report, kind) if r.get("pace")]
    if not runs:
        return []
    rows = []
    repeated = max(r["run"] for r in runs) + 1
    for r in sorted(runs, key=lambda r: (r["citizens"], r["backend"] != "ceiling", r["run"])):
        confirm = r["by_label"].get("confirm", {})
        name = "ceiling: bare aiogram + MemoryStorage" if r["backend"] == "ceiling" else f"**{r['backend']}**"
        rows.append([_runs_label(r["citizens"], r["run"], repeated), f"{r['pace'][0]:g}–{r['pace'][1]:g} s", name,
                     r["updates_per_s"],
                     r["updates"] / r["batches"] if r["batches"] else math.nan,
                     r["latency"]["p50_ms"], r["latency"]["p99_ms"], r["latency"]["max_ms"],
                     f"{_f(confirm.get('p50_ms'))} / {_f(confirm.get('p99_ms'))}" if confirm else "–",
                     _commit_trip(r), _stalls(r),
                     "–" if r["backend"] == "ceiling" else
                     f"{r['errors']}" + ("" if r["check"]["receipts_failed"] == 0
                                         else f", {r['check']['receipts_failed']} filings unfinished")])
    checks = [f"{r['backend']}×{r['citizens']}: {r['check']['cases_in_db']} cases, "
              f"{r['check']['processed_updates_in_db']} update ids committed" for r in runs if "check" in r]
    measured = [r for r in sorted(runs, key=lambda r: r["run"]) if r["backend"] == "sqlite" and r["citizens"] >= 1000]
    p99s = [r["latency"]["p99_ms"] for r in measured]
    shares = [r["sqlite_commit_stalls"]["share_of_run"] * 100 for r in measured if r.get("sqlite_commit_stalls")]
    typical = median(p99s) if p99s else math.nan
    disk = (f" Commit trips over 10 ms (the disk alone holding a batch past the target) took "
            f"{' / '.join(f'{s:.1f}' for s in shares)} % of each run's time; updates kept arriving "
            f"meanwhile." if len(shares) == len(p99s) else "")
    verdict = (f"Target p99 ≤ 10 ms at 1,000 citizens, at a person's pace: "
               f"{' / '.join(f'{p:.1f}' for p in p99s)} ms in {len(p99s)} run{'s' if len(p99s) > 1 else ''}, "
               f"{_ok(typical <= 10)} by the median ({typical:.1f} ms), met in "
               f"{sum(p <= 10 for p in p99s)} of {len(p99s)}.{disk}\n") if p99s else ""
    return ["#### 1b. Intake at a person's pace (latency from the update's arrival at Telegram)\n",
            _table(["citizens", "think time", "bot", "updates/s", "updates / batch", "p50 ms", "p99 ms",
                    "max ms", "confirm p50 / p99 ms", "commit trip p50 / p99 / max ms",
                    "commit trips > 10 ms · share of the run", "failed updates"], rows),
            "\nConsistency: " + "; ".join(checks) + ".\n" if checks else "", verdict]


def _stack_bound(step_ms: float, ceiling_rate: float, budget_ms: float) -> str:
    """What one durable step through the fixed stack leaves of the one-citizen target."""
    ceiling_ms = 1000 / ceiling_rate
    best = ceiling_ms / (ceiling_ms + step_ms)
    return (f" Through the stack the design card fixes (SQLAlchemy's asyncio over aiosqlite, on the product's "
            f"engine), a transaction that only writes one row by its key and commits takes {step_ms:.2f} ms "
            f"(p50, the lower of an ORM session and a bare connection), {step_ms / budget_ms:.0%} of that "
            f"budget: a bot doing the ceiling's work ({ceiling_ms:.2f} ms an update) and nothing more but "
            f"such a step would reach at most **{best:.2f} ×** the ceiling with one citizen.")


def _purge_cell(level: dict[str, Any]) -> str:
    """The purge's batch at one size: p50 / max ms and the counts erased (– for older results)."""
    if "purge_ms" not in level:
        return "–"
    erased = ", ".join(f"{n:,}" for n in sorted(set(level["purge_erased"])))
    return f"{_f(level['purge_p50_ms'])} / {_f(max(level['purge_ms']))} ({erased})"


def _idle_cell(level: dict[str, Any]) -> str:
    if "purge_idle_ms" not in level:
        return "–"
    return f"{_f(level['purge_idle_p50_ms'])} / {_f(max(level['purge_idle_ms']))}"


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    out: list[str] = []
    v = m["versions"]
    out.append(f"### {report['mode'].capitalize()} run, {m['date']}\n")
    out.append(
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['ram_gib']:.0f} GiB RAM; Python {m['python']}; "
        f"aiogram {v['aiogram']}, SQLAlchemy {v['SQLAlchemy']}, aiosqlite {v['aiosqlite']}, "
        f"asyncpg {v['asyncpg']}, pydantic {v['pydantic']}, transitions {v['transitions']}; "
        f"SQLite {m['sqlite']} (WAL, synchronous=FULL: the product's default); "
        f"PostgreSQL on 127.0.0.1. Code at {m['commit']}. Load average at start {m['load_start']}, "
        f"at end {tuple(round(x, 2) for x in m.get('load_end', ()))} (the machine is shared). "
        f"Total {m.get('total_seconds', 0) / 60:.1f} min."
        + (f" Partial: {m['partial']}." if m.get("partial") else "") + "\n")
    failed = [r for r in report["results"] if "error" in r]
    for r in failed:
        out.append(f"- benchmark `{r['spec']['kind']}` {r['spec'].get('backend', '')} failed: "
                   f"`{r['error'].splitlines()[-1][:200]}`")
    if failed:
        out.append("")

    # 1. intake ---------------------------------------------------------------------------
    intake = [r for r in _results(report, "intake") if not r.get("pace")]
    ceilings = {(r["citizens"], r["run"]): r for r in _results(report, "ceiling") if not r.get("pace")}
    repeated = max([r["run"] for r in intake] + [run for _, run in ceilings], default=0) + 1
    rows: list[list[Any]] = []
    #: Per size: the SQLite bot's ratio to its own run's ceiling, and its p99, run by run.
    verdict_ratio: dict[int, list[float]] = {}
    p99_saturated: list[float] = []
    for n, run in sorted({(r["citizens"], r["run"]) for r in intake} | set(ceilings)):
        label = _runs_label(n, run, repeated)
        own = ceilings.get((n, run))
        c = own or ceilings.get((n, 0))  # a run without its own ceiling (PostgreSQL) takes the first
        if own is not None:
            rows.append([label, "ceiling: bare aiogram + MemoryStorage", own["updates_per_s"], "1.00",
                         own["latency"]["p50_ms"], own["latency"]["p99_ms"], own["latency"]["max_ms"], "–", "–",
                         "0", "0", own["bot_api_calls_per_update"], "–"])
        for r in [r for r in intake if r["citizens"] == n and r["run"] == run]:
            ratio = r["updates_per_s"] / c["updates_per_s"] if c else math.nan
            name = r["backend"] + (f" (what-if: {r['variant']})" if r.get("variant") else "")
            if r["backend"] == "sqlite" and not r.get("variant") and c:
                verdict_ratio.setdefault(n, []).append(ratio)
                if n == 1000:
                    p99_saturated.append(r["latency"]["p99_ms"])
            confirm = r["by_label"].get("confirm", {})
            rows.append([label, f"**{name}**", r["updates_per_s"], f"{ratio:.3f}", r["latency"]["p50_ms"],
                         r["latency"]["p99_ms"], r["latency"]["max_ms"],
                         f"{_f(confirm.get('p50_ms'))} / {_f(confirm.get('p99_ms'))}", _commit_trip(r),
                         f"{r['db']['statements_per_update']:.2f}", f"{r['db']['round_trips_per_update']:.2f}",
                         r["bot_api_calls_per_update"],
                         f"{r['errors']}" + ("" if r["check"]["receipts_failed"] == 0
                                             else f", {r['check']['receipts_failed']} filings unfinished")])
    verdict_p99 = median(p99_saturated) <= 10 if p99_saturated else None
    in_a_row = max((r.get("filings_in_a_row", 1) for r in intake if r["citizens"] == 1), default=1)
    per_filing = max((r["updates_per_filing"] for r in intake), default=20)
    out.append(f"#### 1. Intake throughput (full filing dialog, {per_filing} updates"
               + (f"; one citizen alone files {in_a_row} times in a row" if in_a_row > 1 else " per citizen")
               + ")\n")
    out.append(_table(["citizens", "bot", "updates/s", "× ceiling", "p50 ms", "p99 ms", "max ms",
                       "confirm p50 / p99 ms", "commit trip p50 / p99 / max ms", "SQL statements / update",
                       "DB round trips / update", "Bot API calls / update", "failed updates"], rows))
    checks = [f"{r['backend']}×{r['citizens']}: {r['check']['cases_in_db']} cases, "
              f"{r['check']['processed_updates_in_db']} update ids committed" for r in intake if not r.get("variant")]
    out.append("\nConsistency: " + "; ".join(checks) + ".\n")
    sizes = []
    for n, ratios in sorted(verdict_ratio.items()):
        typical = median(ratios)
        each = " / ".join(f"{x:.2f}" for x in ratios)
        runs = f", the median of {len(ratios)} runs: {each}" if len(ratios) > 1 else ""
        sizes.append(f"{n:,} citizen{'s' if n > 1 else ''} {_ok(typical >= 0.5)} ({typical:.2f} ×{runs})")
    by_size = ", ".join(sizes)
    alone = [r for r in intake if r["citizens"] == 1 and r["backend"] == "sqlite"]
    floors = [r["durable_commit_floor"]["p50_ms"] for r in alone if r.get("durable_commit_floor")]
    steps = [r["durable_step_floor"]["floor_ms"] for r in alone if r.get("durable_step_floor")]
    ceiling_one = [c["updates_per_s"] for (n, _), c in ceilings.items() if n == 1]
    if floors and ceiling_one:
        floor, budget = median(floors), 1000 / (0.5 * median(ceiling_one))  # ms an update may take at 0.5 ×
        out.append(f"One citizen commits every update on its own. A bare `sqlite3` commit of one row on this "
                   f"disk (WAL, synchronous=FULL, no aiosqlite, SQLAlchemy or aiogram) takes "
                   f"{floor:.2f} ms (p50); 0.5 × the ceiling leaves {budget:.2f} ms for a whole "
                   f"update, so the commit alone is {floor / budget:.0%} of it."
                   + (_stack_bound(median(steps), median(ceiling_one), budget) if steps else "") + "\n")
    saturated = " / ".join(f"{p:.0f}" for p in p99_saturated)
    out.append(f"Target ≥ 0.5 × ceiling on SQLite (each run against the ceiling run next to it): "
               f"{by_size or _ok(None)}. Target p99 ≤ 10 ms at 1,000 citizens: {_ok(verdict_p99)} saturated"
               f"{f' ({saturated} ms)' if saturated else ''}; the ceiling's own p99 is in the table.\n")
    out.extend(_paced(report))

    # 2. status -----------------------------------------------------------------------------
    out.append("#### 2. Status lookups as the case table grows\n")
    rows = []
    verdicts: list[str] = []
    for r in _results(report, "status"):
        levels = r["levels"]
        for lv in levels:
            s, c, d, f = lv["sequential"], lv["concurrent"], lv["no_scrypt"], lv["filing"]
            rows.append([r["backend"], lv["cases"], lv["fill_seconds"],
                         f"{_f(s['existing']['p50_ms'])} / {_f(s['existing']['p99_ms'])}",
                         f"{_f(s['missing']['p50_ms'])} / {_f(s['missing']['p99_ms'])}",
                         s["lookups_per_s"], c["lookups_per_s"], c["all"]["p50_ms"],
                         f"{_f(d['existing']['p50_ms'])} / {_f(d['missing']['p50_ms'])}",
                         f"{s['statements_per_lookup']:.1f}",
                         f"{_f(f['confirm']['p50_ms'])} / {_f(f['other_steps']['p50_ms'])}",
                         f"{s['wrong_answers'] + c['wrong_answers'] + d['wrong_answers']} / "
                         f"{s['errors'] + c['errors'] + d['errors']}"])
        first, last = levels[0], levels[-1]
        ratio = last["sequential"]["all"]["p50_ms"] / first["sequential"]["all"]["p50_ms"]
        ratio_db = last["no_scrypt"]["all"]["p50_ms"] / first["no_scrypt"]["all"]["p50_ms"]
        ratio_filing = last["filing"]["confirm"]["p50_ms"] / first["filing"]["confirm"]["p50_ms"]
        at_scale = last["cases"] >= 1_000_000
        both = r.get("side_by_side")
        if both:
            verdict = _ok(both["ratio"] <= 1.2) if at_scale else "not measured at 10⁶ in this mode"
            rounds = " / ".join(f"{x:.2f}" for x in both["round_ratios"])
            verdicts.append(
                f"{r['backend']}, side by side ({both['rounds']} alternating rounds of {both['lookups_per_round']} "
                f"lookups, {both['large_cases']:,} against a second table of {both['small_cases']:,}): median "
                f"{_f(both['large']['p50_ms'])} / {_f(both['small']['p50_ms'])} ms = **{both['ratio']:.2f}** "
                f"(target ≤ 1.2 at 10⁶: {verdict}; rounds {rounds}); without the code hash "
                f"{both['ratio_no_hash']:.2f}; wrong answers / failed {both['wrong_answers']} / {both['errors']}")
        verdict = ("measured minutes apart, see side by side" if both else
                   _ok(ratio <= 1.2) if at_scale else "not measured at 10⁶ in this mode")
        verdicts.append(f"{r['backend']}, grown in place: median at {last['cases']:,} / median at "
                        f"{first['cases']:,} = {ratio:.2f} ({verdict}); without the code hash {ratio_db:.2f}; "
                        f"filing's confirm step {ratio_filing:.2f}")
    out.append(_table(["backend", "cases", "fill s", "existing p50 / p99 ms", "missing p50 / p99 ms",
                       "lookups/s, one at a time", "lookups/s, 100 accounts at once", "p50 ms, 100 at once",
                       "no-hash diagnostic: existing / missing p50 ms", "SQL statements / lookup",
                       "filing at this size: confirm / other steps p50 ms", "wrong answers / failed"], rows))
    out.append("\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")

    # 2b. upkeep ------------------------------------------------------------------------------
    upkeep = _results(report, "upkeep")
    if upkeep:
        out.append("#### 2b. Under the write lock as the history grows: the maintenance tick, /stats and "
                   "the retention purge\n")
        rows, notes = [], []
        for r in upkeep:
            for lv in r["levels"]:
                rows.append([r["backend"], f"{lv['cases']:,}", f"{lv['ratings']:,}", f"{lv['updates_kept']:,}",
                             lv["fill_seconds"], f"{_f(lv['tick_p50_ms'])} / {_f(max(lv['tick_ms']))}",
                             f"{_f(lv['stats_p50_ms'])} / {_f(max(lv['stats_ms']))}",
                             _purge_cell(lv), _idle_cell(lv), lv["received_this_month"]])
            first, last = r["levels"][0], r["levels"][-1]
            purge = (f", the purge's batch {last['purge_p50_ms'] / first['purge_p50_ms']:.2f}"
                     if "purge_p50_ms" in first else "")
            notes.append(f"{r['backend']}: at {last['cases']:,} / at {first['cases']:,} cases, the tick "
                         f"{last['tick_p50_ms'] / first['tick_p50_ms']:.2f}, /stats "
                         f"{last['stats_p50_ms'] / first['stats_p50_ms']:.2f}{purge}; errors {r['errors']}")
        out.append(_table(["backend", "cases of history", "ratings", "update ids kept", "fill and age s",
                           "tick p50 / max ms", "/stats this month p50 / max ms",
                           "purge, the tick's batch of a backlog: p50 / max ms (erased each)",
                           "purge, nothing due: p50 / max ms", "cases this month"], rows))
        out.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")

    # 3. burst -------------------------------------------------------------------------------
    out.append("#### 3. Notification burst under Telegram's limits (scaled time)\n")
    rows = []
    verdicts = []
    for r in _results(report, "burst"):
        rejected = ", ".join(f"{k}: {n}" for k, n in sorted(r["rejected_429"].items())) or "0"
        what = "cards to the staff group" if r["kind"] == "group" else "notices to citizens"
        rows.append([f"{r['kind']}: {r['count']:,} {what}",
                     f"×{r['factor']:g}", f"{r['delivered_distinct']:,} / {r['expected']:,}", r["lost"],
                     r["duplicated"], rejected, r["span_scaled_s"], r["ideal_span_s"],
                     f"{r['efficiency'] * 100:.2f} %",
                     (f"{r['efficiency_all_messages'] * 100:.2f} % ({r['messages_in_span']:,} messages)"
                      if r.get("efficiency_all_messages") else "–"),
                     r["real_seconds"],
                     f"{_f(r['confirm']['p50_ms'])} / {_f(r['confirm']['max_ms'])}",
                     r.get("confirm_replies_lost_to_429", 0)])
        ok = (r["efficiency"] >= 0.95 and not r["rejected_429"] and r["lost"] == 0 and r["duplicated"] == 0)
        shared = (f", {r['efficiency_all_messages'] * 100:.2f} % counting every message sent in that time"
                  if r.get("efficiency_all_messages") else "")
        verdicts.append(f"{r['kind']}: {_ok(ok)} (≥ 95 % of the limits: {r['efficiency'] * 100:.2f} %{shared}; "
                        f"429s: {sum(r['rejected_429'].values())}; lost {r['lost']}; duplicated {r['duplicated']})")
    out.append(_table(["burst", "time factor", "delivered / expected", "lost", "duplicated", "429 answers",
                       "span (scaled s)", "fastest the limits allow (s)", "of the limits",
                       "of the 30/s limit, every message in the span", "real s",
                       "citizen's confirm p50 / max ms", "receipts lost to 429"], rows))
    out.append("\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")

    # 4. memory ------------------------------------------------------------------------------
    out.append("#### 4. Memory: distinct chats sending /start once\n")
    rows = []
    verdicts = []
    for r in _results(report, "memory"):
        curve = ", ".join(f"{n // 1000}k: {g:.0f}" for n, g in r["curve_mb"])
        rows.append([r["backend"] + (f" (what-if: {r['variant']})" if r.get("variant") else ""),
                     r["chats"], r["updates_per_s"], r["rss_before_mb"], r["rss_after_mb"],
                     r["growth_mb"], r["growth_after_trim_mb"], r["bytes_per_chat"],
                     f"{r['fsm_storage_records']['before']} → {r['fsm_storage_records']['after']}",
                     r["pipeline_locks_after"], r.get("flood_gate_entries_after"), curve, r["errors"]])
        if r.get("variant"):
            continue
        verdict = (_ok(r["growth_mb"] <= 20) if r["chats"] >= 100_000
                   else "indicative only: the target is for 100,000 chats (full mode)")
        verdicts.append(f"{r['backend']}, {r['chats']:,} chats: growth {r['growth_mb']:.1f} MB "
                        f"(target ≤ 20 MB after 100,000 chats): {verdict}")
    out.append(_table(["backend", "chats", "updates/s", "RSS before MB", "RSS after MB", "growth MB",
                       "growth after malloc_trim MB", "bytes / chat", "aiogram FSM records",
                       "pipeline locks left", "flood gate entries left", "growth curve (MB)", "failed"], rows))
    out.append("\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")

    # 5b. webhook workers sharing PostgreSQL ----------------------------------------------------
    hooks = _results(report, "webhook")
    if hooks:
        out.append("#### 5b. Webhook worker processes sharing PostgreSQL (real processes, HTTP)\n")
        rows = [[r["workers"], r["citizens"], r["updates"], r["updates_per_s"], r["latency"]["p50_ms"],
                 r["latency"]["p99_ms"], r["latency"]["max_ms"], r["bot_api_calls_per_update"],
                 f"{r['receipts_ok']} / {r['cases_in_db']}",
                 r["http_failure_count"] + r["receipts_failed"] + len(r["scripts_broken"])
                 + r["worker_logs_with_traceback"]]
                for r in hooks]
        out.append(_table(["worker processes", "citizens", "updates", "updates/s", "p50 ms", "p99 ms", "max ms",
                           "Bot API calls / update", "receipts / cases", "failures"], rows))
        out.append("")
    return "\n".join(out)


BEGIN = "<!-- bench:begin {mode} -->"
END = "<!-- bench:end {mode} -->"


def write_doc(path: Path, report: dict[str, Any]) -> None:
    mode = report["mode"]
    block = f"{BEGIN.format(mode=mode)}\n{render(report)}\n{END.format(mode=mode)}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nRun `.venv/bin/python -m bench` (quick) or " \
                                                  "`.venv/bin/python -m bench --full`.\n"
    begin, end = BEGIN.format(mode=mode), END.format(mode=mode)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
