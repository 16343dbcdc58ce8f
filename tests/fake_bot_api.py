"""A small HTTP Bot API server on loopback, standing in for a self-hosted
``telegram-bot-api``: the bot process talks to it over real HTTP exactly as it
would to Telegram. Tests queue updates and read what the bot sent.

getUpdates follows Telegram's rules: updates with ids below ``offset`` are
confirmed and forgotten; the call waits up to ``timeout`` seconds for news.

Faults, all off by default (tests/test_faults.py): ``conflict`` answers getUpdates
with 409 as Telegram does when a second process polls the same token;
``fail_chats`` answers sendMessage to those chats with 500 and ``stall_chats``
never answers it (both recorded in ``refused``, not in ``sent``); ``send_delay``
slows every sendMessage down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Sent:
    method: str
    params: dict[str, Any]

    @property
    def chat_id(self) -> int:
        return int(self.params["chat_id"])

    @property
    def text(self) -> str:
        return str(self.params.get("text", ""))

    def buttons(self) -> list[tuple[str, str]]:
        markup = self.params.get("reply_markup")
        if not markup:
            return []
        parsed = json.loads(markup) if isinstance(markup, str) else markup
        rows = parsed.get("inline_keyboard", [])
        return [(b["text"], b.get("callback_data", "")) for row in rows for b in row]


#: A well-formed token for the processes the tests start against the fake API.
TOKEN = "777000:fake-token-for-a-local-bot-api-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, limit: float = 20.0) -> None:
    """Until something listens on ``port`` (a started process is ready)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class FakeBotAPI:
    token: str = TOKEN
    bot_id: int = 4242
    pending: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    #: Told of every message sent (the benchmark reads each chat's screen from it).
    on_send: Callable[[Sent], None] | None = None
    #: The parameters of the latest call of each method.
    last_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    confirmed_up_to: int = 0
    _news: asyncio.Event = field(default_factory=asyncio.Event)
    _update_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _message_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    port: int = 0
    # -- faults (off unless a test turns them on) --
    conflict: bool = False
    fail_chats: set[int] = field(default_factory=set)
    stall_chats: set[int] = field(default_factory=set)
    send_delay: float = 0.0
    #: sendMessage calls answered with 500 or left hanging: ("fail" | "stall", chat id, text).
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    # -- test side ---------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("POST", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self._release.set()  # let stalled requests end so the server can shut down
        if self._runner is not None:
            await self._runner.cleanup()

    def _user(self, user_id: int, language: str) -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": f"U{user_id}", "language_code": language}

    def push_text(self, user_id: int, text: str, language: str = "zh") -> int:
        update_id = next(self._update_ids)
        self.pending.append({"update_id": update_id, "message": {
            "message_id": next(self._message_ids), "date": int(time.time()),
            "chat": {"id": user_id, "type": "private"}, "from": self._user(user_id, language),
            "text": text}})
        self._news.set()
        return update_id

    def push_callback(self, user_id: int, data: str, language: str = "zh") -> int:
        update_id = next(self._update_ids)
        self.pending.append({"update_id": update_id, "callback_query": {
            "id": f"cb{update_id}", "chat_instance": "x", "data": data,
            "from": self._user(user_id, language),
            "message": {"message_id": next(self._message_ids), "date": int(time.time()),
                        "chat": {"id": user_id, "type": "private"},
                        "from": {"id": self.bot_id, "is_bot": True, "first_name": "bot"}, "text": "…"}}})
        self._news.set()
        return update_id

    def push(self, update: dict[str, Any]) -> int:
        """Any update (without ``update_id``): e.g. a staff member's button press in a group."""
        update_id = next(self._update_ids)
        self.pending.append({"update_id": update_id, **update})
        self._news.set()
        return update_id

    def to_chat(self, chat_id: int) -> list[Sent]:
        return [s for s in self.sent if s.method == "sendMessage" and s.chat_id == chat_id]

    def replies_to(self, chat_id: int) -> list[Sent]:
        """The chat's messages with crash resends folded: a reply that went out just
        before a kill -9, and before its delivery was recorded, is sent once more
        after the restart (at least once, never lost). A resend is the same
        message right after itself."""
        folded: list[Sent] = []
        for sent in self.to_chat(chat_id):
            if not folded or folded[-1].params != sent.params:
                folded.append(sent)
        return folded

    def resends_to(self, chat_id: int) -> int:
        return len(self.to_chat(chat_id)) - len(self.replies_to(chat_id))

    async def wait_for_replies(self, chat_id: int, count: int, limit: float = 20.0) -> list[Sent]:
        """Like ``wait_for``, counting a crash resend once."""
        return await self._wait(self.replies_to, chat_id, count, limit)

    async def wait_for(self, chat_id: int, count: int, limit: float = 20.0) -> list[Sent]:
        """Wait until the chat has received at least ``count`` messages in all."""
        return await self._wait(self.to_chat, chat_id, count, limit)

    async def _wait(self, messages: Callable[[int], list[Sent]], chat_id: int, count: int,
                    limit: float) -> list[Sent]:
        deadline = time.monotonic() + limit
        while len(messages(chat_id)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"chat {chat_id} got {len(messages(chat_id))}, wanted {count}: "
                                   f"{[s.text[:60] for s in self.to_chat(chat_id)]}")
            await asyncio.sleep(0.02)
        return messages(chat_id)

    # -- Bot API side ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params = dict(await request.post())
        self.calls.append(method)
        self.last_params[method] = params
        if method == "getUpdates" and self.conflict:
            return web.json_response({"ok": False, "error_code": 409, "description":
                                      "Conflict: terminated by other getUpdates request; "
                                      "make sure that only one bot instance is running"}, status=409)
        if method == "sendMessage" and int(params.get("chat_id", 0)) in self.fail_chats:
            self.refused.append(("fail", int(params["chat_id"]), str(params.get("text", ""))))
            return web.json_response({"ok": False, "error_code": 500, "description": "Internal Server Error"},
                                     status=500)
        if method == "sendMessage" and int(params.get("chat_id", 0)) in self.stall_chats:
            self.refused.append(("stall", int(params["chat_id"]), str(params.get("text", ""))))
            await self._release.wait()
            return web.json_response({"ok": False, "error_code": 502, "description": "Bad Gateway"}, status=502)
        if method == "sendMessage" and self.send_delay:
            await asyncio.sleep(self.send_delay)
        handler = getattr(self, f"_m_{method}", None)
        result = await handler(params) if handler else True
        return web.json_response({"ok": True, "result": result})

    async def _m_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Petition bot", "username": "petition_bot"}

    async def _m_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        if offset:
            self.confirmed_up_to = max(self.confirmed_up_to, offset - 1)
            self.pending = [u for u in self.pending if u["update_id"] >= offset]
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        if not self.pending and timeout:
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), timeout)
        return self.pending[:limit]

    async def _m_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(Sent("sendMessage", params))
        if self.on_send is not None:
            self.on_send(self.sent[-1])
        return {"message_id": next(self._message_ids), "date": int(time.time()),
                "chat": {"id": int(params["chat_id"]), "type": "private"},
                "from": {"id": self.bot_id, "is_bot": True, "first_name": "bot"},
                "text": params.get("text", "")}
