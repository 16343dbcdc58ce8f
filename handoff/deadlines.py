"""Statutory time limits counted the way the bureau configured (DOMAIN.md §5).

Default: counting starts the day after the event, in calendar days, and a last
day that is not a working day moves to the next working day. "Working days"
(the 5-working-day objection window) skip weekends and public holidays and
count the make-up working days (调休), from the maintained ``chinesecalendar``
package rather than a hand-written table.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import chinese_calendar

BUREAU_TZ = ZoneInfo("Asia/Shanghai")


class CalendarRangeError(ValueError):
    """The date is outside the years the holiday calendar knows."""


def is_workday(day: date) -> bool:
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError as exc:
        raise CalendarRangeError(
            f"{day.isoformat()} is outside the Chinese holiday calendar's range "
            f"(chinesecalendar {chinese_calendar.__version__}); upgrade the package") from exc


def next_workday(day: date) -> date:
    while not is_workday(day):
        day += timedelta(days=1)
    return day


def due_date(start: datetime, days: int, *, working: bool = False, roll_forward: bool = True,
             tz: ZoneInfo = BUREAU_TZ) -> date:
    """The last day of a period of ``days`` starting after the local date of ``start``."""
    day = start.astimezone(tz).date()
    if working:
        counted = 0
        while counted < days:
            day += timedelta(days=1)
            if is_workday(day):
                counted += 1
        return day
    day += timedelta(days=days)
    return next_workday(day) if roll_forward else day
