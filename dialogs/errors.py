"""The one error type validators raise: it carries a catalog key, never a sentence."""

from __future__ import annotations

from typing import Any


class InputError(Exception):
    """A citizen's answer was refused.

    ``key`` names a message in the locale catalogs (``dialogs/locales/*.toml``);
    ``params`` fill its placeholders.
    """

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params

    def __repr__(self) -> str:
        return f"InputError({self.key!r}, **{self.params!r})"
