"""Tracking numbers and query codes (查询码) for the status lookup.

Tracking number format: ``<PREFIX>-<4 symbols>-<3 symbols + 1 check>``, e.g.
``DG-K7M3-Q8XZ``.

* PREFIX is the bureau code given by the caller (2-4 letters of the alphabet).
* The 7 symbols are drawn from :mod:`secrets`, not a counter, so numbers cannot
  be enumerated or used to infer how many petitions were filed; 32**7 (about
  3.4e10) possibilities make a collision in one bureau's lifetime unlikely
  (the database's unique constraint still decides).
* The last symbol is an ISO 7064 hybrid MOD 33,32 check character over
  PREFIX + the 7 symbols (``stdnum.iso7064.mod_37_36`` with our alphabet: that
  module works as MOD (M+1, M) for M = len(alphabet)).  Because 33 is odd, each
  step is a bijection, so every single mistyped symbol is caught.  Adjacent
  swaps of distinct symbols are caught 495 times in 496 (99.8 %): the misses
  are swaps of neighbouring alphabet symbols (e.g. "AB"/"BA") after one
  particular running state (exact count over all states; the test samples it).
* Alphabet: digits and capitals without 0/O and 1/I, which people confuse when
  reading a number aloud or from a screenshot.  Lowercase, spaces, dashes, dots
  and full-width characters are accepted on input.

A tracking number alone shows nothing: the lookup also needs the query code, a
separate secret of 10 symbols of which only a salted Argon2id hash is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw
from stdnum.iso7064 import mod_37_36

from dialogs.errors import InputError

__all__ = [
    "ALPHABET",
    "DUMMY_HASH",
    "QUERY_CODE_LENGTH",
    "burn_verify",
    "hash_query_code",
    "new_query_code",
    "new_tracking_number",
    "parse_tracking_number",
    "verify_query_code",
]

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_RANDOM_SYMBOLS = 7
_BODY_LENGTH = _RANDOM_SYMBOLS + 1  # plus the check symbol
QUERY_CODE_LENGTH = 10

_PREFIX = re.compile(f"[{ALPHABET[8:]}]{{2,4}}")  # the letters of the alphabet
# What people put between symbols: whitespace, ASCII and typographic dashes,
# dots and Chinese full stops / middle dots (NFKC has already folded full-width).
_SEPARATORS = re.compile(r"[\s\-.\u2010-\u2015\u2212\u00b7\u30fb\u3002]+")


def _normalize(text: str) -> str:
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", text)).upper()


def _check_prefix(prefix: str) -> None:
    # Configuration error, not citizen input: I and O are not in the alphabet,
    # so the check symbol could not cover them.
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"bureau prefix must be 2-4 letters from {ALPHABET[8:]}: {prefix!r}")


def _check_symbol(prefix: str, symbols: str) -> str:
    return mod_37_36.calc_check_digit(prefix + symbols, alphabet=ALPHABET)


def _random_symbols(count: int) -> str:
    """``count`` uniformly random symbols of the alphabet: five random bits each
    (32 symbols), from one read of the system's randomness instead of one per
    symbol (each read lets go of the GIL, which the event loop then waits for)."""
    return "".join(ALPHABET[byte & 31] for byte in secrets.token_bytes(count))


def _display(prefix: str, body: str) -> str:
    return f"{prefix}-{body[:4]}-{body[4:]}"


def new_tracking_number(prefix: str) -> str:
    """A fresh random tracking number such as ``DG-K7M3-Q8XZ``."""
    _check_prefix(prefix)
    symbols = _random_symbols(_RANDOM_SYMBOLS)
    return _display(prefix, symbols + _check_symbol(prefix, symbols))


def parse_tracking_number(text: str, prefix: str) -> str:
    """Return the canonical form of a tracking number the citizen typed, with
    or without the prefix (``dg k7m3 q8xz``, ``K7M3Q8XZ`` -> ``DG-K7M3-Q8XZ``).

    Errors: ``error.tracking.format`` -- wrong length, another prefix, or a
    symbol outside the alphabet (0, O, 1 and I are never used);
    ``error.tracking.check`` -- the check symbol does not match (a typo).
    """
    _check_prefix(prefix)
    body = _normalize(text)
    if len(body) == len(prefix) + _BODY_LENGTH and body.startswith(prefix):
        body = body[len(prefix) :]
    if len(body) != _BODY_LENGTH or any(c not in ALPHABET for c in body):
        raise InputError("error.tracking.format")
    if body[-1] != _check_symbol(prefix, body[:-1]):
        raise InputError("error.tracking.check")
    return _display(prefix, body)


# ----------------------------------------------------------------- query codes

# Argon2id (RFC 9106), 4 MiB of memory and two passes: about 4 ms per check
# here.  Ten random symbols are 50 bits, so this only has to slow offline
# guessing of a leaked table; online guessing must be stopped by rate limiting
# the lookup.  (Until 2026-11 codes were hashed with scrypt at the same 4 MiB,
# which cost 11 ms a check here, three times the CPU for the same memory: under
# a surge of filings those hashes took most of a core.  Hashes stored then
# still verify, with the parameters they carry.)
_ARGON2_TIME = 2
_ARGON2_MEMORY_KIB = 4096
_ARGON2_LANES = 1
_SALT_BYTES = 16
_HASH_BYTES = 32


def new_query_code() -> str:
    """A fresh 10-symbol secret query code from the tracking alphabet."""
    return _random_symbols(QUERY_CODE_LENGTH)


def _argon2id(code: str, salt: bytes, time_cost: int, memory_kib: int, lanes: int, length: int) -> bytes:
    # Normalised like tracking numbers, so "k7m3 q8xz 2a" matches "K7M3Q8XZ2A".
    try:
        return hash_secret_raw(_normalize(code).encode(), salt, time_cost, memory_kib, lanes, length, Type.ID)
    except HashingError as exc:  # parameters out of range: a damaged stored hash
        raise ValueError(f"bad argon2id parameters: {exc}") from exc


def _scrypt(code: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(_normalize(code).encode(), salt=salt, n=n, r=r, p=p, dklen=length)


#: Hash schemes by name: the three numbers stored after the name are their costs.
_SCHEMES = {"argon2id": _argon2id, "scrypt": _scrypt}


def hash_query_code(code: str) -> str:
    """Salted Argon2id hash, stored as ``argon2id$t$m$p$salt_hex$hash_hex`` so the
    parameters (or the scheme) can change later without breaking stored hashes."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _argon2id(code, salt, _ARGON2_TIME, _ARGON2_MEMORY_KIB, _ARGON2_LANES, _HASH_BYTES)
    return f"argon2id${_ARGON2_TIME}${_ARGON2_MEMORY_KIB}${_ARGON2_LANES}${salt.hex()}${digest.hex()}"


def verify_query_code(code: str, stored: str) -> bool:
    """True if ``code`` matches a hash made by :func:`hash_query_code` (or, before
    it, with ``scrypt$n$r$p$…``). A malformed ``stored`` value is a data error and
    raises ValueError."""
    scheme, a, b, c, salt_hex, hash_hex = stored.split("$")
    derive = _SCHEMES.get(scheme)
    if derive is None:
        raise ValueError(f"unknown hash scheme {scheme!r}")
    expected = bytes.fromhex(hash_hex)
    actual = derive(code, bytes.fromhex(salt_hex), int(a), int(b), int(c), len(expected))
    return hmac.compare_digest(actual, expected)


#: Hash of a throw-away code, with the current parameters (a test keeps them in
#: step).  Precomputed so importing this module costs nothing.
DUMMY_HASH = (
    "argon2id$2$4096$1$89301e2078fc7566bc12b8bafe4f457c$"
    "fb08c75d559f018ad6e87ccae22997fbe88870b9af22d7515582980c8103be0e"
)


def burn_verify(code: str) -> None:
    """Spend the time of one verification against :data:`DUMMY_HASH`.

    Call it when the tracking number is unknown, so that answer takes as long
    as a wrong query code and timing does not reveal which numbers exist.
    (A wrong code for a case filed before Argon2id, whose hash is scrypt, takes
    some 7 ms longer here: within the jitter of a Telegram round trip, and
    the lookup's failures are rate limited.)
    """
    verify_query_code(code, DUMMY_HASH)
