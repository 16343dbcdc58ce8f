"""A citizen's message about an open case goes to the staff who handle it,
under the case card, and onto the timeline."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dialogs.i18n import t
from dialogs.validators import clean_text
from handoff.outbox import PRIORITY_CARD_EDIT, PRIORITY_STAFF, PRIORITY_URGENT, enqueue
from state_machine.case import TERMINAL_VALUES
from storage.models import Case, CaseEvent

#: Any Telegram message fits (4096 characters): a citizen's message is never cut.
TEXT_LIMIT = 4096


@dataclass
class RelayService:
    staff_chat_id: int | None
    locale: str

    async def open_cases(self, session: AsyncSession, user_id: int) -> list[Case]:
        return list((await session.scalars(
            select(Case).where(Case.citizen_user_id == user_id, Case.status.not_in(TERMINAL_VALUES))
            .order_by(Case.submitted_at.desc()).limit(10))).all())

    async def case_of(self, session: AsyncSession, user_id: int, case_id: int) -> Case | None:
        """The citizen's own open case (button data is never trusted)."""
        case = await session.get(Case, case_id)
        if case is None or case.citizen_user_id != user_id or case.status in TERMINAL_VALUES:
            return None
        return case

    def relay(self, session: AsyncSession, case: Case, content: dict[str, Any], now: datetime,
              *, urgent: bool = False) -> None:
        """Queue the message for the case's staff chat and record it on the timeline.

        ``content``: {"text": …} or {"file_kind": …, "file_id": …, "caption": …}.
        """
        chat = case.card_chat_id or self.staff_chat_id
        header = str(t(self.locale, "staff.relay", tracking=case.tracking_number))
        text = content.get("text")
        if text:
            text = clean_text(text, max_length=TEXT_LIMIT)
        if chat is not None:
            if urgent:
                enqueue(session, kind="text", chat_id=chat, case_id=case.id, now=now, priority=PRIORITY_URGENT,
                        payload={"text": str(t(self.locale, "staff.urgent", tracking=case.tracking_number))})
            base = {"reply_to_card": True, "map_replies": True}
            if content.get("file_id"):
                caption = header + (f"\n{content['caption']}" if content.get("caption") else "")
                enqueue(session, kind="file", chat_id=chat, case_id=case.id, now=now, priority=PRIORITY_STAFF,
                        payload={**base, "file_kind": content["file_kind"], "file_id": content["file_id"],
                                 "caption": caption})
            else:
                enqueue(session, kind="text", chat_id=chat, case_id=case.id, now=now, priority=PRIORITY_STAFF,
                        payload={**base, "text": f"{header}\n{html.escape(text or '', quote=False)}"})
        if content.get("file_id"):
            case.attachment_count += 1
        if urgent:
            case.emergency = True
        if case.card_chat_id is not None and (urgent or content.get("file_id")):
            # The case row changed (its version too): redraw the card and its buttons.
            enqueue(session, kind="card", chat_id=case.card_chat_id, case_id=case.id, now=now,
                    priority=PRIORITY_CARD_EDIT)
        session.add(CaseEvent(case_id=case.id, at=now, actor_kind="citizen", actor_id=case.citizen_user_id,
                              action="citizen_message", status=case.status,
                              note=text or content.get("caption") or f"({content.get('file_kind')})"))

