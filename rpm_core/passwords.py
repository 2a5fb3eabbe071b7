"""Which passwords, PINs and shared secrets rpm refuses, wherever one is set (NIST SP 800-63B §5.1.1.2).

No composition rules (they make passwords worse); instead a minimum length and a block list: the
passwords published in this repository's examples (``roster.yaml``), common passwords, repeated
characters and keyboard or digit runs, and the name of what it protects. Used by ``rpm
nurse-station hash-password`` (station passwords and nurses' PINs), by the nurse station at start
(its stations' hashes are tried against :data:`KNOWN_WEAK`: hashes can only be tested, so the list
tried there is short), and by ``rpm notifier`` for webhook HMAC secrets. MQTT passwords are never
chosen by people (``rpm mqtt-auth`` generates 192 random bits), nor are signing keys (≥ 32 random
bytes, :mod:`rpm_core.signing`).
"""

from __future__ import annotations

from typing import Final

from rpm_core.errors import ConfigError

# Published in this repository: the example roster's station passwords.
EXAMPLE_PASSWORDS: Final = ("change-me-north", "change-me-south")
# Tried against stored hashes when a station starts (each try costs one scrypt: keep it short).
KNOWN_WEAK: Final = (*EXAMPLE_PASSWORDS, "change-me", "changeme", "password", "password1", "12345678", "123456789",
                     "nurse123", "station1", "admin123", "letmein1")
# Checked in clear where a password is typed (lower-cased, without spaces at the ends).
COMMON_PASSWORDS: Final = frozenset({
    *KNOWN_WEAK, "123456", "1234567890", "12345678910", "qwerty", "qwertyuiop", "qwerty123", "qwerty1234",
    "1q2w3e4r", "1q2w3e4r5t", "password12", "password123", "passw0rd", "p@ssw0rd", "p@ssword", "iloveyou",
    "sunshine", "princess", "football", "baseball", "welcome", "welcome1", "welcome123", "monkey123", "dragon123",
    "abc12345", "abcd1234", "letmein", "letmein123", "trustno1", "superman", "starwars", "master123", "admin",
    "administrator", "admin1234", "root1234", "hospital", "hospital1", "hospital123", "nurse", "nurses",
    "nurse1234", "nursing1", "doctor123", "patient1", "patient123", "station", "station123", "ward1234",
    "changeit", "change-it", "change_me", "secret", "secret123", "secret1234", "default", "default1",
    "default123", "test1234", "testtest", "guest123", "summer2024", "winter2024", "summer2025", "winter2025",
    "spring2025", "autumn2025", "summer2026", "winter2026", "rpm-demo", "demo1234", "example", "example123",
})
_RUNS: Final = ("0123456789012345678901234567890", "9876543210987654321098765432109",
                "abcdefghijklmnopqrstuvwxyz", "zyxwvutsrqponmlkjihgfedcba", "qwertyuiopasdfghjklzxcvbnm",
                "mnbvcxzlkjhgfdsapoiuytrewq", "1qaz2wsx3edc4rfv", "qazwsxedcrfvtgbyhnujm")
MIN_PASSWORD_CHARS: Final = 10
MIN_PIN_DIGITS: Final = 6
MIN_SECRET_CHARS: Final = 20  # a webhook HMAC key: ~120 bits when random, as NIST asks of MAC keys (≥ 112)
WEAK_PINS: Final = frozenset({"123456", "654321", "000000", "111111", "121212", "123123", "112233", "696969",
                              "159753", "147258", "258456", "131313", "123321", "101010", "202020"})


class WeakPasswordError(ConfigError):
    """A password, PIN or secret that rpm refuses; the message says why, never the password."""


def weakness(password: str, *, names: tuple[str, ...] = ()) -> str | None:
    """Why ``password`` is refused (a sentence), or None. ``names``: what it protects (a station id)."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"use at least {MIN_PASSWORD_CHARS} characters (a passphrase of a few words is easiest)"
    folded = password.strip().lower()
    if folded in COMMON_PASSWORDS or folded.rstrip("!.0123456789") in COMMON_PASSWORDS:
        return "that password is published or common; choose another"
    if len(set(folded)) < 4:
        return "too few different characters"
    if any(folded in run for run in _RUNS):
        return "a keyboard or alphabet run; choose another"
    for name in names:
        if len(name) >= 3 and name.lower() in folded:
            return "it contains the name of what it protects"
    return None


def check_password(password: str, *, names: tuple[str, ...] = ()) -> str:
    """``password`` if rpm accepts it, else :class:`WeakPasswordError`."""
    reason = weakness(password, names=names)
    if reason:
        raise WeakPasswordError(reason)
    return password


def pin_weakness(pin: str) -> str | None:
    """Why a nurse's PIN is refused, or None."""
    if not (pin.isascii() and pin.isdigit() and len(pin) >= MIN_PIN_DIGITS):
        return f"a PIN is at least {MIN_PIN_DIGITS} digits"
    if len(set(pin)) < 3 or pin in WEAK_PINS or any(pin in run for run in _RUNS[:2]):
        return "a PIN is not a run like 123456, a common PIN, and has at least 3 different digits"
    return None


def secret_weakness(secret: str) -> str | None:
    """Why a shared secret (a webhook's HMAC key) is refused, or None."""
    if not secret:
        return "it is not set"
    if len(secret) < MIN_SECRET_CHARS:
        return f"it is shorter than {MIN_SECRET_CHARS} characters (make one: python3 -c 'import secrets; " \
               "print(secrets.token_urlsafe(32))')"
    return weakness(secret)
