"""Kiosk device tokens: a ward screen that stays logged in across station restarts.

A station that logs in with "this screen is a ward kiosk" gets a second cookie, ``rpm_kiosk``:
``k1~<kiosk id>~<station>~<issued>~<signature>``, the signature an HMAC-SHA256 over the rest with
a key kept in the station's state directory (``kiosk.key``, created once, owner-only). The token
is valid while its id is listed, not revoked, in ``kiosks.json`` beside the key, so:

- a restart of the server keeps every kiosk logged in (key and list are on disk);
- ``rpm nurse-station kiosk revoke <id>`` (or logging out on that screen) ends it at once, also
  in a running server (it re-reads the list when the file changes);
- a forged or altered token fails the signature; a token from another server's key too.

No readings or passwords are in the token; the list holds id, station, label and times.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rpm_core.errors import ConfigError
from rpm_core.files import write_atomic
from rpm_core.wire import is_valid_id

_LOGGER = logging.getLogger(__name__)

KEY_FILE: Final = "kiosk.key"
LIST_FILE: Final = "kiosks.json"
TOKEN_VERSION: Final = "k1"  # noqa: S105 (a format tag, not a secret)
KEY_BYTES: Final = 32
TOKEN_MAX_LEN: Final = 400
LABEL_MAX: Final = 64


@dataclass(frozen=True, slots=True)
class Kiosk:
    """One issued kiosk token."""

    id: str
    station: str
    issued: float
    label: str = ""
    revoked: float | None = None


class KioskRegistry:
    """Issues, verifies and revokes kiosk tokens kept in ``state_dir``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"kiosk state directory {self.dir}: {exc}") from exc
        self._key = self._load_key()
        self._list_mtime: float | None = None
        self._kiosks: dict[str, Kiosk] = {}
        self._reload()

    def _load_key(self) -> bytes:
        path = self.dir / KEY_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} must be readable by its owner only: chmod 600 {path}")
        key = base64.urlsafe_b64decode(path.read_text().strip())
        if len(key) < KEY_BYTES:
            raise ConfigError(f"{path} holds a key shorter than {KEY_BYTES} bytes; delete it to make a new one "
                              "(every kiosk then logs in again)")
        return key

    # -- the list ------------------------------------------------------------------------------------

    def _reload(self) -> None:
        path = self.dir / LIST_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._kiosks, self._list_mtime = {}, None
            return
        if mtime == self._list_mtime:
            return
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            kiosks = {k["id"]: Kiosk(id=k["id"], station=k["station"], issued=float(k["issued"]),
                                     label=str(k.get("label", "")), revoked=k.get("revoked"))
                      for k in doc["kiosks"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Fail closed: an unreadable list lets no kiosk in (they show "logged out", loudly).
            _LOGGER.error("kiosk list %s unreadable (%s): no kiosk token is accepted", path, type(exc).__name__)
            kiosks = {}
        self._kiosks, self._list_mtime = kiosks, mtime

    def _save(self) -> None:
        path = self.dir / LIST_FILE
        doc = {"kiosks": [{"id": k.id, "station": k.station, "issued": k.issued, "label": k.label,
                           "revoked": k.revoked} for k in self._kiosks.values()]}
        write_atomic(path, json.dumps(doc, indent=1), mode=0o600)
        self._list_mtime = path.stat().st_mtime_ns

    def kiosks(self) -> list[Kiosk]:
        """Every issued kiosk, revoked ones included."""
        self._reload()
        return sorted(self._kiosks.values(), key=lambda k: k.issued)

    # -- tokens ----------------------------------------------------------------------------------

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, station: str, label: str = "") -> tuple[Kiosk, str]:
        """A new kiosk for ``station`` and its token."""
        if not is_valid_id(station):
            raise ValueError("station must be an id")
        self._reload()
        kiosk = Kiosk(id=secrets.token_hex(6), station=station, issued=round(time.time(), 3),
                      label="".join(ch for ch in label if ch.isprintable())[:LABEL_MAX])
        self._kiosks[kiosk.id] = kiosk
        self._save()
        body = f"{TOKEN_VERSION}~{kiosk.id}~{station}~{int(kiosk.issued)}"
        return kiosk, f"{body}~{self._sign(body)}"

    def verify(self, token: str | None) -> Kiosk | None:
        """The kiosk of ``token`` if it is signed by our key and listed, not revoked; else None."""
        if not token or len(token) > TOKEN_MAX_LEN or not token.isascii():
            return None
        body, _, sig = token.rpartition("~")
        parts = body.split("~")  # "~" is in no id (ids are [A-Za-z0-9_.:-])
        if len(parts) != 4 or parts[0] != TOKEN_VERSION:
            return None
        if not hmac.compare_digest(self._sign(body), sig):
            return None
        self._reload()
        kiosk = self._kiosks.get(parts[1])
        if kiosk is None or kiosk.revoked is not None or kiosk.station != parts[2]:
            return None
        return kiosk

    def revoke(self, kiosk_id: str) -> bool:
        """Revoke ``kiosk_id``; False if there is no such live kiosk."""
        self._reload()
        kiosk = self._kiosks.get(kiosk_id)
        if kiosk is None or kiosk.revoked is not None:
            return False
        self._kiosks[kiosk_id] = Kiosk(id=kiosk.id, station=kiosk.station, issued=kiosk.issued, label=kiosk.label,
                                       revoked=round(time.time(), 3))
        self._save()
        _LOGGER.info("kiosk %s of station %s revoked", kiosk.id, kiosk.station)
        return True


def describe(kiosk: Kiosk) -> dict[str, Any]:
    """A kiosk as ``rpm nurse-station kiosk list`` prints it."""
    return {"id": kiosk.id, "station": kiosk.station, "label": kiosk.label, "issued": kiosk.issued,
            "revoked": kiosk.revoked}
