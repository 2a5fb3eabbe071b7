"""The password policy (rpm_core/passwords.py) and where it is applied: hash-password, station start."""

from __future__ import annotations

import os
import subprocess

import pytest

from rpm_core.passwords import EXAMPLE_PASSWORDS, check_password, pin_weakness, weakness
from tests.support.procs import rpm_argv


def hash_cli(password: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    return subprocess.run(rpm_argv("nurse-station", "hash-password", "--stdin", *extra), input=password + "\n",
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("password", [
    *EXAMPLE_PASSWORDS, "CHANGE-ME-NORTH", " change-me-south ", "Password123!", "password1234", "PASSWORD12345",
    "welcome2026!", "qwertyuiop", "1234567890", "abcdefghijk", "aaaaaaaaaaaa", "ababababab", "short",
    "Hospital123", "p@ssw0rd2026",
])
def test_example_common_and_trivial_passwords_are_refused(password: str) -> None:
    assert weakness(password) is not None


@pytest.mark.parametrize("password", ["night-shift-7", "3am-shift-north", "correct horse battery", "Zq3-mVt8_pL1"])
def test_passphrases_are_accepted(password: str) -> None:
    assert check_password(password) == password


def test_a_password_naming_its_station_is_refused() -> None:
    assert weakness("north-desk-2026", names=("north-desk",)) is not None
    assert weakness("quiet-river-2026", names=("north-desk",)) is None


@pytest.mark.parametrize("pin", ["123456", "654321", "000000", "112233", "12345", "12a456", "١٢٣٤٥٦", "111122"])
def test_weak_pins_are_refused(pin: str) -> None:
    assert pin_weakness(pin) is not None


def test_hash_password_applies_the_policy() -> None:
    for weak in ("change-me-north", "Password123!", "short"):
        done = hash_cli(weak)
        assert done.returncode == 1 and "scrypt$" not in done.stdout and weak not in done.stderr
    assert hash_cli("north-desk-rounds", "--station", "north-desk").returncode == 1
    assert hash_cli("123456", "--pin").returncode == 1
    ok = hash_cli("482913", "--pin")
    assert ok.returncode == 0 and ok.stdout.startswith("scrypt$")
    ok = hash_cli("quiet-river-rounds", "--station", "north-desk")
    assert ok.returncode == 0 and ok.stdout.startswith("scrypt$")


def test_the_example_roster_cannot_be_started() -> None:
    """Every station of the example roster.yaml uses a password the station refuses at start."""
    from pathlib import Path

    from rpm_core.errors import ConfigError
    from rpm_core.roster import load_roster
    from station.nurse_station import refuse_weak_passwords

    example = load_roster(Path(__file__).resolve().parents[2] / "roster.yaml")
    for ward in example.wards:
        with pytest.raises(ConfigError, match="example or common password"):
            refuse_weak_passwords(example, ward)
