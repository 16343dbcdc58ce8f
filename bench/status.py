"""Benchmark 2: status lookups (and filing) as the case table grows.

The table is grown in place (10⁴ → 10⁵ → 10⁶ cases, see :mod:`bench.fill`); at
each size:

* ``/status <number> <code>`` updates through the real dispatcher, for existing
  numbers (right code: the full timeline view) and for well-formed numbers that
  do not exist, one at a time (latency) and 100 accounts at once (throughput);
* the same lookups with the query-code hash replaced by a plain comparison
  (diagnostic only, clearly labelled: it shows what the database part costs
  once the hash's constant few ms are taken away);
* a few complete filings through the dialog, since submitting looks for the
  same petitioner's earlier cases in this table.

The target compares the median at 10⁶ with the median at 10⁴, and grown in
place the two are measured minutes apart (the fill of 10⁶ rows takes ~1.5
minutes): on a shared host the machine's drift between them is larger than
what the table's size changes. So at the end the largest table is also
measured **side by side** with a second database kept at the smallest size
(filled the same way, its own bot on the same data key), in rounds that
alternate which goes first, and the medians of all rounds are compared.

Rate limits: failed lookups are limited per account (default 10 an hour). The
lookups come from a pool of accounts that have each sent /start, **and** the
benchmark's settings raise ``status_max_failures_per_user`` to 10⁹ so the
limit is checked on every lookup but never reached (the per-number limit stays
at its default: every non-existing number is tried once).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import handoff.followup as followup_module
from bench.common import ERRORS, BotUnderTest, build_bot, round_trips, scratch_database, summary_ms
from bench.feeder import Ids, Person, Step, run_closed_loop
from bench.fill import KNOWN_CODE, Filler, make_filler, tracking_numbers
from bench.scripts import Receipts, filing, one_message

log = logging.getLogger(__name__)

ACCOUNTS = 100
FIRST_ACCOUNT = 2_000_000
FIRST_FILER = 3_000_000
NOT_FOUND = "没有找到"


@contextlib.contextmanager
def hash_stubbed() -> Iterator[None]:
    """Diagnostic only: verification by plain comparison instead of the query-code hash."""
    verify, burn = getattr(followup_module, "verify_query_code"), getattr(followup_module, "burn_verify")  # noqa: B009
    setattr(followup_module, "verify_query_code", lambda code, stored: code.upper() == KNOWN_CODE)  # noqa: B010
    setattr(followup_module, "burn_verify", lambda code: None)  # noqa: B010
    try:
        yield
    finally:
        setattr(followup_module, "verify_query_code", verify)  # noqa: B010
        setattr(followup_module, "burn_verify", burn)  # noqa: B010


class LookupCheck:
    def __init__(self) -> None:
        self.wrong = 0
        self.examples: list[str] = []


def lookup_script(persons: list[Person], targets: list[tuple[str, bool]], app: BotUnderTest,
                  check: LookupCheck) -> Iterator[Step]:
    """/status for each target in turn, from the given accounts in rotation; checks each answer."""
    for n, (number, exists) in enumerate(targets):
        person = persons[n % len(persons)]
        yield Step("existing" if exists else "missing", person.text(f"/status {number} {KNOWN_CODE}"))
        answer = app.telegram.last_text.get(person.chat.id, "")
        ok = (number in answer) if exists else (NOT_FOUND in answer)
        if not ok:
            check.wrong += 1
            if len(check.examples) < 3:
                check.examples.append(answer[:160])


async def measure_lookups(app: BotUnderTest, persons: list[Person], existing: list[str], missing: list[str],
                          concurrency: int, keep: list[float] | None = None) -> dict[str, Any]:
    targets = [(n, True) for n in existing] + [(n, False) for n in missing]
    random.Random(len(targets)).shuffle(targets)
    check = LookupCheck()
    before = app.stats.snapshot()
    errors_before = ERRORS.count
    if concurrency == 1:
        scripts = [lookup_script(persons, targets, app, check)]
    else:
        scripts = [lookup_script([persons[i]], targets[i::concurrency], app, check) for i in range(concurrency)]
    result = await run_closed_loop(app.dp, app.bot, scripts)
    delta = app.stats.since(before)
    if keep is not None:
        keep.extend(result.latencies)
    return {
        "concurrency": concurrency,
        "lookups": result.updates,
        "seconds": result.seconds,
        "lookups_per_s": result.rate,
        "all": summary_ms(result.latencies),
        "existing": summary_ms(result.by_label.get("existing", [])),
        "missing": summary_ms(result.by_label.get("missing", [])),
        "statements_per_lookup": delta["statements"] / max(1, result.updates),
        "round_trips_per_lookup": round_trips(delta, app.backend) / max(1, result.updates),
        "wrong_answers": check.wrong,
        "errors": ERRORS.count - errors_before,
        "wrong_examples": check.examples,
    }


async def measure_filings(app: BotUnderTest, ids: Ids, first_user: int, count: int) -> dict[str, Any]:
    receipts = Receipts()
    scripts = [filing(Person(ids, first_user + i), app.telegram, receipts) for i in range(count)]
    latencies: dict[str, list[float]] = {}
    before = app.stats.snapshot()
    for script in scripts:  # one citizen at a time: the latency of the steps themselves
        result = await run_closed_loop(app.dp, app.bot, [script])
        for label, values in result.by_label.items():
            latencies.setdefault(label, []).extend(values)
    delta = app.stats.since(before)
    confirm = latencies.pop("confirm", [])
    others = [v for values in latencies.values() for v in values]
    return {
        "filings": count,
        "confirm": summary_ms(confirm),
        "other_steps": summary_ms(others),
        "statements_per_filing": delta["statements"] / count,
        "receipts_ok": len(receipts.ok),
        "receipts_failed": len(receipts.failed),
    }


@dataclass
class Table:
    """A bot on its own database of cloned cases, with its accounts."""

    app: BotUnderTest
    ids: Ids
    filler: Filler
    persons: list[Person]

    @classmethod
    async def open(cls, url: str, **settings: Any) -> Table:
        app = await build_bot(url, status_max_failures_per_user=10**9, **settings)
        try:
            ids = Ids(app.bot)
            # The template: one real filing through the dialog.
            template = Receipts()
            for step in filing(Person(ids, FIRST_FILER - 1), app.telegram, template):
                await app.dp.feed_update(app.bot, step.update)
            assert template.ok, template.failed
            filler = await make_filler(app, template_case_id=1)
            # Accounts that will look up: each sends /start once (untimed).
            persons = [Person(ids, FIRST_ACCOUNT + i) for i in range(ACCOUNTS)]
            await run_closed_loop(app.dp, app.bot, [one_message(p, "/start") for p in persons])
        except BaseException:
            await app.close()
            raise
        return cls(app, ids, filler, persons)

    async def lookups(self, rng: random.Random, per_kind: int, concurrency: int = 1,
                      keep: list[float] | None = None) -> dict[str, Any]:
        """``per_kind`` existing numbers (spread over the whole table) and as
        many fresh, valid missing ones; ``keep`` gets each lookup's latency."""
        existing = rng.sample(self.filler.numbers, per_kind)
        missing_gen = tracking_numbers(self.filler.prefix, rng, self.filler.taken)
        missing = [next(missing_gen) for _ in range(per_kind)]
        return await measure_lookups(self.app, self.persons, existing, missing, concurrency, keep)


async def side_by_side(small: Table, large: Table, rng: random.Random, per_kind: int,
                       rounds: int) -> dict[str, Any]:
    """The two tables' lookups in alternating rounds, with the hash and without:
    the medians of all rounds, so the machine's drift falls on both alike."""
    latencies: dict[tuple[str, bool], list[float]] = {(side, stub): [] for side in ("small", "large")
                                                       for stub in (False, True)}
    round_ratios: list[float] = []
    wrong = errors = 0
    for n in range(rounds):
        order = [("small", small), ("large", large)]
        if n % 2:
            order.reverse()
        medians: dict[str, float] = {}  # this round's, with the hash
        for side, table in order:
            for stub in (False, True):
                with hash_stubbed() if stub else contextlib.nullcontext():
                    measured = await table.lookups(rng, per_kind, keep=latencies[(side, stub)])
                wrong += measured["wrong_answers"]
                errors += measured["errors"]
                if not stub:
                    medians[side] = measured["all"]["p50_ms"]
        round_ratios.append(medians["large"] / medians["small"])

    def median(side: str, stub: bool) -> float:
        return summary_ms(latencies[(side, stub)])["p50_ms"]

    return {
        "small_cases": small.filler.count, "large_cases": large.filler.count, "rounds": rounds,
        "lookups_per_round": 2 * per_kind,
        "small": summary_ms(latencies[("small", False)]), "large": summary_ms(latencies[("large", False)]),
        "ratio": median("large", False) / median("small", False),
        "ratio_no_hash": median("large", True) / median("small", True),
        "round_ratios": round_ratios,
        "wrong_answers": wrong, "errors": errors,
    }


async def run_status(backend: str, sizes: list[int], per_kind: int, concurrent_lookups: int, pg_url: str,
                     filings: int = 5, rounds: int = 6) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        main = await Table.open(await stack.enter_async_context(scratch_database(backend, pg_url)))
        stack.push_async_callback(main.app.close)
        app, filler = main.app, main.filler
        rng = random.Random(7)
        levels = []
        next_filer = FIRST_FILER
        for size in sizes:
            started = time.perf_counter()
            await filler.grow_to(size)
            fill_seconds = time.perf_counter() - started
            # Existing numbers spread over the whole table; missing ones fresh and valid.
            sequential = await main.lookups(rng, per_kind)
            concurrent = await main.lookups(rng, concurrent_lookups // 2, concurrency=ACCOUNTS)
            with hash_stubbed():
                diagnostic = await main.lookups(rng, per_kind)
            filed = await measure_filings(app, main.ids, next_filer, filings)
            next_filer += filings
            levels.append({"cases": size, "fill_seconds": fill_seconds, "sequential": sequential,
                           "concurrent": concurrent, "no_scrypt": diagnostic, "filing": filed})
            log.warning("status %s %s: p50 %.1f ms", backend, size, sequential["all"]["p50_ms"])
        compared = None
        if rounds and len(sizes) > 1:
            small = await Table.open(await stack.enter_async_context(scratch_database(backend, pg_url)),
                                     data_keys=app.settings.data_keys)
            stack.push_async_callback(small.app.close)
            await small.filler.grow_to(sizes[0])
            compared = await side_by_side(small, main, rng, max(5, per_kind // 3), rounds)
        return {"backend": backend, "levels": levels, "accounts": ACCOUNTS, "side_by_side": compared,
                "rate_limit": "status_max_failures_per_user=10**9; per-number limit default (5/h)"}
