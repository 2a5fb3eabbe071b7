"""Packed checkpoints: a patient's detector state as a compact binary record (state record v2).

The worker checkpoints the state of every patient whose state changed about once per
``RPM_CHECKPOINT_INTERVAL_S``; with many patients these checkpoints were most of its cost per
reading (issue 20), and most of *their* cost was building a nested dict per patient (one small
dict and a few ``tolist()`` per rule) for JSON. A packed record is built from the detectors'
per-patient arrays (:meth:`detectors.base.Detector.state_columns`) for many patients at once:
one gather per array for all of them, then one encoding per group of patients that have state in
the same rules, and a few byte slices per patient.

Layout (little-endian)::

    magic b"\\xa7S", version u8 (= 2), watermarks u16
    per watermark: metric code u8, time f64, device id length u16, device id (UTF-8; empty: unnamed)
    rules u16, then per rule (those the patient has state in): id (8 bytes: BLAKE2b-64 of the rule
        name), width u16 (entries)
    per rule: a "present" mask and a "NaN" mask (ceil(width / 8) bytes each; bit i is entry i,
        least significant bit first)
    the present entries of every rule, as f64 (an entry not present is 0.0, or NaN if its NaN bit is set)
    CRC-32 of everything before it, u32

Entries are the state arrays' values as float64, in :meth:`state_columns` order (booleans and alert
levels are small integers, exact in float64; every other entry is a float64 already), so a record
holds the arrays bit for bit. A version 1 record (JSON, written by workers before this one) starts
with ``{`` and is still read (:func:`is_packed` tells them apart).

Reading checks the record's structure here (:func:`decode`: checksum, version, lengths, masks: a
:class:`~detectors.errors.StateError` for anything else) and the engine checks the values
(:meth:`detectors.engine.Engine.import_packed`: integer and boolean entries must be exact, and each
rule's entries then pass the same checks as a version 1 record). A reload reads all its records at
once (:meth:`~detectors.engine.Engine.import_packed_many`): each rule's entries of all of them are
checked together, vectorized (:meth:`Layout.fits`, :meth:`detectors.base.Detector.settle`: what a round
trip through a version 1 record would leave unchanged) and written straight into the slots
(:func:`put_many`); a record with anything else takes the per-record path, which normalizes it or
raises the StateError.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from detectors.batch import FloatArray, IntArray
from detectors.columns import StateColumn
from detectors.errors import StateError

PACKED_VERSION: Final = 2
MAGIC: Final = b"\xa7S"
_HEAD: Final = struct.Struct("<2sBH")  # magic, version, watermarks
_MARK: Final = struct.Struct("<BdH")  # metric code, time, device id length
_COUNT: Final = struct.Struct("<H")  # rules
_RULE: Final = struct.Struct("<8sH")  # rule id, width
_CRC: Final = struct.Struct("<I")
MAX_COUNT: Final = 0xFFFF  # watermarks, rules, entries per rule, bytes of a device id
_NAN_BITS: Final = int(np.array(np.nan).view(np.uint64))


def rule_id(name: str) -> bytes:
    """The 8-byte id of a rule in packed records (a hash of its name: names are what identify rules
    across rule-set versions, and a rule no longer in the rule set is ignored on import)."""
    return hashlib.blake2b(name.encode(), digest_size=8).digest()


def is_packed(raw: bytes) -> bool:
    """Whether ``raw`` is a packed record (else a version 1 JSON record, or garbage)."""
    return raw[:2] == MAGIC


def gather(columns: Sequence[StateColumn], patients: IntArray) -> FloatArray:
    """The entries of ``patients`` (rows) in ``columns`` as float64, shape ``(len(patients), width)``."""
    parts = []
    for a, axis in columns:
        if a.ndim == 1:
            parts.append(a[patients][:, None])
        elif axis == 0:
            parts.append(a[patients])
        else:
            parts.append(a[:, patients].T)
    if not parts:
        return np.zeros((len(patients), 0))
    return np.concatenate(parts, axis=1, dtype=np.float64, casting="unsafe")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the entries of a list of state columns that must be whole numbers are (they do not change
    when the arrays grow): booleans (0 or 1) and integers (0 to ``top``)."""

    width: int
    flags: IntArray
    integers: IntArray
    top: float

    @classmethod
    def of(cls, columns: Sequence[StateColumn]) -> Layout:
        """The layout of ``columns``."""
        flags: list[int] = []
        integers: list[int] = []
        top = 0
        at = 0
        for a, axis in columns:
            n = 1 if a.ndim == 1 else a.shape[1 - axis]
            if a.dtype == np.bool_:
                flags += range(at, at + n)
            elif a.dtype.kind in "iu":
                integers += range(at, at + n)
                top = max(top, int(np.iinfo(a.dtype).max))
            at += n
        return cls(at, np.array(flags, np.int64), np.array(integers, np.int64), float(top))

    def fits(self, rows: FloatArray) -> npt.NDArray[np.bool_]:
        """Per row of ``rows`` (rows × this width): every entry fits its array (as :meth:`check`)."""
        flags = rows[:, self.flags]
        values = rows[:, self.integers]
        whole = (values >= 0) & (values <= self.top) & (values == np.floor(values))
        ok: npt.NDArray[np.bool_] = ((flags == 0) | (flags == 1)).all(axis=1) & whole.all(axis=1)
        return ok

    def check(self, row: FloatArray) -> None:
        """:class:`StateError` unless ``row`` has this width and every entry fits its array."""
        if len(row) != self.width:
            raise StateError(f"state needs {self.width} entries, not {len(row)}")
        flags = row[self.flags]
        if not bool(((flags == 0) | (flags == 1)).all()):
            raise StateError("a flag of the state is neither 0 nor 1")
        values = row[self.integers]
        if not bool(((values >= 0) & (values <= self.top) & (values == np.floor(values))).all()):
            raise StateError("an integer of the state is not a whole number in range")


def put(columns: Sequence[StateColumn], slot: int, row: FloatArray) -> None:
    """Write ``row`` into ``slot`` of ``columns`` unchecked (the caller knows the entries fit).

    A read-only column is an all-NaN one held lazily (an episode table's raise-time ring, a signal
    rule's ``away``): entries for it must be NaN, which it holds already (see
    :meth:`detectors.base.Detector.materialize`)."""
    at = 0
    for a, axis in columns:
        if not a.flags.writeable:
            n = 1 if a.ndim == 1 else a.shape[1 - axis]
            if not np.isnan(row[at: at + n]).all():
                raise ValueError("a value for a lazily held all-NaN state column")
            at += n
            continue
        if a.ndim == 1:
            a[slot] = row[at]
            at += 1
            continue
        n = a.shape[1 - axis]
        if axis == 0:
            a[slot] = row[at: at + n]
        else:
            a[:, slot] = row[at: at + n]
        at += n


def split(columns: Sequence[StateColumn], rows: FloatArray) -> list[FloatArray]:
    """``rows`` (patients × entries of ``columns``) cut into one block per column, patients × the column's
    entries (views: writing a block writes ``rows``)."""
    blocks, at = [], 0
    for a, axis in columns:
        n = 1 if a.ndim == 1 else a.shape[1 - axis]
        blocks.append(rows[:, at: at + n])
        at += n
    return blocks


def put_many(columns: Sequence[StateColumn], slots: IntArray, rows: FloatArray) -> None:
    """Write ``rows`` (one per slot of ``slots``) into ``columns`` unchecked (the caller knows they fit;
    read-only columns as in :func:`put`)."""
    for (a, axis), block in zip(columns, split(columns, rows), strict=True):
        if not a.flags.writeable:
            if not np.isnan(block).all():
                raise ValueError("a value for a lazily held all-NaN state column")
            continue
        if a.ndim == 1:
            a[slots] = block[:, 0]
        elif axis == 0:
            a[slots] = block
        else:
            a[:, slots] = block.T


def encode_rules(
    n: int, rids: Sequence[bytes], rows: Sequence[FloatArray]
) -> tuple[bytes, bytes, int, bytes, list[int]]:
    """The rules' section of many patients' records, for patients that have state in the same rules.

    ``n``: patients; ``rids``: the rules' ids; ``rows``: per rule, its entries for every patient (n × entries,
    from :func:`gather`). Returns the rule table (shared by these patients), every patient's masks
    (``mask_len`` bytes each, one after the other), every patient's present entries, and the byte
    offsets of each patient's entries in them (one more than patients).
    """
    table = [_COUNT.pack(len(rids))]
    masks = []
    for rid, block in zip(rids, rows, strict=True):
        w = block.shape[1]
        if w > MAX_COUNT:
            raise ValueError(f"a rule's state of {w} entries does not fit a packed record")
        table.append(_RULE.pack(rid, w))
        bits = block.view(np.uint64)
        nan = bits == _NAN_BITS
        present = ~nan & (bits != 0)
        masks += [np.packbits(present, axis=1, bitorder="little"), np.packbits(nan, axis=1, bitorder="little")]
    if not rows:
        return table[0], b"", 0, b"", [0] * (n + 1)
    whole = np.concatenate(rows, axis=1)
    bits = whole.view(np.uint64)
    present = (bits != _NAN_BITS) & (bits != 0)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(present.sum(axis=1) * 8, out=offsets[1:])
    mask = np.concatenate(masks, axis=1)
    return b"".join(table), mask.tobytes(), mask.shape[1], whole[present].tobytes(), offsets.tolist()


def head(marks: int) -> bytes:
    """The start of a record with ``marks`` watermarks."""
    if marks > MAX_COUNT:
        raise ValueError(f"{marks} watermarks do not fit a packed record")
    return _HEAD.pack(MAGIC, PACKED_VERSION, marks)


def mark(metric: int, t: float, device: bytes) -> bytes:
    """One watermark (``device``: the UTF-8 device id, empty for the unnamed device)."""
    return _MARK.pack(metric, t, len(device)) + device


def sealed(body: bytes) -> bytes:
    """``body`` with its checksum: a complete record."""
    return body + _CRC.pack(zlib.crc32(body))


EMPTY: Final = sealed(head(0) + _COUNT.pack(0))  # the record of a patient with no state


@dataclass(frozen=True, slots=True)
class Decoded:
    """A packed record's contents: watermarks ``(metric code, device id, time)`` and rules ``(id, entries)``."""

    marks: list[tuple[int, str, float]]
    rules: list[tuple[bytes, FloatArray]]


def decode(raw: bytes) -> Decoded:
    """The contents of a packed record; :class:`StateError` if it is not a whole, intact record of
    this version (truncated, with bytes after its end, corrupted, another version)."""
    if len(raw) < _HEAD.size + _COUNT.size + _CRC.size or not is_packed(raw):
        raise StateError("not a packed state record (too short or no magic)")
    version = raw[2]
    if version != PACKED_VERSION:
        raise StateError(f"packed state record version {version} is not {PACKED_VERSION}")
    body = memoryview(raw)[: -_CRC.size]
    if zlib.crc32(body) != _CRC.unpack_from(raw, len(raw) - _CRC.size)[0]:
        raise StateError("packed state record is corrupt or truncated (checksum)")
    try:
        return _parse(body)
    except struct.error as exc:
        raise StateError(f"packed state record is truncated: {exc}") from exc


def _parse(body: memoryview) -> Decoded:
    _, _, n_marks = _HEAD.unpack_from(body, 0)
    at = _HEAD.size
    marks = []
    for _ in range(n_marks):
        metric, t, n = _MARK.unpack_from(body, at)
        at += _MARK.size
        device = _take(body, at, n)
        at += n
        try:
            marks.append((metric, device.decode(), t))
        except UnicodeDecodeError as exc:
            raise StateError("packed state record has a device id that is not UTF-8") from exc
    (n_rules,) = _COUNT.unpack_from(body, at)
    at += _COUNT.size
    table = [_RULE.unpack_from(body, at + i * _RULE.size) for i in range(n_rules)]
    at += n_rules * _RULE.size
    widths = [w for _, w in table]
    mask_bytes = [2 * ((w + 7) // 8) for w in widths]
    bits = np.unpackbits(np.frombuffer(_take(body, at, sum(mask_bytes)), np.uint8), bitorder="little")
    at += sum(mask_bytes)
    present, nan = _masks(bits.astype(np.bool_), widths)
    if bool((present & nan).any()):
        raise StateError("packed state record marks an entry both present and NaN")
    count = int(present.sum())
    values = np.frombuffer(_take(body, at, 8 * count), dtype="<f8")
    at += 8 * count
    if at != len(body):
        raise StateError(f"packed state record has {len(body) - at} bytes after its end")
    whole = np.where(nan, np.nan, 0.0)
    whole[present] = values
    rows = np.split(whole, np.cumsum(widths)[:-1]) if table else []
    return Decoded(marks, [(rid, row) for (rid, _), row in zip(table, rows, strict=True)])


def _masks(bits: npt.NDArray[np.bool_], widths: list[int]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The present and NaN bits of every entry from the rules' masks (padding bits must be clear)."""
    keep = np.zeros(len(bits), np.bool_)
    is_nan = np.zeros(len(bits), np.bool_)
    at = 0
    for w in widths:
        m = 8 * ((w + 7) // 8)
        keep[at: at + w] = True
        keep[at + m: at + m + w] = True
        is_nan[at + m: at + 2 * m] = True
        at += 2 * m
    if bool((bits & ~keep).any()):
        raise StateError("packed state record sets mask bits beyond a rule's width")
    return bits[keep & ~is_nan], bits[keep & is_nan]


def _take(body: memoryview, at: int, n: int) -> bytes:
    if at + n > len(body):
        raise StateError("packed state record is truncated")
    return bytes(body[at: at + n])
