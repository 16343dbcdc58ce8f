"""The update pipeline: one chat at a time, each update once, one transaction,
replies after the commit.

For every update, in order:
1. wait for the chat's turn (a lock that exists only while someone holds or
   waits for it, so no per-chat structure outlives its updates);
2. open one session and transaction; record the update id — if it was already
   recorded, the update is a redelivery and nothing else happens;
3. load (or create) the citizen's row and pick the locale (on SQLite a polling
   batch takes the rows kept since the batches before: ``CitizenCache``);
4. run the handler, which only computes and stages replies;
5. commit; then send the staged replies and answer the callback query.
A failure rolls everything back and the citizen is asked to send again: the
state is exactly what it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from aiogram import BaseMiddleware, Bot, Dispatcher
from aiogram.dispatcher.event.bases import UNHANDLED, NextMiddlewareType
from aiogram.dispatcher.middlewares.error import ErrorsMiddleware
from aiogram.dispatcher.middlewares.manager import MiddlewareManager
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import (
    CallbackQuery,
    ForceReply,
    InlineKeyboardMarkup,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    TelegramObject,
    Update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from bot.render import Markup, OutMessage, markup_json, render
from dialogs.i18n import normalize_locale, t
from dialogs.messages import Reply
from handoff.outbox import Wakeup
from handoff.pacer import Pacer
from storage.models import CitizenSession
from storage.onetrip import WRITES_RIDE_ALONG
from storage.repositories import (
    CitizenCache,
    citizen_session,
    citizen_sessions,
    claim_unsent,
    claim_update,
    mark_delivered,
    processed_among,
    record_updates_sync,
    store_replies,
    unsent_replies,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: Replies still unsent this long after their commit are sent again by the
#: maintenance tick: longer than any retry of the update's own attempt.
RESEND_AFTER = timedelta(minutes=5)


class KeyedLocks:
    """asyncio locks by key, each dropped as soon as nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def hold(self, key: int) -> _Held:
        """``async with locks.hold(key):`` (a plain class: a generator-based
        context manager cost several microseconds an update)."""
        return _Held(self._locks, key)


class _Held:
    __slots__ = ("key", "lock", "locks", "users")

    def __init__(self, locks: dict[int, tuple[asyncio.Lock, list[int]]], key: int) -> None:
        self.locks = locks
        self.key = key

    async def __aenter__(self) -> None:
        entry = self.locks.get(self.key)
        if entry is None:
            entry = self.locks[self.key] = (asyncio.Lock(), [0])
        self.lock, self.users = entry
        self.users[0] += 1
        try:
            await self.lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.lock.release()
        self._leave()

    def _leave(self) -> None:
        self.users[0] -= 1
        if self.users[0] == 0:
            del self.locks[self.key]


class FloodGate:
    """At most ``limit`` updates per ``window`` seconds from one person (citizens).

    Sliding windows of timestamps, kept only for people active within the
    window: the oldest entries are dropped as time passes (amortised O(1)), so
    100,000 one-message chats leave nothing behind.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._seen: OrderedDict[int, deque[float]] = OrderedDict()
        #: People already told to slow down in their current window.
        self._told: set[int] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: int) -> bool | None:
        """True: go on. False: too fast, tell them. None: too fast, already told."""
        now = self.clock()
        while self._seen:
            first_key, stamps = next(iter(self._seen.items()))
            if stamps[-1] > now - self.window:
                break
            del self._seen[first_key]
            self._told.discard(first_key)
        stamps = self._seen.pop(key, deque())
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        self._seen[key] = stamps  # most recently active last
        if len(stamps) >= self.limit:
            if key in self._told:
                return None
            self._told.add(key)
            return False
        self._told.discard(key)
        stamps.append(now)
        return True


_MARKUPS: dict[str, type[InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove | ForceReply]] = {
    m.__name__: m for m in (InlineKeyboardMarkup, ReplyKeyboardMarkup, ReplyKeyboardRemove, ForceReply)}


class Responder:
    """Replies staged during an update, sent only after its commit."""

    def __init__(self, chat_id: int | None, locale: str) -> None:
        self.chat_id = chat_id
        self.locale = locale
        self.messages: list[OutMessage] = []
        #: Messages to other chats (e.g. a staff member's private chat).
        self.elsewhere: list[tuple[int, OutMessage]] = []
        self.callback: CallbackQuery | None = None
        self.callback_text: str | None = None
        #: Files for this chat: (kind, Telegram file id, caption).
        self.files: list[tuple[str, str, str | None]] = []

    def reply(self, *replies: Reply) -> None:
        for reply in replies:
            self.messages.extend(render(reply, self.locale))

    def say(self, key: str, markup: Markup | None = None, **params: Any) -> None:
        self.messages.append(OutMessage(t(self.locale, key, **params), markup))

    def has_messages(self) -> bool:
        return bool(self.messages or self.files or self.elsewhere)

    def dump(self) -> dict[str, Any]:
        """What this update will send, to keep with it until it is sent."""
        def markup(m: Markup | None) -> list[str] | None:
            return None if m is None else [type(m).__name__, markup_json(m)]

        return {"chat": self.chat_id,
                "messages": [[m.text, markup(m.markup)] for m in self.messages],
                "files": [list(f) for f in self.files],
                "elsewhere": [[chat, m.text, markup(m.markup)] for chat, m in self.elsewhere]}

    @classmethod
    def load(cls, stored: dict[str, Any], locale: str) -> Responder:
        def markup(raw: list[str] | None) -> Markup | None:
            return None if raw is None else _MARKUPS[raw[0]].model_validate_json(raw[1])

        responder = cls(stored.get("chat"), locale)
        responder.messages = [OutMessage(text, markup(m)) for text, m in stored.get("messages", [])]
        responder.files = [(k, f, c) for k, f, c in stored.get("files", [])]
        responder.elsewhere = [(chat, OutMessage(text, markup(m))) for chat, text, m in stored.get("elsewhere", [])]
        return responder

    def send(self, text: str, markup: Markup | None = None, chat_id: int | None = None) -> None:
        """Already rendered text, to this chat or another one."""
        if chat_id is None or chat_id == self.chat_id:
            self.messages.append(OutMessage(text, markup))
        else:
            self.elsewhere.append((chat_id, OutMessage(text, markup)))

    async def flush(self, bot: Bot, pacer: Pacer | None = None) -> Responder | None:
        """Send everything; what could not be sent yet, or None.

        A message Telegram refuses for good (the citizen blocked the bot, the chat
        is gone) is dropped with a warning; a timeout, network or server error
        that outlasts the retries leaves the message in the remainder, which the
        pipeline keeps with the update and sends again later.
        """
        if self.callback is not None:
            try:
                await self.callback.answer(self.callback_text)
            except TelegramAPIError as exc:  # a stale query must not block the replies
                log.warning("callback answer failed: %s", exc)
        left = Responder(self.chat_id, self.locale)
        if self.chat_id is not None:
            chat = self.chat_id
            for m in self.messages:
                if not await _deliver(chat, partial(bot.send_message, chat, m.text, reply_markup=m.markup), pacer):
                    left.messages.append(m)
            for item in self.files:
                kind, file_id, caption = item
                send = bot.send_photo if kind == "photo" else bot.send_document
                if not await _deliver(chat, partial(send, chat, file_id, caption=caption), pacer):
                    left.files.append(item)
        for chat, m in self.elsewhere:
            if not await _deliver(chat, partial(bot.send_message, chat, m.text, reply_markup=m.markup), pacer):
                left.elsewhere.append((chat, m))
        return left if left.has_messages() else None


#: Refusals that another try would only repeat.
_REFUSED_FOR_GOOD = (TelegramForbiddenError, TelegramBadRequest, TelegramNotFound)


async def _deliver(chat: int, send: Callable[[], Awaitable[Any]], pacer: Pacer | None = None) -> bool:
    """One message: True when it went out or was refused for good."""
    try:
        await _send(send, chat, pacer)
    except _REFUSED_FOR_GOOD as exc:
        log.warning("chat %s refused a reply (%s); dropped", chat, exc)
    except (TimeoutError, TelegramAPIError) as exc:
        # The update's effects are committed: one failed reply must not stop the others.
        log.warning("could not write to chat %s (%s); kept to send again", chat, exc)
        return False
    return True


#: The first back-off of a failed reply, doubled at each retry (0.5 + 1 + 2 s).
RETRY_BACKOFF = 0.5


#: The longest a direct reply waits for the pacer; past it, it goes anyway
#: (a 429 is then waited out exactly).
MAX_PACE_WAIT = 10.0


async def _send(send: Callable[[], Awaitable[Any]], chat: int, pacer: Pacer | None = None,
                attempts: int = 4) -> None:
    """Send one reply: within the limits the outbox also keeps (the shared pacer,
    so a burst of notifications does not make a reply hit 429), wait out a flood
    limit exactly as Telegram asks; retry timeouts, network and server errors
    with a short back-off."""
    for attempt in range(attempts):
        last = attempt == attempts - 1
        if pacer is not None:
            waited = 0.0
            while (wait := pacer.reply_wait_time(chat)) > 0 and waited < MAX_PACE_WAIT:
                await asyncio.sleep(min(wait, MAX_PACE_WAIT - waited))
                waited += wait
            pacer.record(chat)
        try:
            await send()
            return
        except TelegramRetryAfter as exc:
            if pacer is not None:
                pacer.penalize(chat, exc.retry_after)
            if last:
                raise
            await asyncio.sleep(exc.retry_after)
        except (TimeoutError, TelegramNetworkError, TelegramServerError):
            if last:
                raise
            await asyncio.sleep(RETRY_BACKOFF * 2 ** attempt)


#: aiogram's log of handled updates (``Dispatcher.feed_update`` writes one line each).
_EVENTS = logging.getLogger("aiogram.event")


def _routing_after(dispatcher: Dispatcher, pipeline: UpdatePipeline) -> NextMiddlewareType[TelegramObject] | None:
    """aiogram's dispatch of an update past ``pipeline`` (the dispatcher's other
    outer middlewares, then its routers), built once per batch; None when the
    pipeline may not run before those: only aiogram's defaults and no error
    handler allow it (an error handler would swallow a failure inside the
    batch's transaction instead of letting it roll back; another middleware
    might want to see every update)."""
    others = [m for m in dispatcher.update.outer_middleware if m is not pipeline]
    if dispatcher.errors.handlers or any(type(m) not in (ErrorsMiddleware, UserContextMiddleware) for m in others):
        return None
    return MiddlewareManager.wrap_middlewares(others, dispatcher.update.trigger)


def _chat_and_user(update: Update) -> tuple[int | None, int | None, str | None, str | None]:
    """(chat id, user id, chat type, language code) of an update."""
    # The two kinds nearly every update is, before ``Update.event``'s search of all kinds.
    event: TelegramObject | None = update.message or update.callback_query or update.event
    if isinstance(event, Message):
        user = event.from_user
        return event.chat.id, user.id if user else None, event.chat.type, user.language_code if user else None
    if isinstance(event, CallbackQuery):
        message = event.message
        chat_id = message.chat.id if message is not None else event.from_user.id
        chat_type = message.chat.type if message is not None else "private"
        return chat_id, event.from_user.id, chat_type, event.from_user.language_code
    return None, None, None, None


class Group:
    """Several updates in one transaction (group commit): one commit, one fsync,
    for a whole polling batch; their replies go out after it."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        #: (update id, what it sends), in processing order.
        self.replies: list[tuple[int, Responder]] = []
        #: Flood-gate decisions, so that redoing the batch does not count twice.
        self.admitted: dict[int, bool | None] = {}
        #: Delivery marks written in this transaction (made again if it rolls back).
        self.marking: set[int] = set()
        #: The batch's update ids not yet taken (a second copy in the batch is a replay).
        self.claimed: set[int] = set()
        #: Those taken so far, in order, and the replies to keep with them: all
        #: recorded in one statement at the end, in this transaction.
        self.taken: list[int] = []
        self.to_store: dict[int, dict[str, Any]] = {}
        #: The batch's citizens, read (and locked) in one query.
        self.citizens: dict[int, CitizenSession] = {}

    async def begin(self, updates: Sequence[Update], prefetch: Prefetch | None = None,
                    cache: CitizenCache | None = None) -> None:
        """Read the batch's citizens in one query, those not in ``cache``; then
        ``prefetch`` reads what the handlers will need for them (one more query).

        Every update is taken as new: the statement that records them at the
        end (:meth:`finish`) fails if one was already recorded, which rolls the
        batch back to be redone update by update, where each update checks its
        own. A replay happens only when a batch was committed but not confirmed
        to Telegram (a crash, or a stop whose last confirmation failed), so the
        common batch saves a query."""
        self.claimed = {u.update_id for u in updates}
        people = set()
        for update in updates:
            _, user_id, chat_type, _ = _chat_and_user(update)
            if chat_type == "private" and user_id is not None:
                people.add(user_id)
        self.citizens = await citizen_sessions(self.session, people, lock=True, cache=cache)
        if prefetch is not None:
            await prefetch(self.session, list(self.citizens.values()))

    def take_claim(self, update_id: int) -> bool:
        """True once for an update id new to this batch (a second copy is a replay)."""
        if update_id in self.claimed:
            self.claimed.discard(update_id)
            self.taken.append(update_id)
            return True
        return False

    async def commit(self, now: datetime) -> None:
        """Record the batch's updates with their replies, write what the
        handlers changed, commit and close the session, in one call
        (:func:`_commit_and_close`). Nothing here needs an answer from the
        database, so on SQLite these writes ride along with the commit's trip."""
        rows = [(i, self.to_store.get(i)) for i in self.taken]

        def record_and_commit(session: Session) -> None:
            session.connection().execution_options(**{WRITES_RIDE_ALONG: True})
            record_updates_sync(session, rows, now)
            _commit_and_close(session)

        await self.session.run_sync(record_and_commit)


def _commit_and_close(session: Session, before_close: Callable[[], None] | None = None) -> None:
    """Commit ``session`` (flushing first), then ``before_close``, then close it:
    for ``AsyncSession.run_sync``, one call into SQLAlchemy for what took four.
    Each awaited call of an ``AsyncSession`` (and each ``async with`` of it or
    of its transaction) is a greenlet of its own, and for a transaction of one
    update they were a tenth of the event loop's time (BENCHMARKS finding 40).

    A commit that fails before SQLite's own (a write riding along with it
    refused) leaves SQLite's transaction open, and closing alone would give
    the connection back with it: rolled back first, as ``with session.begin()``
    does, and the error raised."""
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
    if before_close is not None:
        before_close()
    session.close()


Done = Callable[[int], None]
#: Takes an update straight to its handler when it is one the lane knows (True),
#: given the handler data the pipeline prepared; False: routed as usual.
Lane = Callable[[Update, dict[str, Any]], Awaitable[bool]]
#: Reads ahead, for a batch's citizens, what its handlers will ask the database for.
Prefetch = Callable[[AsyncSession, list[CitizenSession]], Awaitable[None]]


async def feed_each(dispatcher: Dispatcher, bot: Bot, updates: Sequence[Update], done: Done | None = None,
                    admitted: dict[int, bool | None] | None = None) -> None:
    """Each update on its own (its own transaction, with the pipeline): each
    chat's in order, chats at once. ``admitted`` carries flood-gate decisions
    already taken for these updates."""
    by_chat: dict[int | None, list[Update]] = defaultdict(list)
    for update in updates:
        by_chat[_chat_and_user(update)[0]].append(update)

    async def one_chat(chat_updates: list[Update]) -> None:
        for update in chat_updates:
            try:
                await dispatcher.feed_update(bot, update, flood_admitted=admitted or {})
            except Exception:  # the pipeline already rolled back; keep the batch going
                log.exception("update %s raised after its transaction", update.update_id)
            if done is not None:
                done(update.update_id)

    await asyncio.gather(*(one_chat(chat_updates) for chat_updates in by_chat.values()))


class UpdatePipeline(BaseMiddleware):
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], clock: Clock,
                 default_locale: str, wakeup: Wakeup | None = None, flood: FloodGate | None = None,
                 prefetch: Prefetch | None = None, lane: Lane | None = None,
                 citizen_cache: CitizenCache | None = None) -> None:
        self.sessionmaker = sessionmaker
        #: Citizens' rows kept between polling batches (``storage.repositories.citizen_cache``).
        self.citizen_cache = citizen_cache
        self.prefetch = prefetch
        #: Asked before aiogram's routing (``bot.routers.citizen.filing_lane``).
        self.lane = lane
        self.clock = clock
        self.default_locale = default_locale
        self.wakeup = wakeup
        self.flood = flood
        self.locks = KeyedLocks()
        #: Batches run one at a time (see run_batch).
        self._batches = asyncio.Lock()
        #: Shared with the outbox worker when set (``create_dispatcher(pacer=…)``).
        self.pacer: Pacer | None = None
        #: Updates whose replies went out but are not yet marked so in the database:
        #: marked in batches (at most a second late), so the hot path gains no commit.
        self.sent: set[int] = set()
        self._marked_at = 0.0

    async def __call__(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                       event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Update)
        bot: Bot = data["bot"]
        group: Group | None = data.get("update_group")
        decided: dict[int, bool | None] = data.get("flood_admitted") or {}
        chat_id, user_id, chat_type, language = _chat_and_user(event)
        if self.flood is not None and chat_type == "private" and user_id is not None:
            redo = event.update_id in decided
            admitted = decided[event.update_id] if redo else self.flood.admit(user_id)
            if group is not None:
                group.admitted[event.update_id] = admitted
            if not admitted:
                # Dropped, not processed: the citizen is told (once a window) to slow down.
                log.info("flood control: update %s from %s dropped", event.update_id, user_id)
                if admitted is False and chat_id is not None and not redo:
                    locale = normalize_locale(language) if language else self.default_locale
                    with contextlib.suppress(TelegramAPIError):
                        await bot.send_message(chat_id, t(locale, "flood", seconds=int(self.flood.window)))
                return None
        key = chat_id if chat_id is not None else 0
        async with self.locks.hold(key):
            responder = Responder(chat_id, self.default_locale)
            data["responder"] = responder
            if group is not None:
                # No rollback of one update alone here: a failure aborts the group,
                # which run_batch then redoes update by update.
                result = await self._handle(group.session, handler, event, data, responder, self.clock(),
                                            chat_id, user_id, chat_type, language, group)
                group.replies.append((event.update_id, data.get("responder", responder)))
                return result
            try:
                result = await self._in_transaction(handler, event, data, responder,
                                                    chat_id, user_id, chat_type, language)
            except Exception:
                log.exception("update %s failed; rolled back", event.update_id)
                self.sent |= data.pop("_marking", set())  # the rolled-back marks are made again later
                await self._apologise(bot, chat_id, chat_type, responder.locale)
                return None
            responder = data.get("responder", responder)  # a replay may bring the stored replies
            await self._flush(bot, event.update_id, responder)
            return result

    async def _in_transaction(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                              event: Update, data: dict[str, Any], responder: Responder,
                              chat_id: int | None, user_id: int | None, chat_type: str | None,
                              language: str | None) -> Any:
        now = self.clock()
        session = self.sessionmaker()  # its transaction begins with its first statement
        # This path reads and writes citizens' rows without the cache: it
        # forgets them, before the session is closed (closing lets go of its rows).
        forget = None if self.citizen_cache is None else partial(self.citizen_cache.forget, session)
        try:
            data["_marking"] = await self._mark_sent(session)
            result = await self._handle(session, handler, event, data, responder, now,
                                        chat_id, user_id, chat_type, language)
            await session.run_sync(_commit_and_close, forget)
        except BaseException:
            if forget is not None:
                forget()
            await asyncio.shield(session.close())  # rolls back; shielded as ``async with`` a session is
            raise
        self._wake(session)
        return result

    def _wake(self, session: AsyncSession) -> None:
        if session.info.pop("outbox_dirty", False) and self.wakeup is not None:
            self.wakeup.set()

    async def run_batch(self, dispatcher: Dispatcher, bot: Bot, updates: Sequence[Update],
                        done: Done | None = None) -> None:
        """A polling batch: every update in one transaction (group commit), in
        arrival order, then the replies, each chat's in order and chats at once.

        One commit instead of one per update is most of the cost of a durable
        step. If anything fails, the whole transaction rolls back and the batch
        is redone update by update, each in its own transaction, so one bad
        update costs only itself.

        Batches run one at a time, in the order they are handed over: a batch
        reads its citizens before each chat takes its turn, so two at once
        could each read a row the other is changing. The poller hands them
        over one at a time anyway; the lock keeps any other caller in order.
        """
        if not updates:
            return
        async with self._batches:
            await self._run_batch(dispatcher, bot, updates, done)

    async def _run_batch(self, dispatcher: Dispatcher, bot: Bot, updates: Sequence[Update],
                         done: Done | None) -> None:
        group: Group | None = None
        try:
            # The transaction begins with its first statement and ends in
            # Group.commit, which closes the session too.
            session = self.sessionmaker()
            try:
                group = Group(session)
                group.marking = await self._mark_sent(session, force=len(updates) > 1)
                await group.begin(updates, self.prefetch, self.citizen_cache)
                routing = _routing_after(dispatcher, self)
                for update in updates:
                    await self._feed(dispatcher, bot, update, group, routing)
                await group.commit(self.clock())
            except BaseException:
                # Rolls back what is open. Shielded, as ``async with`` a session
                # does, so that a cancelled batch still gives its connection back.
                await asyncio.shield(session.close())
                raise
            if self.citizen_cache is not None:  # the batch's rows as committed
                self.citizen_cache.keep(session, group.citizens.values())
            self._wake(session)
        except Exception as exc:
            if self.citizen_cache is not None:  # a row changed elsewhere may not be the only one
                self.citizen_cache.clear()
            if isinstance(exc, IntegrityError) and await self._replayed(updates):
                log.info("a batch of %d updates holds updates already processed (a replay after a "
                         "restart); redoing them one by one", len(updates))
            else:
                # The redo below logs the traceback of each update that fails again;
                # here only what went wrong (the traceback at DEBUG, for a failure
                # of the batch itself that does not come back).
                log.warning("a batch of %d updates failed as one transaction (%s: %s); redoing them "
                            "one by one", len(updates), type(exc).__name__, exc)
                log.debug("the batch's failure", exc_info=True)
            admitted = group.admitted if group is not None else {}
            if group is not None:
                self.sent |= group.marking
            await feed_each(dispatcher, bot, updates, done, admitted=admitted)
            return
        await self._flush_group(bot, group, done)
        if done is not None:  # updates that sent nothing (dropped by the flood gate, replays)
            answered = {update_id for update_id, _ in group.replies}
            for update in updates:
                if update.update_id not in answered:
                    done(update.update_id)

    async def _replayed(self, updates: Sequence[Update]) -> bool:
        """Whether a failed batch held updates already recorded as processed."""
        try:
            async with self.sessionmaker() as session, session.begin():
                return bool(await processed_among(session, [u.update_id for u in updates]))
        except Exception:  # the database is down: the redo will tell
            return False

    async def _feed(self, dispatcher: Dispatcher, bot: Bot, update: Update, group: Group,
                    routing: NextMiddlewareType[TelegramObject] | None) -> None:
        """One update of a batch. Given ``routing`` (:func:`_routing_after`): this
        pipeline first, so that what the lane takes never enters aiogram's
        dispatch, and the rest goes on through ``routing``. Else as
        ``feed_update`` takes it."""
        if routing is None or update.bot is not bot:  # feed_update mounts an unbound update first
            await dispatcher.feed_update(bot, update, update_group=group)
            return
        started = time.monotonic()
        data = {"dispatcher": dispatcher, **dispatcher.workflow_data, "update_group": group, "bot": bot}
        result = await self(routing, update, data)
        if _EVENTS.isEnabledFor(logging.INFO):  # the line feed_update writes for each update
            _EVENTS.info("Update id=%s is %s. Duration %d ms by bot id=%d", update.update_id,
                         "not handled" if result is UNHANDLED else "handled",
                         (time.monotonic() - started) * 1000, bot.id)

    async def _flush_group(self, bot: Bot, group: Group, done: Done | None) -> None:
        by_chat: dict[int | None, list[tuple[int, Responder]]] = defaultdict(list)
        for update_id, responder in group.replies:
            by_chat[responder.chat_id].append((update_id, responder))

        async def one_chat(items: list[tuple[int, Responder]]) -> None:
            for update_id, responder in items:
                await self._flush(bot, update_id, responder)
                if done is not None:
                    done(update_id)

        await asyncio.gather(*(one_chat(items) for items in by_chat.values()))

    async def _handle(self, session: AsyncSession,
                      handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                      event: Update, data: dict[str, Any], responder: Responder, now: datetime,
                      chat_id: int | None, user_id: int | None, chat_type: str | None,
                      language: str | None, group: Group | None = None) -> Any:
        """One update's work inside an open transaction (a batch's, given ``group``)."""
        fresh = group.take_claim(event.update_id) if group is not None else await claim_update(
            session, event.update_id, now)
        if not fresh:
            log.info("update %s already processed; skipped", event.update_id)
            if event.update_id not in self.sent:
                stored = await unsent_replies(session, event.update_id)
                if stored:
                    # Committed before a crash, its replies never went out: send them now.
                    log.info("update %s: sending the replies a crash interrupted", event.update_id)
                    data["responder"] = Responder.load(stored, responder.locale)
            return None
        data["session"] = session
        data["now"] = now
        if chat_type == "private" and user_id is not None and chat_id is not None:
            citizen = (group.citizens.get(user_id) if group is not None
                       else await citizen_session(session, user_id, lock=True))
            if citizen is None:
                locale = normalize_locale(language) if language else self.default_locale
                citizen = CitizenSession(user_id=user_id, chat_id=chat_id, locale=locale,
                                         state=None, data={}, awaiting=None, extra={}, banned=False,
                                         updated_at=now)
                session.add(citizen)
                if group is not None:
                    group.citizens[user_id] = citizen
            else:
                citizen.updated_at = now
            data["citizen"] = citizen
            responder.locale = citizen.locale
            if citizen.banned:
                log.info("update %s from banned user %s ignored", event.update_id, user_id)
                responder.say("banned")
                return None
        if self.lane is not None and await self.lane(event, data):
            result = None
        else:
            result = await handler(event, data)
        if responder.has_messages():
            if group is not None:
                group.to_store[event.update_id] = responder.dump()
            else:
                await store_replies(session, event.update_id, responder.dump())
        return result

    async def _flush(self, bot: Bot, update_id: int, responder: Responder) -> None:
        """Answer the callback query and send an update's committed replies; keep
        what could not be sent."""
        left = await responder.flush(bot, self.pacer)
        if left is None:
            if responder.has_messages():
                self.sent.add(update_id)
            return
        try:  # rare: only after the retries failed
            async with self.sessionmaker() as session, session.begin():
                await store_replies(session, update_id, left.dump())
        except Exception:  # the full set stays stored: sent again, some twice, none lost
            log.exception("could not keep the unsent replies of update %s", update_id)

    async def record_sent(self) -> None:
        """Write the pending delivery marks now (the maintenance tick and shutdown call it)."""
        if not self.sent:
            return
        async with self.sessionmaker() as session, session.begin():
            await self._mark_sent(session, force=True)

    async def resend_unsent(self, bot: Bot, now: datetime, older_than: timedelta = RESEND_AFTER,
                            limit: int = 100) -> int:
        """Send again the replies of updates committed at least ``older_than`` ago
        that never went out (Telegram unreachable for longer than the retries, a
        crash after the commit with the update already confirmed). Each is
        leased by moving its time forward, so two workers never send one twice
        and a failure waits ``older_than`` again. Returns how many went out."""
        await self.record_sent()  # never resend what this process already sent
        async with self.sessionmaker() as session, session.begin():
            stale = await claim_unsent(session, now - older_than, now, limit)
        sent = 0
        for update_id, stored in stale:
            responder = Responder.load(stored, self.default_locale)
            await self._flush(bot, update_id, responder)
            sent += update_id in self.sent
        if stale:
            log.info("resent the replies of %s updates (%s still waiting)", sent, len(stale) - sent)
        await self.record_sent()
        return sent

    async def _mark_sent(self, session: AsyncSession, force: bool = False) -> set[int]:
        """Record, in this transaction, the replies sent since the last time (batched)."""
        if not self.sent or (not force and len(self.sent) < 100 and time.monotonic() - self._marked_at < 1.0):
            return set()
        batch, self.sent = self.sent, set()
        self._marked_at = time.monotonic()
        await mark_delivered(session, batch)
        return batch

    async def _apologise(self, bot: Bot, chat_id: int | None, chat_type: str | None, locale: str) -> None:
        if chat_id is None or chat_type != "private":
            return
        try:
            await bot.send_message(chat_id, t(locale, "retry_later"))
        except TelegramAPIError as exc:
            log.warning("could not tell chat about the failure: %s", exc)
