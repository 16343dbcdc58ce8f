"""Conversations used by several tests, written as a citizen would act."""

from __future__ import annotations

import re

from bot.simulator import SimUser

VALID_ID = "11010519491231002X"
TRACKING = re.compile(r"[A-Z]{2,4}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}")
CODE = re.compile(r"(?:查询码|Query code)：?:?\s*<code>([2-9A-HJ-NP-Z]{10})</code>")

ZH = {
    "accept": "✅ 我已阅读并同意", "grievance": "🙋 反映自身权益问题，要求解决",
    "suggestion": "💡 提出建议意见", "skip": "跳过", "done": "完成，下一步",
    "no_litigation": "没有", "no_publish": "🔒 不同意公开（默认）", "confirm": "✅ 确认提交",
    "edit": "✏️ 修改某项", "cancel": "✖ 取消", "back": "◀ 返回", "yes_cancel": "是，取消",
    "no_cancel": "否，继续填写",
}
EN = {
    "accept": "✅ I have read and agree", "grievance": "🙋 My own grievance or claim",
    "suggestion": "💡 A suggestion or opinion", "skip": "Skip", "done": "Done, next step",
    "no_litigation": "No", "no_publish": "🔒 Do not publish (default)",
    "confirm": "✅ Confirm and submit", "edit": "✏️ Change an answer", "cancel": "✖ Cancel",
    "back": "◀ Back", "yes_cancel": "Yes, cancel", "no_cancel": "No, keep going",
}


def labels(citizen: SimUser) -> dict[str, str]:
    return EN if citizen.user.language_code == "en" else ZH


async def to_title(citizen: SimUser, *, matter: str = "grievance") -> None:
    """/new → consent → class → category (typed) → subcategory → location (typed)."""
    b = labels(citizen)
    await citizen.send("/new")
    await citizen.press(b["accept"])
    await citizen.press(b[matter])
    await citizen.send("社保" if citizen.user.language_code != "en" else "labour")
    if any(label == b["skip"] for label, _ in citizen.buttons()):
        await citizen.press(1)
    await citizen.send("虎门" if citizen.user.language_code != "en" else "Humen")


async def to_attachments(citizen: SimUser) -> None:
    """Up to the attachment step, with short answers and the optional ones skipped."""
    b = labels(citizen)
    await to_title(citizen)
    for answer in ("标题", "诉求", "事实", "理由"):
        await citizen.send(answer)
    await citizen.press(b["skip"])  # occurred
    await citizen.press(b["skip"])  # accused
    await citizen.press(b["no_litigation"])


async def to_summary(citizen: SimUser, *, matter: str = "grievance", title: str = "拖欠工资",
                     phone: str = "139 1234 5678") -> None:
    b = labels(citizen)
    await to_title(citizen, matter=matter)
    await citizen.send(title)
    await citizen.send("要求公司支付拖欠的三个月工资")
    await citizen.send("2025年12月起公司未发工资")
    await citizen.send("劳动合同约定每月10日发放工资")
    await citizen.press(b["skip"])  # occurred
    await citizen.press(b["skip"])  # accused
    await citizen.press(b["no_litigation"])
    await citizen.press(b["done"])  # no attachments
    await citizen.send("张三")
    await citizen.send(phone)
    if matter == "grievance":
        await citizen.send(VALID_ID)
    await citizen.send("东莞市虎门镇银龙路1号")
    await citizen.press(b["no_publish"])


async def file_petition(citizen: SimUser, **kwargs: str) -> tuple[str, str]:
    """A whole filing; returns (tracking number, query code) from the receipt."""
    await to_summary(citizen, **kwargs)
    await citizen.press(labels(citizen)["confirm"])
    if "repeat_file" in "".join(data or "" for _, data in citizen.buttons()):
        # An open case on the same matter was found: this helper files anyway.
        await citizen.press_data(next(d for _, d in citizen.buttons() if d and "repeat_file" in d))
    receipt = citizen.last_text
    tracking = TRACKING.search(receipt)
    code = CODE.search(receipt)
    assert tracking and code, receipt
    return tracking.group(0), code.group(1)
