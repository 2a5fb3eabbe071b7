"""Records that cannot be forged: alerts, acknowledgements and technical alerts carry an HMAC.

Anyone who can reach the Kafka port could write a critical alert to ``rpm.alerts`` (shown on the
nurse station, sent to the pager) or an acknowledgement to ``rpm.alert-acks`` (stopping an
escalation). Where the broker cannot enforce who writes what (Tansu here: its memory storage cannot
hold SASL users, see docs/security.md), integrity comes from the records themselves: every producer
of these topics signs each record with a per-deployment key, in a Kafka header::

    rpm-sig: <key id>:<hex HMAC-SHA256 over "rpm-sig-v1", topic, key and value>

and every consumer verifies it, refusing (and dead-lettering) what does not verify. The topic is
in the MAC, so a record cannot be replayed onto another topic; the key too, so a signed ack cannot
be re-keyed to another patient's partition.

Keys live in a file (``RPM_SIGNING_KEYS_FILE``, mode 0600 like every secret): one ``<id>:<base64
key>`` per line; the first line signs, every line verifies, so a key is rotated by adding the new
one first, restarting the producers, then removing the old one once nothing signed with it is
still to be read. Without the file nothing is signed or checked (a warning says so at start);
``rpm demo`` and the tests always run with one, as production should.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SIGNATURE_HEADER: Final = "rpm-sig"
KEYS_ENV: Final = "RPM_SIGNING_KEYS_FILE"
_DOMAIN: Final = b"rpm-sig-v1"
_KID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MIN_KEY_BYTES: Final = 32

Headers = Sequence[tuple[str, bytes]]


class SignatureError(ValueError):
    """A record whose signature is missing, malformed, of an unknown key, or wrong; says which."""


class KeyFileError(ValueError):
    """A keys file that cannot be used; names the file and the line."""


def _mac(secret: bytes, topic: str, key: bytes | None, value: bytes) -> bytes:
    h = hmac.new(secret, digestmod=hashlib.sha256)
    k = key or b""
    for part in (_DOMAIN, topic.encode(), len(k).to_bytes(4, "big") + k, value):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


@dataclass(frozen=True)
class KeyRing:
    """Signing keys of one deployment: the first signs, all verify."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyFileError("a key ring needs at least one key")
        for kid, secret in self.keys:
            if not _KID_RE.fullmatch(kid) or len(secret) < MIN_KEY_BYTES:
                raise KeyFileError(f"key {kid!r}: ids are 1-32 of [A-Za-z0-9_.-], keys at least {MIN_KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return f"KeyRing(ids={[kid for kid, _s in self.keys]})"  # never the secrets

    @classmethod
    def generate(cls, kid: str = "k1") -> KeyRing:
        """A ring of one fresh random key."""
        return cls(((kid, secrets.token_bytes(MIN_KEY_BYTES)),))

    @classmethod
    def parse(cls, text: str, *, source: str = "<keys>") -> KeyRing:
        """Read ``<id>:<base64>`` lines (blank lines and ``#`` comments ignored)."""
        keys: list[tuple[str, bytes]] = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            kid, sep, b64 = line.partition(":")
            try:
                secret = base64.b64decode(b64, validate=True)
            except ValueError:
                secret = b""
            if not sep or not _KID_RE.fullmatch(kid) or len(secret) < MIN_KEY_BYTES:
                raise KeyFileError(f"{source}:{n}: expected <id>:<base64 of at least {MIN_KEY_BYTES} random bytes>")
            keys.append((kid, secret))
        if not keys:
            raise KeyFileError(f"{source}: no key in it")
        return cls(tuple(keys))

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        """The ring in a private keys file (:func:`rpm_core.settings.check_private_file` first)."""
        from rpm_core.settings import check_private_file

        p = Path(path)
        check_private_file(p, what=KEYS_ENV)
        return cls.parse(p.read_text(), source=str(p))

    def dump(self) -> str:
        """The keys file's text."""
        return "".join(f"{kid}:{base64.b64encode(secret).decode()}\n" for kid, secret in self.keys)

    def write(self, path: Path) -> Path:
        """Write the keys file, mode 0600."""
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(self.dump())
        return path

    def sign(self, topic: str, key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
        """The headers that authenticate ``value`` (with ``key``) on ``topic``."""
        kid, secret = self.keys[0]
        digest = _mac(secret, topic, key, value or b"").hex()
        return [(SIGNATURE_HEADER, f"{kid}:{digest}".encode())]

    def verify(self, topic: str, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None
               ) -> None:
        """Return if the record carries a valid signature of one of the keys; else :class:`SignatureError`."""
        found = [v for k, v in (headers or ()) if k == SIGNATURE_HEADER]
        if not found:
            raise SignatureError("record not signed (no rpm-sig header): refused as possibly forged")
        if len(found) > 1:
            raise SignatureError("record carries more than one signature")
        kid, _, digest = found[0].decode("ascii", "replace").partition(":")
        secret = dict(self.keys).get(kid)
        if secret is None:
            raise SignatureError(f"record signed with an unknown key id {kid[:32]!r}")
        expected = _mac(secret, topic, key, value or b"").hex()
        if not hmac.compare_digest(expected, digest):
            raise SignatureError("record signature does not verify: refused as forged or altered")


def load_key_ring(path: str | None) -> KeyRing | None:
    """The ring at ``path`` (``RPM_SIGNING_KEYS_FILE``), or None when unset."""
    return KeyRing.load(path) if path else None
