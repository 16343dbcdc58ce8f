"""Personal data at rest: encrypted columns and keyed hashes (PIPL arts. 6, 19, 51).

Phone and ID numbers on cases, the whole filing in progress (which holds
them) and the replies kept until sent are stored encrypted under a key from the
environment. Several keys may be given, newest first: new data is written with
the first, old data is read with any — that is key rotation
(``petition-bot rotate-keys`` re-writes everything under the first key).

The cipher is AES-256-GCM (``enc2:``), with a key derived by HKDF from each
configured key, so the keys keep the Fernet format they always had. Values
written before it with Fernet (AES-128-CBC + HMAC-SHA256, ``enc1:``) still read,
and ``rotate-keys`` re-writes them. GCM is chosen because the filing in progress
is encrypted again at every step of every dialog: Fernet cost about 25 µs for
each such write and GCM about 3 µs. Its nonce is 96 random bits, so one key
should seal at most 2³² values (NIST SP 800-38D, 8.3); at about three per
update that is over a billion updates, centuries of a bureau's traffic, and
rotating the key starts the count again.
Lookups that need equality (the same petitioner's phone or ID number, for
repeat detection) use an HMAC of the normalised value, never the value.

The cipher is configured once per process, before the database is used
(:func:`configure`), because SQLAlchemy column types are built at import time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

#: Marks an encrypted value, so a database written before encryption still reads:
#: AES-256-GCM, then the base64 of key id (4 bytes) ‖ nonce (12) ‖ ciphertext ‖ tag (16).
PREFIX = "enc2:"
#: A value written with Fernet, before AES-GCM: read, never written.
FERNET_PREFIX = "enc1:"
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_TAG_BYTES = 16
#: Any version's mark: a value marked by a version this one does not know is refused, never passed on as plain.
_MARKED = re.compile(r"enc\d+:")


class DataKeyError(ValueError):
    """A data key is missing or malformed, or data was written with a key not configured."""


def _gcm_key(key: bytes) -> tuple[bytes, AESGCM]:
    """The AES-256-GCM key derived from one configured key, and its public id."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"petition at-rest aes-256-gcm").derive(key)
    key_id = hashlib.sha256(b"petition key id" + derived).digest()[:_KEY_ID_BYTES]
    return key_id, AESGCM(derived)


class _RandomPool:
    """Random bytes from the operating system, drawn 4 KiB at a time.

    ``os.urandom`` lets go of the GIL; while the database's thread and the
    query-code thread want it, getting it back cost the event loop ~1 ms a call
    here, against 0.5 µs alone. Each byte is handed out once (under a lock), and
    a forked child starts with an empty pool, so nonces drawn from it are as
    random and as unique as ``os.urandom``'s.
    """

    def __init__(self, chunk: int = 4096) -> None:
        self._chunk = chunk
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._empty)

    def _empty(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0

    def take(self, n: int = _NONCE_BYTES) -> bytes:
        with self._lock:
            if self._at + n > len(self._buffer):
                self._buffer, self._at = os.urandom(max(self._chunk, n)), 0
            buffer, start = self._buffer, self._at
            self._at += n
        return buffer[start:start + n]


class _Cipher:
    def __init__(self) -> None:
        self._nonces = _RandomPool()
        self.fernet: MultiFernet | None = None
        #: Newest first: (key id, cipher); the first one encrypts.
        self.gcm: list[tuple[bytes, AESGCM]] = []
        self.hash_key: bytes = b""

    def configure(self, keys: list[str]) -> None:
        if not keys:
            raise DataKeyError("no data key")
        try:
            fernets = [Fernet(k.strip().encode()) for k in keys]
        except (ValueError, TypeError) as exc:
            raise DataKeyError("a data key is not a valid Fernet key (32 url-safe base64 bytes)") from exc
        self.fernet = MultiFernet(fernets)
        raw = [base64.urlsafe_b64decode(k.strip()) for k in keys]
        self.gcm = [_gcm_key(key) for key in raw]
        # The lookup hash key is derived from the newest key; rotate-keys recomputes the hashes.
        self.hash_key = hmac.new(raw[0], b"petition lookup hash", hashlib.sha256).digest()

    def encrypt(self, text: str) -> str:
        if not self.gcm:
            raise RuntimeError("storage.crypto.configure() was not called")
        key_id, cipher = self.gcm[0]
        nonce = self._nonces.take()
        sealed = key_id + nonce + cipher.encrypt(nonce, text.encode(), None)
        return PREFIX + base64.b64encode(sealed).decode()

    def decrypt(self, stored: str) -> str:
        if stored.startswith(PREFIX):
            return self._open(stored[len(PREFIX):])
        if not stored.startswith(FERNET_PREFIX):
            if _MARKED.match(stored):
                raise DataKeyError(f"data sealed by a newer version ({stored.split(':', 1)[0]}:) of the bot")
            return stored  # written before encryption was on
        if self.fernet is None:
            raise RuntimeError("storage.crypto.configure() was not called")
        try:
            return self.fernet.decrypt(stored[len(FERNET_PREFIX):].encode()).decode()
        except InvalidToken as exc:
            raise DataKeyError("data encrypted with a key that is not configured (PETITION_DATA_KEYS)") from exc

    def _open(self, body: str) -> str:
        if not self.gcm:
            raise RuntimeError("storage.crypto.configure() was not called")
        try:
            sealed = base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise DataKeyError("encrypted data is damaged (not base64)") from exc
        if len(sealed) < _KEY_ID_BYTES + _NONCE_BYTES + _TAG_BYTES:
            raise DataKeyError("encrypted data is damaged (too short)")
        key_id, nonce = sealed[:_KEY_ID_BYTES], sealed[_KEY_ID_BYTES:_KEY_ID_BYTES + _NONCE_BYTES]
        for known, cipher in self.gcm:
            if known == key_id:
                try:
                    return cipher.decrypt(nonce, sealed[_KEY_ID_BYTES + _NONCE_BYTES:], None).decode()
                except InvalidTag as exc:
                    raise DataKeyError("encrypted data is damaged (it fails its authentication tag)") from exc
        raise DataKeyError("data encrypted with a key that is not configured (PETITION_DATA_KEYS)")


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


def _dumps(value: dict[str, Any]) -> str:
    """JSON text of a document. orjson takes a fifth of ``json.dumps``' time for
    a filing in progress, which is written at every step; what it refuses (an
    integer beyond 64 bits) goes through ``json``. Reading stays with ``json``,
    which reads both exactly (orjson would read such an integer as a float)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False)


class EncryptedJSON(TypeDecorator[dict[str, Any]]):
    """A JSON document stored encrypted (the filing in progress holds personal data)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: dict[str, Any] | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if not value:  # an empty document holds nothing to protect; reading it back costs no decryption
            return "{}"
        return CIPHER.encrypt(_dumps(value))

    def process_result_value(self, value: str | None, dialect: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        loaded: dict[str, Any] = json.loads(CIPHER.decrypt(value))
        return loaded
