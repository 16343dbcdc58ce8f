"""Status lookup by tracking number and query code.

A wrong code and an unknown number get the same answer and cost the same
time (a dummy hash is checked for unknown numbers), so guessing tells nothing.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from dialogs.errors import InputError
from dialogs.i18n import t
from dialogs.messages import Reply
from dialogs.tracking import burn_verify, parse_tracking_number, verify_query_code
from storage.repositories import CaseRepository


class StatusService:
    def __init__(self, prefix: str, timezone: str = "Asia/Shanghai") -> None:
        self.prefix = prefix
        self.tz = ZoneInfo(timezone)

    async def lookup(self, session: AsyncSession, number_text: str, code: str, locale: str) -> Reply:
        try:
            number = parse_tracking_number(number_text, self.prefix)
        except InputError as refused:
            return Reply.text(refused.key, **refused.params)
        case = await CaseRepository(session).by_tracking_number(number)
        if case is None:
            burn_verify(code)
            return Reply.text("status.not_found")
        if not verify_query_code(code, case.query_code_hash):
            return Reply.text("status.not_found")
        return Reply.text(
            "status.result", tracking=case.tracking_number,
            status=t(locale, f"status.name.{case.status}"),
            submitted=case.submitted_at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M"), title=case.title)
