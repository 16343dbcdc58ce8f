"""Typed callback data. The client can send anything: every value is re-checked
by the service that receives it."""

from __future__ import annotations

from enum import StrEnum

from aiogram.filters.callback_data import CallbackData


class IntakeButton(CallbackData, prefix="i"):
    """A button on an intake question: the step it belongs to and its value."""

    step: str
    value: str


class MenuAction(StrEnum):
    NEW = "new"
    STATUS = "status"
    HELP = "help"
    LANGUAGE = "language"
    LANG_ZH = "zh"
    LANG_EN = "en"


class MenuButton(CallbackData, prefix="m"):
    action: MenuAction


class StaffAction(CallbackData, prefix="s"):
    """A button on a staff card or picker: the case, the action, the case version
    the button was drawn for, and the choices made so far."""

    case: int
    action: str
    v: int
    arg: str = ""


class RelayChoice(CallbackData, prefix="r"):
    """A citizen picking which open case a message belongs to."""

    case: int


class CitizenAction(CallbackData, prefix="c"):
    """A citizen's button about one of their cases: view, add, withdraw, review, rate, document."""

    case: int
    action: str
    v: int = 0
    arg: str = ""
