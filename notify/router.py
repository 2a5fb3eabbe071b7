"""The routing engine: pure and deterministic, driven by alert events, acknowledgements and a clock.

Nothing here does I/O or reads the time. The service (:mod:`notify.service`) feeds it

- :meth:`Router.observe`: every ``rpm.alerts`` event (``raised`` again at a higher severity
  re-routes the alert and makes it unacknowledged again; ``cleared`` stops its chain),
- :meth:`Router.acknowledge`: every acknowledgement (``rpm.alert-acks``, or an ``acknowledged``
  event), which stops the chain: acknowledgement is a state of the alert, not a silence,
- :meth:`Router.delivery_result`: whether a dispatched step reached anyone,
- :meth:`Router.advance`: "it is now ``now``", which returns the notifications that are due,

and writes or sends the :data:`Action` values they return. ``at`` arguments are the Kafka record
times of the events, so replaying the topics rebuilds exactly the same groups, runs and deadlines
(see :meth:`Router.restore` for what was already sent).

Model (Alertmanager's, with acknowledgement as state). Each alert is routed down the tree to one
or more routes; per route, the alerts of one patient (``group_by``) form a *group*. A group whose
notifiable alerts (open, unacknowledged, not inhibited) are not empty has a *run*: its escalation
chain, started when the first such alert arrived. Step 0 goes out after ``group_wait`` (so a
burst becomes one message), each later step ``after`` seconds into the run, unless every
notifiable alert was acknowledged or cleared before; a step that reached nobody (every channel
failed after its retries) is skipped: the next one goes out at once. Receivers already notified
in the run get one update when new alerts join (at most every ``group_interval``) and a repeat
every ``repeat_interval`` while the run lasts. Non-critical notifications wait for the end of the
route's quiet hours. While an alert of a ``source`` severity is open, alerts of its ``targets``
for the same patient are inhibited (held, and recorded as skipped).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from notify.const import ACK_CLOCK_SLACK_S, DIGEST_WINDOW_S, PENDING_ACKS_MAX
from notify.model import SEVERITY_RANK, ChannelSpec, Digest, Matcher, Route, Routes
from rpm_core.technical import SYSTEM_SUBJECT, decode_technical, is_technical
from rpm_core.wire import is_valid_id

NotificationKind = Literal["step", "update", "repeat", "digest", "caregiver"]
Outcome = Literal["delivered", "failed", "skipped", "deferred", "acknowledged", "resolved"]
STATES: Final = frozenset({"raised", "cleared", "acknowledged", "escalated"})
_MAX_TEXT: Final = 2000


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertInfo:
    """What the router knows of one alert (from its latest ``rpm.alerts`` event)."""

    alert_id: str
    patient: str
    rule: str
    severity: str
    metric: str
    message: str
    since: float
    raised_at: float  # when it was (last) raised: the record time of that event
    ward: str | None = None

    @property
    def rank(self) -> int:
        """Severity as a number (critical highest)."""
        return SEVERITY_RANK[self.severity]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertUpdate:
    """One ``rpm.alerts`` event, validated."""

    alert_id: str
    patient: str
    rule: str
    severity: str
    metric: str
    state: str
    message: str
    since: float
    by: str | None = None

    @classmethod
    def from_doc(cls, doc: Any) -> AlertUpdate:
        """Validate an event document (``AlertEvent.to_dict()``); ``ValueError`` with the reason."""
        if not isinstance(doc, dict):
            raise ValueError("alert event is not a JSON object")
        if is_technical(doc):
            # a technical alert (rpm_core.technical) is routed like any other; one about the
            # pipeline rather than a patient is grouped under SYSTEM_SUBJECT
            decode_technical(doc)  # ValueError with the reason if it is not a valid one
            if doc.get("patient") is None:
                doc = {**doc, "patient": SYSTEM_SUBJECT}
        ids = {k: doc.get(k) for k in ("alert_id", "patient", "rule", "metric")}
        bad = sorted(k for k, v in ids.items() if not is_valid_id(v))
        if bad:
            raise ValueError(f"alert event field(s) {', '.join(bad)} missing or not identifiers")
        severity, state = doc.get("severity"), doc.get("state")
        # str first: `in` raises TypeError for a list or a dict (unhashable)
        if not (isinstance(severity, str) and severity in SEVERITY_RANK and isinstance(state, str) and state in STATES):
            raise ValueError("alert event severity or state unknown")
        since, message, by = doc.get("since"), doc.get("message", ""), doc.get("by")
        if isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since):
            raise ValueError("alert event 'since' is not a finite number")
        if not isinstance(message, str) or not (by is None or isinstance(by, str)):
            raise ValueError("alert event 'message' / 'by' are not text")
        return cls(alert_id=doc["alert_id"], patient=doc["patient"], rule=doc["rule"], metric=doc["metric"],
                   severity=severity, state=state, message=message[:_MAX_TEXT], since=float(since),
                   by=by[:64] if by else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One message to one receiver: a chain step, an update, a repeat, or a caregiver digest/notice."""

    id: str
    kind: NotificationKind
    route: str  # route id (digest name for digests)
    group: str
    run: float
    step: int
    receiver: str
    escalation: str
    patient: str
    ward: str | None
    alerts: tuple[AlertInfo, ...]
    at: float
    final_step: bool = False
    window_s: float = 0.0  # digests: the period summarised

    @property
    def lead(self) -> AlertInfo | None:
        """The most severe, earliest alert of the message (tags its audit points)."""
        return self.alerts[0] if self.alerts else None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send ``notification`` on each of ``channels``; report back with :meth:`Router.delivery_result`."""

    notification: Notification
    channels: tuple[ChannelSpec, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """An audit point (measurement ``notifications``) that is not a delivery attempt."""

    at: float
    patient: str
    channel: str
    outcome: Outcome
    rule: str
    severity: str
    alert_id: str
    step: int
    detail: str
    recipient: str = ""
    route: str = ""
    group: str = ""
    run: float = 0.0
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Escalated:
    """An ``alerts`` point with state ``escalated``: ``alert`` went to step ``step`` on ``channel``."""

    at: float
    alert: AlertInfo
    step: int
    channel: str


Action = Dispatch | Record | Escalated


@dataclass(frozen=True, slots=True, kw_only=True)
class SentRecord:
    """A notification the audit says was already dispatched (read back on start, see :meth:`Router.restore`)."""

    group: str
    run: float
    step: int
    kind: str
    fired_at: float
    outcome: str
    alert_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class _Alert:
    info: AlertInfo
    acked: bool = False
    acked_at: float = 0.0
    groups: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Group:
    key: str
    route: Route
    patient: str
    members: set[str] = field(default_factory=set)
    run: float | None = None
    fired: dict[int, float] = field(default_factory=dict)  # step -> when it fired
    last_sent: dict[int, float] = field(default_factory=dict)
    content: dict[int, frozenset[tuple[str, str]]] = field(default_factory=dict)
    gave_up: dict[int, float] = field(default_factory=dict)
    inhibited_logged: set[str] = field(default_factory=set)
    deferred_logged: set[tuple[int, str, float]] = field(default_factory=set)


@dataclass(slots=True)
class _DigestState:
    digest: Digest
    last_daily: float | None = None
    pending: dict[str, float] = field(default_factory=dict)  # critical alert id -> when
    sent: set[str] = field(default_factory=set)


def notification_id(*parts: object) -> str:
    """A deterministic id for one notification (receivers use it to drop retried duplicates)."""
    return hashlib.sha1("|".join(repr(p) for p in parts).encode(), usedforsecurity=False).hexdigest()[:20]


def match_routes(route: Route, alert: AlertInfo, at: float) -> list[Route]:
    """The routes ``alert`` takes (Alertmanager: depth first, first match wins unless ``continue``)."""
    found: list[Route] = []
    for child in route.routes:
        if _matches(child.matcher, alert, at):
            found += match_routes(child, alert, at)
            if not child.continue_:
                break
    return found or [route]


def _matches(m: Matcher, a: AlertInfo, at: float) -> bool:
    return m.matches(patient=a.patient, ward=a.ward, rule=a.rule, severity=a.severity, metric=a.metric, at=at)


class Router:
    """See the module docstring. ``ward_of`` maps a patient to a ward (the roster)."""

    def __init__(self, routes: Routes, *, ward_of: Callable[[str], str | None] = lambda _p: None) -> None:
        self.routes = routes
        self._ward_of = ward_of
        self._alerts: dict[str, _Alert] = {}
        self._by_patient: dict[str, set[str]] = {}
        self._groups: dict[str, _Group] = {}
        self._pending_acks: OrderedDict[str, tuple[str, float, str, str | None]] = OrderedDict()
        self._history: deque[tuple[float, AlertInfo]] = deque()
        self._digests = {d.name: _DigestState(d) for d in routes.digests}
        self._outstanding: dict[str, tuple[str, float, int]] = {}
        self._started: float | None = None

    # -- inputs -----------------------------------------------------------------------------------

    def observe(self, update: AlertUpdate, at: float) -> list[Action]:
        """Apply one ``rpm.alerts`` event received at ``at``."""
        if update.state == "cleared":
            return self._clear(update.alert_id, at)
        if update.state == "acknowledged":
            return self.acknowledge(update.alert_id, by=update.by or "unknown", at=at, source="rpm.alerts")
        known = self._alerts.get(update.alert_id)
        if known is not None and SEVERITY_RANK[update.severity] <= known.info.rank and not (
                update.state == "raised" and known.acked and known.acked_at is not None and at > known.acked_at):
            # a redelivery, or the worker's own ``escalated`` marker: nothing new. (A ``raised`` after
            # the acknowledgement is the worker's re-alarm: still open, so the chain starts again.)
            return []
        info = AlertInfo(alert_id=update.alert_id, patient=update.patient, rule=update.rule,
                         severity=update.severity, metric=update.metric, message=update.message,
                         since=update.since, raised_at=at, ward=self._ward_of(update.patient))
        return self._raise(info, at)

    def acknowledge(self, alert_id: str, *, by: str, at: float, source: str, ack_time: float | None = None,
                    patient: str | None = None) -> list[Action]:
        """Someone acknowledged the alert (at ``ack_time`` by their clock; received ``at``): its chain stops.

        ``patient``: the patient the acknowledgement names (``rpm.alert-acks``); an alert of another
        patient is not acknowledged by it (a patient's device names the alert ids it acknowledges)."""
        alert = self._alerts.get(alert_id)
        when = at if ack_time is None else ack_time
        if alert is None:
            self._stash_ack(alert_id, by, when, source, patient)
            return []
        if patient is not None and alert.info.patient != patient:
            return []
        if alert.acked or when < alert.info.raised_at - ACK_CLOCK_SLACK_S:
            return []  # redelivered, or it answers the alert before it worsened
        alert.acked, alert.acked_at = True, at
        step = max((max(g.fired, default=-1) for g in self._groups_of(alert)), default=-1)
        where = f"at step {step}" if step >= 0 else "before any notification"
        out: list[Action] = [self._record(alert.info, at, channel=source, outcome="acknowledged", step=step,
                                          detail=f"acknowledged {where}; chain stopped", recipient=by)]
        return out + self._refresh_patient(alert.info.patient, at)

    def delivery_result(self, notification_id_: str, *, delivered: bool, at: float) -> list[Action]:
        """Whether a dispatched step reached anyone; a step that reached nobody is skipped."""
        ticket = self._outstanding.pop(notification_id_, None)
        if ticket is None or delivered:
            return []
        key, run, step = ticket
        group = self._groups.get(key)
        if group is None or group.run != run or step in group.gave_up:
            return []
        group.gave_up[step] = at
        steps = group.route.escalation.steps
        lead = self._lead(group)
        nxt = f"escalating to step {step + 1} ({steps[step + 1].receiver}) now" if step + 1 < len(steps) \
            else "no further step: repeats continue"
        if lead is None:
            return []
        return [self._record(lead, at, channel=steps[step].receiver, outcome="skipped", step=step, group=group,
                             kind="escalation", detail=f"step {step} reached nobody after retries; {nxt}")]

    def advance(self, now: float) -> list[Action]:
        """Everything due at ``now``: chain steps, updates, repeats, caregiver digests and notices."""
        if self._started is None:
            self._started = now
        out: list[Action] = []
        for key in sorted(self._groups):
            out += self._advance_group(self._groups[key], now)
        for state in self._digests.values():
            out += self._advance_digest(state, now)
        self._prune(now)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`advance` has something to do (None: nothing pending)."""
        times = [t for g in self._groups.values() if (t := self._group_deadline(g)) is not None]
        times += [t for s in self._digests.values() if (t := self._digest_due(s)) is not None]
        return min(times, default=None)

    def _group_deadline(self, group: _Group) -> float | None:
        when, step, kind, raw = self._due(group)
        if when is not None and raw < when and (step, kind, raw) not in group.deferred_logged:
            return raw  # wake at the original time to record the deferral
        return when

    def restore(self, records: Iterable[SentRecord]) -> None:
        """Mark what the audit says was already sent, so a restart neither repeats nor forgets steps."""
        for rec in records:
            if rec.kind in ("digest", "caregiver"):
                self._restore_digest(rec)
                continue
            group = self._groups.get(rec.group)
            if group is None or group.run is None or abs(group.run - rec.run) > 1e-3:
                continue
            self._restore_step(group, rec)

    # -- views ------------------------------------------------------------------------------------

    def open_alerts(self) -> list[AlertInfo]:
        """Every open alert the router knows."""
        return [a.info for a in self._alerts.values()]

    def groups(self) -> dict[str, tuple[float | None, dict[int, float]]]:
        """Each group's run start and fired steps (for tests and ``rpm routes test``)."""
        return {k: (g.run, dict(g.fired)) for k, g in self._groups.items()}

    def is_acknowledged(self, alert_id: str) -> bool:
        """Whether the alert is open and acknowledged."""
        alert = self._alerts.get(alert_id)
        return alert is not None and alert.acked

    # -- raising, clearing, acknowledging ---------------------------------------------------------

    def _raise(self, info: AlertInfo, at: float) -> list[Action]:
        alert = self._alerts.get(info.alert_id)
        if alert is None:
            alert = self._alerts[info.alert_id] = _Alert(info)
            self._by_patient.setdefault(info.patient, set()).add(info.alert_id)
        alert.info, alert.acked = info, False
        self._history.append((at, info))
        self._note_critical(info, at)
        self._reroute(alert, at)
        out = self._refresh_patient(info.patient, at)
        stashed = self._pending_acks.pop(info.alert_id, None)
        if stashed is not None:
            by, when, source, patient = stashed
            out += self.acknowledge(info.alert_id, by=by, at=max(at, when), source=source, ack_time=when,
                                    patient=patient)
        return out

    def _reroute(self, alert: _Alert, at: float) -> None:
        keys = {self._group_key(route, alert.info): route for route in match_routes(self.routes.route, alert.info, at)}
        for key in alert.groups - set(keys):
            self._groups[key].members.discard(alert.info.alert_id)
        for key, route in keys.items():
            group = self._groups.setdefault(key, _Group(key=key, route=route, patient=alert.info.patient))
            group.members.add(alert.info.alert_id)
        alert.groups = set(keys)

    def _clear(self, alert_id: str, at: float) -> list[Action]:
        alert = self._alerts.pop(alert_id, None)
        self._pending_acks.pop(alert_id, None)
        if alert is None:
            return []
        out: list[Action] = []
        notified = [g for g in self._groups_of(alert) if g.fired and not alert.acked]
        if notified:
            step = max(max(g.fired) for g in notified)
            out.append(self._record(alert.info, at, channel="rpm.alerts", outcome="resolved", step=step,
                                    detail=f"cleared at step {step}; chain stopped"))
        for group in self._groups_of(alert):
            group.members.discard(alert_id)
        patient_alerts = self._by_patient.get(alert.info.patient, set())
        patient_alerts.discard(alert_id)
        if not patient_alerts:
            self._by_patient.pop(alert.info.patient, None)
        for state in self._digests.values():
            state.pending.pop(alert_id, None)
            state.sent.discard(alert_id)  # ids are never raised again once cleared
        return out + self._refresh_patient(alert.info.patient, at)

    def _stash_ack(self, alert_id: str, by: str, when: float, source: str, patient: str | None) -> None:
        self._pending_acks[alert_id] = (by, when, source, patient)
        while len(self._pending_acks) > PENDING_ACKS_MAX:
            self._pending_acks.popitem(last=False)

    def _groups_of(self, alert: _Alert) -> list[_Group]:
        return [self._groups[k] for k in sorted(alert.groups) if k in self._groups]

    def _group_key(self, route: Route, info: AlertInfo) -> str:
        labels = {"patient": info.patient, "rule": info.rule, "metric": info.metric, "severity": info.severity}
        return "|".join([route.id, *(labels[name] for name in route.timing.group_by)])

    # -- inhibition and runs ----------------------------------------------------------------------

    def _inhibitor(self, info: AlertInfo) -> AlertInfo | None:
        """The open alert that inhibits ``info``, if any."""
        for rule in self.routes.inhibit:
            if info.severity not in rule.targets:
                continue
            for other_id in sorted(self._by_patient.get(info.patient, ())):
                other = self._alerts[other_id].info
                if other.severity == rule.source and all(
                    getattr(other, label) == getattr(info, label) for label in rule.equal
                ):
                    return other
        return None

    def _notifiable(self, group: _Group) -> list[AlertInfo]:
        alerts = [self._alerts[a] for a in group.members]
        infos = [a.info for a in alerts if not a.acked and self._inhibitor(a.info) is None]
        return sorted(infos, key=lambda i: (-i.rank, i.raised_at, i.alert_id))

    def _refresh_patient(self, patient: str, at: float) -> list[Action]:
        out: list[Action] = []
        for key in sorted(k for k, g in self._groups.items() if g.patient == patient):
            out += self._refresh(self._groups[key], at)
        return out

    def _refresh(self, group: _Group, at: float) -> list[Action]:
        out = self._log_inhibited(group, at)
        notifiable = self._notifiable(group)
        if group.run is None and notifiable:
            group.run = at
        elif group.run is not None and not notifiable:
            self._end_run(group)
        if not group.members and group.run is None:
            del self._groups[group.key]
        return out

    def _end_run(self, group: _Group) -> None:
        group.run = None
        group.fired.clear()
        group.last_sent.clear()
        group.content.clear()
        group.gave_up.clear()
        group.inhibited_logged.clear()
        group.deferred_logged.clear()

    def _log_inhibited(self, group: _Group, at: float) -> list[Action]:
        out: list[Action] = []
        for alert_id in sorted(group.members - group.inhibited_logged):
            alert = self._alerts[alert_id]
            inhibitor = None if alert.acked else self._inhibitor(alert.info)
            if inhibitor is not None:
                group.inhibited_logged.add(alert_id)
                receiver = group.route.escalation.steps[0].receiver
                out.append(self._record(alert.info, at, channel=receiver, outcome="skipped", step=-1,
                                        group=group, detail=f"inhibited by {inhibitor.severity} alert "
                                        f"{inhibitor.alert_id} ({inhibitor.rule})"))
        return out

    # -- timers -----------------------------------------------------------------------------------

    def _due(self, group: _Group) -> tuple[float | None, int, NotificationKind, float]:
        """(when, step, kind, when without quiet hours) of the group's next notification."""
        if group.run is None:
            return None, -1, "step", math.inf
        notifiable = self._notifiable(group)
        options: list[tuple[float, int, NotificationKind]] = []
        steps = group.route.escalation.steps
        k = len(group.fired)
        if k < len(steps):
            options.append((self._step_due(group, k), k, "step"))
        content = _content(notifiable)
        timing = group.route.timing
        for step, sent in group.last_sent.items():
            if not self._has_followups(group, step):
                continue
            if content - group.content.get(step, frozenset()):
                options.append((sent + timing.group_interval_s, step, "update"))
            else:
                options.append((sent + timing.repeat_interval_s, step, "repeat"))
        if not options:
            return None, -1, "step", math.inf
        raw, step, kind = min(options)
        critical = any(a.severity == "critical" for a in notifiable)
        return (raw if critical else self._after_quiet(group.route, raw)), step, kind, raw

    def _step_due(self, group: _Group, k: int) -> float:
        assert group.run is not None
        steps = group.route.escalation.steps
        if k == 0:
            return group.run + max(group.route.timing.group_wait_s, steps[0].after_s)
        due = group.fired[k - 1] + steps[k].after_s - steps[k - 1].after_s
        skipped = group.gave_up.get(k - 1)
        return due if skipped is None else min(due, skipped)

    def _has_followups(self, group: _Group, step: int) -> bool:
        receiver = self.routes.receivers[group.route.escalation.steps[step].receiver]
        return any(c.type != "nurse_station" for c in receiver.channels)

    @staticmethod
    def _after_quiet(route: Route, when: float) -> float:
        for _ in range(4):  # adjacent windows: step over each
            later = max((w.end_after(when) for w in route.quiet_hours), default=when)
            if later == when:
                break
            when = later
        return when

    def _advance_group(self, group: _Group, now: float) -> list[Action]:
        out: list[Action] = []
        for _ in range(len(group.route.escalation.steps) * 2 + 2):  # bounded: each pass consumes a deadline
            when, step, kind, raw = self._due(group)
            if when is None or raw > now:
                break
            if when > now:
                out += self._defer(group, step, kind, raw, when)
                break
            out += self._fire(group, step, kind, now)
        return out

    def _defer(self, group: _Group, step: int, kind: NotificationKind, raw: float, until: float) -> list[Action]:
        mark = (step, kind, raw)
        lead = self._lead(group)
        if mark in group.deferred_logged or lead is None:
            return []
        group.deferred_logged.add(mark)
        receiver = group.route.escalation.steps[step].receiver
        return [self._record(lead, raw, channel=receiver, outcome="deferred", step=step, group=group, kind=kind,
                             detail=f"quiet hours: {kind} held until {_utc(until)}")]

    def _fire(self, group: _Group, step: int, kind: NotificationKind, now: float) -> list[Action]:
        assert group.run is not None
        alerts = tuple(self._notifiable(group))
        steps = group.route.escalation.steps
        receiver = self.routes.receivers[steps[step].receiver]
        if kind == "step":
            group.fired[step] = now
        group.last_sent[step] = now
        group.content[step] = _content(list(alerts))
        channels = receiver.channels if kind == "step" else tuple(c for c in receiver.channels
                                                                   if c.type != "nurse_station")
        nid = notification_id(group.key, group.run, step, kind, now)
        note = Notification(id=nid, kind=kind, route=group.route.id, group=group.key, run=group.run, step=step,
                            receiver=receiver.name, escalation=group.route.escalation.name, patient=group.patient,
                            ward=alerts[0].ward if alerts else None, alerts=alerts, at=now,
                            final_step=step == len(steps) - 1)
        if kind == "step":
            self._outstanding[nid] = (group.key, group.run, step)
        out: list[Action] = [Dispatch(note, channels)]
        if kind == "step" and step > 0:
            tags = ",".join(c.tag for c in channels)
            out += [Escalated(now, alert, step, tags) for alert in alerts]
        return out

    def _lead(self, group: _Group) -> AlertInfo | None:
        alerts = self._notifiable(group)
        if alerts:
            return alerts[0]
        members = sorted(group.members)
        return self._alerts[members[0]].info if members else None

    def _restore_step(self, group: _Group, rec: SentRecord) -> None:
        if rec.kind == "escalation":  # the step reached nobody: the next one was due at once
            group.gave_up[rec.step] = rec.fired_at
            return
        if rec.kind == "step":
            group.fired[rec.step] = min(group.fired.get(rec.step, rec.fired_at), rec.fired_at)
        group.last_sent[rec.step] = max(group.last_sent.get(rec.step, rec.fired_at), rec.fired_at)
        group.content[rec.step] = _content(self._notifiable(group))
        # steps fire in order: a later step on record means the earlier ones fired too
        for earlier in range(rec.step):
            group.fired.setdefault(earlier, rec.fired_at)
            group.last_sent.setdefault(earlier, rec.fired_at)
            group.content.setdefault(earlier, group.content[rec.step])

    # -- caregiver digests ------------------------------------------------------------------------

    def _note_critical(self, info: AlertInfo, at: float) -> None:
        if info.severity != "critical":
            return
        for state in self._digests.values():
            d = state.digest
            if d.on_critical and info.alert_id not in state.sent and _matches(d.matcher, info, at):
                state.pending.setdefault(info.alert_id, at)

    def _digest_due(self, state: _DigestState) -> float | None:
        times = list(state.pending.values())
        if state.digest.daily_at_min is not None and self._started is not None:
            since = state.last_daily if state.last_daily is not None else self._started
            times.append(_next_daily(state.digest, since))
        return min(times, default=None)

    def _advance_digest(self, state: _DigestState, now: float) -> list[Action]:
        out: list[Action] = []
        for alert_id, when in sorted(state.pending.items(), key=lambda kv: (kv[1], kv[0])):
            if when > now:
                continue
            del state.pending[alert_id]
            state.sent.add(alert_id)
            alert = self._alerts.get(alert_id)
            if alert is not None:
                out.append(self._caregiver_notice(state, alert.info, now))
        d = state.digest
        if d.daily_at_min is not None and self._started is not None:
            since = state.last_daily if state.last_daily is not None else self._started
            if _next_daily(d, since) <= now:
                state.last_daily = now
                out += self._daily(state, now)
        return out

    def _caregiver_notice(self, state: _DigestState, info: AlertInfo, now: float) -> Dispatch:
        d = state.digest
        nid = notification_id("caregiver", d.name, info.alert_id)
        note = Notification(id=nid, kind="caregiver", route=d.name, group=f"{d.name}|{info.patient}",
                            run=info.raised_at, step=0, receiver=d.receiver, escalation="", patient=info.patient,
                            ward=info.ward, alerts=(info,), at=now)
        return Dispatch(note, self.routes.receivers[d.receiver].channels)

    def _daily(self, state: _DigestState, now: float) -> list[Action]:
        d = state.digest
        window = [(t, a) for t, a in self._history if now - DIGEST_WINDOW_S < t <= now and _matches(d.matcher, a, t)]
        patients = sorted({a.patient for _, a in window} | set(d.matcher.patients or ()))
        out: list[Action] = []
        for patient in patients:
            alerts = tuple(a for _, a in window if a.patient == patient)
            nid = notification_id("digest", d.name, patient, now)
            note = Notification(id=nid, kind="digest", route=d.name, group=f"{d.name}|{patient}", run=now, step=0,
                                receiver=d.receiver, escalation="", patient=patient,
                                ward=self._ward_of(patient), alerts=alerts, at=now, window_s=DIGEST_WINDOW_S)
            out.append(Dispatch(note, self.routes.receivers[d.receiver].channels))
        return out

    def _restore_digest(self, rec: SentRecord) -> None:
        name = rec.group.split("|", 1)[0]
        state = self._digests.get(name)
        if state is None:
            return
        if rec.kind == "digest":
            state.last_daily = max(state.last_daily or rec.fired_at, rec.fired_at)
        else:
            for alert_id in rec.alert_ids:
                state.pending.pop(alert_id, None)
                state.sent.add(alert_id)

    # -- helpers ----------------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        while self._history and self._history[0][0] < now - DIGEST_WINDOW_S:
            self._history.popleft()

    def _record(self, info: AlertInfo, at: float, *, channel: str, outcome: Outcome, step: int, detail: str,
                recipient: str = "", group: _Group | None = None, kind: str = "") -> Record:
        return Record(at=at, patient=info.patient, channel=channel, outcome=outcome, rule=info.rule,
                      severity=info.severity, alert_id=info.alert_id, step=step, detail=detail, recipient=recipient,
                      route=group.route.id if group else "", group=group.key if group else "",
                      run=(group.run or 0.0) if group else 0.0, kind=kind)


def _content(alerts: list[AlertInfo]) -> frozenset[tuple[str, str]]:
    return frozenset((a.alert_id, a.severity) for a in alerts)


def _next_daily(digest: Digest, after: float) -> float:
    """The first ``daily_at`` (in the digest's time zone) strictly after ``after``."""
    assert digest.daily_at_min is not None
    local = dt.datetime.fromtimestamp(after, digest.tz)
    hour, minute = divmod(digest.daily_at_min, 60)
    for days in range(3):
        day = local.date() + dt.timedelta(days=days)
        candidate = dt.datetime.combine(day, dt.time(hour, minute), digest.tz).timestamp()
        if candidate > after:
            return candidate
    raise AssertionError("unreachable: a daily time recurs within two days")


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
