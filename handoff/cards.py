"""The staff card: one message per case in the staff chat, edited as the case moves.

Personal data is masked here (first character of the name, the phone's middle
digits, no ID number); the full details go only to a staff member's private
chat, and each such view is on the timeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from dialogs.bureau import BureauConfig
from dialogs.i18n import t
from dialogs.validators import mask_phone
from handoff.deadlines import BUREAU_TZ
from handoff.outbox import Button
from handoff.staff import StaffService
from storage.models import Case

SUMMARY_LIMIT = 300


def mask_name(name: str) -> str:
    name = name.strip()
    return name[:1] + "*" * min(max(len(name) - 1, 1), 3)


def _short(text: str, limit: int = SUMMARY_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class CardRenderer:
    bureau: BureauConfig
    staff: StaffService

    @property
    def locale(self) -> str:
        return self.staff.locale

    def _unit(self, code: str | None) -> str:
        unit = self.bureau.unit(code or "")
        if unit is None:
            return "—"
        return unit.name_en if self.locale == "en" else unit.name_zh

    def _category(self, case: Case) -> str:
        category = self.bureau.category(case.category)
        if category is None:
            return case.category
        name = category.name_en if self.locale == "en" else category.name_zh
        sub = next((s for s in category.subcategories if s.code == case.subcategory), None)
        if sub is not None:
            name += " / " + (sub.name_en if self.locale == "en" else sub.name_zh)
        return name

    def _deadline(self, case: Case) -> str:
        if case.next_due_clock is None or case.next_due_on is None:
            return "—"
        text = str(t(self.locale, f"clock.due.{case.next_due_clock}", date=case.next_due_on.isoformat()))
        return text + (str(t(self.locale, "clock.estimated")) if case.next_due_estimated else "")

    def render(self, case: Case) -> tuple[str, tuple[tuple[Button, ...], ...]]:
        loc = self.locale
        flags = []
        if case.emergency:
            flags.append(t(loc, "staff.card.flag_emergency"))
        if case.citizen_unreachable:
            flags.append(t(loc, "staff.card.flag_unreachable"))
        if case.final_same_matter:
            flags.append(t(loc, "staff.card.flag_final", original=case.final_same_matter))
        if case.possible_repeat_of:
            flags.append(t(loc, "staff.card.flag_repeat", original=case.possible_repeat_of))
        if case.first_time:
            flags.append(t(loc, "staff.card.flag_first", leader=case.leader or t(loc, "staff.card.no_leader")))
        elif case.leader:
            flags.append(t(loc, "staff.card.flag_leader", leader=case.leader))
        for clock in (case.overdue or "").split(","):
            if clock:
                flags.append(t(loc, f"clock.overdue.{clock}"))
        text = t(
            loc, "staff.card.body",
            tracking=case.tracking_number, status=t(loc, f"staff.status.{case.status}"),
            flags=" ".join(flags),
            matter_class=t(loc, f"choice.matter_class.{case.matter_class}"),
            category=self._category(case), location=self._unit(case.location),
            suggested=self._unit(case.suggested_unit), title=_short(case.title, 100),
            request=_short(case.request), litigation=t(loc, f"choice.litigation.{case.litigation}"),
            attachments=case.attachment_count, name=mask_name(case.name), phone=mask_phone(case.phone),
            submitted=case.submitted_at.astimezone(BUREAU_TZ).strftime("%Y-%m-%d %H:%M"),
            deadline=self._deadline(case), unit=self._unit(case.unit_code),
            assignee=str(case.assignee_id) if case.assignee_id else t(loc, "staff.card.unassigned"),
        )
        return text, self.staff.card_buttons(case)
