"""What the simulated people do: a full filing (as ``tests/flows.py`` does it),
a status lookup, a lone /start, and the ceiling bot's dialog of the same shape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from stdnum.cn import ric

from bench.common import BenchTelegram
from bench.feeder import Person, Step

TRACKING = re.compile(r"[A-Z]{2,4}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}")
CODE = re.compile(r"(?:查询码|Query code)：?:?\s*<code>([2-9A-HJ-NP-Z]{10})</code>")

ZH = {
    "accept": "✅ 我已阅读并同意", "grievance": "🙋 反映自身权益问题，要求解决", "skip": "跳过",
    "done": "完成，下一步", "no_litigation": "没有", "no_publish": "🔒 不同意公开（默认）",
    "confirm": "✅ 确认提交",
}


def identity(n: int) -> tuple[str, str]:
    """A distinct, valid mobile number and resident ID for person ``n`` (every
    simulated citizen is a different petitioner: the bot looks for repeat
    filings by phone and ID number)."""
    phone = f"139{n % 10**8:08d}"
    born = date(1950, 1, 1) + timedelta(days=(n // 999) % 20000)
    body = f"110105{born:%Y%m%d}{n % 999 + 1:03d}"
    return phone, body + ric.calc_check_digit(body + "0")  # stdnum reads the first 17


class DialogError(AssertionError):
    pass


def _button(telegram: BenchTelegram, chat_id: int, label: str | int) -> str:
    """Callback data of a button on the chat's latest inline keyboard, by label (or 1-based position)."""
    markup = telegram.keyboards.get(chat_id)
    buttons = [(b.text, b.callback_data) for row in (markup.inline_keyboard if markup else [])
               for b in row if b.callback_data is not None]
    if isinstance(label, int):
        if not 1 <= label <= len(buttons):
            raise DialogError(f"chat {chat_id}: no button {label} in {buttons}")
        return str(buttons[label - 1][1])
    for wanted in (lambda t: t == label, lambda t: label in t):
        for text, data in buttons:
            if wanted(text):
                return str(data)
    raise DialogError(f"chat {chat_id}: no button {label!r} in {[b[0] for b in buttons]}")


@dataclass
class Receipts:
    """Tracking numbers and query codes the filings ended with."""

    ok: list[tuple[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def filing(person: Person, telegram: BenchTelegram, receipts: Receipts) -> Iterator[Step]:
    """The whole filing dialog, ~20 updates ending with the confirm; checks the receipt."""
    chat = person.chat.id
    phone, id_number = identity(chat)

    def press(label: str | int) -> Step:
        return Step("press", person.press(_button(telegram, chat, label)))

    yield Step("command", person.text("/new"))
    yield press(ZH["accept"])
    yield press(ZH["grievance"])
    yield Step("text", person.text("社保"))
    markup = telegram.keyboards.get(chat)
    if markup and any(b.text == ZH["skip"] for row in markup.inline_keyboard for b in row):
        yield press(1)  # a subcategory
    yield Step("text", person.text("虎门"))
    yield Step("text", person.text("拖欠工资"))
    yield Step("text", person.text("要求公司支付拖欠的三个月工资"))
    yield Step("text", person.text("2025年12月起公司未发工资"))
    yield Step("text", person.text("劳动合同约定每月10日发放工资"))
    yield press(ZH["skip"])  # occurred
    yield press(ZH["skip"])  # accused
    yield press(ZH["no_litigation"])
    yield press(ZH["done"])  # no attachments
    yield Step("text", person.text("张三"))
    yield Step("text", person.text(phone))
    yield Step("text", person.text(id_number))
    yield Step("text", person.text("东莞市虎门镇银龙路1号"))
    yield press(ZH["no_publish"])
    yield Step("confirm", person.press(_button(telegram, chat, ZH["confirm"])))
    receipt = telegram.last_text.get(chat, "")
    tracking, code = TRACKING.search(receipt), CODE.search(receipt)
    if tracking and code:
        receipts.ok.append((tracking.group(0), code.group(1)))
    else:
        receipts.failed.append(receipt[:200])


def steps_to_summary(person: Person, telegram: BenchTelegram, receipts: Receipts) -> Iterator[Step]:
    """A filing up to (not including) the confirm."""
    for step in filing(person, telegram, receipts):
        if step.label == "confirm":
            return
        yield step


def ceiling_dialog(person: Person, shape: list[str]) -> Iterator[Step]:
    """The ceiling bot's dialog: the same sequence of typed messages and button presses."""
    for n, kind in enumerate(shape):
        if kind == "press" or kind == "confirm":
            yield Step(kind, person.press(f"next:{n}"))
        else:
            yield Step(kind, person.text(f"answer {n}"))


def one_message(person: Person, text: str, label: str = "text") -> Iterator[Step]:
    yield Step(label, person.text(text))
