"""Statutory time limits counted the way the bureau configured (DOMAIN.md §5).

Default: counting starts the day after the event, in calendar days, and a last
day that is not a working day moves to the next working day. "Working days"
(the 5-working-day objection window) skip weekends and public holidays and
count the make-up working days (调休), from the maintained ``chinesecalendar``
package rather than a hand-written table.

The package knows a year's holidays only once the State Council publishes them
(usually in November for the next year). A deadline in a year it does not know
is never refused — a citizen's filing must not fail for it — but it is
*estimated* with weekends only, marked as such, and start-up logs one clear
error naming the package version and the year (see :func:`calendar_warning`).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import chinese_calendar

BUREAU_TZ = ZoneInfo("Asia/Shanghai")


class CalendarRangeError(ValueError):
    """The date is outside the years the holiday calendar knows."""


@lru_cache(maxsize=4096)
def _workday(day: date) -> bool | None:
    """What the calendar says of ``day`` (None: a year it does not know). The
    calendar is fixed for the life of the process; each confirm asks it about
    weeks of days, so the answers are kept (4,096 days: about eleven years)."""
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:
        return None


def is_workday(day: date, *, strict: bool = True) -> bool:
    known = _workday(day)
    if known is not None:
        return known
    if not strict:
        return day.weekday() < 5
    raise CalendarRangeError(
        f"{day.isoformat()} is outside the Chinese holiday calendar's range "
        f"(chinesecalendar {chinese_calendar.__version__}); upgrade the package")


def calendar_covers(day: date) -> bool:
    return _workday(day) is not None


def next_workday(day: date, *, strict: bool = True) -> date:
    while not is_workday(day, strict=strict):
        day += timedelta(days=1)
    return day


def due_date(start: datetime, days: int, *, working: bool = False, roll_forward: bool = True,
             tz: ZoneInfo = BUREAU_TZ, strict: bool = True) -> date:
    """The last day of a period of ``days`` starting after the local date of ``start``.

    ``strict=False`` counts weekends only where the holiday calendar has no data
    (check :func:`calendar_covers` on the result to know whether it is estimated).
    """
    day = start.astimezone(tz).date()
    if working:
        counted = 0
        while counted < days:
            day += timedelta(days=1)
            if is_workday(day, strict=strict):
                counted += 1
        return day
    day += timedelta(days=days)
    return next_workday(day, strict=strict) if roll_forward else day


def estimated_due_date(start: datetime, days: int, **kwargs: object) -> tuple[date, bool]:
    """(the last day, whether it is only estimated because the calendar ends before it)."""
    try:
        return due_date(start, days, **kwargs), False  # type: ignore[arg-type]
    except CalendarRangeError:
        return due_date(start, days, strict=False, **kwargs), True  # type: ignore[arg-type]


def calendar_warning(today: date, horizon_days: int = 120) -> str | None:
    """A clear line when deadlines starting now may fall where the calendar has no data."""
    for offset in (0, horizon_days):
        day = today + timedelta(days=offset)
        if not calendar_covers(day):
            return (f"chinesecalendar {chinese_calendar.__version__} has no holiday data for {day.year}: "
                    f"deadlines in {day.year} are estimated with weekends only (marked so on cards and status) "
                    f"until the package is upgraded (pip install -U chinesecalendar)")
    return None
