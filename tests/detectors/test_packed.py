"""Packed checkpoints (state record version 2, :mod:`detectors.packed`): exact round trips, the same
content as version 1 records, and every malformed record refused with StateError, changing nothing."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from detectors import Engine, RuleSet, StateError, packed
from detectors.const import METRIC_NAMES
from tests.detectors.helpers import (
    T0,
    all_rulesets,
    device_streams,
    dicts,
    json_roundtrip,
    rulesets,
    run,
    run6,
    series,
    split,
    streams,
    tachycardia_rule,
)
from tests.detectors.reference import ReferenceEngine

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def packed_copy(engine: Engine, rules: RuleSet) -> Engine:
    """A fresh engine restored from ``engine``'s packed records of every patient."""
    patients = engine.registry.ids()
    restored = Engine(rules)
    for patient, record in zip(patients, engine.export_packed(patients), strict=True):
        restored.import_packed(patient, record)
    return restored


@SETTINGS
@given(rules=all_rulesets(), samples=device_streams(), seed=st.integers())
def test_packed_records_hold_what_json_records_hold(rules: RuleSet, samples: Any, seed: int) -> None:
    engine = Engine(rules)
    for batch in split(samples, [len(samples) // 2], random.Random(seed)):
        run6(engine, batch, now=T0)
    engine.tick(T0 + 3600)
    restored = packed_copy(engine, rules)
    assert json_roundtrip(restored.export_all()) == json_roundtrip(engine.export_all())
    # ... and a packed record of the restored engine reads back to the same again (a fixed point)
    assert json_roundtrip(packed_copy(restored, rules).export_all()) == json_roundtrip(engine.export_all())


@SETTINGS
@given(rules=rulesets(), samples=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8), seed=st.integers())
def test_checkpoint_and_restore_packed_between_any_batches(rules: RuleSet, samples: Any, cuts: Any, seed: int) -> None:
    """A worker that restores every patient from its packed checkpoint after each batch behaves the same."""
    reference = ReferenceEngine(rules)
    engine = Engine(rules)
    for batch in split(samples, cuts, random.Random(seed)):
        assert dicts(run(engine, batch)) == dicts(reference.process(batch))
        engine = packed_copy(engine, rules)


@SETTINGS
@given(rules=all_rulesets(), samples=device_streams())
def test_packed_export_of_any_subset_in_any_order_is_per_patient(rules: RuleSet, samples: Any) -> None:
    """Records built together are the records built alone (grouping by rules changes nothing)."""
    engine = Engine(rules)
    run6(engine, samples, now=T0)
    patients = [*reversed(engine.registry.ids()), "nobody"]
    together = engine.export_packed(patients)
    assert together == [engine.export_packed([p])[0] for p in patients]
    assert together[-1] == packed.EMPTY


def test_a_json_record_of_the_previous_version_still_reads() -> None:
    rules = RuleSet(rules=(tachycardia_rule(),))
    old = Engine(rules)
    run(old, series("p", "heart_rate", 0, [130] * 11))
    fresh = Engine(rules)
    fresh.import_state("p", json_roundtrip(old.export_state("p")))
    restored = Engine(rules)
    restored.import_packed("p", fresh.export_packed(["p"])[0])
    assert restored.export_state("p") == old.export_state("p")
    assert len(restored.open_alerts()) == 1


# --- malformed records -------------------------------------------------------------------------------


@pytest.fixture
def engine() -> Engine:
    e = Engine(RuleSet(rules=(tachycardia_rule(),)))
    run(e, series("p", "heart_rate", 0, [130] * 11))  # an open alert, a run, a watermark
    return e


def _refused(engine: Engine, record: bytes) -> None:
    before = engine.export_state("p")
    with pytest.raises(StateError):
        engine.import_packed("p", record)
    assert engine.export_state("p") == before
    assert len(engine.open_alerts()) == 1


def _record(*, marks: Sequence[tuple[int, float, bytes]] = (), rules: Sequence[tuple[bytes, np.ndarray]] = (),
            version: int = packed.PACKED_VERSION) -> bytes:
    """A record built from its parts (``rules``: id and entries of one patient)."""
    parts = [struct.pack("<2sBH", packed.MAGIC, version, len(marks))]
    parts += [packed.mark(m, t, d) for m, t, d in marks]
    table, masks, _, values, _ = packed.encode_rules(1, [r for r, _ in rules], [row[None, :] for _, row in rules])
    return packed.sealed(b"".join((*parts, table, masks, values)))


def _tachycardia_row(engine: Engine) -> np.ndarray:
    decoded = packed.decode(engine.export_packed(["p"])[0])
    return decoded.rules[0][1].copy()


def test_every_truncation_is_refused(engine: Engine) -> None:
    record = engine.export_packed(["p"])[0]
    for n in range(len(record)):
        _refused(engine, record[:n])
        _refused(engine, packed.sealed(record[:n][:-4]) if n > 4 else record[:n])  # re-sealed after the cut


def test_bytes_after_the_end_are_refused(engine: Engine) -> None:
    record = engine.export_packed(["p"])[0]
    _refused(engine, record + b"\0")
    _refused(engine, packed.sealed(record[:-4] + b"\0" * 8))  # with a checksum that matches


def test_another_version_is_refused(engine: Engine) -> None:
    record = engine.export_packed(["p"])[0]
    for version in (0, 1, 3, 255):
        _refused(engine, packed.sealed(record[:2] + bytes([version]) + record[3:-4]))


def test_a_flipped_bit_is_refused(engine: Engine) -> None:
    record = engine.export_packed(["p"])[0]
    for i in range(len(record)):
        _refused(engine, record[:i] + bytes([record[i] ^ 0x10]) + record[i + 1:])


@pytest.mark.parametrize(
    ("entry", "value"),
    [
        (0, np.inf),  # last_t
        (0, -np.inf),
        (4, np.inf),  # clear_start
        (5, 4.0),  # alert level: 3 levels
        (5, -1.0),
        (5, 1.5),
        (5, 300.0),
        (8, 2.0),  # acked: a flag
        (8, 0.5),
        (8, np.nan),
    ],
)
def test_values_that_do_not_fit_are_refused(engine: Engine, entry: int, value: float) -> None:
    row = _tachycardia_row(engine)
    row[entry] = value
    _refused(engine, _record(rules=[(packed.rule_id("tachycardia"), row)]))


def test_structural_faults_are_refused(engine: Engine) -> None:
    rid, row = packed.rule_id("tachycardia"), _tachycardia_row(engine)
    _refused(engine, _record(rules=[(rid, row[:-1])]))  # another width than the rule's
    _refused(engine, _record(rules=[(rid, np.append(row, 1.0))]))
    _refused(engine, _record(rules=[(rid, row), (rid, row)]))  # the same rule twice
    _refused(engine, _record(marks=[(len(METRIC_NAMES), T0, b"")]))  # an unknown metric
    _refused(engine, _record(marks=[(0, T0, b""), (0, T0 + 1, b"")]))  # the same watermark twice
    _refused(engine, _record(marks=[(0, T0, b"\xff\xfe")]))  # a device id that is not UTF-8
    _refused(engine, _record(marks=[(0, np.inf, b"")]))
    _refused(engine, _record(marks=[(0, np.nan, b"")]))
    _refused(engine, b"")
    _refused(engine, b"{}")
    _refused(engine, packed.MAGIC)


def test_mask_faults_are_refused(engine: Engine) -> None:
    record = bytearray(_record(rules=[(packed.rule_id("tachycardia"), _tachycardia_row(engine))]))
    at = 5 + 2 + 10  # head, rule count, the rule's id and width: the present mask
    width = len(_tachycardia_row(engine))
    mask_len = (width + 7) // 8
    both = bytearray(record)
    both[at + mask_len] |= both[at] & -both[at]  # an entry present and NaN
    _refused(engine, packed.sealed(bytes(both[:-4])))
    padding = bytearray(record)
    padding[at + mask_len - 1] |= 0x80  # a bit beyond the width
    assert width % 8
    _refused(engine, packed.sealed(bytes(padding[:-4])))


def test_unknown_rules_are_ignored_and_values_at_the_limits_are_kept(engine: Engine) -> None:
    row = _tachycardia_row(engine)
    row[0] = np.finfo(np.float64).max  # last_t: any finite time
    row[1] = -0.0  # the info-level run started at -0.0 (exact, not 0.0)
    record = _record(marks=[(0, np.finfo(np.float64).max, ("é" * 300).encode()), (0, T0, b"")],
                     rules=[(packed.rule_id("gone"), np.ones(3)), (packed.rule_id("tachycardia"), row)])
    engine.import_packed("p", record)
    state = engine.export_state("p")
    assert state["rules"]["tachycardia"]["last_t"] == np.finfo(np.float64).max
    assert str(state["rules"]["tachycardia"]["runs"]["info"]) == "-0.0"
    assert state["devices"] == {"é" * 300: {"heart_rate": np.finfo(np.float64).max}}
    assert packed.decode(engine.export_packed(["p"])[0]).rules[0][1][1].tobytes() == np.float64(-0.0).tobytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=all_rulesets(), samples=device_streams(), data=st.data())
def test_fuzz_packed_records_import_or_raise_state_error(rules: RuleSet, samples: Any, data: st.DataObject) -> None:
    """Any change to a record, re-sealed so the checksum passes: imported or StateError, never a crash;
    what is imported exports and goes on processing."""
    engine = Engine(rules)
    run6(engine, samples, now=T0)
    patients = engine.registry.ids()
    if not patients:
        return
    patient = data.draw(st.sampled_from(patients))
    body = bytearray(engine.export_packed([patient])[0][:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        kind = data.draw(st.sampled_from(("byte", "f64", "cut", "insert")))
        if kind == "byte":
            body[at] = data.draw(st.integers(0, 255))
        elif kind == "f64" and at + 8 <= len(body):
            body[at: at + 8] = struct.pack("<d", data.draw(st.floats(allow_nan=True, allow_infinity=True)))
        elif kind == "cut":
            del body[at: at + data.draw(st.integers(1, 16))]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    fresh = Engine(rules)
    run6(fresh, samples[:3], now=T0)
    before = {p: json_roundtrip(fresh.export_state(p)) for p in patients}
    try:
        fresh.import_packed(patient, packed.sealed(bytes(body)))
    except StateError:
        assert {p: json_roundtrip(fresh.export_state(p)) for p in patients} == before
    run6(fresh, samples[-3:], now=T0)
    json_roundtrip(fresh.export_all())
    fresh.export_packed(fresh.registry.ids())


def test_checksum_is_crc32_of_the_body(engine: Engine) -> None:
    record = engine.export_packed(["p"])[0]
    assert struct.unpack("<I", record[-4:])[0] == zlib.crc32(record[:-4])


def _content(engine: Engine, ids: list[str]) -> list[Any]:
    """Each patient's packed record, bit for bit, but watermarks in any order (they are written in the
    order of the engine's device codes, which depends on the order devices were first seen)."""
    return [(sorted(d.marks), [(rid, row.tobytes()) for rid, row in d.rules])
            for d in map(packed.decode, engine.export_packed(ids))]


_ODD = st.sampled_from((np.nan, np.inf, -np.inf, -0.0, 0.0, 0.5, 1.0, 2.0, -1.0, 3.0, 4.0, 1e300, T0, T0 + 1, 64.0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=[Phase.generate])
@given(rules=all_rulesets(), samples=device_streams(), data=st.data())
def test_importing_many_packed_records_is_importing_them_one_by_one(
    rules: RuleSet, samples: Any, data: st.DataObject
) -> None:
    """A reload's batched import (entries checked per rule for all records at once, written straight
    into the slots when a round trip through a version 1 record would not change them) ends in the
    same state, bit for bit, with the same errors as importing each record on its own: records with
    entries changed to odd values, repeated patients, records that are not intact."""
    engine = Engine(rules)
    run6(engine, samples, now=T0)
    engine.tick(T0 + 3600)
    patients = engine.registry.ids()
    records = list(zip(patients, engine.export_packed(patients), strict=True))
    for i in sorted(set(data.draw(st.lists(st.integers(0, max(len(records) - 1, 0)), max_size=6)))) if records else []:
        pid, raw = records[i]
        decoded = packed.decode(raw)
        rules_ = [(rid, row.copy()) for rid, row in decoded.rules]
        for _, row in rules_:
            for _ in range(data.draw(st.integers(0, 3))):
                if len(row):
                    row[data.draw(st.integers(0, len(row) - 1))] = data.draw(_ODD)
        marks = [(m, t, d.encode()) for m, d, t in decoded.marks]
        if marks and data.draw(st.booleans()):
            marks[0] = (marks[0][0], data.draw(_ODD), marks[0][2])
        body = _record(marks=marks, rules=rules_)
        records[i] = (pid, body if data.draw(st.integers(0, 9)) else body[:-1])
    if records and data.draw(st.booleans()):
        records.append(records[0])  # a patient twice: the later record wins
    one_by_one, together = Engine(rules), Engine(rules)
    errors = {}
    for pid, raw in records:
        try:
            one_by_one.import_packed(pid, raw)
        except StateError as exc:
            errors[pid] = str(exc)
    assert {pid: str(exc) for pid, exc in together.import_packed_many(records).items()} == errors
    ids = one_by_one.registry.ids()
    assert sorted(together.registry.ids()) == sorted(ids)
    assert _content(together, ids) == _content(one_by_one, ids)
    assert json_roundtrip(together.export_all()) == json_roundtrip(one_by_one.export_all())
    assert sorted(a.alert_id for a in together.open_alerts()) == sorted(a.alert_id for a in one_by_one.open_alerts())
    run6(together, samples[-3:], now=T0 + 7200)
    run6(one_by_one, samples[-3:], now=T0 + 7200)
    assert _content(together, ids) == _content(one_by_one, ids)


def test_any_entry_of_any_default_rule_set_to_an_odd_value_imports_or_is_refused() -> None:
    """Every entry of every default rule's state, for patients in every scripted episode (each shape
    of a rule's state once: which entries are empty), set in turn to each odd value: the one-record
    import and a reload's batched import both take it or raise StateError, the same way (found by
    the fuzz test above: an infinite beat counter in the rhythm rule's state made the one-record
    import fail with numpy's invalid-value error, not a StateError)."""
    from rpm_core.rules import default_rules_path, load_rules
    from tests.detectors.scripted import scripted

    rules = load_rules(default_rules_path())
    engine = Engine(rules)
    rows = scripted()
    rows.sort(key=lambda r: r[2])
    patients, metrics, t, value, flags, devices = zip(*rows, strict=True)
    engine.process(engine.batch(patients, metrics, t, value, flags, devices))
    engine.tick(max(t) + 60)
    alone_engine, together_engine, n = Engine(rules), Engine(rules), 0
    shapes: set[tuple[object, bytes]] = set()
    for pid, raw in zip(engine.registry.ids(), engine.export_packed(engine.registry.ids()), strict=True):
        decoded = packed.decode(raw)
        marks = [(m, tm, d.encode()) for m, d, tm in decoded.marks]
        for k, (rid, row) in enumerate(decoded.rules):
            shape = (rid, np.isnan(row).tobytes())  # a rule's state of the same shape as one done: done
            if shape in shapes:
                continue
            shapes.add(shape)
            for entry in range(len(row)):
                for odd in (np.nan, np.inf, -1.0, 1e300):
                    changed = row.copy()
                    changed[entry] = odd
                    rules_ = [*decoded.rules[:k], (rid, changed), *decoded.rules[k + 1:]]
                    record = _record(marks=marks, rules=rules_)
                    n += 1
                    new = f"{pid}-{n}"  # a patient new to both engines, as in a reload
                    try:
                        alone_engine.import_packed(new, record)
                        alone = None
                    except StateError as exc:
                        alone = str(exc)
                    together = together_engine.import_packed_many([(new, record)])
                    assert (str(together[new]) if new in together else None) == alone, (pid, rid, entry, odd)
    assert n > 1000 and len({rid for rid, _ in shapes}) == len(rules.rules)  # every default rule's entries
