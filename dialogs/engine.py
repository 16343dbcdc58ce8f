"""The intake engine: (conversation, citizen input) → (new conversation, replies).

Pure and synchronous. It validates the answer to the current step, stores it,
moves the shared intake machine and says what to ask next. A refused answer
changes nothing: the same question comes back with the reason in front of it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dialogs import steps as S
from dialogs.bureau import BureauConfig
from dialogs.conversation import Conversation
from dialogs.errors import InputError
from dialogs.i18n import Trusted, has, t
from dialogs.messages import Button, Command, Input, InputKind, Keyboard, Media, Reply, Text
from dialogs.validators import clean_text, normalize_phone
from state_machine.intake import EDITABLE, Step, fire

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Submission:
    """A confirmed filing, handed to storage to become a case."""

    answers: dict[str, Any]
    attachments: list[dict[str, Any]]
    consent_at: str
    emergency: bool
    locale: str
    #: The citizen was shown this open case on the same matter and filed anyway.
    repeat_of: str | None = None
    #: The citizen chose to add this filing to that open case instead.
    merge: bool = False


@dataclass
class Outcome:
    #: None when the filing ended (submitted or cancelled).
    conversation: Conversation | None
    replies: list[Reply] = field(default_factory=list)
    submission: Submission | None = None


_FREE_TEXT_LIMIT_KEY = "free"
_ID_NUMBER_MAX = 40
_MB = 1024 * 1024


@functools.cache
def _fixed_options(step: Step, locale: str) -> tuple[S.Option, ...]:
    """The options of a step with a fixed list of choices (the catalogs are fixed at start)."""
    other = "en" if locale == "zh" else "zh"
    return tuple(S.Option(v, t(locale, f"choice.{step}.{v}"), (t(other, f"choice.{step}.{v}"),))
                 for v in S.SPECS[step].choices)


class IntakeEngine:
    def __init__(self, bureau: BureauConfig, clock: Clock = utcnow) -> None:
        self.bureau = bureau
        self.clock = clock

    # -- entry points -----------------------------------------------------------

    def begin(self, locale: str) -> Outcome:
        conv = Conversation()
        self._prepare(conv)
        return Outcome(conv, [self.ask(conv, locale)])

    def resume(self, conv: Conversation, locale: str) -> list[Reply]:
        """The current question again (after /start, /new or /help mid-filing)."""
        self._prepare(conv)
        if conv.state == Step.SUMMARY:
            return self.summary(conv, locale)
        return [self.ask(conv, locale)]

    def handle(self, conv: Conversation, inp: Input, locale: str) -> Outcome:
        self._prepare(conv)
        out: list[Reply] = []
        said = inp.text or (inp.media.caption if inp.media and inp.media.caption else "")
        if said and self.bureau.emergency_words.match(said):
            conv.emergency = True
            out.append(Reply.text("emergency.advice"))

        if conv.pending_cancel:
            conv.pending_cancel = False
            if inp.kind is InputKind.BUTTON and inp.value == S.CANCEL_YES:
                return Outcome(None, [*out, Reply.text("cancel.done")])
            if inp.kind is InputKind.BUTTON and inp.value == S.CANCEL_NO:
                out.append(self.ask(conv, locale, Text("cancel.kept")) if conv.state != Step.SUMMARY
                           else self._summary_prompt(locale, Text("cancel.kept")))
                return Outcome(conv, out)
            # Anything else is an answer to the question on screen: the
            # citizen moved on, and their words must not be lost.

        if inp.kind is InputKind.COMMAND:
            return Outcome(conv, out + self._command(conv, inp.command, locale))

        if inp.kind is InputKind.BUTTON:
            if inp.value == S.NAV_CANCEL:
                return Outcome(conv, out + self._command(conv, Command.CANCEL, locale))
            if inp.step != conv.state:
                out.extend(self._again(conv, locale, Text("error.stale_button")))
                return Outcome(conv, out)
            if inp.value == S.NAV_BACK and conv.state != Step.SUMMARY:
                return Outcome(conv, out + self._command(conv, Command.BACK, locale))
            if inp.value.startswith(S.NAV_PAGE):
                conv.page = _int(inp.value.removeprefix(S.NAV_PAGE))
                out.append(self.ask(conv, locale))
                return Outcome(conv, out)

        if conv.state == Step.SUMMARY:
            return self._at_summary(conv, inp, locale, out)

        step = Step(conv.state)
        try:
            done = self._answer(conv, step, inp, locale, out)
        except InputError as refused:
            out.append(self.ask(conv, locale, Text(refused.key, refused.params)))
            return Outcome(conv, out)
        if done:
            self._advance(conv, locale, out)
        return Outcome(conv, out)

    # -- questions ---------------------------------------------------------------

    def ask(self, conv: Conversation, locale: str, prefix: Text | None = None) -> Reply:
        step = Step(conv.state)
        spec = S.SPECS[step]
        params: dict[str, Any] = {}
        if spec.length:
            params["limit"] = self._limit(spec.length)
        if step is Step.ATTACHMENTS:
            params = {"limit": self.bureau.intake.max_attachments,
                      "size": self.bureau.intake.max_attachment_mb,
                      "count": len(conv.attachments)}
        blocks = (*((prefix,) if prefix else ()), Text(f"step.{step}.ask", params))
        if spec.kind is S.Kind.PHONE:
            return Reply(blocks=blocks, request_contact=True)
        rows: list[tuple[Button, ...]] = []
        if spec.kind is S.Kind.CHOICE:
            rows.extend(self._option_rows(conv, step, locale))
        if spec.kind is S.Kind.ATTACHMENTS:
            rows.append((Button(S.NAV_DONE, label_key="button.done"),))
        if spec.skippable:
            rows.append((Button(S.NAV_SKIP, label_key="button.skip"),))
        rows.append(self._nav_row(step))
        return Reply(blocks=blocks, keyboard=Keyboard(step.value, tuple(rows)))

    def summary(self, conv: Conversation, locale: str) -> list[Reply]:
        blocks: list[Text] = [Text("summary.header")]
        for step in EDITABLE:
            if not conv.applies(step):
                continue
            blocks.append(Text("summary.line", {
                "label": t(locale, f"summary.{step}"),
                "value": self._display(conv, step, locale),
            }))
        if conv.emergency:
            blocks.append(Text("summary.emergency_note"))
        blocks.append(Text("summary.confirm_hint"))
        return [Reply(blocks=tuple(blocks), keyboard=self._summary_keyboard())]

    # -- internals -----------------------------------------------------------------

    def _prepare(self, conv: Conversation) -> None:
        conv.id_required_for = tuple(self.bureau.intake.id_number_required_for)
        category = self.bureau.category(str(conv.answers.get(Step.CATEGORY.value, "")))
        conv.has_subcategories = bool(category and category.subcategories)

    def _limit(self, key: str) -> int:
        limits = self.bureau.intake.max_lengths
        return int(limits.get(key, limits.get(_FREE_TEXT_LIMIT_KEY, 1000)))

    def _again(self, conv: Conversation, locale: str, prefix: Text) -> list[Reply]:
        if conv.state == Step.SUMMARY:
            return [self._summary_prompt(locale, prefix)]
        return [self.ask(conv, locale, prefix)]

    def _command(self, conv: Conversation, command: Command | None, locale: str) -> list[Reply]:
        if command is Command.CANCEL:
            conv.pending_cancel = True
            return [Reply(blocks=(Text("cancel.confirm"),), keyboard=Keyboard(conv.state, ((
                Button(S.CANCEL_YES, label_key="button.cancel_yes"),
                Button(S.CANCEL_NO, label_key="button.cancel_no"),
            ),)))]
        if command is Command.BACK:
            if conv.editing and conv.edit_snapshot is not None:
                # Leaving a change half-way: the answers go back to what they were.
                conv.answers = conv.edit_snapshot
            moved = fire(conv, "back")
            if moved is None:
                return self._again(conv, locale, Text("error.back.first"))
            conv.state = moved
            conv.page = 0
            if moved == Step.SUMMARY:
                conv.editing, conv.edit_to, conv.edit_snapshot = False, None, None
                return self.summary(conv, locale)
            return [self.ask(conv, locale)]
        # HELP
        help_key = "step.summary.help" if conv.state == Step.SUMMARY else f"step.{conv.state}.help"
        return self._again(conv, locale, Text(help_key))

    def _advance(self, conv: Conversation, locale: str, out: list[Reply]) -> None:
        self._prepare(conv)
        moved = fire(conv, "advance")
        if moved is None:  # every flow step has an advance; this is a bug, not input
            raise RuntimeError(f"intake machine cannot advance from {conv.state}")
        conv.state = moved
        conv.page = 0
        if moved == Step.SUMMARY:
            conv.editing, conv.edit_to, conv.edit_snapshot = False, None, None
            out.extend(self.summary(conv, locale))
        else:
            out.append(self.ask(conv, locale))

    def _answer(self, conv: Conversation, step: Step, inp: Input, locale: str,
                out: list[Reply]) -> bool:
        """Store the answer to ``step``; True when the filing moves on."""
        spec = S.SPECS[step]
        if spec.kind is S.Kind.CHOICE:
            return self._choose(conv, step, inp, locale, out)
        if spec.kind is S.Kind.ATTACHMENTS:
            return self._attach(conv, inp, locale, out)
        if inp.kind is InputKind.BUTTON and inp.value == S.NAV_SKIP and spec.skippable:
            conv.answers[step.value] = ""
            return True
        if inp.kind is InputKind.BUTTON:
            raise InputError("error.choice.unknown")
        if spec.kind is S.Kind.PHONE:
            if inp.kind is InputKind.CONTACT:
                conv.answers[step.value] = normalize_phone(inp.text)
            else:
                conv.answers[step.value] = normalize_phone(self._text_of(inp, locale, 40))
            out.append(Reply(blocks=(Text("phone.saved"),), remove_keyboard=True))
            return True
        limit = _ID_NUMBER_MAX if step is Step.ID_NUMBER else self._limit(spec.length or "free")
        text = self._text_of(inp, locale, limit)
        conv.answers[step.value] = spec.validator(text) if spec.validator else text
        return True

    def _text_of(self, inp: Input, locale: str, limit: int) -> str:
        if inp.kind is InputKind.TEXT:
            return clean_text(inp.text, max_length=limit)
        what = inp.other_type if inp.kind is InputKind.OTHER else inp.kind.value
        raise InputError("error.expected_text", what=_media_name(locale, what))

    def _choose(self, conv: Conversation, step: Step, inp: Input, locale: str,
                out: list[Reply]) -> bool:
        spec = S.SPECS[step]
        options = self._options(conv, step, locale)
        if inp.kind is InputKind.BUTTON:
            if inp.value == S.NAV_SKIP and spec.skippable:
                return self._chosen(conv, step, "")
            if inp.value not in {o.value for o in options}:
                raise InputError("error.choice.unknown")
            return self._chosen(conv, step, inp.value)
        if inp.kind is not InputKind.TEXT:
            raise InputError("error.choice.use_buttons")
        typed = clean_text(inp.text, max_length=self._limit("free")).casefold()
        exact = [o for o in options if typed in {a.casefold() for a in (o.label, *o.aliases)}]
        if len(exact) == 1:
            return self._chosen(conv, step, exact[0].value)
        if not spec.searchable:
            raise InputError("error.choice.use_buttons")
        found = S.search_options(step, self.bureau, options, inp.text)
        if len(found) == 1:
            return self._chosen(conv, step, found[0].value)
        if not found:
            raise InputError("error.search.none", query=inp.text.strip()[:50])
        rows: list[tuple[Button, ...]] = [(Button(o.value, label=o.label),) for o in found[: S.PAGE_SIZE]]
        rows.append(self._nav_row(step))
        out.append(Reply(blocks=(Text("search.results", {"count": len(found)}),),
                         keyboard=Keyboard(step.value, tuple(rows))))
        return False

    def _chosen(self, conv: Conversation, step: Step, value: str) -> bool:
        if step is Step.CONSENT:
            if value != "accept":
                raise InputError("error.consent.required")
            conv.consent_at = self.clock().isoformat()
        previous = conv.answers.get(step.value)
        conv.answers[step.value] = value
        if step is Step.CATEGORY and previous != value:
            conv.answers.pop(Step.SUBCATEGORY.value, None)
        if step is Step.MATTER_CLASS and value not in self.bureau.intake.id_number_required_for:
            # Collect the minimum: an ID number the bureau no longer needs is dropped.
            conv.answers.pop(Step.ID_NUMBER.value, None)
        return True

    def _attach(self, conv: Conversation, inp: Input, locale: str, out: list[Reply]) -> bool:
        if inp.kind is InputKind.BUTTON:
            if inp.value == S.NAV_DONE:
                conv.last_album = None
                conv.answers[Step.ATTACHMENTS.value] = len(conv.attachments)
                return True
            raise InputError("error.choice.unknown")
        if inp.kind in (InputKind.PHOTO, InputKind.DOCUMENT) and inp.media:
            self._add_attachment(conv, inp.media)
            album = inp.media.media_group_id
            if album is None or album != conv.last_album:
                out.append(Reply(blocks=(Text("attachment.received", {
                    "count": len(conv.attachments),
                    "limit": self.bureau.intake.max_attachments}),),
                    keyboard=Keyboard(Step.ATTACHMENTS.value, (
                        (Button(S.NAV_DONE, label_key="button.done"),),
                        self._nav_row(Step.ATTACHMENTS)))))
            conv.last_album = album
            return False
        if inp.kind is InputKind.TEXT:
            raise InputError("error.attachment.expected")
        what = inp.other_type if inp.kind is InputKind.OTHER else inp.kind.value
        raise InputError("error.attachment.kind", what=_media_name(locale, what))

    def _add_attachment(self, conv: Conversation, media: Media) -> None:
        intake = self.bureau.intake
        if len(conv.attachments) >= intake.max_attachments:
            raise InputError("error.attachment.too_many", limit=intake.max_attachments)
        if media.size is not None and media.size > intake.max_attachment_mb * _MB:
            raise InputError("error.attachment.too_large", limit=intake.max_attachment_mb)
        if any(a["file_unique_id"] == media.file_unique_id for a in conv.attachments):
            raise InputError("error.attachment.duplicate")
        caption = clean_text(media.caption, max_length=self._limit("free")) if media.caption else None
        conv.attachments.append({
            "kind": media.kind, "file_id": media.file_id, "file_unique_id": media.file_unique_id,
            "size": media.size, "mime_type": media.mime_type, "file_name": media.file_name,
            "media_group_id": media.media_group_id, "caption": caption,
        })

    def _at_summary(self, conv: Conversation, inp: Input, locale: str,
                    out: list[Reply]) -> Outcome:
        if inp.kind is InputKind.BUTTON:
            if inp.value in (S.REPEAT_ADD, S.REPEAT_FILE) and conv.repeat_of:
                conv.repeat_ack = True
                return Outcome(None, out, self._submission(conv, locale, merge=inp.value == S.REPEAT_ADD))
            if inp.value == S.CONFIRM:
                missing = conv.first_missing()
                if missing is not None:  # never submit without what the law or the bureau requires
                    conv.state, conv.editing, conv.edit_to, conv.edit_snapshot = missing.value, True, None, None
                    out.append(self.ask(conv, locale, Text("error.summary.missing")))
                    return Outcome(conv, out)
                moved = fire(conv, "confirm")
                if moved is None:  # pragma: no cover - summary always confirms
                    raise RuntimeError("intake machine refused confirm from the summary")
                return Outcome(None, out, self._submission(conv, locale))
            if inp.value == S.EDIT_MENU:
                rows = [(Button(f"{S.EDIT_PREFIX}{s}", label_key=f"summary.{s}"),)
                        for s in EDITABLE if conv.applies(s)]
                rows.append((Button(S.NAV_BACK, label_key="button.back_to_summary"),))
                out.append(Reply(blocks=(Text("summary.pick_field"),),
                                 keyboard=Keyboard(Step.SUMMARY.value, tuple(rows))))
                return Outcome(conv, out)
            if inp.value.startswith(S.EDIT_PREFIX):
                conv.editing, conv.edit_to = True, inp.value.removeprefix(S.EDIT_PREFIX)
                conv.edit_snapshot = copy.deepcopy(conv.answers)
                moved = fire(conv, "edit")
                if moved is None:
                    conv.editing, conv.edit_to, conv.edit_snapshot = False, None, None
                    out.append(self._summary_prompt(locale, Text("error.choice.unknown")))
                    return Outcome(conv, out)
                conv.state, conv.page = moved, 0
                out.append(self.ask(conv, locale, Text("edit.current", {
                    "value": self._display(conv, Step(moved), locale)})))
                return Outcome(conv, out)
            if inp.value == S.NAV_BACK:
                out.extend(self.summary(conv, locale))
                return Outcome(conv, out)
            out.append(self._summary_prompt(locale, Text("error.choice.unknown")))
            return Outcome(conv, out)
        out.append(self._summary_prompt(locale, Text("summary.use_buttons")))
        return Outcome(conv, out)

    def _submission(self, conv: Conversation, locale: str, *, merge: bool = False) -> Submission:
        return Submission(answers=dict(conv.answers), attachments=list(conv.attachments),
                          consent_at=conv.consent_at or self.clock().isoformat(), emergency=conv.emergency,
                          locale=locale, repeat_of=conv.repeat_of if conv.repeat_ack else None, merge=merge)

    @staticmethod
    def repeat_question(conv: Conversation) -> Reply:
        """Shown instead of submitting when an open case looks like the same matter."""
        return Reply(blocks=(Text("repeat.found", {"tracking": conv.repeat_of or ""}),),
                     keyboard=Keyboard(Step.SUMMARY.value, (
                         (Button(S.REPEAT_ADD, label_key="button.repeat_add"),),
                         (Button(S.REPEAT_FILE, label_key="button.repeat_file"),),
                         (Button(S.NAV_CANCEL, label_key="button.cancel"),))))

    def _summary_prompt(self, locale: str, prefix: Text) -> Reply:
        return Reply(blocks=(prefix,), keyboard=self._summary_keyboard())

    @staticmethod
    def _summary_keyboard() -> Keyboard:
        return Keyboard(Step.SUMMARY.value, (
            (Button(S.CONFIRM, label_key="button.confirm"),),
            (Button(S.EDIT_MENU, label_key="button.edit"),),
            (Button(S.NAV_CANCEL, label_key="button.cancel"),),
        ))

    @staticmethod
    def _nav_row(step: Step) -> tuple[Button, ...]:
        if step is Step.CONSENT:
            return (Button(S.NAV_CANCEL, label_key="button.cancel"),)
        return (Button(S.NAV_BACK, label_key="button.back"),
                Button(S.NAV_CANCEL, label_key="button.cancel"))

    def _options(self, conv: Conversation, step: Step, locale: str) -> list[S.Option]:
        spec = S.SPECS[step]
        if spec.choices:
            return list(_fixed_options(step, locale))
        return S.dynamic_options(step, self.bureau, conv.answers, locale)

    def _option_rows(self, conv: Conversation, step: Step, locale: str) -> list[tuple[Button, ...]]:
        spec = S.SPECS[step]
        if spec.choices:
            return [(Button(v, label_key=f"choice.{step}.{v}"),) for v in spec.choices]
        options = self._options(conv, step, locale)
        pages = max(1, -(-len(options) // S.PAGE_SIZE))
        page = min(max(conv.page, 0), pages - 1)
        shown = options[page * S.PAGE_SIZE:(page + 1) * S.PAGE_SIZE]
        rows = [tuple(Button(o.value, label=o.label) for o in shown[i:i + 2])
                for i in range(0, len(shown), 2)]
        if pages > 1:
            rows.append((
                Button(f"{S.NAV_PAGE}{(page - 1) % pages}", label_key="button.prev"),
                Button(f"{S.NAV_PAGE}{page}", label=f"{page + 1}/{pages}"),
                Button(f"{S.NAV_PAGE}{(page + 1) % pages}", label_key="button.next"),
            ))
        return rows

    def _display(self, conv: Conversation, step: Step, locale: str) -> str:
        if step is Step.ATTACHMENTS:
            return t(locale, "summary.attachment_count", count=len(conv.attachments))
        value = conv.answers.get(step.value)
        if value in (None, ""):
            return t(locale, "summary.empty")
        spec = S.SPECS[step]
        if spec.kind is S.Kind.CHOICE:
            labels = {o.value: o.label for o in self._options(conv, step, locale)}
            return labels.get(str(value), str(value))
        return str(value)


def _media_name(locale: str, what: str) -> Trusted:
    key = f"media.{what}"
    return t(locale, key) if has(locale, key) else t(locale, "media.other")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
