"""The staff queue: listing, re-posting a card, managing staff, finding the case
behind a message in a staff chat."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case as when
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from dialogs.bureau import BureauConfig
from dialogs.errors import InputError
from dialogs.i18n import t
from dialogs.tracking import parse_tracking_number
from handoff.deadlines import BUREAU_TZ
from handoff.outbox import enqueue
from state_machine.case import OPEN_VALUES
from storage.models import Case, CitizenSession, Staff, StaffMessage

log = logging.getLogger(__name__)

PAGE = 10


@dataclass
class QueueService:
    bureau: BureauConfig
    locale: str

    async def listing(self, session: AsyncSession, *, page: int = 0, assignee: int | None = None) -> str:
        """Open cases: overdue first, then unclaimed, urgent, and the nearest deadline."""
        where: list[ColumnElement[bool]] = [Case.status.in_(OPEN_VALUES)]
        if assignee is not None:
            where.append(Case.assignee_id == assignee)
        total = int(await session.scalar(select(func.count()).select_from(Case).where(*where)) or 0)
        rows = (await session.scalars(
            select(Case).where(*where)
            .order_by(when((Case.overdue.is_not(None), 0), else_=1),
                      when((Case.assignee_id.is_(None), 0), else_=1), Case.emergency.desc(),
                      Case.next_due_on, Case.submitted_at, Case.id)
            .offset(page * PAGE).limit(PAGE))).all()
        if not rows:
            return str(t(self.locale, "staff.queue.empty"))
        pages = -(-total // PAGE)
        lines = [str(t(self.locale, "staff.queue.header", total=total, page=page + 1, pages=pages))]
        for c in rows:
            labels = "".join(t(self.locale, f"clock.overdue.{clock}") + " "
                             for clock in (c.overdue or "").split(",") if clock)
            lines.append(str(t(
                self.locale, "staff.queue.line", tracking=c.tracking_number,
                status=t(self.locale, f"staff.status.{c.status}"),
                submitted=c.submitted_at.astimezone(BUREAU_TZ).strftime("%m-%d"),
                title=c.title if len(c.title) <= 30 else c.title[:29] + "…",
                assignee=str(c.assignee_id) if c.assignee_id else t(self.locale, "staff.card.unassigned"),
                urgent=("🚨" if c.emergency else "") + labels)))
        if page + 1 < pages:
            lines.append(str(t(self.locale, "staff.queue.more", next=page + 2)))
        return "\n".join(lines)

    async def repost(self, session: AsyncSession, text: str, chat_id: int, now: datetime) -> str:
        """Post the card of a case again at the bottom of the chat (it becomes the live card)."""
        try:
            number = parse_tracking_number(text, self.bureau.bureau.code)
        except InputError as err:
            return str(t(self.locale, err.key, **err.params))
        case = await session.scalar(select(Case).where(Case.tracking_number == number))
        if case is None:
            return str(t(self.locale, "staff.refused.no_case"))
        # Forget the old card without a version bump: the new one is posted fresh.
        await session.execute(update(Case).where(Case.id == case.id)
                              .values(card_chat_id=None, card_message_id=None)
                              .execution_options(synchronize_session=False))
        enqueue(session, kind="card", chat_id=chat_id, case_id=case.id, now=now)
        return str(t(self.locale, "staff.done.reposted", tracking=number))

    async def case_for_message(self, session: AsyncSession, chat_id: int, message_id: int) -> Case | None:
        link = await session.get(StaffMessage, (chat_id, message_id))
        return await session.get(Case, link.case_id) if link is not None else None

    async def manage_staff(self, session: AsyncSession, args: str, admin_id: int, now: datetime) -> str:
        words = args.split()
        verb = words[0].lower() if words else "list"
        if verb == "list":
            members = (await session.scalars(select(Staff).where(Staff.active.is_(True))
                                             .order_by(Staff.user_id))).all()
            if not members:
                return str(t(self.locale, "staff.manage.none"))
            return "\n".join(str(t(self.locale, "staff.manage.line", user=m.user_id, role=m.role,
                                   unit=m.unit_code or "—")) for m in members)
        if verb not in ("add", "remove") or len(words) < 2 or not words[1].lstrip("-").isdigit():
            return str(t(self.locale, "staff.manage.usage"))
        user_id = int(words[1])
        if verb == "remove":
            member = await session.get(Staff, user_id)
            if member is None or not member.active:
                return str(t(self.locale, "staff.manage.not_found", user=user_id))
            member.active = False
            return str(t(self.locale, "staff.manage.removed", user=user_id))
        unit = words[2] if len(words) > 2 else None
        if unit is not None and self.bureau.unit(unit) is None:
            return str(t(self.locale, "staff.manage.bad_unit", unit=unit))
        member = await session.get(Staff, user_id)
        if member is None:
            session.add(Staff(user_id=user_id, role="staff", unit_code=unit, active=True,
                              added_by=admin_id, added_at=now))
        else:
            member.active, member.unit_code = True, unit
        return str(t(self.locale, "staff.manage.added", user=user_id, unit=unit or "—"))

    async def ban(self, session: AsyncSession, args: str, admin_id: int, now: datetime, *, banned: bool) -> str:
        """``/ban <user id> [reason]`` and ``/unban <user id>``: the person's updates are no longer processed."""
        words = args.split(maxsplit=1)
        if not words or not words[0].isdigit():
            return str(t(self.locale, "staff.ban.usage"))
        user_id = int(words[0])
        row = await session.get(CitizenSession, user_id)
        if row is None:
            row = CitizenSession(user_id=user_id, chat_id=user_id, locale=self.locale, state=None, data={},
                                 awaiting=None, extra={}, banned=banned, updated_at=now)
            session.add(row)
        row.banned, row.updated_at = banned, now  # every write of the row sets updated_at (CitizenCache)
        log.warning("user %s %s by admin %s%s", user_id, "banned" if banned else "unbanned", admin_id,
                    f": {words[1]}" if banned and len(words) > 1 else "")
        return str(t(self.locale, "staff.ban.done" if banned else "staff.ban.undone", user=user_id))
