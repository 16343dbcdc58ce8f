"""The bureau configuration: who the bureau is, its units, categories and time limits.

One TOML file per deployment (reference: ``docs/bureau-config.md``). The packaged
default is ``dialogs/dongguan.toml``. Pure: stdlib ``tomllib`` and pydantic only,
so the dialog engine, the state machine and the staff side can all share it.

Every model is frozen: the configuration is loaded once at start-up and read on
every update, never changed while the bot runs.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import tomllib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_MAX_LENGTHS",
    "Bureau",
    "BureauConfig",
    "BureauConfigError",
    "Category",
    "EmergencyWords",
    "Intake",
    "Reminders",
    "Subcategory",
    "TimeLimits",
    "Unit",
    "load_bureau_config",
    "parse_bureau_config",
]

DEFAULT_CONFIG_FILE = "dongguan.toml"

# Codes travel in Telegram callback data (64 bytes at most), so keep them short
# and free of separators the keyboards may use.
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]

T = TypeVar("T")

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class _Problem(ValueError):
    """A cross-field problem that knows where it is, relative to the model raising it.

    Pydantic reports model-level errors at the model's own location; the loader
    appends ``loc`` so the message can say ``units[4].code`` instead of ``units``.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _first_duplicate(codes: Sequence[str]) -> tuple[int, int] | None:
    """(index of the first use, index of the repeat) of the first repeated code."""
    seen: dict[str, int] = {}
    for index, code in enumerate(codes):
        if code in seen:
            return seen[code], index
        seen[code] = index
    return None


class Bureau(BaseModel):
    """The petition bureau itself: shown by /help (art. 18) and used in tracking numbers."""

    model_config = _FROZEN

    # Tracking-number prefix: 2-4 capitals without I and O, which the tracking
    # alphabet leaves out (dialogs/tracking.py) so its check symbol covers them.
    code: Annotated[str, StringConstraints(pattern=r"^[A-HJ-NP-Z]{2,4}$")]
    name_zh: Text
    name_en: Text
    address_zh: Text
    address_en: Text
    hours_zh: Text
    hours_en: Text
    phone: Text
    website: str = ""


class Unit(BaseModel):
    """A handling unit: a place the citizen can pick (问题属地) and/or a routing target."""

    model_config = _FROZEN

    code: Code
    name_zh: Text
    name_en: Text
    # district/county: for cities that have them (Dongguan has none; see the
    # Foshan example in docs/examples/).
    kind: Literal["subdistrict", "town", "park", "district", "county", "department", "city"]
    # Only enabled units are offered to the citizen; disabled ones stay valid
    # routing targets for staff (``BureauConfig.unit`` still finds them).
    enabled: bool = True
    chat_id: int | None = None
    topic_id: int | None = None
    aliases: list[Text] = []

    @model_validator(mode="after")
    def _topic_needs_chat(self) -> Unit:
        # A forum topic id means nothing without the group it belongs to.
        if self.topic_id is not None and self.chat_id is None:
            raise _Problem(("topic_id",), "topic_id is set but chat_id is not")
        return self


class Subcategory(BaseModel):
    model_config = _FROZEN

    code: Code
    name_zh: Text
    name_en: Text
    aliases: list[Text] = []


class Category(BaseModel):
    """A first-level content category (内容分类), with its second level."""

    model_config = _FROZEN

    code: Code
    name_zh: Text
    name_en: Text
    aliases: list[Text] = []
    subcategories: list[Subcategory] = []
    # Not a decision: a hint for the dialog to ask the litigation screening
    # question (政法, art. 22 ¶2) or point to the discipline route (纪检监察, art. 30).
    route_hint: Literal["none", "litigation", "discipline"] = "none"

    @model_validator(mode="after")
    def _unique_subcategories(self) -> Category:
        duplicate = _first_duplicate([s.code for s in self.subcategories])
        if duplicate is not None:
            first, repeat = duplicate
            code = self.subcategories[repeat].code
            raise _Problem(
                ("subcategories", repeat, "code"),
                f"duplicate subcategory code {code!r} (first used at subcategories[{first}])",
            )
        return self


class TimeLimits(BaseModel):
    """Statutory clocks of the 信访工作条例 (2022), in days; see docs/bureau-config.md."""

    model_config = _FROZEN

    route_days: PositiveInt = 15  # art. 22 ¶1
    acceptance_days: PositiveInt = 15  # art. 23
    objection_working_days: PositiveInt = 5  # art. 23 ¶3: always working days
    #: A unit's objection after its window: "refuse" (the default: the citizen's
    #: case is not sent back and forth late) or "allow".
    late_objection: Literal["refuse", "allow"] = "refuse"
    handling_days: PositiveInt = 60  # art. 34
    max_extension_days: Annotated[int, Field(gt=0, le=30)] = 30  # art. 34: at most 30
    ask_review_days: PositiveInt = 30  # art. 35
    review_days: PositiveInt = 30  # art. 35
    ask_rereview_days: PositiveInt = 30  # art. 36
    rereview_days: PositiveInt = 30  # art. 36
    day_counting: Literal["calendar", "working"] = "calendar"
    holiday_rolls_forward: bool = True


class Reminders(BaseModel):
    """When staff are reminded before a deadline, and whether they are alerted after it."""

    model_config = _FROZEN

    fractions: list[Annotated[float, Field(gt=0, lt=1)]] = [0.6667]
    days_before: list[PositiveInt] = [2]
    overdue_alert: bool = True


# Keys are the intake slots the dialog asks for. The 4000 ceiling keeps any one
# answer inside a single Telegram message (4096 characters).
DEFAULT_MAX_LENGTHS: dict[str, int] = {
    "title": 60,
    "request": 1000,
    "facts": 3000,
    "reasons": 2000,
    "occurred": 100,
    "accused": 200,
    "name": 50,
    "address": 200,
    "free": 1000,
}


class Intake(BaseModel):
    model_config = _FROZEN

    max_attachments: Annotated[int, Field(ge=1, le=50)] = 10
    # The Bot API's getFile refuses files over 20 MB, so a larger limit could
    # never be honoured.
    max_attachment_mb: Annotated[int, Field(ge=1, le=20)] = 20
    id_number_required_for: list[Literal["suggestion", "report", "grievance"]] = ["grievance"]
    anonymous_suggestions: bool = False
    max_lengths: dict[str, Annotated[int, Field(ge=1, le=4000)]] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_LENGTHS)
    )

    @field_validator("max_lengths", mode="after")
    @classmethod
    def _merge_max_lengths(cls, value: dict[str, int]) -> dict[str, int]:
        # A file that sets only ``title`` keeps the other defaults; an unknown key
        # is almost always a typo that would otherwise be ignored silently.
        for key in value:
            if key not in DEFAULT_MAX_LENGTHS:
                known = ", ".join(DEFAULT_MAX_LENGTHS)
                raise _Problem((key,), f"unknown field {key!r} (known: {known})")
        return {**DEFAULT_MAX_LENGTHS, **value}


_EMERGENCY_ZH = [
    "火灾", "着火", "失火", "救命", "打人", "杀人", "有人受伤", "受伤了",
    "抢劫", "绑架", "车祸", "交通事故", "跳楼", "自杀", "爆炸", "煤气泄漏",
]  # fmt: skip
_EMERGENCY_EN = [
    "fire", "help me", "someone is hurt", "injured", "bleeding", "attack", "robbery",
    "kidnap", "car accident", "traffic accident", "suicide", "explosion", "gas leak",
]  # fmt: skip


@functools.lru_cache(maxsize=8)
def _emergency_pattern(zh: tuple[str, ...], en: tuple[str, ...]) -> re.Pattern[str] | None:
    """One compiled alternation per word list; group ``w<i>`` is word ``i`` of zh + en.

    Chinese has no word boundaries, so zh words match as substrings. English
    words must not touch another Latin letter or digit on either side: "fire"
    must not match "fired". (Unlike ``\\b`` this still finds "fire" in
    "家里有fire", where a Chinese character counts as a word character.)
    """
    parts = [f"(?P<w{i}>{re.escape(word)})" for i, word in enumerate(zh)]
    for j, word in enumerate(en, start=len(zh)):
        # Any run of whitespace between the words of a phrase ("help  me").
        phrase = r"\s+".join(re.escape(piece) for piece in word.split())
        parts.append(rf"(?P<w{j}>(?<![A-Za-z0-9]){phrase}(?![A-Za-z0-9]))")
    if not parts:
        return None
    return re.compile("|".join(parts), re.IGNORECASE)


class EmergencyWords(BaseModel):
    """Words that make the bot tell the citizen to call 110/119/120/122 at once (§9)."""

    model_config = _FROZEN

    zh: list[Text] = Field(default_factory=lambda: list(_EMERGENCY_ZH))
    en: list[Text] = Field(default_factory=lambda: list(_EMERGENCY_EN))

    def match(self, text: str) -> str | None:
        """The configured word found earliest in ``text``, or None."""
        # lru_cache rather than a cached_property: frozen models have no writable
        # __dict__ slot for it, and equal word lists share one compiled pattern.
        pattern = _emergency_pattern(tuple(self.zh), tuple(self.en))
        if pattern is None:
            return None
        found = pattern.search(text)
        if found is None or found.lastgroup is None:
            return None
        words = [*self.zh, *self.en]
        return words[int(found.lastgroup[1:])]


# Stripped from a unit query so "虎门街道" or "Humen Subdistrict" still find 虎门镇.
_UNIT_SUFFIXES = (
    "街道", "街", "镇", "区", "县", "subdistrict", "street", "town", "district", "county",
)  # fmt: skip
# Ignored on both sides of a search: "chang an", "Chang'an" and "changan" are one.
_SEARCH_NOISE = re.compile(r"[\s'’`·\-]+")


def _normalize(text: str) -> str:
    return _SEARCH_NOISE.sub("", text).casefold()


def _query_forms(query: str, suffixes: Iterable[str] = ()) -> list[str]:
    """The normalized query, plus the query without one trailing suffix."""
    base = _normalize(query)
    forms = [base] if base else []
    for suffix in suffixes:
        if base.endswith(suffix) and len(base) > len(suffix):
            forms.append(base[: -len(suffix)])
    return forms


def _keys(name_zh: str, name_en: str, aliases: Iterable[str]) -> tuple[str, ...]:
    return tuple(_normalize(text) for text in (name_zh, name_en, *aliases))


def _hit(forms: Sequence[str], keys: Sequence[str]) -> bool:
    return any(form in key for form in forms for key in keys)


@dataclass(frozen=True)
class _Lookups:
    units_by_code: dict[str, Unit]
    categories_by_code: dict[str, Category]
    enabled_units: list[Unit]
    unit_keys: list[tuple[Unit, tuple[str, ...]]]
    category_keys: list[tuple[Category, tuple[str, ...], tuple[str, ...]]]
    #: Values computed from the configuration (:meth:`BureauConfig.derived`).
    derived: dict[Hashable, Any] = field(default_factory=dict)


class BureauConfig(BaseModel):
    """The whole file. Build it with :func:`load_bureau_config`."""

    model_config = _FROZEN

    bureau: Bureau
    units: list[Unit]
    categories: list[Category]
    time_limits: TimeLimits = Field(default_factory=TimeLimits)
    reminders: Reminders = Field(default_factory=Reminders)
    intake: Intake = Field(default_factory=Intake)
    emergency_words: EmergencyWords = Field(default_factory=EmergencyWords)
    rating_window_days: PositiveInt = 30

    @model_validator(mode="after")
    def _check_units_and_categories(self) -> BureauConfig:
        duplicate = _first_duplicate([u.code for u in self.units])
        if duplicate is not None:
            first, repeat = duplicate
            raise _Problem(
                ("units", repeat, "code"),
                f"duplicate unit code {self.units[repeat].code!r} (first used at units[{first}])",
            )
        duplicate = _first_duplicate([c.code for c in self.categories])
        if duplicate is not None:
            first, repeat = duplicate
            code = self.categories[repeat].code
            raise _Problem(
                ("categories", repeat, "code"),
                f"duplicate category code {code!r} (first used at categories[{first}])",
            )
        if not self.categories:
            raise _Problem(("categories",), "at least one category is needed")
        # The "not sure / city level" choice: the dialog offers it on every
        # location question, so there must be exactly one and the citizen must see it.
        cities = [i for i, u in enumerate(self.units) if u.kind == "city"]
        if not cities:
            raise _Problem(("units",), 'exactly one unit of kind "city" is needed, found none')
        if len(cities) > 1:
            raise _Problem(
                ("units", cities[1], "kind"),
                f'exactly one unit of kind "city" is needed, found {len(cities)} '
                f"(units[{cities[0]}] and units[{cities[1]}])",
            )
        if not self.units[cities[0]].enabled:
            raise _Problem(
                ("units", cities[0], "enabled"), 'the unit of kind "city" must be enabled'
            )
        if not any(u.enabled and u.kind != "city" for u in self.units):
            raise _Problem(("units",), "at least one enabled unit besides the city unit is needed")
        return self

    @functools.cached_property
    def _lookups(self) -> _Lookups:
        """Lookups built once: they run on every Telegram update. Kept in the
        instance's ``__dict__`` (a plain attribute read; a private attribute of a
        pydantic model costs ~3 µs a read). The model is frozen; a copy made with
        ``model_copy`` builds its own (see below)."""
        enabled = [u for u in self.units if u.enabled]
        return _Lookups(
            units_by_code={u.code: u for u in self.units},
            categories_by_code={c.code: c for c in self.categories},
            enabled_units=enabled,
            unit_keys=[(u, _keys(u.name_zh, u.name_en, u.aliases)) for u in enabled],
            category_keys=[
                (
                    c,
                    _keys(c.name_zh, c.name_en, c.aliases),
                    tuple(k for s in c.subcategories for k in _keys(s.name_zh, s.name_en, s.aliases)),
                )
                for c in self.categories
            ],
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("_lookups", None)  # copied with the fields: may describe other ones
        return copy

    def derived(self, key: Hashable, build: Callable[[], T]) -> T:
        """A value computed from this configuration once and kept (the model is frozen)."""
        try:
            value: T = self._lookups.derived[key]
        except KeyError:
            value = self._lookups.derived[key] = build()
        return value

    def enabled_units(self) -> list[Unit]:
        """Units the citizen may pick, in file order (the city unit included)."""
        return list(self._lookups.enabled_units)

    def unit(self, code: str) -> Unit | None:
        """Any unit by code, enabled or not (staff route to disabled departments)."""
        return self._lookups.units_by_code.get(code)

    def city_unit(self) -> Unit:
        """The single "not sure / city level" unit."""
        return next(u for u in self._lookups.enabled_units if u.kind == "city")

    def category(self, code: str) -> Category | None:
        return self._lookups.categories_by_code.get(code)

    def search_units(self, query: str) -> list[Unit]:
        """Enabled units whose zh/en name or alias contains the query, in file order.

        Case, spaces and apostrophes are ignored; a trailing 镇/街道/街/区/县 (or
        town/subdistrict/street/district/county) on the query is optional.
        """
        forms = _query_forms(query, _UNIT_SUFFIXES)
        if not forms:
            return []
        return [unit for unit, keys in self._lookups.unit_keys if _hit(forms, keys)]

    def search_categories(self, query: str) -> list[Category]:
        """Categories matching by own name or alias first, then by a subcategory's."""
        forms = _query_forms(query)
        if not forms:
            return []
        direct = [c for c, own, _ in self._lookups.category_keys if _hit(forms, own)]
        via_sub = [
            c for c, own, sub in self._lookups.category_keys if not _hit(forms, own) and _hit(forms, sub)
        ]
        return direct + via_sub


class BureauConfigError(Exception):
    """A configuration file cannot be used. ``str()`` is one line for the log.

    Example: ``bureau config /etc/bot/dg.toml: units[4].code: duplicate unit code '441900003' …``
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{key}: " if key else ""
        # One line, whatever the parts contain, so it fits a single log record.
        line = f"bureau config {source}: {where}{problem}"
        super().__init__(" ".join(line.split()))


def load_bureau_config(path: str | Path | None = None) -> BureauConfig:
    """Read and validate a bureau file; None loads the packaged Dongguan default."""
    if path is None:
        resource = importlib.resources.files("dialogs") / DEFAULT_CONFIG_FILE
        source, read = str(resource), resource.read_bytes
    else:
        file = Path(path)
        source, read = str(file), file.read_bytes
    try:
        raw = read()
    except FileNotFoundError:
        raise BureauConfigError(source, "", "file not found") from None
    except OSError as exc:
        raise BureauConfigError(source, "", f"cannot read file: {exc.strerror or exc}") from None
    try:
        # utf-8-sig: editors on Windows often save a byte-order mark.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (bad byte at offset {exc.start}); save the file as UTF-8"
        raise BureauConfigError(source, "", problem) from None
    return parse_bureau_config(text, source=source)


def parse_bureau_config(text: str, source: str = "<string>") -> BureauConfig:
    """Validate TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts "(at line N, column M)" in the message.
        raise BureauConfigError(source, "", f"TOML syntax error: {exc}") from None
    try:
        return BureauConfig.model_validate(data)
    except ValidationError as exc:
        raise _convert(exc, data, source) from None


def _convert(exc: ValidationError, data: dict[str, Any], source: str) -> BureauConfigError:
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, _Problem):
        loc += cause.loc
        problem = str(cause)
    elif first["type"] == "missing":
        problem = "required key is missing"
    elif first["type"] == "extra_forbidden":
        problem = "unknown key (a typo?)"
    else:
        problem = first["msg"]
        value = first.get("input")
        if not isinstance(value, dict | list):
            shown = repr(value)
            problem += f" (got {shown[:40] + '…' if len(shown) > 40 else shown})"
    if loc and loc[-1] != "code":
        problem += _which_item(loc, data)
    if len(errors) > 1:
        more = len(errors) - 1
        problem += f" (and {more} more error{'s' if more > 1 else ''})"
    return BureauConfigError(source, _format_loc(loc), problem)


def _format_loc(loc: tuple[str | int, ...]) -> str:
    """("units", 3, "code") -> "units[3].code"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _which_item(loc: tuple[str | int, ...], data: Any) -> str:
    """Name the code of the innermost list item on the path: indexes are hard to count."""
    found = ""
    node = data
    path: list[str | int] = []
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        path.append(part)
        if isinstance(part, int) and isinstance(node, dict) and isinstance(node.get("code"), str):
            found = f" ({_format_loc(tuple(path))} has code {node['code']!r})"
    return found
