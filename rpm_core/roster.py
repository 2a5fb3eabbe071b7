"""The roster: wards, which patients lie on which ward, and the nurse stations that may log in.

Read from the YAML file named by ``RPM_ROSTER`` (or ``--roster``); see the repository's
``roster.yaml`` for a commented example::

    version: 1
    wards:
      north:
        name: Ward 3 North            # optional display name
        patients: [p0000, p0001]      # each patient on at most one ward
        glucose_unit: mmol/L          # optional, default mg/dL (the nurse station's display)
        beds: {p0000: {bed: "12A", name: "A. Lima"}}   # optional, shown on the station's tile
    stations:
      north-desk:
        ward: north
        password_hash: "scrypt$16384$8$1$<salt>$<hash>"   # rpm nurse-station hash-password
    nurses:                           # optional: then every acknowledgement needs a nurse's PIN
      "4711":                         # badge number (an id)
        name: Ana Lima
        pin_hash: "scrypt$…"          # rpm nurse-station hash-password --pin
        wards: [north]                # optional: default every ward

Like the rules file, unknown keys are rejected and every error names the file, the line and the
field. Passwords are never stored, only scrypt hashes with a per-entry salt
(``scrypt$N$r$p$salt$hash``, salt and hash in unpadded URL-safe base64).

Without a roster every patient belongs to the ward ``all``, and the station credentials come from
``RPM_NURSE_CREDENTIALS`` (``station=scrypt$…[,station=scrypt$…]``); a station refuses to start
without at least one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml

from rpm_core.errors import ConfigError
from rpm_core.wire import is_valid_id

_LOGGER = logging.getLogger(__name__)

ROSTER_VERSION: Final = 1
ALL_WARD: Final = "all"
CREDENTIALS_ENV: Final = "RPM_NURSE_CREDENTIALS"
ROSTER_ENV: Final = "RPM_ROSTER"
# scrypt cost: N=2^14, r=8, p=1 is the interactive-login setting of the scrypt paper (16 MiB, ~50 ms).
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_SALT_BYTES: Final = 16
SCRYPT_KEY_BYTES: Final = 32
# Refuse hashes whose parameters would take more than this much memory to verify (a typo, not security).
SCRYPT_MAX_MEM_BYTES: Final = 256 * 1024 * 1024
_HINT_HASH: Final = "create one with: rpm nurse-station hash-password"

_ROOT_KEYS: Final = {"version", "wards", "stations", "nurses"}
_NURSE_KEYS: Final = {"name", "pin_hash", "wards"}
_WARD_KEYS: Final = {"name", "patients", "glucose_unit", "beds"}
_BED_KEYS: Final = {"bed", "name"}
GLUCOSE_UNITS: Final = ("mg/dL", "mmol/L")
_STATION_KEYS: Final = {"ward", "password_hash", "name"}


class RosterError(ConfigError):
    """An invalid roster; the message names the file, line and field, and the fix."""

    def __init__(self, problem: str, *, file: str, line: int | None = None, field: str | None = None,
                 hint: str | None = None) -> None:
        where = file + (f":{line}" if line is not None else "")
        text = f"{where}: {'field ' + field + ': ' if field else ''}{problem}"
        super().__init__(text + (f". Fix: {hint}" if hint else ""))
        self.file, self.line, self.field, self.problem, self.hint = file, line, field, problem, hint


# -- passwords -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$salt$hash`` for ``password`` with a fresh random salt."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=SCRYPT_KEY_BYTES,
                         maxmem=SCRYPT_MAX_MEM_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A parsed ``scrypt$N$r$p$salt$hash``."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, encoded: str) -> PasswordHash:
        """Parse; ``ValueError`` saying what is wrong."""
        parts = encoded.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("expected scrypt$N$r$p$salt$hash")
        try:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, key = _unb64(parts[4]), _unb64(parts[5])
        except ValueError as exc:
            raise ValueError("N, r and p must be integers and salt and hash base64") from exc
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * r * n * p > SCRYPT_MAX_MEM_BYTES:
            raise ValueError("scrypt parameters out of range (N a power of two, r and p positive)")
        if len(salt) < 8 or len(key) < 16:
            raise ValueError("salt or hash too short")
        return cls(n=n, r=r, p=p, salt=salt, key=key)

    def verify(self, password: str) -> bool:
        """Whether ``password`` matches (constant-time comparison)."""
        key = hashlib.scrypt(password.encode(), salt=self.salt, n=self.n, r=self.r, p=self.p,
                             dklen=len(self.key), maxmem=SCRYPT_MAX_MEM_BYTES)
        return hmac.compare_digest(key, self.key)


# -- the roster ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bed:
    """Where a patient lies and the name the station shows (both optional)."""

    bed: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Ward:
    """One ward and its patients (empty for ``all``: every patient), its glucose unit and beds."""

    id: str
    name: str
    patients: frozenset[str] = frozenset()
    glucose_unit: str = "mg/dL"
    beds: Mapping[str, Bed] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Station:
    """A nurse station login: its ward and its password hash."""

    id: str
    ward: str
    password: PasswordHash = field(repr=False)
    name: str = ""


@dataclass(frozen=True, slots=True)
class Nurse:
    """A nurse who signs in at a station with a badge number and PIN to act on alarms."""

    id: str
    name: str
    pin: PasswordHash = field(repr=False)
    wards: frozenset[str] = frozenset()  # empty: every ward

    def may_work_on(self, ward: str) -> bool:
        """Whether this nurse may act on ``ward``."""
        return not self.wards or ward in self.wards


@dataclass(frozen=True, slots=True)
class Roster:
    """Wards, patients, stations and (optionally) nurses; see the module docstring."""

    wards: Mapping[str, Ward]
    stations: Mapping[str, Station]
    source: str | None = None
    nurses: Mapping[str, Nurse] = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        """Whether this roster came from a file (else: the single ward ``all``)."""
        return self.source is not None

    def in_ward(self, patient: str, ward: str) -> bool:
        """Whether ``patient`` lies on ``ward`` (everyone does on ``all`` without a roster)."""
        if not self.configured:
            return ward == ALL_WARD
        w = self.wards.get(ward)
        return w is not None and patient in w.patients

    def ward_of(self, patient: str) -> str | None:
        """The ward of ``patient``, or None if no ward lists them."""
        if not self.configured:
            return ALL_WARD
        return next((w.id for w in self.wards.values() if patient in w.patients), None)

    def check_login(self, station: str, password: str) -> Station | None:
        """The station if ``password`` is its password, else None (slow on purpose: scrypt)."""
        entry = self.stations.get(station)
        if entry is None:
            # Same work for unknown stations, so timing does not tell which stations exist.
            _DUMMY.verify(password)
            return None
        return entry if entry.password.verify(password) else None

    def check_nurse(self, nurse: str, pin: str, ward: str) -> Nurse | None:
        """The nurse if ``pin`` is theirs and they work on ``ward``, else None (slow on purpose: scrypt)."""
        entry = self.nurses.get(nurse)
        if entry is None:
            _DUMMY.verify(pin)
            return None
        return entry if entry.pin.verify(pin) and entry.may_work_on(ward) else None


_DUMMY: Final = PasswordHash(n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, salt=b"\0" * 16, key=b"\0" * 32)


def default_roster(credentials: Mapping[str, str]) -> Roster:
    """The roster without a file: ward ``all`` and the given ``station -> hash`` credentials."""
    stations = {}
    for station, encoded in credentials.items():
        if not is_valid_id(station):
            raise ConfigError(f"{CREDENTIALS_ENV}: station {station!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
        try:
            stations[station] = Station(id=station, ward=ALL_WARD, password=PasswordHash.parse(encoded))
        except ValueError as exc:
            raise ConfigError(f"{CREDENTIALS_ENV}: station {station!r}: {exc}; {_HINT_HASH}") from exc
    return Roster(wards={ALL_WARD: Ward(id=ALL_WARD, name="All patients")}, stations=stations)


def parse_credentials(text: str) -> dict[str, str]:
    """``station=hash[,station=hash]`` (the form of ``RPM_NURSE_CREDENTIALS``) as a dict."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        station, sep, encoded = item.partition("=")
        if not sep:
            raise ConfigError(f"{CREDENTIALS_ENV}: expected station=scrypt$…, got an entry without '='")
        out[station.strip()] = encoded.strip()
    return out


def load_roster(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> Roster:
    """The roster from ``path`` (or ``RPM_ROSTER``); without one, ward ``all`` with env credentials."""
    env = os.environ if env is None else env
    path = path or env.get(ROSTER_ENV) or None
    if path is None:
        return default_roster(parse_credentials(env.get(CREDENTIALS_ENV, "")))
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(f"cannot read the roster ({exc})", file=source,
                          hint=f"check the path ({ROSTER_ENV} or --roster)") from exc
    return parse_roster(text, source=source)


def parse_roster(text: str, *, source: str = "<roster>") -> Roster:
    """Validate a roster given as YAML text; ``source`` names the file in errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise RosterError(f"not valid YAML: {exc.problem or exc.context}", file=source,
                          line=mark.line + 1 if mark else None, hint="fix the YAML syntax at that line") from exc
    except yaml.YAMLError as exc:
        raise RosterError(f"not valid YAML: {exc}", file=source) from exc
    if root is None:
        raise RosterError("the file is empty", file=source, line=1, hint="start with `version: 1`")
    return _RosterParser(source).roster(root)


Entries = dict[str, tuple[yaml.Node, yaml.Node]]


class _RosterParser:
    """Walks the YAML node tree so every error carries its line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node, path: str, problem: str, hint: str) -> RosterError:
        return RosterError(problem, file=self.source, line=node.start_mark.line + 1, field=path or "(document)",
                           hint=hint)

    def mapping(self, node: yaml.Node, path: str, allowed: set[str] | None, required: tuple[str, ...] = (),
                owner: yaml.Node | None = None) -> Entries:
        """Entries of a mapping by key; rejects non-mappings, duplicates, unknown and missing keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, "expected a mapping", "write `key: value` entries indented under it")
        out: Entries = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
            where = f"{path}.{key}" if path else key
            if key in out:
                raise self.fail(key_node, where, f"duplicate key {key!r}", "keep one of them")
            if allowed is not None and key not in allowed:
                raise self.fail(key_node, where, f"unknown key {key!r}", f"use one of: {', '.join(sorted(allowed))}")
            out[key] = (key_node, value_node)
        for key in required:
            if key not in out:
                raise self.fail(owner or node, f"{path}.{key}" if path else key, f"missing required field {key!r}",
                                f"add `{key}:`")
        return out

    def text(self, node: yaml.Node, path: str) -> str:
        """A plain string scalar."""
        if not isinstance(node, yaml.ScalarNode) or node.tag not in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int"):
            raise self.fail(node, path, "expected a text value", "write a plain value, quoted if in doubt")
        return str(node.value)

    def ident(self, node: yaml.Node, path: str) -> str:
        """An identifier (patient, ward, station ids)."""
        value = self.text(node, path)
        if not is_valid_id(value):
            raise self.fail(node, path, f"{value!r} is not a valid id", "use 1-64 characters of A-Z a-z 0-9 _ . : -")
        return value

    def roster(self, root: yaml.Node) -> Roster:
        """The whole document."""
        top = self.mapping(root, "", _ROOT_KEYS, ("version", "wards", "stations"))
        version_node = top["version"][1]
        if not isinstance(version_node, yaml.ScalarNode) or version_node.value != str(ROSTER_VERSION):
            raise self.fail(version_node, "version", "unsupported version", f"write `version: {ROSTER_VERSION}`")
        wards = self.wards(top["wards"][1])
        stations = self.stations(top["stations"][1], wards)
        if not stations:
            raise self.fail(top["stations"][1], "stations", "no station defined",
                            f"add a station with a password_hash ({_HINT_HASH})")
        nurses = self.nurses(top["nurses"][1], wards) if "nurses" in top else {}
        return Roster(wards=wards, stations=stations, source=self.source, nurses=nurses)

    def nurses(self, node: yaml.Node, wards: Mapping[str, Ward]) -> dict[str, Nurse]:
        """``nurses:``: badge number → name, PIN hash, optional wards."""
        out: dict[str, Nurse] = {}
        for nurse_id, (key_node, value) in self.mapping(node, "nurses", None).items():
            path = f"nurses.{nurse_id}"
            self.ident(key_node, path)
            entries = self.mapping(value, path, _NURSE_KEYS, ("name", "pin_hash"), owner=key_node)
            name = self.text(entries["name"][1], f"{path}.name").strip()
            if not name or len(name) > 64 or not name.isprintable():
                raise self.fail(entries["name"][1], f"{path}.name", "a name of 1-64 printable characters is needed",
                                "write the nurse's name as it should appear on acknowledgements")
            hash_node = entries["pin_hash"][1]
            try:
                pin = PasswordHash.parse(self.text(hash_node, f"{path}.pin_hash"))
            except ValueError as exc:
                raise self.fail(hash_node, f"{path}.pin_hash", str(exc),
                                "create one with: rpm nurse-station hash-password --pin") from exc
            own: set[str] = set()
            if "wards" in entries:
                wnode = entries["wards"][1]
                if not isinstance(wnode, yaml.SequenceNode):
                    raise self.fail(wnode, f"{path}.wards", "expected a list of ward ids", "write [north, south]")
                for item in wnode.value:
                    ward = self.ident(item, f"{path}.wards")
                    if ward not in wards:
                        raise self.fail(item, f"{path}.wards", f"unknown ward {ward!r}",
                                        f"use one of: {', '.join(sorted(wards))}")
                    own.add(ward)
            out[nurse_id] = Nurse(id=nurse_id, name=name, pin=pin, wards=frozenset(own))
        return out

    def wards(self, node: yaml.Node) -> dict[str, Ward]:
        """``wards:``; a patient may lie on one ward only."""
        out: dict[str, Ward] = {}
        seen: dict[str, tuple[str, int]] = {}
        for ward_id, (key_node, value) in self.mapping(node, "wards", None).items():
            path = f"wards.{ward_id}"
            self.ident(key_node, path)
            entries = self.mapping(value, path, _WARD_KEYS, ("patients",), owner=key_node)
            patients = self.patients(entries["patients"][1], f"{path}.patients", ward_id, seen)
            name = self.text(entries["name"][1], f"{path}.name") if "name" in entries else ward_id
            unit = "mg/dL"
            if "glucose_unit" in entries:
                unit = self.text(entries["glucose_unit"][1], f"{path}.glucose_unit")
                if unit not in GLUCOSE_UNITS:
                    raise self.fail(entries["glucose_unit"][1], f"{path}.glucose_unit", f"unknown unit {unit!r}",
                                    f"use one of: {', '.join(GLUCOSE_UNITS)}")
            beds = self.beds(entries["beds"][1], f"{path}.beds", set(patients)) if "beds" in entries else {}
            out[ward_id] = Ward(id=ward_id, name=name, patients=frozenset(patients), glucose_unit=unit, beds=beds)
        if not out:
            raise self.fail(node, "wards", "no ward defined", "add a ward with its patients")
        return out

    def beds(self, node: yaml.Node, path: str, patients: set[str]) -> dict[str, Bed]:
        """``beds: {p0001: {bed: "12A", name: "A. Lima"}}``: patients of this ward only."""
        out: dict[str, Bed] = {}
        for patient, (key_node, value) in self.mapping(node, path, None).items():
            where = f"{path}.{patient}"
            if self.ident(key_node, where) not in patients:
                raise self.fail(key_node, where, f"{patient} is not a patient of this ward",
                                "list the patient under `patients:` first")
            entries = self.mapping(value, where, _BED_KEYS, owner=key_node)
            texts = {}
            for key in _BED_KEYS:
                text = self.text(entries[key][1], f"{where}.{key}").strip() if key in entries else ""
                if len(text) > 64 or not text.isprintable():
                    raise self.fail(entries[key][1], f"{where}.{key}", "at most 64 printable characters",
                                    "shorten it")
                texts[key] = text
            out[patient] = Bed(bed=texts["bed"], name=texts["name"])
        return out

    def patients(self, node: yaml.Node, path: str, ward: str, seen: dict[str, tuple[str, int]]) -> list[str]:
        """A ward's patient list."""
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, path, "expected a list of patient ids",
                            "write [p0001, p0002] or one `- p0001` per line")
        out = []
        for item in node.value:
            patient = self.ident(item, path)
            line = item.start_mark.line + 1
            if patient in seen:
                other, other_line = seen[patient]
                raise self.fail(item, path, f"patient {patient} is already on ward {other} (line {other_line})",
                                "list each patient on one ward only")
            seen[patient] = (ward, line)
            out.append(patient)
        return out

    def stations(self, node: yaml.Node, wards: Mapping[str, Ward]) -> dict[str, Station]:
        """``stations:``; each names an existing ward and a valid hash."""
        out: dict[str, Station] = {}
        for station_id, (key_node, value) in self.mapping(node, "stations", None).items():
            path = f"stations.{station_id}"
            self.ident(key_node, path)
            entries = self.mapping(value, path, _STATION_KEYS, ("ward", "password_hash"), owner=key_node)
            ward_node = entries["ward"][1]
            ward = self.ident(ward_node, f"{path}.ward")
            if ward not in wards:
                raise self.fail(ward_node, f"{path}.ward", f"unknown ward {ward!r}",
                                f"use one of: {', '.join(sorted(wards))}")
            hash_node = entries["password_hash"][1]
            try:
                password = PasswordHash.parse(self.text(hash_node, f"{path}.password_hash"))
            except ValueError as exc:
                raise self.fail(hash_node, f"{path}.password_hash", str(exc), _HINT_HASH) from exc
            name = self.text(entries["name"][1], f"{path}.name") if "name" in entries else station_id
            out[station_id] = Station(id=station_id, ward=ward, password=password, name=name)
        return out
