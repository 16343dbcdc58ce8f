"""The intake machine on its own: which question comes next, and what is refused.

No aiogram, no database, no engine: a small stand-in answers the machine's
conditions, so each rule of ``state_machine/intake.py`` is seen directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from state_machine.intake import CONDITIONAL, EDITABLE, FLOW, Step, fire, intake_machine

ALWAYS_ASKED = [s for s in FLOW if s not in CONDITIONAL]


@dataclass(eq=False)
class Judge:
    """A conversation as the machine sees it, with the conditions set by hand."""

    state: str = Step.CONSENT.value
    has_subcategories: bool = True
    needs_id_number: bool = True
    answered: set[Step] = field(default_factory=set)
    editing: bool = False
    edit_to: str | None = None

    def __post_init__(self) -> None:
        # Stored conversations hold plain strings (transitions reads an Enum
        # member by its name, not its value).
        self.state = str(self.state)

    def applies(self, step: Step) -> bool:
        if step is Step.SUBCATEGORY:
            return self.has_subcategories
        if step is Step.ID_NUMBER:
            return self.needs_id_number
        return True

    def should_ask(self, step: Step) -> bool:
        if not self.applies(step):
            return False
        return step not in self.answered if self.editing else True

    def is_editing(self) -> bool:
        return self.editing

    def edit_target(self) -> str | None:
        return self.edit_to

    def move(self, trigger: str) -> str | None:
        """Fire and keep the new state, as the engine does."""
        moved = fire(self, trigger)
        if moved is not None:
            self.state = moved
        return moved


def advance_to_summary(judge: Judge) -> list[str]:
    """Every state the machine visits on the way to the summary."""
    visited = [judge.state]
    while judge.state != Step.SUMMARY:
        assert judge.move("advance") is not None, f"stuck at {judge.state}"
        visited.append(judge.state)
        assert len(visited) <= len(FLOW) + 1, visited
    return visited


# ------------------------------------------------------------------ the flow


def test_questions_come_in_the_declared_order_then_the_summary() -> None:
    judge = Judge(has_subcategories=True, needs_id_number=True)
    assert advance_to_summary(judge) == [*FLOW, Step.SUMMARY]


def test_subcategory_and_id_number_are_skipped_when_they_do_not_apply() -> None:
    judge = Judge(has_subcategories=False, needs_id_number=False)
    assert advance_to_summary(judge) == [*ALWAYS_ASKED, Step.SUMMARY]


@pytest.mark.parametrize(("subcategories", "id_number", "asked"), [
    (True, False, Step.SUBCATEGORY),
    (False, True, Step.ID_NUMBER),
])
def test_each_conditional_step_is_asked_exactly_when_it_applies(
        subcategories: bool, id_number: bool, asked: Step) -> None:
    visited = advance_to_summary(Judge(has_subcategories=subcategories, needs_id_number=id_number))
    assert asked in visited
    assert set(CONDITIONAL) - {asked} == set(CONDITIONAL) - set(visited)


def test_a_category_without_subcategories_goes_straight_to_the_location() -> None:
    judge = Judge(state=Step.CATEGORY, has_subcategories=False)
    assert fire(judge, "advance") == Step.LOCATION


def test_confirm_from_the_summary_submits() -> None:
    assert fire(Judge(state=Step.SUMMARY), "confirm") == Step.SUBMITTED


@pytest.mark.parametrize("source", [*FLOW, Step.SUMMARY])
def test_cancel_is_possible_from_every_question_and_the_summary(source: Step) -> None:
    assert fire(Judge(state=source), "cancel") == Step.CANCELLED


# ------------------------------------------------------------------ back


def test_back_walks_the_flow_backwards_to_the_first_question() -> None:
    judge = Judge(state=Step.SUMMARY)
    visited = [judge.state]
    while judge.move("back") is not None:
        visited.append(judge.state)
    assert visited == [Step.SUMMARY, *reversed(FLOW)]


def test_back_skips_questions_that_do_not_apply() -> None:
    judge = Judge(state=Step.SUMMARY, has_subcategories=False, needs_id_number=False)
    visited = [judge.state]
    while judge.move("back") is not None:
        visited.append(judge.state)
    assert visited == [Step.SUMMARY, *reversed(ALWAYS_ASKED)]


@pytest.mark.parametrize(("source", "applies", "dest"), [
    (Step.LOCATION, True, Step.SUBCATEGORY),
    (Step.LOCATION, False, Step.CATEGORY),
    (Step.ADDRESS, True, Step.ID_NUMBER),
    (Step.ADDRESS, False, Step.PHONE),
])
def test_back_from_the_step_after_a_conditional_one(source: Step, applies: bool, dest: Step) -> None:
    judge = Judge(state=source, has_subcategories=applies, needs_id_number=applies)
    assert fire(judge, "back") == dest


def test_back_on_the_first_question_is_refused() -> None:
    judge = Judge(state=Step.CONSENT)
    assert fire(judge, "back") is None
    assert judge.state == Step.CONSENT


def test_back_while_changing_an_answer_returns_to_the_summary() -> None:
    judge = Judge(state=Step.FACTS, editing=True, edit_to=Step.FACTS.value, answered=set(FLOW))
    assert fire(judge, "back") == Step.SUMMARY


# ------------------------------------------------------------------ editing from the summary


@pytest.mark.parametrize("target", EDITABLE)
def test_edit_opens_the_chosen_answer_and_returns_to_the_summary(target: Step) -> None:
    judge = Judge(state=Step.SUMMARY, answered=set(FLOW), editing=True, edit_to=target.value)
    assert judge.move("edit") == target
    assert judge.move("advance") == Step.SUMMARY


def test_edit_cannot_reopen_the_consent() -> None:
    judge = Judge(state=Step.SUMMARY, answered=set(FLOW), editing=True, edit_to=Step.CONSENT.value)
    assert fire(judge, "edit") is None


def test_edit_cannot_open_a_question_that_does_not_apply() -> None:
    judge = Judge(state=Step.SUMMARY, needs_id_number=False, answered=set(FLOW) - {Step.ID_NUMBER},
                  editing=True, edit_to=Step.ID_NUMBER.value)
    assert fire(judge, "edit") is None


def test_editing_the_class_asks_for_a_newly_required_id_number_then_returns() -> None:
    answered = set(FLOW) - {Step.ID_NUMBER}  # it was a suggestion: no ID number given
    judge = Judge(state=Step.SUMMARY, answered=answered, editing=True,
                  edit_to=Step.MATTER_CLASS.value)
    assert judge.move("edit") == Step.MATTER_CLASS
    assert judge.move("advance") == Step.ID_NUMBER
    judge.answered.add(Step.ID_NUMBER)
    assert judge.move("advance") == Step.SUMMARY


def test_editing_the_category_asks_for_its_subcategory_then_returns() -> None:
    answered = set(FLOW) - {Step.SUBCATEGORY}  # the new category's subcategory is unknown
    judge = Judge(state=Step.SUMMARY, answered=answered, editing=True,
                  edit_to=Step.CATEGORY.value)
    assert judge.move("edit") == Step.CATEGORY
    assert judge.move("advance") == Step.SUBCATEGORY
    judge.answered.add(Step.SUBCATEGORY)
    assert judge.move("advance") == Step.SUMMARY


# ------------------------------------------------------------------ refused triggers


@pytest.mark.parametrize(("state", "trigger"), [
    (Step.TITLE, "confirm"),
    (Step.TITLE, "edit"),
    (Step.SUMMARY, "advance"),
    (Step.SUBMITTED, "advance"),
    (Step.SUBMITTED, "cancel"),
    (Step.CANCELLED, "back"),
    (Step.TITLE, "to_summary"),  # no automatic to_<state> triggers
    (Step.TITLE, "no_such_trigger"),
])
def test_a_trigger_not_allowed_here_returns_none_and_changes_nothing(state: Step, trigger: str) -> None:
    judge = Judge(state=state, editing=True, edit_to=Step.TITLE.value)
    assert fire(judge, trigger) is None
    assert judge.state == state


def test_fire_reports_the_new_state_without_writing_it() -> None:
    judge = Judge(state=Step.TITLE)
    assert fire(judge, "advance") == Step.REQUEST
    assert judge.state == Step.TITLE  # the engine decides when to store it


# ------------------------------------------------------------------ one machine, no leftovers


def test_the_machine_is_built_once_per_process() -> None:
    assert intake_machine() is intake_machine()


def test_no_model_stays_attached_after_a_thousand_events() -> None:
    machine = intake_machine()
    attached_before = len(machine.models)
    judges = [Judge(state=FLOW[i % len(FLOW)]) for i in range(1000)]
    for i, judge in enumerate(judges):
        fire(judge, ("advance", "back", "confirm", "cancel")[i % 4])
    assert len(machine.models) == attached_before == 0


def test_a_model_is_detached_even_when_a_condition_raises() -> None:
    class Broken(Judge):
        def should_ask(self, step: Step) -> bool:
            raise RuntimeError("condition failed")

    with pytest.raises(RuntimeError, match="condition failed"):
        fire(Broken(state=Step.TITLE), "advance")
    assert intake_machine().models == []


def test_two_conversations_in_the_same_state_do_not_disturb_each_other() -> None:
    first, second = Judge(state=Step.TITLE), Judge(state=Step.TITLE)
    assert first.move("advance") == Step.REQUEST
    assert second.state == Step.TITLE
    assert second.move("back") == Step.LOCATION
    assert first.state == Step.REQUEST
