"""Signing keys: what verifies, what does not, and the keys file's checks (rpm_core.signing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpm_core.errors import ConfigError
from rpm_core.settings import Settings
from rpm_core.signing import SIGNATURE_HEADER, KeyFileError, KeyRing, SignatureError

VALUE = b'{"alert_id": "a", "state": "raised"}'


def test_a_signed_record_verifies_and_any_change_does_not() -> None:
    ring = KeyRing.generate()
    headers = ring.sign("rpm.alerts", b"p1", VALUE)
    ring.verify("rpm.alerts", b"p1", VALUE, headers)
    for topic, key, value in (("rpm.alert-acks", b"p1", VALUE), ("rpm.alerts", b"p2", VALUE),
                              ("rpm.alerts", b"p1", VALUE + b" "), ("rpm.alerts", None, VALUE)):
        with pytest.raises(SignatureError, match="does not verify"):
            ring.verify(topic, key, value, headers)


@pytest.mark.parametrize(("headers", "reason"), [
    (None, "not signed"), ([], "not signed"), ([("other", b"x")], "not signed"),
    ([(SIGNATURE_HEADER, b"k9:00")], "unknown key id"),
    ([(SIGNATURE_HEADER, b"k1:zz")], "does not verify"),
    ([(SIGNATURE_HEADER, b"\xff\xfe")], "unknown key id"),
    ([(SIGNATURE_HEADER, b"k1:00"), (SIGNATURE_HEADER, b"k1:00")], "more than one"),
])
def test_forged_signatures_are_refused_with_a_reason(headers: list[tuple[str, bytes]] | None, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        KeyRing.generate().verify("rpm.alerts", b"p1", VALUE, headers)


def test_another_deployments_key_does_not_verify_and_rotation_keeps_old_records_valid() -> None:
    old, other = KeyRing.generate("k1"), KeyRing.generate("k1")
    headers = old.sign("rpm.alerts", b"p1", VALUE)
    with pytest.raises(SignatureError):
        other.verify("rpm.alerts", b"p1", VALUE, headers)
    rotated = KeyRing((KeyRing.generate("k2").keys[0], old.keys[0]))
    rotated.verify("rpm.alerts", b"p1", VALUE, headers)  # signed before the rotation
    assert rotated.sign("rpm.alerts", b"p1", VALUE)[0][1].startswith(b"k2:")


def test_the_keys_file_must_be_private_and_well_formed(tmp_path: Path) -> None:
    path = KeyRing.generate().write(tmp_path / "keys")
    assert Settings(signing_keys_file=str(path)).key_ring() is not None
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="RPM_SIGNING_KEYS_FILE"):
        Settings(signing_keys_file=str(path)).key_ring()
    for text in ("", "k1:short", "k 1:" + "A" * 44, "no-colon"):
        with pytest.raises(KeyFileError):
            KeyRing.parse(text)
    assert "AAAA" not in repr(KeyRing.parse("k1:" + "A" * 44))
