"""Channel-neutral input and output of the conversation engine.

The engine reads an :class:`Input` and answers with :class:`Reply` objects that
name catalog keys; ``bot/`` turns them into Telegram messages and keyboards and
the terminal chat into printed lines. Params carry the citizen's raw text: the
renderer escapes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class InputKind(StrEnum):
    TEXT = "text"
    BUTTON = "button"
    CONTACT = "contact"
    PHOTO = "photo"
    DOCUMENT = "document"
    #: Stickers, voice notes, videos, locations…: shown an explanation, never silence.
    OTHER = "other"
    COMMAND = "command"


class Command(StrEnum):
    CANCEL = "cancel"
    BACK = "back"
    HELP = "help"


@dataclass(frozen=True)
class Media:
    file_id: str
    file_unique_id: str
    kind: str  # "photo" | "document"
    size: int | None = None
    mime_type: str | None = None
    file_name: str | None = None
    media_group_id: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class Input:
    kind: InputKind
    text: str = ""
    #: For BUTTON: the step the button belongs to and its value.
    step: str = ""
    value: str = ""
    media: Media | None = None
    #: For OTHER: what it was ("sticker", "voice", …), to say so in the answer.
    other_type: str = ""
    command: Command | None = None
    #: For CONTACT: whether the shared contact is the sender's own.
    own_contact: bool = True


@dataclass(frozen=True)
class Text:
    """A catalog message, rendered with escaped params."""

    key: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Button:
    value: str
    #: Either a catalog key or a literal label (a unit or category name).
    label_key: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Keyboard:
    """Inline buttons tied to the step that shows them (a stale press is caught)."""

    step: str
    rows: tuple[tuple[Button, ...], ...]


@dataclass(frozen=True)
class Reply:
    """One message to the citizen: blocks of catalog text and optional buttons."""

    blocks: tuple[Text, ...]
    keyboard: Keyboard | None = None
    #: Show Telegram's "share my phone" reply keyboard.
    request_contact: bool = False
    #: Take away a reply keyboard shown earlier.
    remove_keyboard: bool = False

    @classmethod
    def text(cls, key: str, **params: Any) -> Reply:
        return cls(blocks=(Text(key, params),))
