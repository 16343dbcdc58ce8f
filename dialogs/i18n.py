"""Locale catalogs: every user-facing sentence lives in ``dialogs/locales/*.toml``.

Catalog texts are Telegram HTML written by us; params are the citizen's (or a
config's) text and are escaped here, so no caller can forget it.
"""

from __future__ import annotations

import html
import string
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

LOCALES: tuple[str, ...] = ("zh", "en")
DEFAULT_LOCALE = "zh"


class Trusted(str):
    """Text already rendered from a catalog: inserted without escaping."""


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


@cache
def catalog(locale: str) -> Mapping[str, str]:
    raw = (resources.files("dialogs") / "locales" / f"{locale}.toml").read_text("utf-8")
    return _flatten(tomllib.loads(raw))


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def normalize_locale(code: str | None) -> str:
    """Telegram's language_code → one of ours (Chinese unless English is asked for)."""
    if code and code.lower().startswith("en"):
        return "en"
    return DEFAULT_LOCALE


def _escape(value: Any) -> str:
    if isinstance(value, Trusted):
        return value
    return html.escape(str(value), quote=False)


def t(locale: str, key: str, **params: Any) -> Trusted:
    """Render one catalog entry; a key missing from the catalog raises KeyError."""
    text = catalog(locale)[key]
    if params:
        text = text.format_map({k: _escape(v) for k, v in params.items()})
    return Trusted(text)


def has(locale: str, key: str) -> bool:
    return key in catalog(locale)
