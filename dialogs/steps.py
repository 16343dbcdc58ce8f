"""The intake questions as data: what each step asks, what it accepts, how it checks it.

Message keys follow one pattern: ``step.<id>.ask`` (the question),
``step.<id>.help`` (what ``/help`` says there), ``summary.<id>`` (the label on
the summary). Fixed choices are labelled ``choice.<id>.<value>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dialogs.bureau import BureauConfig
from dialogs.validators import validate_id_number
from state_machine.intake import Step


class Kind(StrEnum):
    CHOICE = "choice"
    TEXT = "text"
    ATTACHMENTS = "attachments"
    PHONE = "phone"


MATTER_CLASSES: tuple[str, ...] = ("suggestion", "report", "grievance")
LITIGATION: tuple[str, ...] = ("none", "court", "arbitration", "admin_review", "judged", "unsure")
PUBLISH: tuple[str, ...] = ("no", "yes")
CONSENT: tuple[str, ...] = ("accept", "decline")

#: Button values the engine handles itself; they never collide with data values.
NAV_BACK = "~back"
NAV_CANCEL = "~cancel"
NAV_SKIP = "~skip"
NAV_DONE = "~done"
NAV_PAGE = "~p"
CONFIRM = "~confirm"
EDIT_MENU = "~edit"
EDIT_PREFIX = "~e."
REPEAT_ADD = "~repeat_add"
REPEAT_FILE = "~repeat_file"
CANCEL_YES = "~cancel_yes"
CANCEL_NO = "~cancel_no"


@dataclass(frozen=True)
class StepSpec:
    step: Step
    kind: Kind
    #: Fixed option values (labels ``choice.<step>.<value>``); dynamic lists are
    #: built by the engine from the bureau config.
    choices: tuple[str, ...] = ()
    #: Key into ``BureauConfig.intake.max_lengths`` for free text.
    length: str | None = None
    #: Turns the cleaned text into the stored value, or raises InputError.
    validator: Callable[[str], str] | None = None
    skippable: bool = False
    #: Typing part of an option's name finds it (long lists).
    searchable: bool = False


SPECS: dict[Step, StepSpec] = {
    spec.step: spec
    for spec in (
        StepSpec(Step.CONSENT, Kind.CHOICE, choices=CONSENT),
        StepSpec(Step.MATTER_CLASS, Kind.CHOICE, choices=MATTER_CLASSES),
        StepSpec(Step.CATEGORY, Kind.CHOICE, searchable=True),
        StepSpec(Step.SUBCATEGORY, Kind.CHOICE, searchable=True, skippable=True),
        StepSpec(Step.LOCATION, Kind.CHOICE, searchable=True),
        StepSpec(Step.TITLE, Kind.TEXT, length="title"),
        StepSpec(Step.REQUEST, Kind.TEXT, length="request"),
        StepSpec(Step.FACTS, Kind.TEXT, length="facts"),
        StepSpec(Step.REASONS, Kind.TEXT, length="reasons"),
        StepSpec(Step.OCCURRED, Kind.TEXT, length="occurred", skippable=True),
        StepSpec(Step.ACCUSED, Kind.TEXT, length="accused", skippable=True),
        StepSpec(Step.LITIGATION, Kind.CHOICE, choices=LITIGATION),
        StepSpec(Step.ATTACHMENTS, Kind.ATTACHMENTS),
        StepSpec(Step.NAME, Kind.TEXT, length="name"),
        StepSpec(Step.PHONE, Kind.PHONE),
        StepSpec(Step.ID_NUMBER, Kind.TEXT, validator=validate_id_number),
        StepSpec(Step.ADDRESS, Kind.TEXT, length="address"),
        StepSpec(Step.PUBLISH, Kind.CHOICE, choices=PUBLISH),
    )
}

PAGE_SIZE = 8


@dataclass(frozen=True)
class Option:
    value: str
    label: str
    #: Other words that pick this option when typed (other language, aliases).
    aliases: tuple[str, ...] = ()


def dynamic_options(step: Step, bureau: BureauConfig, answers: dict[str, object],
                    locale: str) -> list[Option]:
    """The options of a step whose list comes from the bureau's configuration
    (built once per step, category and language: the unit list is long)."""
    category = str(answers.get(Step.CATEGORY.value, "")) if step is Step.SUBCATEGORY else ""
    built = bureau.derived(("options", step, category, locale),
                           lambda: tuple(_build_options(step, bureau, category, locale)))
    return list(built)


def _build_options(step: Step, bureau: BureauConfig, category_code: str, locale: str) -> list[Option]:
    english = locale == "en"
    if step is Step.CATEGORY:
        return [Option(c.code, c.name_en if english else c.name_zh,
                       (c.name_zh, c.name_en, *c.aliases)) for c in bureau.categories]
    if step is Step.SUBCATEGORY:
        category = bureau.category(category_code)
        subs: Sequence[Any] = category.subcategories if category else ()
        return [Option(s.code, s.name_en if english else s.name_zh,
                       (s.name_zh, s.name_en, *s.aliases)) for s in subs]
    if step is Step.LOCATION:
        return [Option(u.code, u.name_en if english else u.name_zh,
                       (u.name_zh, u.name_en, *u.aliases)) for u in bureau.enabled_units()]
    raise ValueError(f"{step} has no dynamic options")


def search_options(step: Step, bureau: BureauConfig, options: list[Option], query: str) -> list[Option]:
    """Options whose names contain what the citizen typed (the bureau's own
    search for units and categories knows suffixes, pinyin and old names)."""
    if step is Step.LOCATION:
        codes = [u.code for u in bureau.search_units(query)]
    elif step is Step.CATEGORY:
        codes = [c.code for c in bureau.search_categories(query)]
    else:
        folded = query.strip().casefold()
        codes = [o.value for o in options
                 if folded and any(folded in name.casefold() for name in (o.label, *o.aliases))]
    by_value = {o.value: o for o in options}
    return [by_value[code] for code in codes if code in by_value]
