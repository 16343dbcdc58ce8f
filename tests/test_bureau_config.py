"""The bureau configuration: the shipped Dongguan default, the loader and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dialogs.bureau import (
    DEFAULT_MAX_LENGTHS,
    BureauConfig,
    BureauConfigError,
    EmergencyWords,
    load_bureau_config,
    parse_bureau_config,
)

REPO = Path(__file__).resolve().parents[1]
FOSHAN = REPO / "docs" / "examples" / "bureau-example-foshan.toml"

SUBDISTRICTS = ["441900003", "441900004", "441900005", "441900006"]
TOWNS = [f"441900{n}" for n in range(101, 130) if n != 120]


@pytest.fixture(scope="module")
def dg() -> BureauConfig:
    return load_bureau_config()


# --- the Dongguan default -------------------------------------------------------


def test_default_loads_as_dongguan(dg: BureauConfig) -> None:
    assert dg.bureau.code == "DG"
    assert dg.bureau.name_zh == "东莞市信访局"
    assert dg.bureau.name_en == "Dongguan Petition Bureau"


def test_enabled_units_are_33_places_then_city(dg: BureauConfig) -> None:
    enabled = dg.enabled_units()
    assert len(enabled) == 34
    places = [u for u in enabled if u.kind != "city"]
    assert len(places) == 33
    # Order of the citizen's list: 4 subdistricts, 28 towns in code order, 松山湖, CITY.
    assert [u.code for u in enabled] == [*SUBDISTRICTS, *TOWNS, "441900401", "CITY"]
    assert len(TOWNS) == 28
    assert [u.kind for u in enabled[:4]] == ["subdistrict"] * 4
    assert {u.kind for u in enabled[4:32]} == {"town"}
    assert enabled[32].kind == "park"
    assert enabled[-1] == dg.city_unit()
    assert dg.city_unit().code == "CITY"


def test_unconfirmed_parks_and_departments_are_disabled_but_routable(dg: BureauConfig) -> None:
    for code in ("441900402", "441900403", "441900404"):
        unit = dg.unit(code)
        assert unit is not None and unit.kind == "park" and not unit.enabled
    departments = [u for u in dg.units if u.kind == "department"]
    assert len(departments) >= 10
    assert not any(u.enabled for u in departments)
    assert dg.unit("D001") is not None
    assert dg.unit("441900120") is None
    assert dg.unit("nope") is None


def test_every_unit_and_category_has_both_names(dg: BureauConfig) -> None:
    named = [*dg.units, *dg.categories, *(s for c in dg.categories for s in c.subcategories)]
    for item in named:
        assert item.name_zh.strip() and item.name_en.strip(), item.code


def test_categories(dg: BureauConfig) -> None:
    codes = [c.code for c in dg.categories]
    assert codes == [f"{n:02d}" for n in range(1, 20)] + ["99"]
    assert dg.category("15") is not None and dg.category("15").route_hint == "litigation"
    assert dg.category("16") is not None and dg.category("16").route_hint == "discipline"
    assert {c.code for c in dg.categories if c.route_hint != "none"} == {"15", "16"}
    economy = dg.category("12")
    assert economy is not None and "企业改制" in [s.name_zh for s in economy.subcategories]
    for category in dg.categories:
        for sub in category.subcategories:
            assert sub.code.startswith(category.code)
    assert dg.category("00") is None


def test_time_limits_and_other_defaults(dg: BureauConfig) -> None:
    limits = dg.time_limits
    assert (limits.route_days, limits.acceptance_days, limits.objection_working_days) == (15, 15, 5)
    assert (limits.handling_days, limits.max_extension_days) == (60, 30)
    assert limits.day_counting == "calendar" and limits.holiday_rolls_forward
    assert dg.reminders.fractions == [0.6667] and dg.reminders.days_before == [2]
    assert dg.intake.max_attachment_mb == 20
    assert dg.intake.max_lengths == DEFAULT_MAX_LENGTHS
    assert dg.intake.id_number_required_for == ["grievance"]
    assert dg.rating_window_days == 30
    # The file writes the defaults out in full: loading it equals the built-in defaults.
    assert dg.emergency_words == EmergencyWords()


# --- search ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("东城", ["东城街道"]),
        ("东城街", ["东城街道"]),
        ("东城区", ["东城街道"]),
        ("humen", ["虎门镇"]),
        ("Humen Town", ["虎门镇"]),
        ("虎门街道", ["虎门镇"]),
        ("changan", ["长安镇"]),
        ("松山湖", ["松山湖"]),
        ("石", ["石碣镇", "石龙镇", "石排镇", "企石镇"]),
    ],
)
def test_search_units(dg: BureauConfig, query: str, expected: list[str]) -> None:
    assert [u.name_zh for u in dg.search_units(query)] == expected


def test_search_units_skips_disabled_and_empty_queries(dg: BureauConfig) -> None:
    assert dg.search_units("东莞港") == []
    assert dg.search_units("公安局") == []
    assert dg.search_units("  ") == []


def test_search_categories(dg: BureauConfig) -> None:
    assert [c.name_zh for c in dg.search_categories("国土资源")] == ["自然资源"]
    assert [c.name_zh for c in dg.search_categories("卫生计生")] == ["卫生健康"]
    assert [c.name_zh for c in dg.search_categories("环境保护")] == ["生态环境"]
    assert [c.name_zh for c in dg.search_categories("教育文体")] == ["教育", "文体旅游"]
    assert [c.name_zh for c in dg.search_categories("民政")] == ["民政与应急"]
    assert [c.name_zh for c in dg.search_categories("transport")] == ["交通运输"]
    # A subcategory name finds its category.
    assert [c.name_zh for c in dg.search_categories("企业改制")] == ["经济管理"]
    assert [c.name_zh for c in dg.search_categories("欠薪")] == ["劳动和社会保障"]
    assert dg.search_categories("") == []


# --- emergency words ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("家里着火了", "着火"),
        ("I was fired", None),
        ("there is a fire", "fire"),
        ("FIRE! Help", "fire"),
        ("please HELP  me now", "help me"),
        ("家里有fire", "fire"),
        ("我想反映小区停车位的问题", None),
        ("someone was injured in a car accident", "injured"),
        ("", None),
    ],
)
def test_emergency_match(dg: BureauConfig, text: str, expected: str | None) -> None:
    assert dg.emergency_words.match(text) == expected


def test_emergency_match_with_empty_lists() -> None:
    assert EmergencyWords(zh=[], en=[]).match("火灾 fire") is None


# --- the Foshan example ---------------------------------------------------------


def test_foshan_example_loads() -> None:
    fs = load_bureau_config(FOSHAN)
    assert fs.bureau.code == "FS"
    assert [u.kind for u in fs.enabled_units()] == ["district"] * 5 + ["city"]
    assert [u.name_zh for u in fs.search_units("顺德")] == ["顺德区"]
    assert fs.time_limits.day_counting == "working"
    # A partial [intake.max_lengths] keeps the other defaults.
    assert fs.intake.max_lengths == {**DEFAULT_MAX_LENGTHS, "facts": 2000}
    assert fs.emergency_words == EmergencyWords()


# --- errors ---------------------------------------------------------------------

MINIMAL = """
[bureau]
code = "XX"
name_zh = "某市信访局"
name_en = "Some Petition Bureau"
address_zh = "某地"
address_en = "Somewhere"
hours_zh = "工作日"
hours_en = "Working days"
phone = "12345"

[intake]
max_attachment_mb = 20

[[units]]
code = "U1"
name_zh = "甲镇"
name_en = "Jia Town"
kind = "town"

[[units]]
code = "U2"
name_zh = "乙镇"
name_en = "Yi Town"
kind = "town"

[[units]]
code = "CITY"
name_zh = "不清楚"
name_en = "Not sure"
kind = "city"

[[categories]]
code = "01"
name_zh = "城乡建设"
name_en = "Construction"
"""


def _error(tmp_path: Path, text: str, name: str = "bad.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BureauConfigError) as caught:
        load_bureau_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_minimal_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    config = load_bureau_config(str(path))
    assert [u.code for u in config.enabled_units()] == ["U1", "U2", "CITY"]
    assert config.time_limits.handling_days == 60


def test_duplicate_unit_code(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('code = "U2"', 'code = "U1"'))
    assert "units[1].code" in message
    assert "duplicate unit code 'U1'" in message


def test_missing_bureau_name(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('name_zh = "某市信访局"\n', ""))
    assert "bureau.name_zh" in message
    assert "missing" in message


def test_attachment_limit_above_telegram_maximum(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace("max_attachment_mb = 20", "max_attachment_mb = 50"))
    assert "intake.max_attachment_mb" in message
    assert "50" in message


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('phone = "12345"', "phone = "))
    assert "TOML syntax error" in message
    assert "line 10" in message  # MINIMAL starts with a blank line


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(BureauConfigError) as caught:
        load_bureau_config(path)
    assert str(caught.value) == f"bureau config {path}: file not found"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(BureauConfigError, match="cannot read file"):
        load_bureau_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gbk.toml"
    path.write_bytes(MINIMAL.encode("gbk"))
    with pytest.raises(BureauConfigError, match="not UTF-8"):
        load_bureau_config(path)


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(MINIMAL.encode("utf-8-sig"))
    assert load_bureau_config(path).bureau.code == "XX"


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ('kind = "city"', 'kind = "town"', "units", 'kind "city"'),
        ('code = "U2"', 'code = "U2"\nenabled = false', "", ""),  # still valid: U1 enabled
        ('code = "XX"', 'code = "xx"', "bureau.code", "pattern"),
        ('code = "XX"', 'code = "IO"', "bureau.code", "pattern"),  # not in the tracking alphabet
        ('name_en = "Yi Town"', 'name_en = "Yi Town"\ncolour = "red"', "units[1].colour", "unknown key"),
        ('name_en = "Yi Town"', 'name_en = ""', "units[1].name_en", "(units[1] has code 'U2')"),
        ("max_attachment_mb = 20", "max_attachment_mb = 20\n[intake.max_lengths]\ntitel = 5",
         "intake.max_lengths.titel", "unknown field 'titel'"),
        ('name_en = "Yi Town"', 'name_en = "Yi Town"\ntopic_id = 5', "units[1].topic_id", "chat_id"),
        ('name_en = "Construction"', 'name_en = "Construction"\nsubcategories = ['
         '{ code = "0101", name_zh = "a", name_en = "a" }, { code = "0101", name_zh = "b", name_en = "b" }]',
         "categories[0].subcategories[1].code", "duplicate subcategory code '0101'"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_key(
    tmp_path: Path, old: str, new: str, key: str, problem: str
) -> None:
    text = MINIMAL.replace(old, new, 1)
    if not key:
        parse_bureau_config(text)
        return
    message = _error(tmp_path, text)
    assert f": {key}: " in message
    assert problem in message


def test_two_city_units(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "town"', 'kind = "city"', 1)
    message = _error(tmp_path, text)
    assert "units[2].kind" in message and "found 2" in message


def test_disabled_city_unit(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('kind = "city"', 'kind = "city"\nenabled = false'))
    assert "units[2].enabled" in message


def test_no_enabled_place(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "town"', 'kind = "town"\nenabled = false')
    message = _error(tmp_path, text)
    assert ": units: at least one enabled unit" in message


def test_empty_category_list(tmp_path: Path) -> None:
    text = "categories = []\n" + MINIMAL.split("[[categories]]")[0]
    message = _error(tmp_path, text)
    assert ": categories: at least one category" in message


def test_further_errors_are_counted(tmp_path: Path) -> None:
    text = MINIMAL.replace('name_zh = "某市信访局"\n', "").replace('phone = "12345"\n', "")
    message = _error(tmp_path, text)
    assert "(and 1 more error)" in message


def test_time_limit_bounds() -> None:
    too_long = MINIMAL + "\n[time_limits]\nmax_extension_days = 31\n"
    with pytest.raises(BureauConfigError, match=r"time_limits\.max_extension_days: .*got 31"):
        parse_bureau_config(too_long, source="t.toml")
    text = MINIMAL.replace("[intake]", "[time_limits]\nhandling_days = 0\n\n[intake]")
    with pytest.raises(BureauConfigError, match=r"time_limits\.handling_days: .*greater than 0"):
        parse_bureau_config(text, source="t.toml")


def test_models_are_frozen(dg: BureauConfig) -> None:
    with pytest.raises(ValidationError):
        dg.bureau.code = "XX"  # type: ignore[misc]


def test_a_copy_with_other_categories_looks_up_its_own() -> None:
    bureau = load_bureau_config()
    first = bureau.categories[0]
    assert bureau.category(first.code) is first
    fewer = bureau.model_copy(update={"categories": bureau.categories[1:]})
    assert fewer.category(first.code) is None and bureau.category(first.code) is first
