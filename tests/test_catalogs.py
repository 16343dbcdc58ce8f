"""The two message catalogs: the same keys, the same placeholders, every key the
code can ask for, and valid Telegram HTML in every text."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiogram.enums import ContentType

from bot.app import COMMANDS
from bot.callbacks import MenuAction
from dialogs import steps as S
from dialogs.i18n import LOCALES, catalog, placeholders
from state_machine.intake import EDITABLE, FLOW

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("dialogs", "bot", "handoff")

#: Calls whose string-literal argument is a catalog key. f-strings are not
#: matched (their keys are checked through the lists they are built from).
_KEY_USES = [
    re.compile(r'\bText\(\s*"([^"]+)"'),
    re.compile(r'\bReply\.text\(\s*"([^"]+)"'),
    re.compile(r'\bInputError\(\s*"([^"]+)"'),
    re.compile(r'\bsay\(\s*"([^"]+)"'),
    re.compile(r'\blabel_key="([^"]+)"'),
    re.compile(r'\bt\(\s*(?:"[^"]*"|[^,()"]+),\s*"([^"]+)"'),
]

#: What Telegram's HTML parse mode accepts that our texts may use.
ALLOWED_TAGS = {"b", "i", "code", "pre", "a"}


def keys_used_in_source() -> dict[str, str]:
    """Every literal catalog key in the product code → where it is used."""
    found: dict[str, str] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = path.read_text("utf-8")
            for pattern in _KEY_USES:
                for match in pattern.finditer(source):
                    line = source.count("\n", 0, match.start()) + 1
                    found.setdefault(match.group(1), f"{path.relative_to(ROOT)}:{line}")
    return found


def keys_built_from_data() -> set[str]:
    """Keys the code builds from steps, choices, menu actions and commands."""
    keys: set[str] = set()
    for step in FLOW:
        keys |= {f"step.{step}.ask", f"step.{step}.help"}
    keys.add("step.summary.help")
    keys |= {f"summary.{step}" for step in EDITABLE}
    for step, spec in S.SPECS.items():
        keys |= {f"choice.{step}.{value}" for value in spec.choices}
    keys |= {f"menu.{action}" for action in (MenuAction.NEW, MenuAction.STATUS,
                                              MenuAction.HELP, MenuAction.LANGUAGE)}
    keys |= {f"language.{locale}" for locale in LOCALES}
    keys |= {f"commands.{command}" for command in COMMANDS}
    keys |= {"status.name.submitted", "media.other"}
    return keys


def test_both_catalogs_have_exactly_the_same_keys() -> None:
    zh, en = set(catalog("zh")), set(catalog("en"))
    assert sorted(zh - en) == [], "only in zh.toml"
    assert sorted(en - zh) == [], "only in en.toml"


@pytest.mark.parametrize("key", sorted(catalog("zh")))
def test_each_text_has_the_same_placeholders_in_both_languages(key: str) -> None:
    assert placeholders(catalog("zh")[key]) == placeholders(catalog("en")[key])


def test_the_source_scan_finds_the_keys_it_should() -> None:
    # Guards the scan itself: a broken pattern would make the next test vacuous.
    used = keys_used_in_source()
    for sample in ("error.phone.invalid", "emergency.advice", "button.done",
                   "edited_ignored", "submitted.receipt", "status.not_found",
                   "button.share_phone", "retry_later", "language.zh"):
        assert sample in used
    assert len(used) >= 60


@pytest.mark.parametrize("locale", LOCALES)
def test_every_key_used_in_the_source_exists(locale: str) -> None:
    missing = {key: where for key, where in keys_used_in_source().items()
               if key not in catalog(locale)}
    assert missing == {}


@pytest.mark.parametrize("locale", LOCALES)
def test_every_key_built_from_steps_choices_and_menus_exists(locale: str) -> None:
    assert sorted(keys_built_from_data() - set(catalog(locale))) == []


def test_media_names_are_keyed_by_telegram_content_types() -> None:
    # The engine names what was sent with ``media.<content type>``; a key that
    # is not a content type would never be used.
    kinds = {key.removeprefix("media.") for key in catalog("zh") if key.startswith("media.")}
    assert sorted(kinds - {"other"} - {c.value for c in ContentType}) == []
    assert {"sticker", "voice", "photo", "document", "video"} <= kinds


class TelegramHTML(HTMLParser):
    """Collects what Telegram's HTML parse mode would refuse."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.problems.append(f"tag <{tag}> not allowed")
        if tag == "a" and not dict(attrs).get("href"):
            self.problems.append("<a> without href")
        self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problems.append(f"self-closing <{tag}/> not allowed")

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> does not close {self.open[-1:] or 'anything'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        for bare in "<>&":
            if bare in data:
                self.problems.append(f"bare {bare!r} in {data!r}")

    def handle_entityref(self, name: str) -> None:
        if name not in {"lt", "gt", "amp", "quot"}:
            self.problems.append(f"entity &{name}; not supported")

    def check(self, text: str) -> list[str]:
        self.feed(text)
        self.close()
        if self.rawdata:
            self.problems.append(f"unparsed rest {self.rawdata!r}")
        if self.open:
            self.problems.append(f"unclosed {self.open}")
        return self.problems


@pytest.mark.parametrize("locale", LOCALES)
def test_every_text_is_valid_telegram_html_when_filled_in(locale: str) -> None:
    problems = {}
    for key, text in catalog(locale).items():
        filled = text.format_map({name: "x" for name in placeholders(text)})
        found = TelegramHTML().check(filled)
        if found:
            problems[key] = found
    assert problems == {}


def test_the_html_check_catches_what_telegram_refuses() -> None:
    assert TelegramHTML().check("<b>ok</b> &amp; <code>x</code>") == []
    assert TelegramHTML().check("<b>open")
    assert TelegramHTML().check("<b><i>crossed</b></i>")
    assert TelegramHTML().check("<div>not allowed</div>")
    assert TelegramHTML().check("a < b")
    assert TelegramHTML().check("Tom & Jerry")
