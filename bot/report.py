"""The KPI report as people read it: an aligned text table, CSV, or an Excel
workbook, in Chinese or English; plus the ``report`` command and the ``/stats``
answer. The numbers come from :func:`handoff.kpi.compute`; this module only
lays them out.

Every format is built from the same list of :class:`Sheet` s (summary, per
unit, each breakdown, the overdue lists), so the three never disagree.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.settings import Settings
from dialogs.bureau import BureauConfig
from dialogs.i18n import catalog, t
from handoff.deadlines import BUREAU_TZ
from handoff.kpi import (
    CHANNELS,
    Count,
    Overdue,
    Participation,
    PeriodError,
    Report,
    Satisfaction,
    Share,
    Timeliness,
    compute,
    enter_channel_count,
    entered_channel_counts,
    parse_period,
)
from storage.db import create_sessionmaker

log = logging.getLogger(__name__)

EXIT_USAGE = 2
DASH = "—"
FORMATS = ("table", "csv", "xlsx")


@dataclass(frozen=True)
class Pct:
    """A rate cell: a fraction, shown as a percentage ("—" when there is none)."""

    value: float | None


Cell = str | int | Pct | date | None


@dataclass(frozen=True)
class Sheet:
    """One table. A cell None is a value that does not exist ("—", e.g. a rate of
    nothing); an empty string is a cell that does not apply (left blank)."""

    key: str
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    #: Leading rows that describe the report (period, scope, time): the text
    #: table shows them in its title instead.
    meta: int = 0
    #: What each row is (the summary's metric keys), for views that leave some out.
    row_keys: tuple[str, ...] = ()


def _text(locale: str, key: str, **params: Any) -> str:
    """A catalog text as plain text (no HTML escaping: files and terminals are not Telegram)."""
    text = catalog(locale)[key]
    return text.format_map(params) if params else text


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.2f}%"


def _cell(value: Cell) -> str:
    if value is None:
        return DASH
    if isinstance(value, Pct):
        return _pct(value.value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


# -- names -----------------------------------------------------------------------------


class _Names:
    def __init__(self, bureau: BureauConfig, locale: str) -> None:
        self.bureau, self.locale = bureau, locale

    def unit(self, code: str | None) -> str:
        if code is None:
            return _text(self.locale, "kpi.not_routed")
        unit = self.bureau.unit(code)
        if unit is None:
            return code
        return unit.name_en if self.locale == "en" else unit.name_zh

    def category(self, code: str | None) -> str:
        category = self.bureau.category(code or "")
        if category is None:
            return code or DASH
        return category.name_en if self.locale == "en" else category.name_zh

    def matter_class(self, code: str | None) -> str:
        key = f"kpi.class.{code}"
        return _text(self.locale, key) if key in catalog(self.locale) else (code or DASH)

    def status(self, code: str) -> str:
        key = f"staff.status.{code}"
        return _text(self.locale, key) if key in catalog(self.locale) else code


# -- sheets ----------------------------------------------------------------------------


def _as_of(report: Report) -> str:
    return report.now.astimezone(BUREAU_TZ).strftime("%Y-%m-%d %H:%M")


def _scope(report: Report, names: _Names) -> str:
    return names.unit(report.unit) if report.unit else _text(names.locale, "kpi.all_units")


Row = tuple[str, tuple[Cell, ...]]  # (metric key, cells)


def _summary(report: Report, names: _Names) -> Sheet:
    loc = names.locale
    s = report.summary

    def row(key: str, value: Cell, numerator: Cell = "", denominator: Cell = "", detail: str = "") -> Row:
        return key, (_text(loc, f"kpi.metric.{key}"), value, numerator, denominator, detail)

    def timeliness(key: str, value: Timeliness | None) -> Row:
        if value is None:
            return row(key, Pct(None))
        return row(key, Pct(value.rate), value.timely, value.total,
                   _text(loc, f"kpi.detail.{key}", timely=value.timely, late=value.late, overdue=value.overdue))

    def satisfaction(key: str, value: Satisfaction) -> Row:
        return row(key, Pct(value.rate), value.satisfied + value.basic, value.total,
                   _text(loc, "kpi.detail.satisfaction", satisfied=value.satisfied, basic=value.basic,
                         unsatisfied=value.unsatisfied))

    def participation(value: Participation) -> Row:
        return row("participation", Pct(value.rate), value.rated, value.total,
                   _text(loc, "kpi.detail.participation", rated=value.rated, expired=value.expired))

    def share(key: str, value: Share | None, detail: str) -> Row:
        if value is None:
            return row(key, Pct(None))
        return row(key, Pct(value.rate), value.part, value.whole, detail)

    online_detail = "" if s.online_share is None else _text(
        loc, "kpi.detail.online_share", online=s.online, all=s.online_share.whole)
    rows: list[Row] = [
        row("period", f"{report.start.isoformat()} – {report.end.isoformat()}"),
        row("scope", _scope(report, names)),
        row("as_of", _as_of(report)),
        row("received", s.received),
        row("online", s.online),
        row("other_channels", s.other_channels),
        share("online_share", s.online_share, online_detail),
        timeliness("routing", s.routing),
        timeliness("acceptance", s.acceptance),
        timeliness("completion", s.completion),
        satisfaction("bureau_satisfaction", s.bureau_satisfaction),
        satisfaction("unit_satisfaction", s.unit_satisfaction),
        participation(s.participation),
        share("repeat", s.repeats, _text(loc, "kpi.detail.repeat")),
        row("transfers", s.transfers),
        row("assignments", s.assignments),
        row("supervisions", s.supervisions),
        row("reviews", s.reviews),
        row("rereviews", s.rereviews),
        row("overdue_acceptance", len(report.overdue_acceptance)),
        row("overdue_decision", len(report.overdue_decision)),
    ]
    if report.calendar_fallbacks:
        rows.append(row("note", "", detail=_text(loc, "kpi.calendar_note", count=report.calendar_fallbacks)))
    headers = tuple(_text(loc, f"kpi.col.{c}") for c in ("metric", "value", "numerator", "denominator", "detail"))
    return Sheet("summary", _text(loc, "kpi.sheet.summary"), headers, tuple(cells for _, cells in rows),
                 meta=3, row_keys=tuple(key for key, _ in rows))


def _units(report: Report, names: _Names) -> Sheet:
    loc = names.locale
    columns = ("code", "unit", "cases", "acceptance", "acceptance_base", "completion", "completion_base",
               "satisfaction", "satisfaction_base", "participation", "participation_base")
    rows = tuple(
        (u.code, names.unit(u.code), u.cases, Pct(u.acceptance.rate), u.acceptance.total,
         Pct(u.completion.rate), u.completion.total, Pct(u.satisfaction.rate), u.satisfaction.total,
         Pct(u.participation.rate), u.participation.total)
        for u in report.units)
    return Sheet("units", _text(loc, "kpi.sheet.units"), tuple(_text(loc, f"kpi.col.{c}") for c in columns), rows)


def _breakdown(key: str, counts: Sequence[Count], name: Any, total: int, locale: str) -> Sheet:
    headers = tuple(_text(locale, f"kpi.col.{c}") for c in ("code", "name", "count", "share"))
    rows = tuple((c.code or DASH, name(c.code), c.count, Pct(c.count / total if total else None)) for c in counts)
    return Sheet(key, _text(locale, f"kpi.sheet.{key}"), headers, rows)


def _top(report: Report, names: _Names) -> Sheet:
    loc = names.locale
    headers = tuple(_text(loc, f"kpi.col.{c}") for c in ("rank", "code", "unit", "count"))
    rows = tuple((i, c.code, names.unit(c.code), c.count) for i, c in enumerate(report.top_units, start=1))
    return Sheet("top", _text(loc, "kpi.sheet.top"), headers, rows)


def _overdue(report: Report, names: _Names) -> Sheet:
    loc = names.locale
    headers = tuple(_text(loc, f"kpi.col.{c}")
                    for c in ("kind", "tracking", "code", "unit", "status", "due", "days_overdue"))

    def rows(kind: str, items: Sequence[Overdue]) -> list[tuple[Cell, ...]]:
        label = _text(loc, f"kpi.metric.{kind}")
        return [(label, o.tracking_number, o.unit_code or DASH, names.unit(o.unit_code), names.status(o.status),
                 o.due, o.days_overdue) for o in items]

    return Sheet("overdue", _text(loc, "kpi.sheet.overdue"), headers,
                 tuple(rows("overdue_acceptance", report.overdue_acceptance)
                       + rows("overdue_decision", report.overdue_decision)))


def sheets(report: Report, bureau: BureauConfig, locale: str) -> list[Sheet]:
    """The report as tables: summary, per unit, the breakdowns, the overdue lists."""
    names = _Names(bureau, locale)
    total = report.summary.received
    return [
        _summary(report, names),
        _units(report, names),
        _breakdown("class", report.by_class, names.matter_class, total, locale),
        _breakdown("category", report.by_category, names.category, total, locale),
        _breakdown("location", report.by_location, names.unit, total, locale),
        _breakdown("unit", report.by_unit, names.unit, total, locale),
        _top(report, names),
        _overdue(report, names),
    ]


# -- plain text ----------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Columns a terminal gives the text: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
               for ch in text)


def grid(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """An aligned table: numbers, rates and "—" to the right, text to the left."""
    text_rows = [[_cell(c) for c in row] for row in rows]
    widths = [display_width(h) for h in headers]
    for row in text_rows:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], display_width(value))

    def line(values: Sequence[str], right: Sequence[bool]) -> str:
        cells = []
        for value, width, to_right in zip(values, widths, right, strict=True):
            pad = " " * (width - display_width(value))
            cells.append(pad + value if to_right else value + pad)
        return "  ".join(cells).rstrip()

    out = [line(headers, [False] * len(headers)), "  ".join("-" * w for w in widths)]
    out += [line(texts, [c is None or isinstance(c, int | Pct) for c in row])
            for texts, row in zip(text_rows, rows, strict=True)]
    return "\n".join(out)


def title(report: Report, bureau: BureauConfig, locale: str) -> str:
    names = _Names(bureau, locale)
    return _text(locale, "kpi.title", start=report.start.isoformat(), end=report.end.isoformat(),
                 scope=_scope(report, names))


def render_table(report: Report, bureau: BureauConfig, locale: str) -> str:
    """Every sheet, one after another, each under its title."""
    parts = [title(report, bureau, locale), _text(locale, "kpi.as_of_line", now=_as_of(report))]
    for sheet in sheets(report, bureau, locale):
        parts.append(f"\n== {sheet.title} ==")
        rows = sheet.rows[sheet.meta:]
        parts.append(grid(sheet.headers, rows) if rows else _text(locale, "kpi.empty"))
    return "\n".join(parts) + "\n"


def render_summary(report: Report, bureau: BureauConfig, locale: str, omit: Collection[str] = ()) -> str:
    """The summary narrow enough for a phone: metric, value, numerator/denominator
    (``omit``: metric keys to leave out)."""
    sheet = sheets(report, bureau, locale)[0]
    rows: list[tuple[Cell, ...]] = []
    for key, (metric, value, numerator, denominator, detail) in zip(sheet.row_keys, sheet.rows, strict=True):
        if key in omit or key in ("period", "scope", "as_of"):
            continue
        fraction = f"{numerator}/{denominator}" if isinstance(denominator, int) else ""
        rows.append((metric, value if value != "" else detail, fraction))
    return grid((*sheet.headers[:2], _text(locale, "kpi.col.fraction")), rows)


# -- CSV and XLSX -------------------------------------------------------------------------


def render_csv(report: Report, bureau: BureauConfig, locale: str) -> str:
    """Each sheet as a block: its title, its header row, its rows, then a blank line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for sheet in sheets(report, bureau, locale):
        writer.writerow([sheet.title])
        writer.writerow(sheet.headers)
        writer.writerows([_cell(c) for c in row] for row in sheet.rows)
        writer.writerow([])
    return buffer.getvalue()


def write_xlsx(report: Report, bureau: BureauConfig, locale: str, target: str | Path | IO[bytes]) -> None:
    """One worksheet per sheet; rates are numbers in percent format, dates are dates."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    if book.active is not None:
        book.remove(book.active)  # the empty default sheet
    for sheet in sheets(report, bureau, locale):
        ws = book.create_sheet(sheet.title[:31])
        ws.append(list(sheet.headers))
        for cell in ws[1]:
            cell.font = Font(bold=True)
        for row in sheet.rows:
            ws.append([DASH if c is None or (isinstance(c, Pct) and c.value is None)
                       else c.value if isinstance(c, Pct) else None if c == "" else c for c in row])
            for value, cell in zip(row, ws[ws.max_row], strict=True):
                if isinstance(value, Pct) and value.value is not None:
                    cell.number_format = "0.00%"
                elif isinstance(value, date):
                    cell.number_format = "yyyy-mm-dd"
        ws.freeze_panes = "A2"
        for i, header in enumerate(sheet.headers, start=1):
            width = max([display_width(header), *(display_width(_cell(r[i - 1])) for r in sheet.rows)])
            ws.column_dimensions[ws.cell(row=1, column=i).column_letter].width = min(width + 2, 60)
    book.save(target)


# -- the command and /stats ------------------------------------------------------------


def _write_text(path: Path, text: str, encoding: str) -> None:
    # The event loop has nothing else to do while the command writes its output.
    path.write_text(text, encoding=encoding)


def _fail(message: str) -> int:
    print(f"petition-bot report: {message}", file=sys.stderr)
    return EXIT_USAGE


def _date(option: str, value: str) -> date | str:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return f"{option}: not a date: {value!r} (expected YYYY-MM-DD)"


async def run_report(settings: Settings, bureau: BureauConfig, *, start: str, end: str, unit: str | None,
                     fmt: str, out: Path | None, lang: str | None, other_channels: int | None,
                     now: datetime | None = None) -> int:
    """``petition-bot report``: check the arguments (one line and exit 2 if wrong), then report."""
    first, last = _date("--from", start), _date("--to", end)
    if isinstance(first, str):
        return _fail(first)
    if isinstance(last, str):
        return _fail(last)
    if first > last:
        return _fail(f"--from {first} is after --to {last}")
    if unit is not None and bureau.unit(unit) is None:
        return _fail(f"--unit: unknown unit code {unit!r} (codes are in the bureau configuration)")
    if other_channels is not None and other_channels < 0:
        return _fail(f"--other-channels: cannot be negative ({other_channels})")
    if fmt not in FORMATS:
        return _fail(f"--format: one of {', '.join(FORMATS)}")
    if fmt == "xlsx" and out is None:
        return _fail("--format xlsx needs --out FILE (a workbook is not written to the terminal)")
    locale = lang or settings.default_locale

    from bot.app import open_database

    engine, _ = await open_database(settings)
    try:
        # A reader: on SQLite it takes no write lock, so a long report does not
        # hold the bot's commits while it reads.
        async with create_sessionmaker(engine, read_only=True)() as session:
            report = await compute(session, bureau, start=first, end=last, now=now or datetime.now(BUREAU_TZ),
                                   unit=unit, other_channels=other_channels)
    finally:
        await engine.dispose()
    try:
        if fmt == "xlsx":
            assert out is not None
            write_xlsx(report, bureau, locale, out)
        else:
            text = render_table(report, bureau, locale) if fmt == "table" else render_csv(report, bureau, locale)
            if out is None:
                sys.stdout.write(text)
            else:
                # A byte-order mark lets Excel open a Chinese CSV as UTF-8.
                _write_text(out, text, "utf-8-sig" if fmt == "csv" else "utf-8")
    except OSError as exc:
        return _fail(f"--out: cannot write {out}: {exc.strerror or exc}")
    return 0


async def stats_reply(session: AsyncSession, bureau: BureauConfig, args: str, now: datetime, locale: str) -> str:
    """The answer to ``/stats [period]`` (default: this month), as Telegram HTML."""
    try:
        start, end = parse_period(args, now.astimezone(BUREAU_TZ).date())
    except PeriodError:
        return str(t(locale, "kpi.stats_usage"))
    report = await compute(session, bureau, start=start, end=end, now=now)
    # The online share needs the other channels' counts (entered with /channels);
    # without them it would read 100 %, so it is left out.
    omit = ("other_channels", "online_share") if report.summary.online_share is None else ()
    return str(t(locale, "kpi.stats_reply", title=title(report, bureau, locale),
                 table=render_summary(report, bureau, locale, omit=omit)))


async def channels_reply(session: AsyncSession, args: str, user_id: int, now: datetime, locale: str) -> str:
    """``/channels <period> <letter|visit|phone|other> <count>`` records a count;
    ``/channels <period>`` shows what was entered."""
    words = args.split()
    if not words:
        return str(t(locale, "kpi.channels_usage"))
    try:
        start, end = parse_period(words[0], now.astimezone(BUREAU_TZ).date())
    except PeriodError:
        return str(t(locale, "kpi.channels_usage"))
    if len(words) == 3 and words[2].isdigit() and words[1] in CHANNELS:
        await enter_channel_count(session, start, end, words[1], int(words[2]), user_id, now)
        await session.flush()
    elif len(words) != 1:
        return str(t(locale, "kpi.channels_usage"))
    total, known = await entered_channel_counts(session, start, end)
    return str(t(locale, "kpi.channels_entered", start=start.isoformat(), end=end.isoformat(),
                 total=total if known else "—"))
