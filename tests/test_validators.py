from __future__ import annotations

import datetime

import pytest
from stdnum.cn import ric

from dialogs.errors import InputError
from dialogs.validators import (
    clean_text,
    mask_id_number,
    mask_phone,
    normalize_phone,
    validate_id_number,
)


def with_check(first17: str) -> str:
    """An ID number with the correct check character, computed by stdnum."""
    return first17 + ric.calc_check_digit(first17 + "?")


# ------------------------------------------------------------------ phones


@pytest.mark.parametrize(
    "typed",
    [
        "13912345678",
        "139 1234 5678",
        "139-1234-5678",
        "+86 139-1234-5678",
        "+8613912345678",
        "0086 13912345678",
        "86 13912345678",
        "8613912345678",
        "(139) 1234 5678",
        "  13912345678\n",
        "１３９１２３４５６７８",  # full-width digits
        "＋８６ １３９－１２３４－５６７８",  # full-width plus and dashes
    ],
)
def test_phone_accepted_spellings_give_e164(typed: str) -> None:
    assert normalize_phone(typed) == "+8613912345678"


@pytest.mark.parametrize(
    "typed",
    [
        "14012345678",  # 140 is not allocated: the ^1[3-9]\d{9}$ shortcut is wrong
        "12345",
        "1391234567",  # one digit short
        "139123456789",  # one digit too many
        "",
        "   ",
        "abc",
        "139ABCD5678",  # libphonenumber would read letters as a keypad
        "13912345678 ext 5",
        "13912345678#5",
    ],
)
def test_phone_invalid(typed: str) -> None:
    with pytest.raises(InputError) as err:
        normalize_phone(typed)
    assert err.value.key == "error.phone.invalid"


@pytest.mark.parametrize("typed", ["0769 2222 3333", "+86 769 2222 3333", "400 810 8888"])
def test_phone_chinese_non_mobile_is_not_mobile(typed: str) -> None:
    with pytest.raises(InputError) as err:
        normalize_phone(typed)
    assert err.value.key == "error.phone.not_mobile"


@pytest.mark.parametrize("typed", ["+1 650 253 0000", "+852 5123 4567", "+853 6612 3456"])
def test_phone_foreign_or_hk_macau_is_not_cn(typed: str) -> None:
    with pytest.raises(InputError) as err:
        normalize_phone(typed)
    assert err.value.key == "error.phone.not_cn"


def test_phone_non_cn_mobile_accepted_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dialogs.validators.ACCEPT_NON_CN_MOBILE", True)
    assert normalize_phone("+852 5123 4567") == "+85251234567"
    with pytest.raises(InputError) as err:  # a foreign fixed line is still refused
        normalize_phone("+44 20 7946 0958")
    assert err.value.key == "error.phone.not_cn"


def test_mask_phone_hides_middle_digits() -> None:
    assert mask_phone("+8613912345678") == "139****5678"


def test_mask_phone_refuses_non_e164() -> None:
    with pytest.raises(ValueError):
        mask_phone("13912345678")


# -------------------------------------------------------------- ID numbers


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("11010519491231002X", "11010519491231002X"),  # the standard's example
        ("11010519491231002x", "11010519491231002X"),
        (" 110105 19491231 002x ", "11010519491231002X"),
        ("110105-19491231-002X", "11010519491231002X"),
        ("１１０１０５１９４９１２３１００２Ｘ", "11010519491231002X"),
        (with_check("44190019900101123"), with_check("44190019900101123")),
    ],
)
def test_id_valid(typed: str, expected: str) -> None:
    assert validate_id_number(typed) == expected


def test_id_unknown_county_code_is_not_refused() -> None:
    # stdnum's county list would refuse 999999; we rely on the check character.
    number = with_check("99999919900101123")
    assert validate_id_number(number) == number


def _key(text: str) -> InputError:
    with pytest.raises(InputError) as err:
        validate_id_number(text)
    return err.value


def test_id_15_digits_is_old_format() -> None:
    assert _key("110105491231002").key == "error.id.old_format"


@pytest.mark.parametrize("typed", ["11010519491231002", "1101051949123100211", "", "X"])
def test_id_other_length(typed: str) -> None:
    err = _key(typed)
    assert err.key == "error.id.length"
    assert err.params == {"length": len(typed)}


@pytest.mark.parametrize(
    "typed",
    ["A1010519491231002X", "1101051949123100X2", "1101051949123100AX", "110105194912310O2X", "身份证号码"],
)
def test_id_non_digit_characters(typed: str) -> None:
    assert _key(typed).key == "error.id.characters"


@pytest.mark.parametrize("first17", ["11010519491332002", "11010519490230002", "11010500000101002"])
def test_id_impossible_birth_date(first17: str) -> None:
    assert _key(with_check(first17)).key == "error.id.birth_date"


def test_id_birth_date_in_future() -> None:
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    assert _key(with_check(f"110105{tomorrow:%Y%m%d}002")).key == "error.id.birth_date"


def test_id_wrong_check_character() -> None:
    assert _key("110105194912310021").key == "error.id.checksum"


def test_mask_id_number() -> None:
    assert mask_id_number("11010519491231002X") == "110*************2X"
    assert mask_id_number("12345") == "*****"


# -------------------------------------------------------------- free text


@pytest.mark.parametrize(
    "hidden",
    ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u200e", "\u200f", "\u061c"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)],
)
def test_text_invisible_and_bidi_characters_removed(hidden: str) -> None:
    assert clean_text(f"{hidden}张{hidden}三{hidden}", max_length=100) == "张三"


def test_text_reversed_name_disguise_removed() -> None:
    # RLO ... PDF would display "地产公司" reversed.
    assert clean_text("投诉\u202e司公产地\u202c", max_length=100) == "投诉司公产地"


def test_text_html_kept_literally() -> None:
    text = '<b>村委会</b> & <a href="x">链接</a> &amp;'
    assert clean_text(text, max_length=100) == text


def test_text_emoji_kept_including_joined_sequences() -> None:
    text = "谢谢🙏 家人👨\u200d👩\u200d👧 彩虹旗🏳️\u200d🌈"
    assert clean_text(text, max_length=100) == text


def test_text_surrounding_whitespace_stripped_inner_kept() -> None:
    assert clean_text("  \n 第一行\n  第二行　 \n", max_length=100) == "第一行\n  第二行"


def test_text_long_blank_runs_collapsed_to_two() -> None:
    assert clean_text("甲\n\n\n\n\n乙\r\n\r\n\r\n \n丙\n\n\n丁", max_length=100) == (
        "甲\n\n\n乙\n\n\n丙\n\n\n丁"
    )


def test_text_control_characters_removed() -> None:
    assert clean_text("a\x00b\x07c\td", max_length=100) == "abc\td"


@pytest.mark.parametrize("text", ["", "   ", "\u200b\u202e", "\n\n\t\u3000"])
def test_text_empty(text: str) -> None:
    with pytest.raises(InputError) as err:
        clean_text(text, max_length=100)
    assert err.value.key == "error.text.empty"


def test_text_too_long_reports_limit_and_length() -> None:
    with pytest.raises(InputError) as err:
        clean_text("字" * 11, max_length=10)
    assert err.value.key == "error.text.too_long"
    assert err.value.params == {"limit": 10, "length": 11}


def test_text_length_counted_after_cleaning_in_code_points() -> None:
    assert clean_text("\u200b" * 50 + "字" * 10, max_length=10) == "字" * 10


def test_text_too_short_reports_minimum() -> None:
    with pytest.raises(InputError) as err:
        clean_text("短", max_length=100, min_length=5)
    assert err.value.key == "error.text.too_short"
    assert err.value.params == {"minimum": 5}
