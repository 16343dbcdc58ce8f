"""The intake conversation machine, declared as data.

One ``Machine`` per process (see :func:`intake_machine`). A conversation is a
plain model holding its stored state, on which the machine's event is fired
directly (``Event.trigger(model)``): the machine is never built per update and
the model is never attached to it.

The flow is a list of steps, some asked only when a condition holds (a
subcategory only when the category has some; an ID number only when the
bureau requires one for this class of matter). From that list the transitions
are generated:

* ``advance`` goes to the next step that should be asked, else the summary.
  While the citizen is changing one answer from the summary, "should be asked"
  means "applies and is still unanswered", so a change that makes another
  answer necessary (a new category with subcategories, a grievance that needs an
  ID number) asks for it and then returns to the summary.
* ``back`` goes to the previous applicable step (or, while editing, straight
  back to the summary with nothing changed).
* ``edit`` goes from the summary to the step named by the model's
  ``edit_target``.
* ``confirm`` submits from the summary; ``cancel`` discards from anywhere.

Conditions are model methods named ``applies_<step>``, ``ask_<step>`` and
``edit_to_<step>``; the model implements them through three generic methods
(see :class:`IntakeModel`). Callbacks do no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Any, Protocol

from transitions import Machine


class Step(StrEnum):
    CONSENT = "consent"
    MATTER_CLASS = "matter_class"
    CATEGORY = "category"
    SUBCATEGORY = "subcategory"
    LOCATION = "location"
    TITLE = "title"
    REQUEST = "request"
    FACTS = "facts"
    REASONS = "reasons"
    OCCURRED = "occurred"
    ACCUSED = "accused"
    LITIGATION = "litigation"
    ATTACHMENTS = "attachments"
    NAME = "name"
    PHONE = "phone"
    ID_NUMBER = "id_number"
    ADDRESS = "address"
    PUBLISH = "publish"
    SUMMARY = "summary"
    SUBMITTED = "submitted"
    CANCELLED = "cancelled"


#: The order of the questions. Steps named in ``CONDITIONAL`` are asked only
#: when the model's ``applies(step)`` says so.
FLOW: tuple[Step, ...] = (
    Step.CONSENT,
    Step.MATTER_CLASS,
    Step.CATEGORY,
    Step.SUBCATEGORY,
    Step.LOCATION,
    Step.TITLE,
    Step.REQUEST,
    Step.FACTS,
    Step.REASONS,
    Step.OCCURRED,
    Step.ACCUSED,
    Step.LITIGATION,
    Step.ATTACHMENTS,
    Step.NAME,
    Step.PHONE,
    Step.ID_NUMBER,
    Step.ADDRESS,
    Step.PUBLISH,
)
CONDITIONAL: frozenset[Step] = frozenset({Step.SUBCATEGORY, Step.ID_NUMBER})
#: Answers that can be changed from the summary (the consent cannot be "changed").
EDITABLE: tuple[Step, ...] = tuple(s for s in FLOW if s is not Step.CONSENT)
FINAL: frozenset[Step] = frozenset({Step.SUBMITTED, Step.CANCELLED})


class IntakeConditions(Protocol):
    """What the machine asks of a conversation model."""

    state: str

    def applies(self, step: Step) -> bool: ...
    def should_ask(self, step: Step) -> bool: ...
    def is_editing(self) -> bool: ...
    def edit_target(self) -> str | None: ...


def _transitions() -> list[dict[str, Any]]:
    table: list[dict[str, Any]] = []
    for i, source in enumerate(FLOW):
        for later in FLOW[i + 1 :]:
            table.append({"trigger": "advance", "source": source, "dest": later,
                          "conditions": f"ask_{later}"})
        table.append({"trigger": "advance", "source": source, "dest": Step.SUMMARY})
    for i, source in enumerate((*FLOW, Step.SUMMARY)):
        if source is not Step.SUMMARY:
            table.append({"trigger": "back", "source": source, "dest": Step.SUMMARY,
                          "conditions": "is_editing"})
        for earlier in reversed(FLOW[:i]):
            entry: dict[str, Any] = {"trigger": "back", "source": source, "dest": earlier}
            if earlier in CONDITIONAL:
                entry["conditions"] = f"applies_{earlier}"
                table.append(entry)
                continue
            table.append(entry)
            break
    for step in EDITABLE:
        table.append({"trigger": "edit", "source": Step.SUMMARY, "dest": step,
                      "conditions": f"edit_to_{step}"})
    table.append({"trigger": "confirm", "source": Step.SUMMARY, "dest": Step.SUBMITTED})
    for step in (*FLOW, Step.SUMMARY):
        table.append({"trigger": "cancel", "source": step, "dest": Step.CANCELLED})
    # transitions names Enum states by member name: hand it plain strings.
    return [{k: (v.value if isinstance(v, Step) else v) for k, v in t.items()} for t in table]


STATES: tuple[str, ...] = tuple(s.value for s in Step)
TRANSITIONS: list[dict[str, Any]] = _transitions()


class IntakeModel:
    """A conversation as the machine sees it, for the length of one event:
    its state, and a reference to the answers it judges."""

    def __init__(self, judge: IntakeConditions) -> None:
        self._judge = judge
        self.state: str = judge.state

    def is_editing(self) -> bool:
        return self._judge.is_editing()


def _install_conditions() -> None:
    """Give IntakeModel one named condition per step, for the transition table."""
    for step in Step:
        setattr(IntakeModel, f"applies_{step}",
                lambda self, _s=step: self._judge.applies(_s))
        setattr(IntakeModel, f"ask_{step}",
                lambda self, _s=step: self._judge.should_ask(_s))
        setattr(IntakeModel, f"edit_to_{step}",
                lambda self, _s=step: self._judge.edit_target() == _s and self._judge.applies(_s))


_install_conditions()


@lru_cache(maxsize=1)
def intake_machine() -> Machine:
    """The process-wide intake machine (built once, on first use)."""
    return Machine(
        model=None,
        states=list(STATES),
        transitions=TRANSITIONS,
        initial=Step.CONSENT.value,
        auto_transitions=False,
        send_event=False,
    )


def fire(judge: IntakeConditions, trigger: str) -> str | None:
    """Fire ``trigger`` for one conversation; return the new state, or None.

    None means the trigger is not allowed from the current state (nothing
    changed). The model is attached with its stored state and always detached.
    """
    machine = intake_machine()
    event = machine.events.get(trigger)
    if event is None or not event.transitions.get(judge.state):
        return None
    # The event is fired on a bare model: attaching it with ``add_model`` (which
    # binds a method per event and state to it) cost a tenth of an update.
    model = IntakeModel(judge)
    moved = event.trigger(model)
    return model.state if moved else None
