"""The framework's ceiling: a bare aiogram bot with MemoryStorage.

Same aiogram version, same Bot (HTML parse mode, the same fake Bot API
session), same updates fed the same way. Each step reads the FSM data, writes
it back with the answer and a step counter, sets the state, and sends one
reply (with an inline button when the next step is a press); a button press is
also answered (answerCallbackQuery), as any bot must. No database, no
durability: this is what aiogram alone costs per update on this machine.
"""

from __future__ import annotations

from typing import Any

from aiogram import Dispatcher, Router
from aiogram.filters import Filter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, TelegramObject

from bench.common import TOKEN, BenchTelegram
from bot.app import create_bot

_NEXT = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="next", callback_data="next")]])


class _Always(Filter):
    """An async filter (aiogram runs sync ones in a thread), like the product's PrivateChat."""

    async def __call__(self, event: TelegramObject) -> bool:
        return True


def build_ceiling_dispatcher() -> Dispatcher:
    dp = Dispatcher(storage=MemoryStorage())
    router = Router(name="ceiling")

    async def step(state: FSMContext, answer: str) -> str:
        data = await state.get_data()
        n = int(data.get("n", 0)) + 1
        await state.set_data({**data, "n": n, f"a{n}": answer})
        await state.set_state(f"step{n}")
        return f"Step {n}: <b>got it</b>"

    @router.message(_Always())
    async def on_message(message: Message, state: FSMContext) -> None:
        reply = await step(state, message.text or "")
        await message.answer(reply, reply_markup=_NEXT)

    @router.callback_query(_Always())
    async def on_press(query: CallbackQuery, state: FSMContext) -> None:
        reply = await step(state, query.data or "")
        await query.answer()
        assert query.message is not None
        await query.message.answer(reply, reply_markup=_NEXT)

    dp.include_router(router)
    return dp


def build_ceiling(telegram: BenchTelegram | None = None) -> tuple[Dispatcher, Any, BenchTelegram]:
    telegram = telegram or BenchTelegram()
    return build_ceiling_dispatcher(), create_bot(TOKEN, session=telegram), telegram
