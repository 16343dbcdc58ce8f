"""Filling the database in bulk: many cases cloned from one real filing.

One petition is filed through the real dialog; its ``cases`` row and the rows
that belong to it (timeline, statutory clocks: every table with a ``case_id``
column except the outbox) are read back raw and cloned with a new id, a new
random valid tracking number, a citizen, a status, and the one precomputed
query-code hash. Rows are inserted with the driver's executemany (SQLite) or
binary COPY (asyncpg), not through the ORM or the dialog.

The query code hash is Argon2id (a few ms each here): ONE hash of
:data:`KNOWN_CODE` is computed (by the real filing's code path, for the
template) and reused for every cloned row, so a million rows take seconds,
not hours. Lookups then verify against that hash at full cost, as in
production.

Reading the template back instead of hard-coding columns keeps the filler
working while the schema grows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncConnection
from stdnum.iso7064 import mod_37_36

from bench.common import BotUnderTest, _crypto
from bench.scripts import identity
from dialogs.tracking import ALPHABET, hash_query_code

KNOWN_CODE = "BENCH2345Q"

#: Status mix of a bureau's table after some years (assumed): most cases closed,
#: 1 % final after re-review, the rest open at various stages.
STATUS_MIX: tuple[tuple[str, float], ...] = (
    ("closed", 0.80), ("final", 0.01), ("withdrawn", 0.02), ("duplicate", 0.01),
    ("submitted", 0.03), ("registered", 0.03), ("transferred", 0.03), ("assigned", 0.02),
    ("acceptance_notified", 0.02), ("in_handling", 0.03),
)
CHUNK = 20_000


def tracking_numbers(prefix: str, rng: random.Random, taken: set[str]) -> Iterator[str]:
    """Fresh random valid tracking numbers (same format and check symbol as the product's)."""
    while True:
        symbols = "".join(rng.choices(ALPHABET, k=7))
        check = mod_37_36.calc_check_digit(prefix + symbols, alphabet=ALPHABET)
        number = f"{prefix}-{symbols[:4]}-{symbols[4:]}{check}"
        if number not in taken:
            taken.add(number)
            yield number


@dataclass
class Template:
    columns: list[str]
    row: list[Any]
    #: table -> (columns, rows) of the template case's dependent rows.
    children: dict[str, tuple[list[str], list[list[Any]]]]


@dataclass
class Filler:
    app: BotUnderTest
    template: Template
    prefix: str
    rng: random.Random = field(default_factory=lambda: random.Random(20260302))
    numbers: list[str] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)
    next_ids: dict[str, int] = field(default_factory=dict)
    citizens: int = 0

    @property
    def count(self) -> int:
        return len(self.numbers)

    async def grow_to(self, total: int) -> None:
        """Add cases until ``total`` cloned cases are stored."""
        await self._refresh_ids()  # the dialog may have added cases since the last fill
        numbers = tracking_numbers(self.prefix, self.rng, self.taken)
        cols = self.template.columns
        i_id, i_num, i_status = cols.index("id"), cols.index("tracking_number"), cols.index("status")
        i_user, i_chat = cols.index("citizen_user_id"), cols.index("citizen_chat_id")
        i_phone, i_idn, i_hash = cols.index("phone"), cols.index("id_number"), cols.index("query_code_hash")
        # Newer schemas keep phone and ID encrypted, with keyed hashes for finding the same petitioner:
        # the template's ciphertext is reused (like the query-code hash), the hashes are per citizen.
        hashed = "phone_hash" in cols and "id_hash" in cols
        i_phash, i_ihash = (cols.index("phone_hash"), cols.index("id_hash")) if hashed else (-1, -1)
        lookup_hash = _crypto().lookup_hash if hashed else None
        statuses = [s for s, _ in STATUS_MIX]
        weights = [w for _, w in STATUS_MIX]
        while self.count < total:
            n = min(CHUNK, total - self.count)
            case_rows: list[list[Any]] = []
            child_rows: dict[str, list[list[Any]]] = {t: [] for t in self.template.children}
            chosen = self.rng.choices(statuses, weights, k=n)
            for k in range(n):
                case_id = self.next_ids["cases"]
                self.next_ids["cases"] += 1
                # About three cases per citizen over the years.
                user = 50_000_000 + self.rng.randrange(max(1, (self.count + k) // 3 + 1))
                phone, id_number = identity(user)
                row = list(self.template.row)
                row[i_id], row[i_num], row[i_status] = case_id, next(numbers), chosen[k]
                row[i_user], row[i_chat] = user, user
                if lookup_hash is not None:
                    row[i_phash], row[i_ihash] = lookup_hash("+86" + phone), lookup_hash(id_number)
                else:
                    row[i_phone], row[i_idn] = "+86" + phone, id_number
                row[i_hash] = self.template.row[i_hash]
                case_rows.append(row)
                self.numbers.append(row[i_num])
                for table, (ccols, rows) in self.template.children.items():
                    c_id, c_case = ccols.index("id"), ccols.index("case_id")
                    for child in rows:
                        clone = list(child)
                        clone[c_id] = self.next_ids[table]
                        self.next_ids[table] += 1
                        clone[c_case] = case_id
                        child_rows[table].append(clone)
            await self._insert("cases", cols, case_rows)
            for table, rows in child_rows.items():
                await self._insert(table, self.template.children[table][0], rows)
        if self.app.backend == "postgresql":
            async with self.app.engine.connect() as conn:
                for table in ("cases", *self.template.children):
                    await conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                await conn.exec_driver_sql("ANALYZE")  # autovacuum would, soon after a bulk load
                await conn.commit()

    async def _refresh_ids(self) -> None:
        async with self.app.engine.connect() as conn:
            for table in ("cases", *self.template.children):
                result = await conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")
                self.next_ids[table] = int(result.scalar_one())

    async def _insert(self, table: str, columns: Sequence[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        if self.app.backend == "sqlite":
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            async with self.app.engine.begin() as conn:
                await conn.exec_driver_sql(sql, [tuple(r) for r in rows])
            return
        async with self.app.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.copy_records_to_table(table, records=[tuple(r) for r in rows], columns=list(columns))


async def _raw_rows(conn: AsyncConnection, table: str, where: str, value: int) -> tuple[list[str], list[list[Any]]]:
    result = await conn.exec_driver_sql(f"SELECT * FROM {table} WHERE {where} = {int(value)}")
    # asyncpg decodes JSON for SQLAlchemy; binary COPY wants the text back.
    return list(result.keys()), [[json.dumps(v) if isinstance(v, dict | list) else v for v in r]
                                 for r in result.fetchall()]


async def make_filler(app: BotUnderTest, template_case_id: int) -> Filler:
    """A filler cloning the (already filed) case ``template_case_id``; the template
    gets the known query code's hash."""
    known_hash = hash_query_code(KNOWN_CODE)
    async with app.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: sa_inspect(sync).get_table_names())
        columns_of = await conn.run_sync(
            lambda sync: {t: [c["name"] for c in sa_inspect(sync).get_columns(t)] for t in tables})
        cols, rows = await _raw_rows(conn, "cases", "id", template_case_id)
        row = rows[0]
        row[cols.index("query_code_hash")] = known_hash
        children: dict[str, tuple[list[str], list[list[Any]]]] = {}
        for table in tables:
            if table == "outbox" or "case_id" not in columns_of[table] or "id" not in columns_of[table]:
                continue
            ccols, crows = await _raw_rows(conn, table, "case_id", template_case_id)
            if crows:
                children[table] = (ccols, crows)
    return Filler(app, Template(cols, row, children), app.bureau.bureau.code)
