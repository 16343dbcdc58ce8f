"""Personal data at rest: encrypted columns and keyed hashes (PIPL arts. 6, 19, 51).

Phone and ID numbers on cases, and the whole filing in progress (which holds
them), are stored encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under a key
from the environment. Several keys may be given, newest first: new data is
written with the first, old data is read with any — that is key rotation
(``petition-bot rotate-keys`` re-writes everything under the first key).
Lookups that need equality (the same petitioner's phone or ID number, for
repeat detection) use an HMAC of the normalised value, never the value.

The cipher is configured once per process, before the database is used
(:func:`configure`), because SQLAlchemy column types are built at import time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

#: Marks an encrypted value, so a database written before encryption still reads.
PREFIX = "enc1:"


class DataKeyError(ValueError):
    """A data key is missing or malformed, or data was written with a key not configured."""


class _Cipher:
    def __init__(self) -> None:
        self.fernet: MultiFernet | None = None
        self.hash_key: bytes = b""

    def configure(self, keys: list[str]) -> None:
        if not keys:
            raise DataKeyError("no data key")
        try:
            fernets = [Fernet(k.strip().encode()) for k in keys]
        except (ValueError, TypeError) as exc:
            raise DataKeyError("a data key is not a valid Fernet key (32 url-safe base64 bytes)") from exc
        self.fernet = MultiFernet(fernets)
        # The lookup hash key is derived from the newest key; rotate-keys recomputes the hashes.
        self.hash_key = hmac.new(base64.urlsafe_b64decode(keys[0].strip()), b"petition lookup hash",
                                 hashlib.sha256).digest()

    def encrypt(self, text: str) -> str:
        if self.fernet is None:
            raise RuntimeError("storage.crypto.configure() was not called")
        return PREFIX + self.fernet.encrypt(text.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before encryption was on
        if self.fernet is None:
            raise RuntimeError("storage.crypto.configure() was not called")
        try:
            return self.fernet.decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken as exc:
            raise DataKeyError("data encrypted with a key that is not configured (PETITION_DATA_KEYS)") from exc


CIPHER = _Cipher()


def configure(keys: list[str]) -> None:
    CIPHER.configure(keys)


def new_key() -> str:
    return Fernet.generate_key().decode()


def keys_from(setting: str | None, key_file: Path) -> list[str]:
    """The configured keys; without any, the embedded default keeps a generated key in a file."""
    if setting:
        return [k for k in setting.split(",") if k.strip()]
    if key_file.exists():
        return [key_file.read_text().strip()]
    key = new_key()
    key_file.write_text(key + "\n")
    os.chmod(key_file, 0o600)
    log.warning("generated a data key in %s: keep it safe and back it up with the database; "
                "without it the encrypted personal data cannot be read (set PETITION_DATA_KEYS in production)",
                key_file)
    return [key]


def lookup_hash(value: str | None) -> str | None:
    """A keyed hash for equality lookups (None stays None)."""
    if not value:
        return None
    return hmac.new(CIPHER.hash_key, value.strip().upper().encode(), hashlib.sha256).hexdigest()


class EncryptedText(TypeDecorator[str]):
    """A text column stored encrypted."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else CIPHER.encrypt(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else CIPHER.decrypt(value)


class EncryptedJSON(TypeDecorator[dict[str, Any]]):
    """A JSON document stored encrypted (the filing in progress holds personal data)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: dict[str, Any] | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if not value:  # an empty document holds nothing to protect; reading it back costs no decryption
            return "{}"
        return CIPHER.encrypt(json.dumps(value, ensure_ascii=False))

    def process_result_value(self, value: str | None, dialect: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        loaded: dict[str, Any] = json.loads(CIPHER.decrypt(value))
        return loaded
