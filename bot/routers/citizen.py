"""Citizens in private chats: the menu, filing, status. Handlers only translate
Telegram events into plain values, call one service, and stage the replies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any

from aiogram import Router
from aiogram.enums import ContentType
from aiogram.filters import Command, CommandObject, CommandStart, Filter
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, TelegramObject, Update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.callbacks import IntakeButton, MenuAction, MenuButton, RelayChoice
from bot.middlewares import Responder
from bot.render import language_menu, main_menu
from dialogs.bureau import BureauConfig
from dialogs.errors import InputError
from dialogs.i18n import LOCALES
from dialogs.messages import Command as IntakeCommand
from dialogs.messages import Input, InputKind, Media
from handoff.intake import IntakeService
from handoff.relay import RelayService
from storage.models import Case, CitizenSession


class PrivateChat(Filter):
    """Async on purpose: aiogram runs synchronous filters in a thread per call."""

    async def __call__(self, event: TelegramObject) -> bool:
        if isinstance(event, Message):
            return event.chat.type == "private"
        if isinstance(event, CallbackQuery):
            return event.message is None or event.message.chat.type == "private"
        return False


def message_input(message: Message) -> Input:
    """A Telegram message as the engine sees it."""
    if message.text is not None:
        return Input(InputKind.TEXT, text=message.text)
    if message.contact is not None:
        own = message.from_user is not None and message.contact.user_id == message.from_user.id
        return Input(InputKind.CONTACT, text=message.contact.phone_number, own_contact=own)
    if message.photo:
        photo = message.photo[-1]  # the largest size
        return Input(InputKind.PHOTO, media=Media(
            file_id=photo.file_id, file_unique_id=photo.file_unique_id, kind="photo",
            size=photo.file_size, mime_type="image/jpeg", media_group_id=message.media_group_id,
            caption=message.caption))
    if message.document is not None:
        doc = message.document
        return Input(InputKind.DOCUMENT, media=Media(
            file_id=doc.file_id, file_unique_id=doc.file_unique_id, kind="document",
            size=doc.file_size, mime_type=doc.mime_type, file_name=doc.file_name,
            media_group_id=message.media_group_id, caption=message.caption))
    return Input(InputKind.OTHER, other_type=ContentType(message.content_type).value, text=message.caption or "")


class Answering(Filter):
    """A message answering the filing's current step: the citizen is filing, was
    asked nothing else, and is not giving a command (commands keep their meaning,
    as aiogram's ``Command`` reads them: in the text or a caption)."""

    async def __call__(self, message: Message, citizen: CitizenSession | None = None) -> bool:
        if citizen is None or citizen.state is None or citizen.awaiting is not None:
            return False
        said = message.text or message.caption
        return not (said and said.lstrip().startswith("/"))  # Command splits on whitespace first


#: The filing's filters: the router and the lane check the very same ones.
_PRIVATE = PrivateChat()
_ANSWERING = Answering()
_INTAKE_BUTTON = IntakeButton.filter()


def build_filing_router() -> Router:
    """The filing's answers and buttons, checked before every other handler.

    Most updates are these (a filing is some twenty of them), so they are routed
    with two filters instead of passing every command's and follow-up's filter
    first; what they exclude (commands, a follow-up question, other buttons)
    goes on to the other routers as before. :func:`filing_lane` takes the same
    updates to the same handlers without the router (the pipeline asks it first).
    """
    router = Router(name="filing")
    router.message.filter(_PRIVATE, _ANSWERING)
    router.callback_query.filter(_PRIVATE)
    router.message()(on_answer)
    router.callback_query(_INTAKE_BUTTON)(on_intake_button)
    return router


async def on_answer(message: Message, citizen: CitizenSession, responder: Responder,
                    intake: IntakeService, session: AsyncSession, now: datetime) -> None:
    if message.forward_origin is not None:
        # Someone else's words: taken as the answer, but the citizen is told so.
        responder.say("forwarded_note")
    responder.reply(*await intake.handle(session, citizen, message_input(message), now))


async def on_intake_button(query: CallbackQuery, callback_data: IntakeButton,
                           citizen: CitizenSession, responder: Responder,
                           intake: IntakeService, session: AsyncSession, now: datetime) -> None:
    responder.callback = query
    if not intake.in_progress(citizen):
        responder.say("idle_hint", main_menu(responder.locale))
        return
    inp = Input(InputKind.BUTTON, step=callback_data.step, value=callback_data.value)
    responder.reply(*await intake.handle(session, citizen, inp, now))


async def filing_route(update: Update, data: dict[str, Any]) -> Callable[[], Awaitable[None]] | None:
    """The filing router's handler for ``update``, ready to run, if the filing
    router would take it (the same filters); None: not the filing's."""
    citizen = data.get("citizen")
    if citizen is None:
        return None
    message, query = update.message, update.callback_query
    if message is not None:
        if await _PRIVATE(message) and await _ANSWERING(message, citizen):
            return partial(on_answer, message, citizen, data["responder"], data["intake"], data["session"],
                           data["now"])
        return None
    if query is not None and await _PRIVATE(query):
        button = await _INTAKE_BUTTON(query)
        if isinstance(button, dict):
            return partial(on_intake_button, query, button["callback_data"], citizen, data["responder"],
                           data["intake"], data["session"], data["now"])
    return None


async def filing_lane(update: Update, data: dict[str, Any]) -> bool:
    """Run the filing's handler for ``update`` straight from the pipeline, without
    aiogram's routing (a fifth of an update's time, for most updates). False:
    not the filing's, to be routed as usual."""
    route = await filing_route(update, data)
    if route is None:
        return False
    await route()
    return True


def build_citizen_router() -> Router:
    router = Router(name="citizen")
    router.message.filter(PrivateChat())
    router.callback_query.filter(PrivateChat())
    router.edited_message.filter(PrivateChat())

    @router.message(CommandStart())
    async def on_start(message: Message, citizen: CitizenSession, responder: Responder,
                       intake: IntakeService, bureau: BureauConfig) -> None:
        citizen.awaiting = None
        _welcome(responder, bureau)
        if intake.in_progress(citizen):
            responder.reply(*intake.start(citizen))

    @router.message(Command("new"))
    async def on_new(message: Message, citizen: CitizenSession, responder: Responder,
                     intake: IntakeService) -> None:
        citizen.awaiting = None
        responder.reply(*intake.start(citizen))

    @router.message(Command("cancel", "back", "help"))
    async def on_intake_command(message: Message, command: CommandObject, citizen: CitizenSession,
                                responder: Responder, intake: IntakeService, session: AsyncSession,
                                now: datetime, bureau: BureauConfig) -> None:
        citizen.awaiting = None
        if intake.in_progress(citizen):
            inp = Input(InputKind.COMMAND, command=IntakeCommand(command.command))
            responder.reply(*await intake.handle(session, citizen, inp, now))
        elif command.command == "help":
            _help(responder, bureau)
        else:
            responder.say("idle_hint", main_menu(responder.locale))

    @router.message(Command("language"))
    async def on_language(message: Message, citizen: CitizenSession, responder: Responder) -> None:
        citizen.awaiting = None
        responder.say("language.prompt", language_menu())

    @router.callback_query(MenuButton.filter())
    async def on_menu(query: CallbackQuery, callback_data: MenuButton, citizen: CitizenSession,
                      responder: Responder, intake: IntakeService, bureau: BureauConfig) -> None:
        responder.callback = query
        action = callback_data.action
        if action is MenuAction.NEW:
            citizen.awaiting = None
            responder.reply(*intake.start(citizen))
        elif action is MenuAction.STATUS:
            citizen.awaiting = "status"
            responder.say("status.ask")
        elif action is MenuAction.HELP:
            _help(responder, bureau)
        elif action is MenuAction.LANGUAGE:
            responder.say("language.prompt", language_menu())
        elif action.value in LOCALES:
            citizen.locale = responder.locale = action.value
            responder.say("language.changed")
            if intake.in_progress(citizen):
                responder.reply(*intake.resume(citizen))
            else:
                responder.say("menu_prompt", main_menu(responder.locale))

    @router.edited_message()
    async def on_edited(message: Message, responder: Responder, bureau: BureauConfig) -> None:
        said = message.text or message.caption or ""
        if said and bureau.emergency_words.match(said):
            responder.say("emergency.advice_idle")
        responder.say("edited_ignored")

    @router.message()
    async def on_message(message: Message, citizen: CitizenSession, responder: Responder,
                         intake: IntakeService, relay: RelayService,
                         bureau: BureauConfig, session: AsyncSession, now: datetime) -> None:
        if intake.in_progress(citizen):  # an unknown /command, taken as the step's answer
            await on_answer(message, citizen, responder, intake, session, now)
            return
        content = relay_content(message)
        cases = await relay.open_cases(session, citizen.user_id) if content else []
        if not cases or content is None:
            said = message.text or message.caption or ""
            if said and bureau.emergency_words.match(said):
                responder.say("emergency.advice_idle")
            responder.say("idle_hint", main_menu(responder.locale))
            return
        urgent = _urgent(bureau, message, responder)
        if len(cases) == 1:
            try:
                relay.relay(session, cases[0], content, now, urgent=urgent)
            except InputError as refused:
                responder.say(refused.key, **refused.params)
                return
            responder.say("relay.sent", tracking=cases[0].tracking_number)
            return
        citizen.extra = {**citizen.extra, "relay": content, "urgent": urgent}
        responder.say("relay.which", relay_menu(cases))

    @router.callback_query(RelayChoice.filter())
    async def on_relay_choice(query: CallbackQuery, callback_data: RelayChoice, citizen: CitizenSession,
                              responder: Responder, relay: RelayService, session: AsyncSession,
                              now: datetime) -> None:
        responder.callback = query
        content = citizen.extra.get("relay")
        case = await relay.case_of(session, citizen.user_id, callback_data.case)
        if not content or case is None:
            responder.say("relay.expired")
            return
        try:
            relay.relay(session, case, content, now, urgent=bool(citizen.extra.get("urgent")))
        except InputError as refused:
            responder.say(refused.key, **refused.params)
            return
        citizen.extra = {k: v for k, v in citizen.extra.items() if k not in ("relay", "urgent")}
        responder.say("relay.sent", tracking=case.tracking_number)

    @router.callback_query()
    async def on_unknown_button(query: CallbackQuery, responder: Responder) -> None:
        responder.callback = query
        responder.say("idle_hint")

    return router


def relay_content(message: Message) -> dict[str, Any] | None:
    """What of a message can be passed on to staff (text, a photo or a file)."""
    if message.text:
        return {"text": message.text}
    if message.photo:
        return {"file_kind": "photo", "file_id": message.photo[-1].file_id, "caption": message.caption}
    if message.document is not None:
        return {"file_kind": "document", "file_id": message.document.file_id, "caption": message.caption}
    return None


def relay_menu(cases: list[Case]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text=f"{c.tracking_number} · {c.title[:30]}",
                              callback_data=RelayChoice(case=c.id).pack())] for c in cases])


def _urgent(bureau: BureauConfig, message: Message, responder: Responder) -> bool:
    said = message.text or message.caption or ""
    if said and bureau.emergency_words.match(said):
        responder.say("emergency.advice")
        return True
    return False


def _bureau_name(bureau: BureauConfig, locale: str) -> str:
    return bureau.bureau.name_en if locale == "en" else bureau.bureau.name_zh


def _welcome(responder: Responder, bureau: BureauConfig) -> None:
    responder.say("welcome", main_menu(responder.locale), bureau=_bureau_name(bureau, responder.locale))


def _help(responder: Responder, bureau: BureauConfig) -> None:
    info = bureau.bureau
    english = responder.locale == "en"
    responder.say("help.general", main_menu(responder.locale),
                  bureau=_bureau_name(bureau, responder.locale),
                  address=info.address_en if english else info.address_zh,
                  hours=info.hours_en if english else info.hours_zh, phone=info.phone)

