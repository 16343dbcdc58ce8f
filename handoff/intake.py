"""From a citizen's message to a stored answer, and from a confirmed filing to a
case in the staff queue.

The engine (``dialogs/``) decides; this service loads and stores. Everything
here runs inside the update's single transaction: the new conversation state,
the case, its attachments and its first timeline entries are committed
together, with the update id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from dialogs.conversation import Conversation
from dialogs.engine import IntakeEngine, Submission
from dialogs.i18n import t
from dialogs.messages import Input, Reply
from dialogs.tracking import new_tracking_number
from handoff.clocks import Clocks
from handoff.codes import QueryCodes
from handoff.outbox import PRIORITY_URGENT, enqueue
from handoff.relay import RelayService
from state_machine.case import TERMINAL_VALUES
from state_machine.intake import Step
from storage.crypto import lookup_hash
from storage.models import Case, CaseEvent, CitizenSession
from storage.repositories import CaseRepository, Petitioner, PetitionerQuery

log = logging.getLogger(__name__)

#: A fresh random number collides with probability ~n/3·10¹⁰; retry a few times.
_NUMBER_ATTEMPTS = 8
#: session.info key: the batch's petitioner queries, made ahead (IntakeService.prefetch).
_PREFETCHED = "intake_petitioners"


class IntakeService:
    def __init__(self, engine: IntakeEngine, clocks: Clocks, relay: RelayService,
                 staff_chat_id: int | None = None, staff_locale: str = "zh",
                 codes: QueryCodes | None = None) -> None:
        self.engine = engine
        self.codes = codes if codes is not None else QueryCodes()
        self.bureau = engine.bureau
        self.clocks = clocks
        self.relay = relay
        self.staff_chat_id = staff_chat_id
        self.staff_locale = staff_locale

    def in_progress(self, citizen: CitizenSession) -> bool:
        return citizen.state is not None

    def start(self, citizen: CitizenSession) -> list[Reply]:
        """Begin a filing, or pick up the one in progress."""
        if citizen.state is not None:
            conv = Conversation.from_json(citizen.data)
            return [Reply.text("in_progress"), *self.engine.resume(conv, citizen.locale)]
        outcome = self.engine.begin(citizen.locale)
        assert outcome.conversation is not None
        self._store(citizen, outcome.conversation)
        self.codes.expect()  # its confirm, some twenty steps on, takes a code made meanwhile
        return outcome.replies

    def resume(self, citizen: CitizenSession) -> list[Reply]:
        return self.engine.resume(Conversation.from_json(citizen.data), citizen.locale)

    async def handle(self, session: AsyncSession, citizen: CitizenSession, inp: Input,
                     now: datetime) -> list[Reply]:
        conv = Conversation.from_json(citizen.data)
        was_emergency = conv.emergency
        outcome = self.engine.handle(conv, inp, citizen.locale)
        replies = outcome.replies
        if conv.emergency and not was_emergency and outcome.submission is None:
            self._page_staff(session, citizen, inp.text or (inp.media.caption if inp.media else "") or "", now)
        sub = outcome.submission
        if sub is not None and sub.merge and sub.repeat_of:
            tracking = await self._merge(session, citizen, sub, now)
            if tracking is not None:
                replies.append(Reply.text("repeat.added", tracking=tracking))
                self._store(citizen, None)
                return replies
            sub = replace(sub, merge=False)  # the open case has closed meanwhile: file it
        if sub is not None:
            a = sub.answers
            earlier = await self._earlier(session, citizen.user_id, a)
            if sub.repeat_of is None and not conv.repeat_ack:
                same = earlier.open_same_matter(a["category"], a["location"], f"{a['title']} {a['request']}")
                if same is not None:
                    conv.repeat_of = same
                    replies.append(self.engine.repeat_question(conv))
                    self._store(citizen, conv)
                    return replies
            tracking, code = await self._submit(session, citizen, sub, earlier, now)
            replies.append(Reply.text("submitted.receipt", tracking=tracking, code=code))
            log.info("case %s submitted", tracking)
        self._store(citizen, outcome.conversation)
        return replies

    async def prefetch(self, session: AsyncSession, citizens: Iterable[CitizenSession]) -> None:
        """Before a polling batch: the petitioner query of every filing at its
        summary (the ones that may be confirmed now), in one statement for the
        whole batch instead of one per confirm."""
        queries = []
        for citizen in citizens:
            if citizen.state == Step.SUMMARY:
                answers = Conversation.from_json(citizen.data).answers
                if all(answers.get(k) for k in ("phone", "category", "location")):
                    queries.append(_petitioner_query(citizen.user_id, answers,
                                                     new_tracking_number(self.bureau.bureau.code)))
        if queries:
            found = await CaseRepository(session).petitioners(queries)
            session.info[_PREFETCHED] = {q.user_id: (q, p) for q, p in zip(queries, found, strict=True)}

    async def _earlier(self, session: AsyncSession, user_id: int, answers: dict[str, Any]) -> Petitioner:
        """The petitioner's earlier cases: prefetched for this batch if this is
        the filing prefetched, else asked now."""
        prefetched: dict[int, tuple[PetitionerQuery, Petitioner]] = session.info.get(_PREFETCHED, {})
        made = prefetched.pop(user_id, None)
        if made is not None and _filer(made[0]) == _petitioner_query(user_id, answers, ""):
            return made[1]
        return await CaseRepository(session).petitioner(
            _petitioner_query(user_id, answers, new_tracking_number(self.bureau.bureau.code)))

    async def _merge(self, session: AsyncSession, citizen: CitizenSession, sub: Submission,
                     now: datetime) -> str | None:
        """Add the new filing's words and files to the open case instead of a new one."""
        case = await CaseRepository(session).by_tracking_number(sub.repeat_of or "")
        if case is None or case.citizen_user_id != citizen.user_id or case.status in TERMINAL_VALUES:
            return None
        a = sub.answers
        text = "\n".join(f"{t(self.staff_locale, f'summary.{k}')}: {a[k]}"
                         for k in ("title", "request", "facts", "reasons") if a.get(k))
        self.relay.relay(session, case, {"text": text}, now, urgent=sub.emergency)
        for item in sub.attachments:
            self.relay.relay(session, case, {"file_kind": item["kind"], "file_id": item["file_id"],
                                             "caption": item.get("caption")}, now)
        return case.tracking_number

    @staticmethod
    def _store(citizen: CitizenSession, conv: Conversation | None) -> None:
        if conv is None:
            citizen.state, citizen.data = None, {}
        else:
            citizen.state, citizen.data = conv.state, conv.to_json()
            # The conversation changed the loaded answers in place (from_json
            # shares them): without this the ORM would find nothing changed.
            flag_modified(citizen, "data")

    async def _submit(self, session: AsyncSession, citizen: CitizenSession,
                      sub: Submission, earlier: Petitioner, now: datetime) -> tuple[str, str]:
        cases = CaseRepository(session)
        # The number drawn was checked by the petitioner's query.
        tracking = await self._free_number(cases) if earlier.number_taken else earlier.number
        code, code_hash = await self.codes.take()  # made ahead (handoff/codes.py)
        a = sub.answers
        case = Case(
            tracking_number=tracking, query_code_hash=code_hash, status="submitted",
            channel="online", locale=sub.locale, citizen_user_id=citizen.user_id,
            citizen_chat_id=citizen.chat_id, matter_class=a["matter_class"], category=a["category"],
            subcategory=a.get("subcategory") or None, location=a["location"], title=a["title"],
            request=a["request"], facts=a["facts"], reasons=a["reasons"],
            occurred=a.get("occurred") or None, accused=a.get("accused") or None,
            litigation=a["litigation"], name=a["name"], phone=a["phone"],
            id_number=a.get("id_number") or None, address=a["address"],
            phone_hash=lookup_hash(a["phone"]), id_hash=lookup_hash(a.get("id_number")),
            publish=a.get("publish") == "yes", emergency=sub.emergency,
            consent_at=datetime.fromisoformat(sub.consent_at), submitted_at=now,
            attachment_count=len(sub.attachments), suggested_unit=self._suggested_unit(a["location"]),
        )
        events = [
            CaseEvent(at=datetime.fromisoformat(sub.consent_at), actor_kind="citizen",
                      actor_id=citizen.user_id, action="consented", status="draft",
                      note="privacy notice and truthfulness statement (art. 19) accepted"),
            CaseEvent(at=now, actor_kind="citizen", actor_id=citizen.user_id,
                      action="submitted", status="submitted"),
        ]
        case.final_same_matter = earlier.final_same_matter
        case.possible_repeat_of = sub.repeat_of
        case.first_time = not earlier.filed_before
        cases.add(case, sub.attachments, events)
        await self.clocks.on_event(session, case, "submitted", now)
        self._hand_to_staff(session, case, sub.attachments, now)
        return tracking, code

    async def _free_number(self, cases: CaseRepository) -> str:
        """Another tracking number, when the one drawn first was taken (rare)."""
        for _ in range(_NUMBER_ATTEMPTS):
            tracking = new_tracking_number(self.bureau.bureau.code)
            if not await cases.tracking_number_taken(tracking):
                return tracking
        raise RuntimeError("could not allocate a free tracking number")  # pragma: no cover

    def _page_staff(self, session: AsyncSession, citizen: CitizenSession, said: str, now: datetime) -> None:
        """Emergency words before any case exists: page the staff at once, ahead of everything."""
        if self.staff_chat_id is None:
            return
        text = t(self.staff_locale, "staff.urgent_filing", user=citizen.user_id, text=said[:300])
        enqueue(session, kind="text", chat_id=self.staff_chat_id, now=now, priority=PRIORITY_URGENT,
                payload={"text": str(text)})

    def _suggested_unit(self, location: str) -> str | None:
        unit = self.bureau.unit(location)
        return unit.code if unit is not None and unit.kind != "city" else None

    def _hand_to_staff(self, session: AsyncSession, case: Case, attachments: list[dict[str, Any]],
                       now: datetime) -> None:
        """Queue the staff card and the attachments, in the case's transaction."""
        chat = self.staff_chat_id
        if chat is None:
            log.warning("case %s is queued but PETITION_STAFF_CHAT_ID is not set: no card is posted",
                        case.tracking_number)
            return
        if case.emergency:
            enqueue(session, kind="text", chat_id=chat, case=case, now=now, priority=PRIORITY_URGENT,
                    payload={"text": str(t(self.staff_locale, "staff.urgent", tracking=case.tracking_number))})
        enqueue(session, kind="card", chat_id=chat, case=case, now=now)
        for group in _albums(attachments):
            caption = str(t(self.staff_locale, "staff.attachment", tracking=case.tracking_number))
            base = {"reply_to_card": True, "map_replies": True}
            if len(group) == 1:
                item = group[0]
                text = caption + (f"\n{item['caption']}" if item.get("caption") else "")
                enqueue(session, kind="file", chat_id=chat, case=case, now=now,
                        payload={**base, "file_kind": item["kind"], "file_id": item["file_id"], "caption": text})
            else:
                items = [{"kind": i["kind"], "file_id": i["file_id"],
                          "caption": caption if n == 0 else i.get("caption")} for n, i in enumerate(group)]
                enqueue(session, kind="album", chat_id=chat, case=case, now=now,
                        payload={**base, "items": items})


def _petitioner_query(user_id: int, answers: dict[str, Any], number: str) -> PetitionerQuery:
    return PetitionerQuery(user_id, answers["phone"], answers.get("id_number") or None, answers["category"],
                           answers["location"], number)


def _filer(query: PetitionerQuery) -> PetitionerQuery:
    """The filing a query is about, whatever tracking number was drawn for it."""
    return replace(query, number="")


def _albums(attachments: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Attachments in order, an album's items together (Telegram sends at most 10 at once)."""
    groups: list[list[dict[str, Any]]] = []
    for item in attachments:
        album = item.get("media_group_id")
        if (album and groups and groups[-1][0].get("media_group_id") == album and len(groups[-1]) < 10
                and all(i["kind"] == item["kind"] for i in groups[-1])):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups
