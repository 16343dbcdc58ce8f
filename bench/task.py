"""One benchmark in its own process: ``python -m bench.task '<json spec>' <result file>``.

A fresh process per benchmark keeps them from disturbing each other (memory,
caches, the garbage collector) and is what the memory benchmark needs.
``python -m bench`` forks each from a server that has imported the code
(:func:`forked`), which is the same process without the seconds of imports.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
from typing import Any


def _pace(spec: dict[str, Any]) -> tuple[float, float] | None:
    """A person's think time, low and high bound in seconds (None: no think time)."""
    pace = spec.get("pace")
    return (float(pace[0]), float(pace[1])) if pace else None


async def run(spec: dict[str, Any]) -> Any:
    kind = spec["kind"]
    pg_url = spec.get("pg_url", "")
    if kind == "intake":
        from bench.intake import run_intake

        return await run_intake(spec["backend"], spec["citizens"], pg_url, spec.get("variant"), _pace(spec))
    if kind == "ceiling":
        from bench.intake import run_ceiling

        return await run_ceiling(spec["citizens"], spec["shape"], _pace(spec))
    if kind == "status":
        from bench.status import run_status

        return await run_status(spec["backend"], spec["sizes"], spec["per_kind"], spec["concurrent"], pg_url,
                                spec.get("filings", 5), spec.get("rounds", 6))
    if kind == "upkeep":
        from bench.upkeep import run_upkeep

        return await run_upkeep(spec["backend"], spec["sizes"], spec["updates"], pg_url)
    if kind == "burst":
        from bench.burst import run_burst

        return await run_burst(spec["backend"], spec["burst"], spec["count"], spec["factor"], spec["citizens"],
                               pg_url)
    if kind == "memory":
        from bench.memory import run_memory

        return await run_memory(spec["backend"], spec["chats"], pg_url, variant=spec.get("variant"))
    if kind == "webhook":
        from bench.webhook import run_webhook

        return await run_webhook(spec["workers"], spec["citizens"], pg_url)
    raise ValueError(f"unknown benchmark {kind!r}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The product's own error logs are counted (bench.common.ERRORS), not printed.
    for name in ("bot", "handoff"):
        logging.getLogger(name).propagate = False
    started = time.perf_counter()
    result = asyncio.run(run(spec))
    with open(sys.argv[2], "w") as f:
        json.dump({"spec": spec, "result": result, "seconds": time.perf_counter() - started}, f, default=str)


def forked(spec_json: str, path: str, log_path: str) -> None:
    """:func:`main` in a process forked from ``python -m bench``'s fork server,
    its output going to ``log_path``.

    A full collection first: the objects the imports made are the fork
    server's until this process writes to them, and the first full
    collection writes to every one, copying their pages (a stall of 400 ms
    in the ceiling's first run at 100 citizens, which a new interpreter
    does not have: BENCHMARKS.md, finding 37)."""
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    gc.collect()
    sys.argv = ["bench.task", spec_json, path]
    main()


if __name__ == "__main__":
    main()
