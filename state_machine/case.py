"""The case lifecycle (DOMAIN.md §4), declared as data.

One ``Machine`` per process (see :func:`case_machine`). A case is a throwaway
model attached for one event with ``add_model(model, initial=stored_status)``
and removed right after: the machine is never built per update. The machine
only knows which trigger leads where; who may fire it is :data:`ACTOR`, and
deadlines, notices and the timeline belong to the services. No callbacks, so
no I/O can happen half-way through a transition.

The diagram in ``docs/lifecycle.md`` is generated from the same table; rewrite
it with ``python -m state_machine.case`` (``--check`` only compares).
"""

from __future__ import annotations

import re
import sys
from enum import StrEnum
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from transitions import Machine


class Status(StrEnum):
    SUBMITTED = "submitted"
    REGISTERED = "registered"  # 登记
    TRANSFERRED = "transferred"  # 转送
    ASSIGNED = "assigned"  # 交办
    UNIT_RECEIVED = "unit_received"
    OBJECTED = "objected"  # the unit says it is not its remit
    ACCEPTANCE_NOTIFIED = "acceptance_notified"  # 受理告知
    NOT_ACCEPTED = "not_accepted"  # 不予受理告知
    STATUTORY_ROUTE = "statutory_route"  # art. 31 routes 1–5
    IN_HANDLING = "in_handling"
    EXTENDED = "extended"
    PENDING_AUDIT = "pending_audit"
    REPLIED = "replied"  # decision issued
    REVIEW_WINDOW = "review_window"
    REVIEW = "review"  # 复查
    REVIEW_DECIDED = "review_decided"
    REREVIEW_WINDOW = "rereview_window"
    REREVIEW = "rereview"  # 复核
    FINAL = "final"  # 终结
    CLOSED = "closed"
    DUPLICATE = "duplicate"
    REDIRECTED = "redirected"  # 政法 / 纪检监察 / other organ
    NOT_REACCEPTED = "not_reaccepted"  # art. 36 ¶3
    WITHDRAWN = "withdrawn"


class Action(StrEnum):
    """The triggers, in declaration order (the order buttons are offered in)."""

    REGISTER = "register"
    MARK_DUPLICATE = "mark_duplicate"
    NOT_REACCEPT = "not_reaccept"
    REDIRECT = "redirect"
    TRANSFER = "transfer"
    ASSIGN = "assign"
    RECEIVE = "receive"
    OBJECT = "object"
    REROUTE = "reroute"
    ACCEPT = "accept"
    NOT_ACCEPT = "not_accept"
    DIRECT_TO_ROUTE = "direct_to_route"
    START_HANDLING = "start_handling"
    EXTEND = "extend"
    SUBMIT_FOR_AUDIT = "submit_for_audit"
    RETURN_FOR_REWORK = "return_for_rework"
    DECIDE = "decide"
    DELIVER_DECISION = "deliver_decision"
    REQUEST_REVIEW = "request_review"
    DECIDE_REVIEW = "decide_review"
    DELIVER_REVIEW = "deliver_review"
    REQUEST_REREVIEW = "request_rereview"
    DECIDE_REREVIEW = "decide_rereview"
    EXPIRE_WINDOW = "expire_window"
    CLOSE = "close"
    WITHDRAW = "withdraw"


Actor = Literal["staff", "citizen", "system"]
ACTORS: tuple[Actor, ...] = get_args(Actor)

S, A = Status, Action

TERMINAL: frozenset[Status] = frozenset(
    {S.FINAL, S.CLOSED, S.DUPLICATE, S.NOT_REACCEPTED, S.WITHDRAWN}
)
OPEN: frozenset[Status] = frozenset(Status) - TERMINAL
#: The terminal statuses as stored strings, for queries (``status.not_in(...)``).
TERMINAL_VALUES: tuple[str, ...] = tuple(sorted(s.value for s in TERMINAL))
#: The open statuses, named: a query for the open cases that says "status not in
#: the terminal ones" reads the whole status index, every case ever closed included.
OPEN_VALUES: tuple[str, ...] = tuple(sorted(s.value for s in OPEN))

#: Where the citizen may still withdraw: open and before any decision. A
#: non-acceptance notice, a direction to a statutory route and a redirection
#: to another organ are written decisions too; staff close those.
WITHDRAWABLE: tuple[Status, ...] = (
    S.SUBMITTED, S.REGISTERED, S.TRANSFERRED, S.ASSIGNED, S.UNIT_RECEIVED,
    S.OBJECTED, S.ACCEPTANCE_NOTIFIED, S.IN_HANDLING, S.EXTENDED, S.PENDING_AUDIT,
)

_TABLE: list[tuple[Action, Status | tuple[Status, ...], Status]] = [
    (A.REGISTER, S.SUBMITTED, S.REGISTERED),
    (A.MARK_DUPLICATE, (S.SUBMITTED, S.REGISTERED), S.DUPLICATE),
    (A.NOT_REACCEPT, (S.SUBMITTED, S.REGISTERED), S.NOT_REACCEPTED),
    (A.REDIRECT, (S.SUBMITTED, S.REGISTERED), S.REDIRECTED),
    (A.TRANSFER, S.REGISTERED, S.TRANSFERRED),
    (A.ASSIGN, S.REGISTERED, S.ASSIGNED),
    (A.RECEIVE, (S.TRANSFERRED, S.ASSIGNED), S.UNIT_RECEIVED),
    (A.OBJECT, S.UNIT_RECEIVED, S.OBJECTED),
    (A.REROUTE, S.OBJECTED, S.REGISTERED),
    (A.ACCEPT, S.UNIT_RECEIVED, S.ACCEPTANCE_NOTIFIED),
    (A.NOT_ACCEPT, S.UNIT_RECEIVED, S.NOT_ACCEPTED),
    (A.DIRECT_TO_ROUTE, S.ACCEPTANCE_NOTIFIED, S.STATUTORY_ROUTE),
    (A.START_HANDLING, S.ACCEPTANCE_NOTIFIED, S.IN_HANDLING),
    # One extension only: there is no extend from EXTENDED.
    (A.EXTEND, S.IN_HANDLING, S.EXTENDED),
    (A.SUBMIT_FOR_AUDIT, (S.IN_HANDLING, S.EXTENDED), S.PENDING_AUDIT),
    (A.RETURN_FOR_REWORK, S.PENDING_AUDIT, S.IN_HANDLING),
    (A.DECIDE, (S.IN_HANDLING, S.EXTENDED, S.PENDING_AUDIT), S.REPLIED),
    (A.DELIVER_DECISION, S.REPLIED, S.REVIEW_WINDOW),
    (A.REQUEST_REVIEW, S.REVIEW_WINDOW, S.REVIEW),
    (A.DECIDE_REVIEW, S.REVIEW, S.REVIEW_DECIDED),
    (A.DELIVER_REVIEW, S.REVIEW_DECIDED, S.REREVIEW_WINDOW),
    (A.REQUEST_REREVIEW, S.REREVIEW_WINDOW, S.REREVIEW),
    (A.DECIDE_REREVIEW, S.REREVIEW, S.FINAL),
    # 超期未申请复查 / 超期未申请复核
    (A.EXPIRE_WINDOW, (S.REVIEW_WINDOW, S.REREVIEW_WINDOW), S.CLOSED),
    (A.CLOSE, (S.REPLIED, S.REVIEW_WINDOW, S.REVIEW_DECIDED, S.REREVIEW_WINDOW,
               S.STATUTORY_ROUTE, S.NOT_ACCEPTED, S.REDIRECTED), S.CLOSED),
    (A.WITHDRAW, WITHDRAWABLE, S.WITHDRAWN),
]

ACTOR: dict[Action, Actor] = {
    action: (
        "citizen" if action in (A.REQUEST_REVIEW, A.REQUEST_REREVIEW, A.WITHDRAW)
        else "system" if action in (A.DELIVER_DECISION, A.DELIVER_REVIEW, A.EXPIRE_WINDOW)
        else "staff"
    )
    for action in Action
}
del S, A


def _plain(value: Status | tuple[Status, ...]) -> str | list[str]:
    # transitions names Enum states by member name: hand it plain strings.
    return [s.value for s in value] if isinstance(value, tuple) else value.value


STATES: tuple[str, ...] = tuple(s.value for s in Status)
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": action.value, "source": _plain(source), "dest": dest.value}
    for action, source, dest in _TABLE
]


def _machine_config() -> dict[str, Any]:
    """What the runtime machine and the diagram are both built from."""
    return {
        "states": [{"name": s, "final": Status(s) in TERMINAL} for s in STATES],
        "transitions": TRANSITIONS,
        "initial": Status.SUBMITTED.value,
        "auto_transitions": False,
        "send_event": False,
    }


@lru_cache(maxsize=1)
def case_machine() -> Machine:
    """The process-wide case machine (built once, on first use)."""
    return Machine(model=None, **_machine_config())


class _Case:
    """A case as the machine sees it, for one event. Compared by identity."""

    def __init__(self, status: str) -> None:
        self.state = status


def _known(status: str) -> str:
    if status not in case_machine().states:
        raise ValueError(f"unknown case status {status!r}")
    return str(status)


@cache
def _allowed(status: str, actor: str | None) -> tuple[Action, ...]:
    if actor is not None and actor not in ACTORS:
        raise ValueError(f"unknown actor {actor!r}")
    events = case_machine().events
    return tuple(
        Action(name) for name, event in events.items()
        if status in event.transitions and (actor is None or ACTOR[Action(name)] == actor)
    )


def allowed_actions(status: str, actor: str | None = None) -> list[Action]:
    """The triggers valid from ``status`` in declaration order, optionally only ``actor``'s.

    Raises ValueError for an unknown status or actor.
    """
    return list(_allowed(_known(status), actor))


def next_status(status: str, action: str, *, actor: str | None = None) -> str | None:
    """Fire ``action`` on a throwaway model in ``status``; return the new status, or None.

    None means the action is not allowed from ``status`` (or not ``actor``'s
    to fire, when an actor is given). Nothing is stored: the caller persists
    the result. Raises ValueError for an unknown status or actor.
    """
    machine = case_machine()
    if action not in _allowed(_known(status), actor):
        return None
    model = _Case(str(status))
    machine.add_model(model, initial=model.state)
    try:
        moved = getattr(model, str(action))()
        return model.state if moved else None
    finally:
        machine.remove_model(model)


class TransitionRefused(Exception):
    """An action that is not allowed from a status (or not for this actor)."""

    def __init__(self, status: str, action: str, actor: str | None = None) -> None:
        who = f" by {actor}" if actor else ""
        super().__init__(f"{action!s}{who} is not allowed from {status!s}")
        self.status = status
        self.action = action
        self.actor = actor


def transition(status: str, action: str, *, actor: str | None = None) -> str:
    """Like :func:`next_status`, but raise :class:`TransitionRefused` instead of None."""
    moved = next_status(status, action, actor=actor)
    if moved is None:
        raise TransitionRefused(status, action, actor)
    return moved


# -- the diagram ---------------------------------------------------------------

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
REGENERATE = "python -m state_machine.case"


def mermaid() -> str:
    """The lifecycle as a Mermaid ``stateDiagram-v2``, from the machine's own table.

    Drawn by transitions' graph extension (mermaid engine, no graphviz) on a
    machine built from the same configuration as :func:`case_machine`; edges
    fired by the citizen or the system say so; terminal states end in ``[*]``.
    """
    from transitions.extensions.diagrams import GraphMachine

    config = _machine_config()
    config["transitions"] = [
        {**t, "label": t["trigger"] if ACTOR[Action(t["trigger"])] == "staff"
         else f"{t['trigger']} ({ACTOR[Action(t['trigger'])]})"}
        for t in config["transitions"]
    ]
    # The engine writes the title as the whole front matter; make it YAML.
    machine = GraphMachine(model=None, graph_engine="mermaid",
                           title="title: Case lifecycle", **config)
    # Top to bottom: the main path is long and reads better as a column.
    machine.machine_attributes = {**machine.machine_attributes, "rankdir": "TB"}
    # A fresh graph, so no state is styled as the model's "active" one.
    source = machine.graph_cls(machine).get_graph().draw(None)
    assert source is not None  # the mermaid engine returns its text for None
    lines = source.splitlines()
    lines += [f"  {name} --> [*]" for name, state in machine.states.items() if state.final]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _block(diagram: str) -> str:
    return f"{BEGIN}\n```mermaid\n{diagram}```\n{END}"


_GENERATED = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)


def committed_diagram(text: str) -> str | None:
    """The diagram between the markers of ``text`` (None if there are no markers)."""
    found = _GENERATED.search(text)
    if found is None:
        return None
    body = found.group(0)[len(BEGIN):-len(END)].strip("\n")
    fence = re.fullmatch(r"```mermaid\n(.*)```", body, re.DOTALL)
    return fence.group(1) if fence else None


def with_diagram(text: str) -> str:
    """``text`` with the generated block replaced by the current diagram."""
    if _GENERATED.search(text) is None:
        raise ValueError(f"no {BEGIN} … {END} block")
    return _GENERATED.sub(lambda _: _block(mermaid()), text, count=1)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the diagram in docs/lifecycle.md; with ``--check``, only compare."""
    args = sys.argv[1:] if argv is None else argv
    text = DOC_PATH.read_text(encoding="utf-8")
    fresh = with_diagram(text)
    if "--check" in args:
        if fresh != text:
            print(f"{DOC_PATH} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        DOC_PATH.write_text(fresh, encoding="utf-8")
        print(f"rewrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
