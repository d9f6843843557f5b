"""Sizes (units.py), names and ids, and the derived dm names of the model (model.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunresync.errors import ExitCode, InvalidArgument
from lunresync.kernel.blockdev import SECTOR_SIZE as SECTOR
from lunresync.storage.model import (
    DM_PREFIX,
    UUID_PREFIX,
    Lun,
    LunKind,
    ShadowCopy,
    ShadowKind,
    ShadowState,
    check_id,
    check_lun_name,
    new_id,
)
from lunresync.storage.units import MAX_SIZE, format_size, parse_rate, parse_size

from .hypothesis_settings import PROPERTY

pytestmark = pytest.mark.unit


KiB, MiB, GiB, TiB, PiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50

# -- parse_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("4096", 4096),
        ("1073741824", GiB),
        ("1k", KiB),
        ("1K", KiB),
        ("4G", 4 * GiB),
        ("4g", 4 * GiB),
        ("512M", 512 * MiB),
        ("100MiB", 100 * MiB),
        ("100mib", 100 * MiB),
        ("100MB", 100 * MiB),  # binary units whatever the spelling
        ("2T", 2 * TiB),
        ("1P", PiB),
        ("512B", 512),
        ("512b", 512),
        ("  8 M  ", 8 * MiB),
        ("8M\n", 8 * MiB),
        (4096, 4096),
        (GiB, GiB),
    ],
)
def test_parse_size_accepts(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "G",
        "-4G",
        "+4G",
        "4.5G",
        "1e9",
        "0x200",
        "4X",
        "4GG",
        "4 G B",
        "4GiBs",
        "four",
        "4G 4G",
    ],
)
def test_parse_size_refuses_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid size") as caught:
        parse_size(text)
    assert caught.value.exit_code is ExitCode.INVALID


@pytest.mark.parametrize("value", ["0", "0G", 0, -512, -GiB])
def test_parse_size_refuses_non_positive(value: str | int) -> None:
    with pytest.raises(InvalidArgument, match="must be positive"):
        parse_size(value)


@pytest.mark.parametrize("value", ["1", "511", "513", "1000", 1, 511, 4097, GiB + 1])
def test_parse_size_refuses_partial_sectors(value: str | int) -> None:
    with pytest.raises(InvalidArgument, match=f"multiple of {SECTOR}"):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_refuses_booleans(value: bool) -> None:
    with pytest.raises(InvalidArgument, match="invalid size"):
        parse_size(value)


# -- format_size --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0B"),
        (512, "512B"),
        (1023, "1023B"),
        (KiB, "1K"),
        (1536, "1.5K"),
        (4 * MiB, "4M"),
        (4 * GiB, "4G"),
        (GiB + 512 * MiB, "1536M"),  # exact in M beats 1.5G
        (GiB + 512, "1.0G"),  # not exact anywhere: rounded in the largest unit
        (3 * TiB, "3T"),
        (PiB, "1024T"),  # no P when printing
        (TiB + TiB // 4, "1280G"),
    ],
)
def test_format_size(size: int, expected: str) -> None:
    assert format_size(size) == expected


@PROPERTY
@given(st.integers(min_value=1, max_value=1 << 52))
def test_exact_formats_parse_back(sectors: int) -> None:
    size = sectors * SECTOR
    text = format_size(size)
    if "." in text:
        # Rounded: parse_size refuses fractions rather than guess.
        with pytest.raises(InvalidArgument):
            parse_size(text)
    else:
        assert parse_size(text) == size


@PROPERTY
@given(st.integers(min_value=0, max_value=1 << 52), st.sampled_from("KMGT"))
def test_whole_units_format_exactly(count: int, unit: str) -> None:
    factor = {"K": KiB, "M": MiB, "G": GiB, "T": TiB}[unit]
    size = (count + 1) * factor
    if size > MAX_SIZE:
        with pytest.raises(InvalidArgument, match="larger than"):
            parse_size(format_size(size))
    else:
        assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["9" * 25, "9" * 5000, "9223372036854775808",
                                  "8388608T"])
def test_sizes_too_large_or_too_long_are_refused_in_one_short_line(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_size(text)
    assert len(str(caught.value)) < 200
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE
    with pytest.raises(InvalidArgument, match=r"invalid rate|more than"):
        parse_rate(text)


# -- names and ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "0", "db", "db0", "lun-01", "a.b", "a_b", "9lives", "x" * 64, "a-", "a.", "real",
     "a-realm", "sc", "scsi-disk", "x-sc-0123456789ab", "sc.1"],
)
def test_valid_lun_names(name: str) -> None:
    assert check_lun_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "UPPER", "Db", "a/b", "/", "..", "a..b", "-lead", ".lead", "_lead", "x" * 65,
     "a b", "a\n", "\na", "é", "a:b", "a+b", "a@b", "lun\x00", "a*"],
)
def test_invalid_lun_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid LUN name") as caught:
        check_lun_name(name)
    assert caught.value.exit_code is ExitCode.INVALID


@pytest.mark.parametrize("name", ["db-real", "a-real", "x-real-real", "sc-0123456789ab", "sc-x",
                                  "job-0123456789ab", "job-x"])
def test_lun_names_that_would_collide_with_our_dm_names_are_refused(name: str) -> None:
    # LUN "db" owns lunresync-db-real, and shadow copies own lunresync-sc-*: a LUN of such
    # a name would share a device-mapper name with another object.
    with pytest.raises(InvalidArgument, match="invalid LUN name"):
        check_lun_name(name)


def test_lun_names_of_other_types_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        check_lun_name(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        check_lun_name(None)  # type: ignore[arg-type]


def test_new_id_is_32_lowercase_hex_digits_and_unique() -> None:
    ids = {new_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        assert check_id(value) == value
        assert len(value) == 32
        assert value == value.lower()
        int(value, 16)


@pytest.mark.parametrize(
    "value",
    ["", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0123456789abcdef0123456789abcde ",
     "0123456789abcdef0123456789abcdef\n", "01234567-89ab-cdef-0123-456789abcdef",
     "\u0660" * 32],  # ARABIC-INDIC DIGIT ZERO: a digit to \d, not to [0-9]
)
def test_check_id_refuses(value: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid LUN id"):
        check_id(value, "LUN id")


@pytest.mark.parametrize("value", [None, 123, b"0" * 32])
def test_check_id_refuses_other_types(value: object) -> None:
    with pytest.raises(InvalidArgument, match="invalid id"):
        check_id(value)  # type: ignore[arg-type]


# -- derived names ------------------------------------------------------------------------

LUN_ID = "0123456789abcdef0123456789abcdef"
SC_ID = "fedcba9876543210fedcba9876543210"
SET_ID = "00112233445566778899aabbccddeeff"


def test_lun_dm_names_uuid_path_and_sectors() -> None:
    lun = Lun(LUN_ID, "db", 64 * MiB, LunKind.IMAGE, "/pool/images/x.img", 1.0)
    assert lun.dm_name == "lunresync-db"
    assert lun.real_dm_name == "lunresync-db-real"
    assert lun.path == "/dev/mapper/lunresync-db"
    assert lun.dm_uuid == "LUNRESYNC-" + LUN_ID
    assert lun.sectors == 64 * MiB // 512
    assert lun.dm_name.startswith(DM_PREFIX)
    assert lun.dm_uuid.startswith(UUID_PREFIX)


def test_longest_lun_name_fits_a_dm_name() -> None:
    # The kernel's DM_NAME_LEN is 128 including the NUL; DM_UUID_LEN is 129.
    lun = Lun(LUN_ID, check_lun_name("x" * 64), 512, LunKind.ADOPTED, "/dev/sdz", 1.0)
    assert len(lun.real_dm_name) < 128
    assert len(lun.dm_uuid) + len("-real") < 129


def test_shadow_copy_dm_names_uuid_path_and_sectors() -> None:
    sc = ShadowCopy(SC_ID, SET_ID, LUN_ID, "db", ShadowKind.DIFFERENTIAL, 8 * MiB,
                    "/pool/cow/x.cow", 16, 2.0)
    assert sc.state is ShadowState.VALID
    assert sc.dm_name == "lunresync-sc-fedcba987654"
    assert sc.path == "/dev/mapper/lunresync-sc-fedcba987654"
    assert sc.dm_uuid == f"LUNRESYNC-{LUN_ID}-sc-{SC_ID}"
    assert sc.sectors == 8 * MiB // 512
    assert len(sc.dm_uuid) < 129


def test_model_objects_are_frozen() -> None:
    lun = Lun(LUN_ID, "db", 512, LunKind.IMAGE, "", 1.0)
    with pytest.raises(AttributeError):
        lun.name = "other"  # type: ignore[misc]


def test_enum_values_match_the_catalog_schema() -> None:
    assert {k.value for k in LunKind} == {"image", "adopted", "thin"}
    assert {k.value for k in ShadowKind} == {"differential", "clone", "thin"}
    assert {s.value for s in ShadowState} == {"valid", "invalid"}
