"""A citizen's filing in progress: the state and the answers, stored as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from state_machine.intake import FLOW, Step


@dataclass(eq=False)
class Conversation:
    """Everything a filing has collected so far; persisted after every step.

    ``eq=False``: conversations are compared by identity (see transitions'
    ``add_model`` in PITFALLS.md).
    """

    state: str = Step.CONSENT.value
    answers: dict[str, Any] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    editing: bool = False
    edit_to: str | None = None
    pending_cancel: bool = False
    #: Current page of a paged choice keyboard.
    page: int = 0
    consent_at: str | None = None
    emergency: bool = False
    #: The album (media group) of the last attachment: one acknowledgement per album.
    last_album: str | None = None
    #: An open case of the same petitioner that looks like the same matter, shown
    #: before submitting; ``repeat_ack`` once the citizen chose to file anyway.
    repeat_of: str | None = None
    repeat_ack: bool = False
    #: The answers as they were when a change from the summary began: going
    #: back restores them, so an abandoned change leaves nothing half-done.
    edit_snapshot: dict[str, Any] | None = None
    #: Set by the engine for the ``applies`` condition; not persisted logic.
    id_required_for: tuple[str, ...] = ()
    has_subcategories: bool = False

    # -- conditions the intake machine asks about ------------------------------

    def applies(self, step: Step) -> bool:
        if step is Step.SUBCATEGORY:
            return self.has_subcategories
        if step is Step.ID_NUMBER:
            return self.answers.get(Step.MATTER_CLASS.value) in self.id_required_for
        return True

    def should_ask(self, step: Step) -> bool:
        if not self.applies(step):
            return False
        if self.editing:
            return step.value not in self.answers
        return True

    def is_editing(self) -> bool:
        return self.editing

    def first_missing(self) -> Step | None:
        """The first question that applies and has no answer (None: ready to confirm)."""
        return next((s for s in FLOW if self.applies(s) and s.value not in self.answers), None)

    def edit_target(self) -> str | None:
        return self.edit_to

    # -- persistence ----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The stored form. It shares the answers and attachments with this
        conversation, which is not used once it is stored."""
        return {name: getattr(self, name) for name in _STORED}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        """The conversation stored as ``data``, sharing its answers and
        attachments: whoever stores it back must mark the stored value as
        changed (the ORM would compare the changed value with itself)."""
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})


_FIELDS = frozenset(f.name for f in fields(Conversation))
#: Set by the engine on every step, not stored.
_STORED = tuple(f.name for f in fields(Conversation) if f.name not in ("id_required_for", "has_subcategories"))
