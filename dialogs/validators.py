"""Validators for what a citizen types: pure functions that return a clean value
or raise :class:`~dialogs.errors.InputError` carrying a catalog key.

No aiogram and no database here, so every rule can be unit-tested directly.
"""

from __future__ import annotations

import datetime
import re
import unicodedata

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from stdnum.cn import ric

from dialogs.errors import InputError

__all__ = [
    "ACCEPT_NON_CN_MOBILE",
    "clean_text",
    "mask_id_number",
    "mask_phone",
    "normalize_phone",
    "validate_id_number",
]

# ---------------------------------------------------------------- phone numbers

#: Notices go out by SMS through a mainland gateway, so by default only mainland
#: (+86) mobiles are accepted; a Hong Kong, Macau, Taiwan or foreign mobile is
#: refused with ``error.phone.not_cn``.  Set to True to accept any valid mobile
#: number in the world (the citizen-protective reading, if the SMS gateway can
#: reach it).
ACCEPT_NON_CN_MOBILE = False

_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})

# Only digits and the usual separators.  Letters must be refused up front:
# libphonenumber reads them as a keypad ("139ABCD5678" -> 13922235678, valid)
# and parses "ext 5" as an extension.
_PHONE_CHARS = re.compile(r"[0-9+\-(). ]+")


def normalize_phone(text: str) -> str:
    """Return a mobile number in E.164 form, e.g. ``"+8613912345678"``.

    Accepted spellings (after NFKC, so full-width digits work): ``13912345678``,
    ``139 1234 5678``, ``139-1234-5678``, ``+86 139-1234-5678``,
    ``+8613912345678``, ``0086 13912345678`` (00 is the mainland international
    prefix) and ``86 13912345678`` / ``8613912345678`` without the plus: no
    mainland mobile begins with 86, so libphonenumber strips the country code
    only when what remains is a valid number; we accept its reading.

    Errors:
    ``error.phone.invalid`` -- not a number libphonenumber considers valid
    (``14012345678``, ``12345``, letters, empty);
    ``error.phone.not_mobile`` -- a valid Chinese number that is not a mobile
    (fixed line ``0769 2222 3333``, ``400`` numbers);
    ``error.phone.not_cn`` -- a valid number of another region
    (unless :data:`ACCEPT_NON_CN_MOBILE` and it is a mobile).
    """
    cleaned = unicodedata.normalize("NFKC", text).strip()
    if not _PHONE_CHARS.fullmatch(cleaned):
        raise InputError("error.phone.invalid")
    try:
        number = phonenumbers.parse(cleaned, "CN")
    except phonenumbers.NumberParseException:
        raise InputError("error.phone.invalid") from None
    if not phonenumbers.is_valid_number(number):
        raise InputError("error.phone.invalid")
    is_mobile = phonenumbers.number_type(number) in _MOBILE_TYPES
    if phonenumbers.region_code_for_number(number) != "CN":
        if not (ACCEPT_NON_CN_MOBILE and is_mobile):
            raise InputError("error.phone.not_cn")
    elif not is_mobile:
        raise InputError("error.phone.not_mobile")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def mask_phone(e164: str) -> str:
    """``"+8613912345678"`` -> ``"139****5678"``: the national number with the
    middle hidden, as Chinese services print it.  Takes a value returned by
    :func:`normalize_phone`; anything else is a programming error (ValueError).
    """
    try:
        national = str(phonenumbers.parse(e164, None).national_number)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not an E.164 number: {e164!r}") from exc
    if len(national) <= 7:  # short foreign numbers: keep only the last two
        return "*" * (len(national) - 2) + national[-2:]
    return national[:3] + "*" * (len(national) - 7) + national[-4:]


# --------------------------------------------------------- resident ID numbers

_ID_SEPARATORS = re.compile(r"[\s\-]+")
_ID_SHAPE = re.compile(r"[0-9]*[0-9X]")  # digits, optionally a final X


def validate_id_number(text: str) -> str:
    """Return an 18-character resident ID number (GB 11643), e.g.
    ``"11010519491231002X"``.  Spaces and dashes are ignored, full-width
    characters and a lowercase ``x`` are accepted.

    Checks run from the most specific hint to the least, so a citizen hears
    what is actually wrong: characters, then length, then the birth date, then
    the check character (a typo in the date digits would also break the check
    character, but "the birth date is not a real date" says where to look).

    Errors: ``error.id.characters``; ``error.id.old_format`` (15 digits: the
    first-generation card); ``error.id.length`` with ``length``;
    ``error.id.birth_date`` (digits 7-14 not a real date, or in the future);
    ``error.id.checksum``.

    Unlike ``stdnum.cn.ric.validate`` we do not look the first six digits up in
    stdnum's list of county codes: that list lags behind renamed and new
    counties, and refusing a real card would block the petition, while a
    mistyped digit is already caught by the check character.
    """
    number = _ID_SEPARATORS.sub("", unicodedata.normalize("NFKC", text)).upper()
    if number and not _ID_SHAPE.fullmatch(number):
        raise InputError("error.id.characters")
    if len(number) == 15:
        raise InputError("error.id.old_format")
    if len(number) != 18:
        raise InputError("error.id.length", length=len(number))
    try:
        birth_date = ric.get_birth_date(number)  # InvalidComponent if not a date
    except ValueError:  # stdnum's ValidationError subclasses ValueError
        raise InputError("error.id.birth_date") from None
    # Local date is fine: a day's slack cannot make a wrong date look right.
    if birth_date > datetime.date.today():
        raise InputError("error.id.birth_date")
    if number[-1] != ric.calc_check_digit(number):
        raise InputError("error.id.checksum")
    return number


def mask_id_number(s: str) -> str:
    """First 3 and last 2 characters visible, the rest ``*``
    (``"11010519491231002X"`` -> ``"110*************2X"``).  Strings of five
    characters or fewer are masked entirely, since nothing would be hidden.
    """
    if len(s) <= 5:
        return "*" * len(s)
    return s[:3] + "*" * (len(s) - 5) + s[-2:]


# ----------------------------------------------------------------- free text

# Invisible characters used to disguise text (split keywords, reverse the
# displayed order of a name or number): zero-width space/non-joiner/joiner,
# word joiner, BOM, and every Unicode Bidi_Control character.
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_INVISIBLE = re.compile(f"[{_ZERO_WIDTH}{_BIDI}]")

# A zero-width joiner between two emoji is part of one emoji (family, profession,
# rainbow flag); removing it would break the citizen's emoji into pieces.
_EMOJI = "\u2600-\u27bf\ufe0f\U0001f000-\U0001faff"
_EMOJI_ZWJ = re.compile(f"(?<=[{_EMOJI}])\u200d(?=[{_EMOJI}])")
_ZWJ_PLACEHOLDER = "\x00"  # a control character, so it cannot occur after cleaning

# C0/C1 control characters other than tab and newline: never typed on purpose,
# and PostgreSQL refuses NUL in text columns.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# More than two blank (or whitespace-only) lines in a row become two.
_BLANK_RUN = re.compile(r"\n(?:[^\S\n]*\n){3,}")


def clean_text(text: str, *, max_length: int, min_length: int = 1) -> str:
    """Return the citizen's text with invisible and control characters removed,
    line endings unified, surrounding whitespace stripped and runs of more than
    two blank lines collapsed to two.  Everything else, HTML-like text and emoji
    included, is kept exactly: escaping happens when rendering.

    Length is counted in code points after cleaning.

    Errors: ``error.text.empty``; ``error.text.too_short`` with ``minimum``;
    ``error.text.too_long`` with ``limit`` and ``length``.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _EMOJI_ZWJ.sub(_ZWJ_PLACEHOLDER, text)
    text = _INVISIBLE.sub("", text).replace(_ZWJ_PLACEHOLDER, "\u200d")
    text = _BLANK_RUN.sub("\n\n\n", text.strip())
    if not text:
        raise InputError("error.text.empty")
    if len(text) > max_length:
        raise InputError("error.text.too_long", limit=max_length, length=len(text))
    if len(text) < min_length:
        raise InputError("error.text.too_short", minimum=min_length)
    return text
