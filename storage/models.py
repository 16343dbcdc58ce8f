"""The tables. One ``DeclarativeBase`` with a naming convention (Alembic needs stable names)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    and_,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from storage.crypto import EncryptedJSON, EncryptedText

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend.

    SQLite keeps no offset, so values are stored as UTC and read back as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC times")
        return value.astimezone(UTC) if dialect.name != "sqlite" else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


def _only_rows(condition: ColumnElement[bool]) -> dict[str, Any]:
    """A partial index's condition, on both backends. A query uses the index
    only when its WHERE names the same condition (or, for ``IS NOT NULL``, compares
    the column)."""
    return {"sqlite_where": condition, "postgresql_where": condition}


class ProcessedUpdate(Base):
    """Telegram update ids already handled; written in the same commit as the effect."""

    __tablename__ = "processed_updates"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    processed_at: Mapped[datetime] = mapped_column(index=True)
    #: The replies of the update, kept until they are known to be sent, so a crash
    #: between the commit and the send is repaired when Telegram redelivers it.
    replies: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON)
    delivered: Mapped[bool] = mapped_column(Boolean, default=True)


#: The updates whose replies are not known to be sent: the few rows
#: ``claim_unsent`` looks for at each maintenance tick among the two days of
#: updates kept. Without it the tick read them all, holding SQLite's write lock
#: (~50 ms at a million rows, every minute). A row enters it when recorded and
#: leaves it when its replies are marked delivered.
Index("ix_processed_updates_unsent", ProcessedUpdate.update_id, **_only_rows(ProcessedUpdate.delivered.is_(False)))


class CitizenSession(Base):
    """One row per citizen (private chat): language and the filing in progress."""

    __tablename__ = "citizen_sessions"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    locale: Mapped[str] = mapped_column(String(8))
    #: Intake state, or None when no filing is in progress.
    state: Mapped[str | None] = mapped_column(String(32))
    #: The filing in progress (answers include phone and ID numbers): encrypted.
    data: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON, default=dict)
    #: A free-form follow-up the citizen was asked for (e.g. the status query code).
    awaiting: Mapped[str | None] = mapped_column(String(64))
    #: Barred by an admin (/ban): updates are answered with one line and not processed.
    banned: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Follow-up context outside a filing: a message waiting for its case, cases
    #: this chat may open after a successful lookup.
    extra: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON, default=dict)
    updated_at: Mapped[datetime]


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tracking_number: Mapped[str] = mapped_column(String(32), unique=True)
    query_code_hash: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), index=True)
    channel: Mapped[str] = mapped_column(String(16), default="online")
    locale: Mapped[str] = mapped_column(String(8))
    citizen_user_id: Mapped[int] = mapped_column(BigInteger, index=True)
    citizen_chat_id: Mapped[int] = mapped_column(BigInteger)

    matter_class: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(16))
    subcategory: Mapped[str | None] = mapped_column(String(16))
    location: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    request: Mapped[str] = mapped_column(Text)
    facts: Mapped[str] = mapped_column(Text)
    reasons: Mapped[str] = mapped_column(Text)
    occurred: Mapped[str | None] = mapped_column(Text)
    accused: Mapped[str | None] = mapped_column(Text)
    litigation: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(Text)
    #: Encrypted at rest; ``*_hash`` are keyed hashes for finding the same petitioner.
    phone: Mapped[str] = mapped_column(EncryptedText)
    id_number: Mapped[str | None] = mapped_column(EncryptedText)
    phone_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    id_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    #: When retention erased the personal data (statistics keep working).
    anonymised_at: Mapped[datetime | None]
    #: When the case reached a terminal status (its retention period starts
    #: there, or at a later event: ``handoff.privacy.purge``).
    ended_at: Mapped[datetime | None]
    address: Mapped[str] = mapped_column(Text)
    publish: Mapped[bool] = mapped_column(Boolean, default=False)
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    attachment_count: Mapped[int] = mapped_column(Integer, default=0)

    consent_at: Mapped[datetime]
    submitted_at: Mapped[datetime] = mapped_column(index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)

    # -- handling (staff side) --------------------------------------------------
    #: The unit suggested from the location (the citizen's answer); staff route it.
    suggested_unit: Mapped[str | None] = mapped_column(String(16))
    #: The unit the case was transferred or assigned to.
    unit_code: Mapped[str | None] = mapped_column(String(16), index=True)
    assignee_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    #: 交办 due date set by the bureau.
    due_at: Mapped[datetime | None]
    route: Mapped[int | None] = mapped_column(Integer)
    redirect_channel: Mapped[str | None] = mapped_column(String(16))
    decision: Mapped[str | None] = mapped_column(String(16))
    extension_days: Mapped[int | None] = mapped_column(Integer)
    #: Days of hearings (听证) during re-review: not counted in its 30 days (art. 36 ¶2).
    hearing_days: Mapped[int] = mapped_column(Integer, default=0)
    duplicate_of: Mapped[str | None] = mapped_column(String(32))
    registered_at: Mapped[datetime | None]
    routed_at: Mapped[datetime | None]
    unit_received_at: Mapped[datetime | None]
    acceptance_notice_at: Mapped[datetime | None]
    decision_issued_at: Mapped[datetime | None]
    decision_delivered_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    #: Where the staff card was posted, to edit it in place.
    card_chat_id: Mapped[int | None] = mapped_column(BigInteger)
    card_message_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The citizen blocked the bot: notices cannot reach them (shown on the card).
    citizen_unreachable: Mapped[bool] = mapped_column(Boolean, default=False)
    review_requested_at: Mapped[datetime | None]
    review_delivered_at: Mapped[datetime | None]
    rereview_requested_at: Mapped[datetime | None]
    withdrawn_at: Mapped[datetime | None]
    #: The same citizen's matter was already final after re-review (art. 36 ¶3).
    final_same_matter: Mapped[str | None] = mapped_column(String(32))
    #: An open case of the same petitioner on what looks like the same matter.
    possible_repeat_of: Mapped[str | None] = mapped_column(String(32))
    #: 初信初访: the petitioner's first case here.
    first_time: Mapped[bool] = mapped_column(Boolean, default=False)
    #: 包案领导: the leader personally responsible for a first-time petition.
    leader: Mapped[str | None] = mapped_column(String(100))
    #: The next statutory deadline (kept by handoff/clocks.py) and the overdue clocks.
    next_due_clock: Mapped[str | None] = mapped_column(String(16))
    next_due_on: Mapped[date | None] = mapped_column(Date, index=True)
    #: The holiday calendar does not reach that day yet: counted with weekends only.
    next_due_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    overdue: Mapped[str | None] = mapped_column(String(64))

    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="case", lazy="raise", order_by="Attachment.position")
    events: Mapped[list[CaseEvent]] = relationship(
        back_populates="case", lazy="raise", order_by="CaseEvent.id")

    __mapper_args__ = {"version_id_col": version}


#: When each of a case's clocks starts, besides ``submitted_at`` (indexed with
#: the column): the KPI report takes a period's cases as those with any of these
#: times inside it (``handoff.kpi``), and without them read every case submitted
#: before the period's end (1.7 s at a million, under SQLite's write lock for
#: /stats). Partial: a new case has none of them yet, so filing adds nothing here.
CLOCK_STARTS = ("routed_at", "unit_received_at", "acceptance_notice_at", "review_requested_at",
                "rereview_requested_at")
for _name in CLOCK_STARTS:
    _column = Case.__table__.c[_name]
    Index(f"ix_cases_{_name}", _column, **_only_rows(_column.is_not(None)))


#: The ended cases whose personal data retention has not erased yet, by when
#: they ended: the purge reads the oldest of them, whatever the history's size.
#: Partial: a case enters it when it ends and leaves it when it is erased.
Index("ix_cases_ended_at", Case.ended_at,
      **_only_rows(and_(Case.anonymised_at.is_(None), Case.ended_at.is_not(None))))


class Attachment(Base):
    __tablename__ = "case_attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))
    file_id: Mapped[str] = mapped_column(String(256))
    file_unique_id: Mapped[str] = mapped_column(String(128))
    size: Mapped[int | None] = mapped_column(BigInteger)
    mime_type: Mapped[str | None] = mapped_column(String(128))
    file_name: Mapped[str | None] = mapped_column(String(256))
    media_group_id: Mapped[str | None] = mapped_column(String(64))
    caption: Mapped[str | None] = mapped_column(Text)
    #: Who added it: "intake" at filing, later "citizen" or "staff".
    source: Mapped[str] = mapped_column(String(16), default="intake")

    case: Mapped[Case] = relationship(back_populates="attachments", lazy="raise")


class CaseEvent(Base):
    """The case timeline: append-only (no code path deletes a row, and only the
    retention purge updates one: it clears the notes, ``handoff.privacy``)."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    #: Indexed for the KPI report: a period's transfers, assignments and
    #: supervision among the period's events, not every event ever kept. On
    #: ``at`` alone: an index led by ``action`` was taken by SQLite for the
    #: report's timeline read (nine actions, any time), reading all of them.
    at: Mapped[datetime] = mapped_column(index=True)
    actor_kind: Mapped[str] = mapped_column(String(16))  # citizen | staff | system
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    #: Free text given with the action (a reason, a reply, a decision's text).
    note: Mapped[str | None] = mapped_column(Text)
    #: The choices made with the action (unit, route, decision, days…).
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    case: Mapped[Case] = relationship(back_populates="events", lazy="raise")


class Staff(Base):
    """Who may act on cases. Admins come from PETITION_ADMIN_IDS and manage the rest."""

    __tablename__ = "staff"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    role: Mapped[str] = mapped_column(String(16))  # admin | staff
    unit_code: Mapped[str | None] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    added_by: Mapped[int | None] = mapped_column(BigInteger)
    added_at: Mapped[datetime]


class OutboxMessage(Base):
    """A message to someone other than the sender of the update being handled.

    Written in the same transaction as the change that causes it and delivered
    by the worker in ``handoff/outbox.py``: nothing is lost if the process dies
    between the commit and the send.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    chat_id: Mapped[int] = mapped_column(BigInteger)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Lower goes first: urgent pages 0, citizen notices 10, staff messages 50, card edits 60.
    priority: Mapped[int] = mapped_column(Integer, default=50)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sent|failed|superseded
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)


class StaffMessage(Base):
    """Messages the bot posted in staff chats, so a staff reply finds its case."""

    __tablename__ = "staff_messages"

    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)


class StaffPrompt(Base):
    """A staff action waiting for its free text (a reason, a reply), one per person and chat."""

    __tablename__ = "staff_prompts"

    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    case_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class Rating(Base):
    """One invitation to rate (after the acceptance notice, and after the decision).

    The bureau and the handling unit are rated separately; the citizen may
    change the rating until ``expires_at``; an invitation nobody answered is
    marked ``expired`` (超期未评价), which the participation rate needs.
    """

    __tablename__ = "ratings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(16))  # acceptance | decision
    unit_code: Mapped[str | None] = mapped_column(String(16))
    invited_at: Mapped[datetime] = mapped_column(index=True)  # the KPI report's period
    expires_at: Mapped[datetime]
    bureau_score: Mapped[str | None] = mapped_column(String(16))  # satisfied | basic | unsatisfied
    unit_score: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    rated_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="invited")  # invited|rated|expired|withdrawn

    #: The maintenance tick's "invitations still open whose time is up": with
    #: ``expires_at`` alone it read every invitation ever made that had expired
    #: (~210 ms holding SQLite's write lock at two million, every minute).
    __table_args__ = (Index("ix_ratings_status_expires_at", "status", "expires_at"),)


class LookupFailure(Base):
    """Failed status lookups per account and per tracking number, in fixed windows."""

    __tablename__ = "lookup_failures"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Indexed for the maintenance tick, which forgets the windows that ended.
    window_start: Mapped[datetime] = mapped_column(index=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class CaseClock(Base):
    """One statutory time limit of a case (DOMAIN.md §5): when it started, the
    day it is due, when it stopped, and which reminders went out (each once)."""

    __tablename__ = "case_clocks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    clock: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    due_on: Mapped[date] = mapped_column(Date)
    #: Counted with weekends only: the holiday calendar has no data for that year yet.
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    stopped_at: Mapped[datetime | None]
    #: When the next reminder is due (None: none left); the scheduler's index.
    next_reminder_at: Mapped[datetime | None] = mapped_column(index=True)
    reminders_sent: Mapped[list[str]] = mapped_column(JSON, default=list)


class ChannelCount(Base):
    """Petitions through channels this database does not record (letters, visits,
    calls), entered by admins per period, for 网上信访占比."""

    __tablename__ = "channel_counts"

    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)  # letter | visit | phone | other
    period_end: Mapped[date] = mapped_column(Date)
    count: Mapped[int] = mapped_column(Integer)
    recorded_by: Mapped[int | None] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime]
