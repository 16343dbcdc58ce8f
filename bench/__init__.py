"""The benchmarks (``python -m bench``; see docs/BENCHMARKS.md)."""

import os

#: The PostgreSQL server PostgreSQL runs use; a database is made and dropped per benchmark.
#: Here, not in ``bench.common``, so that ``python -m bench`` itself imports nothing heavy.
DEFAULT_PG_URL = os.environ.get("PETITION_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
