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
