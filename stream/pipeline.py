"""What a worker does with one micro-batch of readings records, independent of Faust.

1. decode the records into columnar groups (bad records → dead-letter);
2. load the state of patients this engine has not seen since the last rebalance from the
   :class:`StateStore` (a Faust table with a changelog in the worker);
3. build the ``vitals`` lines and one :class:`detectors.batch.SampleBatch` for all patients;
4. run the detectors once over the whole batch (vectorized, many patients at once);
5. checkpoint the state of every patient that changed into the store;
6. write vitals and alert state changes to InfluxDB (retrying; rejected points → dead-letter);
7. publish the alert events to ``rpm.alerts``.

The caller (the Faust agent) acknowledges the records only after :meth:`Pipeline.handle`
returned, so a crash anywhere here means redelivery, and redelivery is harmless: points are
keyed, alert ids are deterministic, and the engine drops samples it has already seen (its
"last seen" times are part of the checkpointed state, so this holds across a failover too).
"""

from __future__ import annotations

import bisect
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from detectors.batch import PatientRegistry, SampleBatch
from detectors.const import METRIC_NAMES
from detectors.engine import Conflicts
from detectors.errors import StateError
from detectors.events import AlertEvent
from detectors.packed import is_packed
from rpm_core.deadletter import ReasonLog, deadletter_record
from rpm_core.lineprotocol import AlertPoint, alert_line, vitals_lines
from rpm_core.sink import InfluxSink
from rpm_core.wire import encode_readings_record
from stream.records import Decoded, decode_records

_LOGGER = logging.getLogger(__name__)

# Upper bounds of the batch-size histogram (records per micro-batch; protocol.MAX_BATCH_RECORDS is 2000).
BATCH_BUCKETS: Final = (1, 10, 50, 100, 250, 500, 1000, 2000)

# How checkpoints are written (both are read): "packed" (state record version 2, detectors.packed) or
# "json" (version 1, what workers before packed checkpoints write and read: for a rolling upgrade,
# until no worker of the previous version is left). RPM_STATE_FORMAT in the worker.
STATE_FORMATS: Final = ("packed", "json")

SendFn = Callable[[bytes | None, bytes], Awaitable[None]]


class AlertEngine(Protocol):
    """The part of ``detectors.engine.Engine`` the pipeline uses."""

    @property
    def registry(self) -> PatientRegistry:
        """Patient id ↔ dense index."""

    def process(self, batch: SampleBatch, *, now: float | None = None) -> list[AlertEvent]:
        """Run every detector over a micro-batch (``now``: processing time, for escalation)."""

    @property
    def conflicts(self) -> Conflicts:
        """The last batch's samples that repeat an earlier one's key and time with another value."""

    def device_codes(self, devices: Sequence[str]) -> npt.NDArray[np.int32]:
        """Dense codes of device ids (registering new ones)."""

    def enroll(self, patients: Iterable[str], *, at: float | None = None) -> None:
        """Watch ``patients`` with the staleness rules even if they never send anything."""

    def tick(self, now: float) -> list[AlertEvent]:
        """Time-driven transitions (escalation, staleness)."""

    def acknowledge(self, alert_id: str, by: str, at: float) -> list[AlertEvent]:
        """Mark an open alert acknowledged."""

    def dirty_patients(self) -> list[str]:
        """Patients whose state changed since the last call."""

    def export_state(self, patient_id: str) -> dict[str, object]:
        """A patient's state, JSON-able."""

    def import_state(self, patient_id: str, state: dict[str, object]) -> None:
        """Restore a patient's state."""

    def export_packed(self, patient_ids: Sequence[str]) -> list[bytes]:
        """These patients' states as packed records (built together)."""

    def import_packed(self, patient_id: str, raw: bytes) -> None:
        """Restore a patient's state from a packed record."""

    def import_packed_many(self, records: Sequence[tuple[str, bytes]]) -> dict[str, StateError]:
        """Restore many patients' states from packed records (together); the errors by patient."""


class StateStore(Protocol):
    """Durable per-patient detector state (a Faust table in the worker, a dict in tests)."""

    def get(self, patient: str) -> bytes | None:
        """The stored state of ``patient``."""

    def put_many(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Store the states of these patients (readable at once; durable once :meth:`flush` returned)."""

    async def flush(self) -> None:
        """Hand every state stored so far to the durable log (the table's changelog producer): what
        the offsets acknowledged from now on depend on. The Faust store's records are then in the
        producer, which Faust's offset commit flushes before it commits."""

    def patients(self) -> list[str]:
        """Every patient with stored state (on this worker's partitions)."""

    @property
    def problem(self) -> str | None:
        """Why stored states are not all durable, while they are not (None: they are)."""


class DictStore:
    """A :class:`StateStore` in memory (tests, ``rpm backtest``)."""

    problem: str | None = None

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, patient: str) -> bytes | None:
        """The stored state of ``patient``."""
        return self.data.get(patient)

    def put(self, patient: str, state: bytes) -> None:
        """Store the state of ``patient``."""
        self.data[patient] = state

    def put_many(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Store the states of these patients."""
        self.data.update(records)

    async def flush(self) -> None:
        """Nothing to hand on: a dict is all there is."""

    def patients(self) -> list[str]:
        """Every patient with stored state."""
        return list(self.data)


@dataclass
class PipelineStats:
    """Counters for metrics, logs and tests."""

    records: int = 0
    samples: int = 0
    checkpoints: int = 0
    state_loads: int = 0
    acks: int = 0
    alerts: int = 0
    batches: int = 0
    detector_s: float = 0.0
    handle_s: float = 0.0  # wall time in handle(): decode, detect, write, publish (waits included)
    deadlettered: int = 0
    reasons: ReasonLog = field(default_factory=ReasonLog)
    ticks: int = 0
    reloads: int = 0
    state_resets: int = 0  # patients whose stored state could not be read (started afresh)
    enrolled: int = 0  # roster patients enrolled at the last reload (gauge)
    patients: int = 0  # patients the engine holds state for (gauge, updated per batch)
    # Alert events published, by (rule, state).
    alerts_by: dict[tuple[str, str], int] = field(default_factory=dict)
    # Records per micro-batch: counts per upper bound of BATCH_BUCKETS (last: +Inf), and their sum.
    batch_records: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))

    def observe_batch(self, records: int) -> None:
        """Count one micro-batch of ``records`` records in the batch-size histogram."""
        self.batch_records[bisect.bisect_left(BATCH_BUCKETS, records)] += 1


def alert_point(event: AlertEvent) -> AlertPoint:
    """The InfluxDB point of an alert event."""
    return AlertPoint(
        alert_id=event.alert_id, patient=event.patient, rule=event.rule, severity=event.severity,
        metric=event.metric, state=event.state, time_s=event.time, value=event.value,
        message=event.message, by=event.by,
    )


class Pipeline:
    """Decode → detect → write, for one worker.

    ``state_format``: how checkpoints are written (:data:`STATE_FORMATS`); both formats are read.

    ``enrolled`` names the patients to watch for staleness even if they never send anything: the
    worker passes the roster patients whose partitions it owns now (see
    :func:`stream.protocol.owned_patients`); it is asked again on every :meth:`reload`. Default: nobody.
    """

    def __init__(
        self, *, engine_factory: Callable[[], AlertEngine], sink: InfluxSink, store: StateStore | None = None,
        clock: Callable[[], float] = time.time, enrolled: Callable[[], Sequence[str]] | None = None,
        state_format: str = STATE_FORMATS[0],
    ) -> None:
        if state_format not in STATE_FORMATS:
            raise ValueError(f"state format {state_format!r}: expected one of {', '.join(STATE_FORMATS)}")
        self._packed = state_format == "packed"
        self._engine_factory = engine_factory
        self._enrolled = enrolled
        self.engine = engine_factory()
        self.store: StateStore = store if store is not None else DictStore()
        self._loaded: set[str] = set()
        # patient -> (when, batch seq) its state first changed since its last checkpoint; oldest first
        self._pending: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self._last_seq = 0
        self.sink = sink
        self._send_alert: SendFn | None = None
        self._send_deadletter: SendFn | None = None
        self._clock = clock
        self.stats = PipelineStats()
        # patient -> the pipeline's clock when a reading of theirs last arrived (heartbeats: ward silence)
        self.last_seen: dict[str, float] = {}
        # (when, patient) whose stored state was unreadable, oldest first (heartbeats: a technical alert)
        self._resets: collections.deque[tuple[float, str]] = collections.deque(maxlen=10_000)

    def bind(self, *, send_alert: SendFn, send_deadletter: SendFn) -> None:
        """Connect the outputs (Kafka topics in the worker)."""
        self._send_alert = send_alert
        self._send_deadletter = send_deadletter

    def use_store(self, store: StateStore) -> None:
        """Switch to ``store`` (the worker's table, once Faust created it)."""
        self.store = store

    def reload(self) -> None:
        """Start from the store again: after a rebalance the partitions (patients) may have moved.

        A fresh engine gets the state of every patient the store holds (the partitions now
        assigned here), so time-driven transitions (escalation) happen even for patients who
        send nothing; patients whose partitions left are forgotten.

        Then the patients of ``enrolled`` are enrolled for staleness, their silence clock starting
        now unless their stored state already has one (a patient enrolled before keeps its clock,
        so a failover does not postpone their staleness alert).
        """
        self.engine = self._engine_factory()
        self._loaded = set()
        self._pending = collections.OrderedDict()
        self._load(self.store.patients())
        stored = len(self._loaded)
        enrolled = list(self._enrolled()) if self._enrolled is not None else []
        if enrolled:
            self._load(enrolled)  # their stored state first, so enrolment keeps their clocks
            self.engine.enroll(enrolled, at=self._clock())
        self.stats.enrolled = len(enrolled)
        self.stats.reloads += 1
        _LOGGER.info("detector state reloaded for %d patients; %d roster patients enrolled", stored, len(enrolled))

    def _load(self, patients: list[str]) -> None:
        """Import the stored state of ``patients`` (not loaded yet); packed records all at once."""
        records: list[tuple[str, bytes]] = []
        for patient in patients:
            if patient in self._loaded:
                continue
            self._loaded.add(patient)
            raw = self.store.get(patient)
            if raw is None:
                continue
            if is_packed(raw):
                records.append((patient, raw))
                continue
            try:  # version 1 (JSON): written by a worker before packed checkpoints
                self.engine.import_state(patient, orjson.loads(raw))
                self.stats.state_loads += 1
            except (StateError, orjson.JSONDecodeError) as exc:
                self._unreadable(patient, exc)
        errors = self.engine.import_packed_many(records) if records else {}
        self.stats.state_loads += len(records) - len(errors)
        for patient, error in errors.items():
            self._unreadable(patient, error)

    def _unreadable(self, patient: str, exc: Exception) -> None:
        # A record this version cannot read: start the patient fresh rather than stop the stream,
        # and say so (the heartbeat carries it to the watchdog: a technical alert names the patient).
        _LOGGER.error("stored detector state of patient %s is unreadable (%s); starting it afresh", patient, exc)
        self.stats.state_resets += 1
        self._resets.append((self._clock(), patient))

    def recent_resets(self, hold_s: float) -> tuple[list[str], int]:
        """The patients whose stored state was unreadable within the last ``hold_s`` (most recent
        first, each once) and how many such resets there were."""
        cutoff = self._clock() - hold_s
        while self._resets and self._resets[0][0] < cutoff:
            self._resets.popleft()
        return list(dict.fromkeys(p for _t, p in reversed(self._resets))), len(self._resets)

    def checkpoint(self) -> None:
        """Store the state of every patient whose state changed (outputs delivered first!)."""
        self._checkpoint()

    def _checkpoint(self) -> None:
        self.note_dirty()
        self._store_states(list(self._pending))
        self._pending = collections.OrderedDict()

    def _store_states(self, patients: list[str]) -> None:
        """Write these patients' states (packed records, built together: :mod:`detectors.packed`)."""
        if self._packed:
            records = self.engine.export_packed(patients)
        else:
            records = [orjson.dumps(self.engine.export_state(patient)) for patient in patients]
        if patients:
            self.store.put_many(list(zip(patients, records, strict=True)))
        self.stats.checkpoints += len(patients)

    async def flush_states(self) -> None:
        """Hand the states written so far to the store's durable log (see :meth:`StateStore.flush`);
        before acknowledging anything that depends on them."""
        await self.store.flush()

    # Rolling checkpoints (the worker's group commit, see stream.protocol.Committer): a patient whose
    # state changed is written once it has been pending for a while, oldest first, so a patient
    # sending every few seconds is written once per interval rather than once per message, and the
    # work is spread evenly instead of arriving all at once.

    def note_dirty(self, seq: int | None = None) -> None:
        """Patients whose state changed (everything delivered) join the pending set, tagged with the
        batch ``seq`` that first changed them since their last checkpoint (default: the last seq
        noted; seqs must not decrease, so the oldest pending entry has the smallest)."""
        if seq is not None:
            self._last_seq = max(self._last_seq, seq)
        now = self._clock()
        for patient in self.engine.dirty_patients():
            self._pending.setdefault(patient, (now, self._last_seq))

    @property
    def pending(self) -> int:
        """How many patients' states changed and are not checkpointed yet."""
        return len(self._pending)

    def now(self) -> float:
        """The pipeline's clock."""
        return self._clock()

    def checkpoint_older_than(self, age_s: float, *, limit: int | None = None) -> int | None:
        """Write the states pending for ``age_s`` or more, oldest first, at most ``limit`` of them;
        return the first batch seq some pending state still depends on (``None``: nothing is pending)."""
        cutoff = self._clock() - age_s
        due: list[str] = []
        frontier = None
        for patient, (since, seq) in self._pending.items():  # oldest first: stops at the first not due
            if since > cutoff or (limit is not None and len(due) >= limit):
                frontier = seq
                break
            due.append(patient)
        self._store_states(due)
        for patient in due:  # only once written: a failed write leaves them pending
            del self._pending[patient]
        return frontier

    def checkpoint_patients(self, patients: Iterable[str]) -> None:
        """Write these patients' states now (and take them off the pending set)."""
        self.note_dirty()
        due = [patient for patient in dict.fromkeys(patients) if patient in self._pending]
        self._store_states(due)
        for patient in due:
            del self._pending[patient]

    async def handle(self, values: list[bytes], *, checkpoint: bool = True) -> None:
        """Process one micro-batch of ``rpm.readings`` record values: decode, detect, write, publish,
        then checkpoint (``checkpoint=False``: the caller checkpoints later, see
        :class:`stream.protocol.Committer`). The outputs always go out before the state that reflects
        them is checkpointed: a checkpoint never holds an effect whose output could still be lost.
        """
        began = time.perf_counter()
        try:
            await self._handle(values, checkpoint=checkpoint)
        finally:
            self.stats.handle_s += time.perf_counter() - began

    async def _handle(self, values: list[bytes], *, checkpoint: bool) -> None:
        # Times further ahead of this worker's clock than the bridge lets through are a rogue
        # producer's: such a time would become the device's watermark and silence the patient.
        decoded = decode_records(values, now=self._clock())
        for raw, reason in decoded.rejected:
            await self._deadletter("worker", reason, "rpm.readings", raw)
        patients = list(dict.fromkeys(decoded.patient))
        self._load(patients)
        lines = self._vitals_lines(decoded)
        started = time.perf_counter()
        now = self._clock()  # processing time: escalation deadlines run from here for late data
        self.last_seen.update(dict.fromkeys(patients, now))
        events = self.engine.process(self._sample_batch(decoded), now=now) if decoded.samples else []
        self.stats.detector_s += time.perf_counter() - started
        if decoded.samples and len(self.engine.conflicts.dropped):
            lines = await self._settle_conflicts(decoded, self.engine.conflicts, lines)
        await self._write(lines + [alert_line(alert_point(e)) for e in events])
        await self._publish(events)
        self.stats.records += len(values)
        self.stats.samples += decoded.samples
        self.stats.batches += 1
        self.stats.patients = len(self.engine.registry)
        self.stats.observe_batch(len(values))
        if checkpoint:
            self.checkpoint()
            await self.flush_states()

    async def acknowledge(self, *, patient: str, alert_id: str, by: str, at: float, checkpoint: bool = True) -> bool:
        """Apply a nurse's acknowledgement; False if no open alert has that id (already cleared?).

        ``checkpoint=False``: the caller checkpoints later (the worker's group commit)."""
        self._load([patient])
        events = self.engine.acknowledge(alert_id, by, at)
        if events:
            await self._write([alert_line(alert_point(e)) for e in events])
            await self._publish(events)
            self.stats.acks += 1
        if checkpoint:
            self._checkpoint()
            await self.flush_states()
        return bool(events)

    async def tick(self, *, checkpoint: bool = True) -> None:
        """Run time-driven transitions and publish what they produce (then checkpoint, unless told not to).
        Also the sink's recheck of an InfluxDB limit, when due (its warning clears on a worker that
        writes nothing)."""
        await self.sink.recheck_due()
        events = self.engine.tick(self._clock())
        self.stats.ticks += 1
        if events:
            await self._write([alert_line(alert_point(e)) for e in events])
            await self._publish(events)
        if checkpoint:
            self._checkpoint()
            await self.flush_states()

    def _vitals_lines(self, decoded: Decoded) -> list[str]:
        return vitals_lines(
            patient=decoded.patient, device=decoded.device, source=decoded.source, size=decoded.size,
            metric_code=decoded.metric_code, metric_names=METRIC_NAMES,
            t_ms=np.rint(decoded.t * 1000.0).astype(np.int64), value=decoded.value, flags=decoded.flags,
        )

    async def _settle_conflicts(self, decoded: Decoded, conflicts: Conflicts, lines: list[str]) -> list[str]:
        """Dead-letter each sample the engine did not judge because an earlier sample of the batch has
        its patient, metric, device and time but another value (a device or producer contradicting
        itself), and return ``lines`` (one per sample of the batch) without theirs: written, such a
        line would overwrite the kept point (InfluxDB keeps the last of a series and time), merge
        its fields into it (a "LO"'s ``beyond`` on the kept value), or stand beside it (another
        ``source`` is another series), and the chart would show a value the alerts never saw."""
        ends = np.cumsum(decoded.size)
        dropped = conflicts.dropped
        # One dead letter per group (patient, device, source) holding all of its dropped samples: one
        # per sample would let a message of N samples at one time become N-1 records (more bytes on
        # rpm.deadletter than the message had, and N-1 sends before the batch goes on).
        by_group: dict[int, list[int]] = {}
        for g, i in zip(np.searchsorted(ends, dropped, side="right").tolist(), dropped.tolist(), strict=True):
            by_group.setdefault(g, []).append(i)
        for g, samples in by_group.items():
            metrics = [decoded.metric[i] for i in samples]
            group = {"device": decoded.device[g], "source": decoded.source[g], "metric": metrics,
                     "t": [float(decoded.t[i]) for i in samples], "value": [float(decoded.value[i]) for i in samples],
                     "flags": [int(decoded.flags[i]) for i in samples]}
            what = (f"a {metrics[0]} sample" if len(samples) == 1
                    else f"{len(samples)} samples ({', '.join(sorted(set(metrics)))}), each")
            reason = (f"conflicting duplicate: {what} with the device and time of an earlier one in the batch but "
                      "another value or flags; the earlier one is kept and judged, not this one")
            record = encode_readings_record(decoded.patient[g], [group])
            # Stage "duplicate", not "worker": `rpm deadletter replay --stage worker` must not put it
            # back (InfluxDB would then show the value the alerts never saw).
            await self._deadletter("duplicate", reason, "rpm.readings", record)
        gone = set(dropped.tolist())
        return [line for i, line in enumerate(lines) if i not in gone]

    def _sample_batch(self, decoded: Decoded) -> SampleBatch:
        """One batch of every group's samples; patient and device codes are per group, repeated per sample.

        Device codes matter: rules with ``device_prefix`` (a fingerstick meter beside a CGM) select
        samples by device, and the engine keeps its "already seen" watermarks per device.
        """
        registry = self.engine.registry
        index_of = registry.index_of
        patient_of_group = np.fromiter(map(index_of, decoded.patient), np.int64, len(decoded.patient))
        device_of_group = self.engine.device_codes(decoded.device)
        return SampleBatch(
            patient=np.repeat(patient_of_group, decoded.size),
            metric=decoded.metric_code,
            t=decoded.t,
            value=decoded.value,
            flags=decoded.flags,
            device=np.repeat(device_of_group, decoded.size),
        )

    async def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        for line, reason in await self.sink.write(lines):
            await self._deadletter("sink", reason, "influxdb", line.encode())

    async def _publish(self, events: list[AlertEvent]) -> None:
        assert self._send_alert is not None, "Pipeline.bind() first"
        for event in events:
            await self._send_alert(event.patient.encode(), orjson.dumps(event.to_dict()))
            key = (event.rule, event.state)
            self.stats.alerts_by[key] = self.stats.alerts_by.get(key, 0) + 1
        self.stats.alerts += len(events)

    async def deadletter(self, stage: str, reason: str, source: str, payload: bytes) -> None:
        """Park an input we cannot use in ``rpm.deadletter`` with its reason."""
        await self._deadletter(stage, reason, source, payload)

    async def _deadletter(self, stage: str, reason: str, source: str, payload: bytes) -> None:
        self.stats.reasons.note(stage, reason, source)
        self.stats.deadlettered += 1
        record = deadletter_record(
            stage=stage, reason=reason, source=source, payload=payload, received_at=self._clock()
        )
        assert self._send_deadletter is not None, "Pipeline.bind() first"
        await self._send_deadletter(None, record)
