"""The roster (``rpm_core.roster``): the example file, passwords, and errors that name file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpm_core.errors import ConfigError
from rpm_core.roster import (
    ALL_WARD,
    PasswordHash,
    RosterError,
    default_roster,
    hash_password,
    load_roster,
    parse_credentials,
    parse_roster,
)

REPO = Path(__file__).resolve().parents[2]
# Cheap scrypt parameters: these tests are about the format, not the cost.
FAST = {"n": 2**4, "r": 1, "p": 1}


def test_the_example_roster_loads_and_logs_in_with_its_documented_passwords() -> None:
    roster = load_roster(REPO / "roster.yaml")
    assert set(roster.wards) == {"north", "south"}
    assert roster.in_ward("p0001", "north") and not roster.in_ward("p0001", "south")
    assert roster.ward_of("p0015") == "south" and roster.ward_of("p9999") is None
    station = roster.check_login("north-desk", "change-me-north")
    assert station is not None and station.ward == "north"
    assert roster.check_login("north-desk", "change-me-south") is None
    assert roster.check_login("nobody", "change-me-north") is None


def test_hash_format_and_verification() -> None:
    encoded = hash_password("correct horse", **FAST)
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16", "1", "1") and salt and key
    parsed = PasswordHash.parse(encoded)
    assert parsed.verify("correct horse") and not parsed.verify("correct horsE")
    assert hash_password("correct horse", **FAST) != encoded, "a fresh salt every time"
    assert "key" not in repr(parsed).split("salt")[1], "the hash never shows in a repr"


SALT, KEY = "A" * 11, "A" * 23


@pytest.mark.parametrize("bad", ["", "bcrypt$x", "scrypt$16$1$1$salt", f"scrypt$15$1$1${SALT}${KEY}",
                                 f"scrypt$x$1$1${SALT}${KEY}", f"scrypt$16$1$1$AA${KEY}"])
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"scrypt|integers|range|short"):
        PasswordHash.parse(bad)


def test_without_a_roster_everyone_is_on_ward_all_and_credentials_come_from_the_environment() -> None:
    encoded = hash_password("night-shift-2", **FAST)
    roster = load_roster(None, env={"RPM_NURSE_CREDENTIALS": f"desk={encoded}"})
    assert not roster.configured
    assert roster.in_ward("p0001", ALL_WARD) and roster.ward_of("anyone") == ALL_WARD
    assert roster.check_login("desk", "night-shift-2") is not None
    assert load_roster(None, env={}).stations == {}
    assert parse_credentials(f" a={encoded} , b={encoded}") == {"a": encoded, "b": encoded}
    with pytest.raises(ConfigError, match="RPM_NURSE_CREDENTIALS"):
        parse_credentials("desk")
    with pytest.raises(ConfigError, match="hash-password"):
        default_roster({"desk": "plaintext"})


def _roster(body: str) -> str:
    h = hash_password("x", **FAST)
    return body.replace("HASH", h)


OK = """\
version: 1
wards:
  north:
    patients: [p0001, p0002]
stations:
  desk:
    ward: north
    password_hash: "HASH"
"""


@pytest.mark.parametrize(("text", "line", "field", "words"), [
    (OK.replace("version: 1", "version: 2"), 1, "version", "unsupported version"),
    (OK.replace("    patients:", "    rooms: 3\n    patients:"), 4, "wards.north.rooms", "unknown key"),
    (OK + "  other:\n    ward: south\n    password_hash: \"HASH\"\n", 10, "stations.other.ward", "unknown ward"),
    (OK.replace("[p0001, p0002]", "[p0001, p0001]"), 4, "wards.north.patients", "already on ward north"),
    (OK.replace("[p0001, p0002]", "[p0001, p 2]"), 4, "wards.north.patients", "not a valid id"),
    (OK.replace('"HASH"', '"secret"'), 8, "stations.desk.password_hash", "scrypt"),
    (OK.replace("    ward: north\n", ""), 6, "stations.desk.ward", "missing required field"),
    (OK.replace("patients: [p0001, p0002]", "patients: p0001"), 4, "wards.north.patients", "list of patient ids"),
    ("version: 1\nwards: {north: {patients: []}}\nstations: {}\n", 3, "stations", "no station"),
    ("version: 1\nwards: [\n", 3, None, "not valid YAML"),
])
def test_errors_name_file_line_and_field(text: str, line: int, field: str | None, words: str) -> None:
    with pytest.raises(RosterError) as err:
        parse_roster(_roster(text), source="wards.yaml")
    exc = err.value
    assert exc.file == "wards.yaml" and exc.line == line and words in str(exc)
    if field:
        assert exc.field == field
    assert str(exc).startswith(f"wards.yaml:{line}: ")


def test_a_missing_roster_file_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(RosterError, match="RPM_ROSTER"):
        load_roster(tmp_path / "nope.yaml")


def test_nurses_sign_in_with_a_pin_on_their_wards_and_bad_entries_name_their_line() -> None:
    import pytest

    from rpm_core.roster import RosterError, hash_password, parse_roster

    fast = {"n": 16, "r": 1, "p": 1}
    head = f"""version: 1
wards:
  north: {{patients: [p0001]}}
  south: {{patients: [p0002]}}
stations:
  desk: {{ward: north, password_hash: "{hash_password('x' * 12, **fast)}"}}
nurses:
"""
    roster = parse_roster(head + f'  "4711": {{name: Ana Lima, pin_hash: "{hash_password("482913", **fast)}"}}\n'
                          + f'  "4712": {{name: Ben, pin_hash: "{hash_password("739120", **fast)}", wards: [south]}}\n')
    assert roster.check_nurse("4711", "482913", "south") is not None, "no wards listed: every ward"
    assert roster.check_nurse("4712", "739120", "north") is None and roster.check_nurse("4712", "739120", "south")
    assert roster.check_nurse("4711", "000000", "north") is None and roster.check_nurse("9", "482913", "north") is None
    for entry, field in ((' "4711": {name: Ana}', "nurses.4711.pin_hash"),
                         (' "4711": {name: Ana, pin_hash: "plain"}', "nurses.4711.pin_hash"),
                         (f' "4711": {{name: "", pin_hash: "{hash_password("1", **fast)}"}}', "nurses.4711.name"),
                         (f' "4711": {{name: A, pin_hash: "{hash_password("1", **fast)}", wards: [east]}}',
                          "nurses.4711.wards"),
                         (f' "47 11": {{name: A, pin_hash: "{hash_password("1", **fast)}"}}', "nurses.47 11"),
                         (f' "4711": {{name: A, pin: "{hash_password("1", **fast)}"}}', "nurses.4711.pin")):
        with pytest.raises(RosterError) as err:
            parse_roster(head + " " + entry + "\n", source="roster.yaml")
        assert err.value.field == field and err.value.line == 8, (entry, err.value)


def test_a_ward_may_read_glucose_in_mmol_per_litre_and_name_its_beds() -> None:
    import pytest

    from rpm_core.roster import RosterError, hash_password, parse_roster

    stations = f"""stations:
  desk: {{ward: north, password_hash: "{hash_password('x' * 12, n=16, r=1, p=1)}"}}
"""
    roster = parse_roster("version: 1\nwards:\n  north:\n    patients: [p0001, p0002]\n    glucose_unit: mmol/L\n"
                          '    beds: {p0001: {bed: "12A", name: "A. Lima"}}\n' + stations)
    north = roster.wards["north"]
    assert north.glucose_unit == "mmol/L" and north.beds["p0001"].bed == "12A" and "p0002" not in north.beds
    for extra, field in (("    glucose_unit: mg/dl\n", "wards.north.glucose_unit"),
                         ('    beds: {p0009: {bed: "1"}}\n', "wards.north.beds.p0009"),
                         ('    beds: {p0001: {room: "1"}}\n', "wards.north.beds.p0001.room"),
                         (f'    beds: {{p0001: {{name: "{"x" * 65}"}}}}\n', "wards.north.beds.p0001.name")):
        with pytest.raises(RosterError) as err:
            parse_roster("version: 1\nwards:\n  north:\n    patients: [p0001]\n" + extra + stations)
        assert err.value.field == field and err.value.line == 5, (extra, err.value)
