"""``rpm watchdog``: raises a technical alert whenever rpm cannot monitor someone, and clears it after.

The pipeline's components die, freeze and stall; a dead one cannot report itself. So each bridge,
worker, nurse station, notifier and HL7 follower sends a heartbeat to ``rpm.heartbeats`` every few seconds
(:mod:`rpm_core.technical`), and the watchdog, a separate process, judges them. It raises a
technical alert on ``rpm.alerts`` (where the nurse stations and the notifier already listen)
when, for longer than ``confirm_s``:

======================== ======== ============================================================
rule                     severity condition
======================== ======== ============================================================
``tech.workers_missing`` critical partitions of ``rpm.readings`` that no live worker owns
``tech.worker_stuck``    critical a worker alive but not progressing (InfluxDB failing, a batch stuck)
``tech.worker_warning``  warning  a worker that delivers but says something is wrong (an InfluxDB limit
                                  refusing the points of new devices; detector states Kafka failed
                                  to take into the state changelog; readings processed a minute
                                  or more after they arrived)
``tech.bridge_stuck``    critical a bridge alive but not progressing (Kafka refusing, disconnected)
``tech.bridge_silent``   critical a bridge that stopped reporting without saying it stops
``tech.bridges_missing`` critical no bridge running (none reported, or the last one said it stops)
``tech.ward_silent``     critical a ward whose readings stopped arriving altogether
``tech.deadletter_surge`` warning more inputs dead-lettered per minute than ``deadletter_per_min``
``tech.device.<alarm>``  per alarm a patient's edge agent reports device trouble (battery, session…)
``tech.patient_unassigned`` warning with a roster: readings or device alarms arrive for patients on no ward
``tech.station_silent``  critical a nurse station that stopped reporting without saying it stops
``tech.station_stuck``   critical a nurse station that runs but cannot read the alerts (its screens show none)
``tech.station_warning`` warning  a nurse station whose audit (``rpm.audit``, InfluxDB ``station_audit``)
                                  fails or lost entries: what people do at it is not all recorded
``tech.notifier_silent`` critical a notifier that stopped reporting without saying it stops: nobody is paged
``tech.notifiers_missing`` critical no notifier running any more (once one has reported): nobody is paged
``tech.notifier_stuck``  critical a notifier that runs but has routed no alert for a minute
``tech.notifier_warning`` warning notifications lately that reached none of their channels (nobody paged)
``tech.hl7_silent``      critical an HL7 follower (``rpm hl7 follow``) that stopped reporting without saying it
                                  stops: alerts no longer reach the nurse call or the EMR it feeds
``tech.hl7_stuck``       critical an HL7 follower whose alerts have waited a minute with none delivered
                                  (the receiver does not answer or does not accept them), or whose
                                  receiver it could not reach for 30 s while it had none to send
``tech.hl7_warning``     warning  HL7 alert messages lately dead-lettered instead of delivered
``tech.ward_screen_dark`` warning  a nurse station's ward screens (kiosks) that show nothing for a minute
``tech.device_alarms_unwatched`` warning the watchdog itself cannot read the edge agents' device alarms
                                  from MQTT (refused, disconnected): device trouble reaches no one
======================== ======== ============================================================

A patient on no ward of the roster has no nurse station: their device alarms are not sent to every
ward (health data to nurses who have no business with that patient), nor dropped; one
``tech.patient_unassigned`` alert names those patients, not their alarms, to the operators
(every ward's technical list and the notifier's technical route) until the roster lists them.

and clears it when the condition has been gone for one evaluation. :class:`Watchdog` is the
decision, pure (no I/O, a clock passed in); :func:`run_watchdog` is the driver.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.roster import ALL_WARD
from rpm_core.technical import (
    EVERY_WARD,
    HEARTBEATS_TOPIC,
    STATE_RESET_HOLD_S,
    WARNING_BEHIND,
    WARNING_CHANGELOG,
    WARNING_INFLUXDB,
    Heartbeat,
    HeartbeatSender,
    TechnicalAlert,
)
from rpm_core.topics import assign_every_partition

_LOGGER = logging.getLogger(__name__)

EVALUATE_EVERY_S: Final = 2.0
# How long the minute's check for new partitions of rpm.heartbeats may take (it waits on Kafka's metadata).
RECHECK_WITHIN_S: Final = 5.0
# At start, the heartbeats of the last REMEMBER_S are read back, so a component that died while no
# watchdog ran (a restart, an upgrade) is missed like one that dies under its eyes.
REMEMBER_S: Final = 3600.0
DEADLETTER_WINDOW_S: Final = 60.0
# Patients a tech.patient_unassigned message names (the count is always whole).
MAX_UNASSIGNED_NAMED: Final = 20
RUN_REMEDY: Final = "Run it again (systemctl restart rpm-worker@… / rpm-bridge@…) and read its log."


@dataclass(frozen=True, slots=True)
class WatchdogConfig:
    """How quickly and on what the watchdog raises technical alerts (defaults: within a minute)."""

    stale_after_s: float = 15.0  # a heartbeat older than this: the component is presumed gone
    confirm_s: float = 10.0  # a condition must last this long before it is raised
    startup_grace_s: float = 30.0  # after the watchdog starts, components get this long to report
    ward_silent_after_s: float = 300.0  # no reading of a ward's patients for this long
    deadletter_per_min: int = 100


@dataclass(frozen=True, slots=True)
class Condition:
    """A technical alert that would be raised now."""

    severity: str
    message: str
    remedy: str
    component: str
    wards: tuple[str, ...]
    patient: str | None = None
    confirm: bool = True  # wait confirm_s first (device alarms were confirmed by their agent)
    # Who the message names (tech.patient_unassigned): a raised alert that does not name one of them
    # yet is cleared and raised again with the new message, so no one is left out of it.
    names: tuple[str, ...] = ()


@dataclass
class _Seen:
    beat: Heartbeat
    at: float  # the watchdog's clock when received


_NOT_ID_RE: Final = re.compile(r"[^A-Za-z0-9_.:-]")
# The rules of a component that stopped reporting, and that component.
_SILENT_RULES: Final = {"tech.bridge_silent": "bridge", "tech.station_silent": "station",
                        "tech.notifier_silent": "notifier", "tech.hl7_silent": "hl7"}


@dataclass(frozen=True, slots=True)
class _ServiceTexts:
    """What tech.<component>_silent / _stuck / _warning say of a service that people watch or are paged by."""

    name: str
    silent: str
    silent_remedy: str
    stuck: str
    stuck_remedy: str
    warning: str
    warning_remedy: str


_SERVICE_TEXTS: Final = {
    "station": _ServiceTexts(
        name="Nurse station",
        silent="its screens may show no new alert, and acknowledgements given at it may not reach anyone.",
        silent_remedy="Look at the ward's alerts elsewhere meanwhile (another station, the notifier's pages); restart "
                      "the station (systemctl restart rpm-nurse-station@<ward>) and read its log.",
        stuck="Look at the ward's alerts elsewhere meanwhile.",
        stuck_remedy="Check Kafka and the station's log and /healthz (its Kafka address, credentials and permissions "
                     "on rpm.alerts).",
        warning="It shows alerts, but what people do at it is not all recorded.",
        warning_remedy="Fix what the message names (Kafka for rpm.audit, InfluxDB for station_audit); entries waiting "
                       "are stored when it is back. Entries lost are named in the station's log: record those "
                       "actions by hand."),
    "notifier": _ServiceTexts(
        name="Notifier",
        silent="nobody is paged for new alerts and unacknowledged alerts do not escalate. The nurse stations still "
               "show every alert.",
        silent_remedy="Watch the nurse stations meanwhile; restart it (systemctl restart rpm-notifier) and read its "
                      "log.",
        stuck="The nurse stations still show every alert.",
        stuck_remedy="Watch the nurse stations meanwhile; check Kafka (the consumer group rpm-notifier) and the "
                     "notifier's log, and restart it.",
        warning="Those people were not paged; the alerts show at the nurse stations, and a chain goes on to its next "
                "step.",
        warning_remedy="Fix the channel the message names (the webhook's endpoint, the SMTP server, credentials; "
                       "`rpm routes test` shows a route's channels) and read the notifier's log."),
    "hl7": _ServiceTexts(
        name="HL7 follower",
        silent="alerts no longer reach the nurse call or the EMR it feeds. The nurse stations and the notifier still "
               "show and page every alert.",
        silent_remedy="Watch the nurse stations meanwhile; restart it (systemctl restart rpm-hl7@<receiver>) and read "
                      "its log. It goes on from where it stopped: no alert is skipped.",
        stuck="The nurse stations and the notifier still show and page every alert.",
        stuck_remedy="Check the receiver named (the nurse-call gateway or EMR interface: is it up, does it answer "
                     "with an ACK?) and the network to it; read the follower's log. Messages it gives up on are "
                     "dead-lettered (rpm deadletter list --stage hl7).",
        warning="Those alerts did not reach the nurse call or the EMR; the nurse stations show them.",
        warning_remedy="rpm deadletter list --stage hl7 says why each was not delivered; fix the receiver or its "
                       "configuration, and tell the ward which alerts the nurse call missed."),
}


@dataclass
class Watchdog:
    """The decisions of the watchdog (see the module docstring); feed it, then :meth:`evaluate`.

    ``ward_of`` maps roster patients to wards (empty: no roster, every alert concerns every ward);
    ``partition_of`` gives a patient's ``rpm.readings`` partition for a partition count.
    """

    config: WatchdogConfig
    partition_of: Callable[[str, int], int]
    ward_of: Mapping[str, str] = field(default_factory=dict)
    partitions: int = 0  # rpm.readings partitions, as Kafka's metadata says (0: unknown yet)
    started_at: float = 0.0
    active: dict[tuple[str, str], TechnicalAlert] = field(default_factory=dict)
    _seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)
    _pending: dict[tuple[str, str], float] = field(default_factory=dict)
    _dead: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    _devices: dict[tuple[str, str, str], Condition] = field(default_factory=dict)
    _ward_last: dict[str, float] = field(default_factory=dict)
    # Why the watchdog cannot read the agents' device alarms from MQTT now (None: it can, or no MQTT).
    device_alarms_problem: str | None = None
    # A notifier reported (or an earlier run's tech.notifiers_missing was still raised): from then on,
    # none running at all is told, as for bridges. Before any, rpm may run without one (the demo).
    _notifiers_expected: bool = False

    # -- input --------------------------------------------------------------------------------------

    def observe(self, beat: Heartbeat, at: float) -> None:
        """Take one heartbeat, received at ``at`` (the watchdog's clock)."""
        key = (beat.component, beat.instance)
        before = self._seen.get(key)
        if beat.component != "watchdog":
            grew = beat.deadlettered - (before.beat.deadlettered if before else 0)
            if before is not None and grew > 0:
                self._dead.append((at, grew))
        if beat.component == "notifier":
            self._notifiers_expected = True
        if beat.state == "stopping":
            self._seen.pop(key, None)  # a component that says it stops is not missed
            return
        self._seen[key] = _Seen(beat, at)
        skew = at - beat.time  # the sender's clock may differ from ours: ages are taken on its clock
        for ward, t in beat.ward_last_reading.items():
            self._ward_last[ward] = max(self._ward_last.get(ward, 0.0), t + skew)
        if beat.partition_count:
            self.partitions = max(self.partitions, beat.partition_count)

    def observe_device_alarm(self, patient: str, doc: Mapping[str, Any]) -> None:
        """Take one ``{"kind": "alarm", …}`` status message of ``patient``'s edge agent."""
        alarm, device, active = doc.get("alarm"), doc.get("device") or "agent", doc.get("active")
        if not isinstance(alarm, str) or not isinstance(device, str) or not isinstance(active, bool):
            return
        # The alarm's name becomes the rule (tech.device.<alarm>), which every reader of rpm.alerts
        # requires to be an identifier: one with a space or an accent was raised, refused by the nurse
        # station and the notifier, and so told to nobody.
        key = (patient, device[:64], _NOT_ID_RE.sub("_", alarm[:40]) or "unnamed")
        if not active:
            self._devices.pop(key, None)
            return
        severity = doc.get("severity") if doc.get("severity") in ("warning", "critical") else "warning"
        message, remedy = doc.get("message"), doc.get("remedy")
        ward = self.ward_of.get(patient)
        self._devices[key] = Condition(
            severity=str(severity), component="device" if device != "agent" else "agent",
            message=(message if isinstance(message, str) and message else f"device {device}: {alarm}")[:500],
            remedy=(remedy if isinstance(remedy, str) else "")[:500],
            wards=(ward,) if ward else (EVERY_WARD,), patient=patient, confirm=False)

    def watched(self) -> list[str]:
        """Every component instance that reported and did not say it stops, as ``component:instance``."""
        return sorted(f"{component}:{instance}" for component, instance in self._seen)

    def adopt(self, alert: TechnicalAlert) -> None:
        """An alert raised by an earlier run (read back from ``rpm.alerts``): clear it if its cause is gone.

        A component an earlier run found silent is remembered as last heard when that alert began, so
        it stays raised until that component reports again: this run never heard of it, and would
        otherwise clear it as gone (a nurse told "resolved" of a notifier still dead)."""
        component = _SILENT_RULES.get(alert.rule)
        if alert.state == "raised":
            self.active[alert.key] = alert
            self._notifiers_expected |= alert.rule == "tech.notifiers_missing"
            if component is not None and alert.scope and (component, alert.scope) not in self._seen:
                ward = alert.wards[0] if len(alert.wards) == 1 and alert.wards[0] != EVERY_WARD else None
                beat = Heartbeat(component=component, instance=alert.scope, time=alert.since,  # type: ignore[arg-type]
                                 ward=ward)
                self._seen[(component, alert.scope)] = _Seen(beat, alert.since - self.config.stale_after_s)
        else:
            self.active.pop(alert.key, None)
            seen = self._seen.get((component, alert.scope)) if component is not None else None
            if seen is not None and seen.beat.time == alert.since:  # remembered above, and it came back then
                del self._seen[(str(component), alert.scope)]

    # -- decision -----------------------------------------------------------------------------------

    def evaluate(self, now: float) -> list[TechnicalAlert]:
        """The technical alerts raised or cleared now, in that order."""
        conditions = self.conditions(now)
        out: list[TechnicalAlert] = []
        in_grace = now - self.started_at < self.config.startup_grace_s
        for key, cond in conditions.items():
            if key in self.active:
                if not cond.names or not set(cond.names) - _named_in(self.active[key].message):
                    continue
                out.append(self.active.pop(key).cleared(now))  # the list grew: told again, whole
            first = self._pending.setdefault(key, now)
            if cond.confirm and (in_grace or now - first < self.config.confirm_s):
                continue
            rule, scope = key
            alert = TechnicalAlert(rule=rule, scope=scope, severity=cond.severity,  # type: ignore[arg-type]
                                   state="raised", time=now, since=first, message=cond.message,
                                   remedy=cond.remedy, component=cond.component, wards=cond.wards,
                                   patient=cond.patient)
            self.active[key] = alert
            out.append(alert)
        for key in [k for k in self._pending if k not in conditions]:
            del self._pending[key]
        if not in_grace:  # an adopted alert waits until the components had a chance to report
            gone = [k for k in self.active if k not in conditions]
            out.extend(self.active.pop(key).cleared(now) for key in gone)
        return out

    def conditions(self, now: float) -> dict[tuple[str, str], Condition]:
        """Every condition that holds now, by (rule, scope)."""
        fresh = {k: s for k, s in self._seen.items() if now - s.at <= self.config.stale_after_s}
        found: dict[tuple[str, str], Condition] = {}
        found.update(self._workers(fresh))
        found.update(self._bridges(now, fresh))
        found.update(self._services(now, fresh))
        found.update(self._deadletters(now))
        if ("tech.workers_missing", "") not in found:
            found.update(self._wards(now))
        if self.device_alarms_problem is not None:
            found[("tech.device_alarms_unwatched", "")] = Condition(
                severity="warning", component="watchdog", wards=(EVERY_WARD,),
                message=f"rpm watchdog cannot read the patients' device alarms from MQTT "
                        f"({self.device_alarms_problem}): a low battery, a sensor ending or a lost device reaches "
                        "no one until it can. Readings and clinical alerts are not affected.",
                remedy="Check Mosquitto and the watchdog's MQTT user (rpm-watchdog: its password, the ACL on "
                       "rpm/v1/p/+/status) and the watchdog's log; alarms raised meanwhile are delivered when it "
                       "reconnects (persistent session).")
        unassigned: set[str] = set()
        for (patient, device, alarm), cond in self._devices.items():
            if self.ward_of and patient not in self.ward_of:
                unassigned.add(patient)  # told below, without the alarm, to the operators
                continue
            found[(f"tech.device.{alarm}", f"{patient}/{device}")] = cond
        unnamed = 0
        for seen in fresh.values():
            unassigned.update(seen.beat.unassigned)
            unnamed += seen.beat.unassigned_count - len(seen.beat.unassigned)
        if unassigned or unnamed:
            found[("tech.patient_unassigned", "")] = _unassigned(sorted(unassigned), unnamed)
        return found

    def _workers(self, fresh: Mapping[tuple[str, str], _Seen]) -> dict[tuple[str, str], Condition]:
        found: dict[tuple[str, str], Condition] = {}
        workers = [s.beat for (component, _i), s in fresh.items() if component == "worker"]
        covered = {p for w in workers for p in w.partitions}
        missing = sorted(set(range(self.partitions)) - covered)
        if missing or (not workers and not self.partitions):
            if workers:
                what = (f"No worker is analysing partition(s) {_ranges(missing)} of {self.partitions} of rpm.readings: "
                        f"{self._patients_in(missing)} are not monitored; no clinical alert can be raised for them.")
            else:
                what = ("No stream worker is running: no patient's readings are analysed and no clinical alert "
                        "can be raised.")
            found[("tech.workers_missing", "")] = Condition(
                severity="critical", message=what, component="worker", wards=self._wards_of(missing),
                remedy="Start rpm worker (systemctl start rpm-worker@1), or restart the one that stopped; "
                       "its /healthz and log say why it is not assigned.")
        for w in workers:
            if not w.healthy:
                influx = WARNING_INFLUXDB in (w.problem or "")
                found[("tech.worker_stuck", w.instance)] = Condition(
                    severity="critical", component="influxdb" if influx else "worker",
                    message=f"Worker {w.instance} runs but cannot deliver: {w.problem or 'not progressing'}. "
                            f"{self._patients_in(list(w.partitions))} are not monitored until it can.",
                    remedy=("Fix InfluxDB as the message says; nothing is lost meanwhile (readings wait in Kafka)."
                            if influx else RUN_REMEDY), wards=self._wards_of(list(w.partitions)))
            elif w.problem:
                found[("tech.worker_warning", w.instance)] = self._warning(w)
            if w.state_reset_count:
                found[("tech.state_unreadable", w.instance)] = self._state_reset(w)
        return found

    def _warning(self, w: Heartbeat) -> Condition:
        """A worker that analyses and delivers, but not everything: an InfluxDB limit refusing the
        points of new devices (dead-lettered), detector states that Kafka failed to take into the
        state changelog (sent again; not durable until then), or readings processed a minute or more
        after they arrived (alerts that late). Alerts still go out for every patient; the causes are
        told apart by the phrases of :mod:`rpm_core.technical` the worker writes."""
        problem = w.problem or ""
        influx = WARNING_INFLUXDB in problem
        changelog = WARNING_CHANGELOG in problem
        behind = WARNING_BEHIND in problem
        remedies = []
        if influx:
            remedies.append("Fix InfluxDB's configuration as the message says; the refused readings wait on "
                            "rpm.deadletter (stage sink) to be written again.")
        if changelog:
            remedies.append("Check Kafka (its log, disk, the rpm state changelog topic): the worker sends the states "
                            "again by itself and the warning clears when they are written; do not restart the worker "
                            "meanwhile unless it is stuck.")
        if behind:
            remedies.append("The workers cannot keep up with the readings: start another worker (systemctl start "
                            "rpm-worker@N; partitions move to it by themselves) or find what slows this one "
                            "(CPU, InfluxDB). The backlog drains by itself once they keep up.")
        return Condition(
            severity="warning", component="influxdb" if influx else "kafka" if changelog else "worker",
            wards=self._wards_of(list(w.partitions)),
            message=(f"Worker {w.instance}: {problem}. Clinical alerts are still raised for every patient"
                     + (", but that late" if behind else "")
                     + ("; the readings refused are not stored (charts, reports and exports miss them) until fixed."
                        if influx else ".")),
            remedy=" ".join(remedies) or RUN_REMEDY)

    def _state_reset(self, w: Heartbeat) -> Condition:
        """Patients started afresh because their stored detector state could not be read: still
        monitored from now on, but what was open or counting for them is gone."""
        named = list(w.state_reset)
        shown = ", ".join(named[:10]) + (", …" if w.state_reset_count > min(len(named), 10) else "")
        wards = {self.ward_of.get(p) for p in named}
        if None in wards or w.state_reset_count > len(named) or not wards:
            wards = (wards - {None}) | {EVERY_WARD}
        return Condition(
            severity="warning", component="worker", wards=tuple(sorted(str(x) for x in wards)), confirm=False,
            message=(f"Worker {w.instance} could not read the stored alert state of {w.state_reset_count} "
                     f"patient(s) ({shown}) and started them afresh: they are monitored again, but an alert "
                     "open for them will not be updated or cleared, and time already counted toward an "
                     "alert (e.g. minutes of a high heart rate) starts again."),
            remedy=("Review these patients' open alerts and latest readings at the station. The worker's log "
                    "says why the state was unreadable (a damaged changelog record, or a worker older than the "
                    "one that wrote it); this clears itself "
                    f"{STATE_RESET_HOLD_S / 60:.0f} minutes after the last such patient."))

    def _bridges(self, now: float, fresh: Mapping[tuple[str, str], _Seen]) -> dict[tuple[str, str], Condition]:
        found: dict[tuple[str, str], Condition] = {}
        for (component, instance), seen in self._seen.items():
            if component != "bridge":
                continue
            if (component, instance) not in fresh:
                found[("tech.bridge_silent", instance)] = Condition(
                    severity="critical", component="bridge", wards=(EVERY_WARD,),
                    message=f"Bridge {instance} has not reported for {now - seen.at:.0f} s (stopped, frozen or cut "
                            "off): the readings it holds reach nobody.",
                    remedy=f"Restart it under the same client id ({instance}) so its messages are delivered; "
                           "check its host.")
            elif not seen.beat.healthy:
                found[("tech.bridge_stuck", instance)] = Condition(
                    severity="critical", component="bridge", wards=(EVERY_WARD,),
                    message=f"Bridge {instance} runs but does not forward readings: "
                            f"{seen.beat.problem or 'not progressing'}.",
                    remedy="See the bridge's log and /healthz; fix what the message names (Kafka, MQTT).")
        if not any(c == "bridge" for c, _i in self._seen):  # (one that stopped reporting: bridge_silent)
            found[("tech.bridges_missing", "")] = Condition(
                severity="critical", component="bridge", wards=(EVERY_WARD,),
                message="No MQTT→Kafka bridge is reporting: readings from patients' devices wait in Mosquitto "
                        "and reach no worker, no nurse station, no alert.",
                remedy="Start rpm bridge (systemctl start rpm-bridge@1).")
        return found

    def _services(self, now: float, fresh: Mapping[tuple[str, str], _Seen]) -> dict[tuple[str, str], Condition]:
        """Nurse stations, notifiers and HL7 followers: silent, stuck (unhealthy) or warning (a problem
        while healthy), told in the words of :data:`_SERVICE_TEXTS`. A station concerns its ward (and the
        operators, through the notifier's technical route); a notifier, which cannot page about itself,
        an HL7 follower and a station without a roster ward concern every ward."""
        found: dict[tuple[str, str], Condition] = {}
        for (component, instance), seen in self._seen.items():
            texts = _SERVICE_TEXTS.get(component)
            if texts is None:
                continue
            ward = seen.beat.ward if seen.beat.ward != ALL_WARD else None
            name = f"{texts.name} {instance}" + (f" of ward {ward}" if ward else "")
            if component == "station" and seen.beat.dark_screens and (component, instance) in fresh:
                found[("tech.ward_screen_dark", instance)] = _dark_screens(name, seen.beat.dark_screens, ward)
            if (component, instance) not in fresh:
                verdict, severity = "silent", "critical"
                what = (f"{name} has not reported for {now - seen.at:.0f} s (stopped, frozen or cut off from Kafka): "
                        f"{texts.silent}")
            elif not seen.beat.healthy:
                verdict, severity = "stuck", "critical"
                what = f"{name} runs but {seen.beat.problem or 'is not working'}. {texts.stuck}"
            elif seen.beat.problem:
                verdict, severity = "warning", "warning"
                what = f"{name}: {seen.beat.problem}. {texts.warning}"
            else:
                continue
            found[(f"tech.{component}_{verdict}", instance)] = Condition(
                severity=severity, component=component, wards=(ward,) if ward else (EVERY_WARD,), message=what,
                remedy=getattr(texts, f"{verdict}_remedy"))
        if self._notifiers_expected and not any(c == "notifier" for c, _i in self._seen):
            found[("tech.notifiers_missing", "")] = Condition(  # (one that stopped reporting: notifier_silent)
                severity="critical", component="notifier", wards=(EVERY_WARD,),
                message="No notifier is running (the last one said it stops): nobody is paged for new alerts and "
                        "unacknowledged alerts do not escalate. The nurse stations still show every alert.",
                remedy="Start rpm notifier (systemctl start rpm-notifier); watch the nurse stations meanwhile.")
        return found

    def _deadletters(self, now: float) -> dict[tuple[str, str], Condition]:
        while self._dead and self._dead[0][0] < now - DEADLETTER_WINDOW_S:
            self._dead.popleft()
        count = sum(n for _t, n in self._dead)
        if count < self.config.deadletter_per_min:
            return {}
        return {("tech.deadletter_surge", ""): Condition(
            severity="warning", component="deadletter", wards=(EVERY_WARD,),
            message=f"{count} inputs were dead-lettered in the last minute: readings are being refused.",
            remedy="rpm deadletter list --since <a few minutes ago> shows which and why; fix the sender, then "
                   "rpm deadletter replay.")}

    def _wards(self, now: float) -> dict[tuple[str, str], Condition]:
        found: dict[tuple[str, str], Condition] = {}
        for ward, last in self._ward_last.items():
            silent = now - last
            if silent > self.config.ward_silent_after_s:
                found[("tech.ward_silent", ward)] = Condition(
                    severity="critical", component="ward", wards=(ward,),
                    message=f"No reading from any patient of ward {ward} for {silent / 60:.0f} min: the ward's "
                            "devices, their agents or their network may be down.",
                    remedy="Check the ward's network and one patient's edge agent (rpm edge status).")
        return found

    def _patients_in(self, partitions: Iterable[int]) -> str:
        if not self.ward_of or not self.partitions:
            return "the patients of these partitions"
        parts = set(partitions)
        n = sum(1 for p in self.ward_of if self.partition_of(p, self.partitions) in parts)
        return f"{n} roster patient(s)"

    def _wards_of(self, partitions: Iterable[int]) -> tuple[str, ...]:
        parts = set(partitions)
        if not self.ward_of or not self.partitions or not parts:
            return (EVERY_WARD,)
        wards = sorted({w for p, w in self.ward_of.items() if self.partition_of(p, self.partitions) in parts})
        return tuple(wards) or (EVERY_WARD,)


def _dark_screens(station: str, screens: tuple[str, ...], ward: str | None) -> Condition:
    """Ward screens (kiosks) of a station that show nothing: told to that ward and the operators; a
    screen newly dark while it is raised makes it raised again, naming every one (``names``: their ids)."""
    ids = tuple(name.rsplit("(", 1)[-1].rstrip(")") for name in screens)  # "label (id)" or "id"
    return Condition(
        severity="warning", component="station", wards=(ward,) if ward else (EVERY_WARD,), names=ids,
        message=f"The ward screen(s) {', '.join(screens)} of {station} have shown nothing for a minute or more "
                "(the browser closed, its computer off or its network down): alerts reach the ward's nurses only "
                "through other screens and pages until they are back.",
        remedy="Look at the screen: start its browser on the station's page again (it stays logged in as a kiosk). "
               "A screen taken out of service: revoke it (rpm nurse-station kiosk --state-dir DIR revoke ID, DIR "
               "the station's --state-dir).")


def _unassigned(patients: list[str], unnamed: int = 0) -> Condition:
    """Patients on no ward of the roster whose agents report device alarms or whose readings a
    worker received (``unnamed`` more that a heartbeat counted without naming them): no nurse
    station shows their alerts. Told to every ward's technical list and the operators, naming the patients only
    (their alarms are health data for the patient's own ward, which they do not have). Component
    ``ward``: readers of an earlier version refuse components they do not know."""
    total = len(patients) + unnamed
    shown = ", ".join(patients[:MAX_UNASSIGNED_NAMED]) + (", …" if total > MAX_UNASSIGNED_NAMED else "")
    return Condition(
        severity="warning", component="ward", wards=(EVERY_WARD,), confirm=False,
        names=tuple(patients[:MAX_UNASSIGNED_NAMED]),
        message=(f"Readings or device alarms arrive for {total} patient(s) on no ward of the roster ({shown}): "
                 "no nurse station shows their alerts, and their device alarms are held back from every ward."),
        remedy=("Add each patient to their ward in the roster (RPM_ROSTER) and restart the nurse stations, "
                "the notifier, the workers and the watchdog; or unpair the device if it is not one of ours."))


def _named_in(message: str) -> set[str]:
    """The words of a raised alert's message (it may have been raised by an earlier run: read back
    from rpm.alerts), to see whether it names someone; patient ids hold no space, comma or parenthesis."""
    return set(re.findall(r"[^\s,()]+", message))


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``0-2, 5``."""
    out: list[str] = []
    for n in numbers:
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def now_s() -> float:
    """The watchdog's clock."""
    return time.time()


# -- the driver -------------------------------------------------------------------------------------


@dataclass
class WatchdogOptions:
    """``rpm watchdog``'s options."""

    instance: str = "rpm-watchdog"
    health_port: int | None = None
    roster: str | None = None
    config: WatchdogConfig = field(default_factory=WatchdogConfig)


class WatchdogService:
    """Reads heartbeats (Kafka) and device alarms (MQTT, optional), publishes technical alerts."""

    def __init__(self, *, bootstrap: str, watchdog: Watchdog, instance: str, mqtt: Any = None,
                 clock: Callable[[], float] = now_s, keys: Any = None) -> None:
        self.bootstrap = bootstrap
        self._keys = keys  # rpm_core.signing.KeyRing: technical alerts are signed like every alert
        self.watchdog = watchdog
        self.instance = instance
        self.mqtt = mqtt
        self._clock = clock
        self._outbox: list[TechnicalAlert] = []
        self.last_evaluation = 0.0
        self.kafka_ok = False
        self.published = 0
        self._status: collections.deque[tuple[str, bytes]] = collections.deque()
        self.mqtt_problem: str | None = None  # why device alarms cannot be read (None: they can, or no MQTT)
        self.mqtt_on = False  # MQTT configured: the agents' device alarms are to be watched

    def health(self) -> dict[str, Any]:
        """``/healthz``: Kafka reachable and evaluating; the active technical alerts by rule; the
        components it watches (``component:instance``: each one that reported and did not say it stops)."""
        return {
            "kafka": self.kafka_ok,
            "evaluating": self._clock() - self.last_evaluation < 30.0,
            "active": sorted(f"{rule}:{scope}" if scope else rule for rule, scope in self.watchdog.active),
            "watched": self.watchdog.watched(),
            "device_alarms": self.mqtt_problem or ("watched" if self.mqtt_on else "not watched: no RPM_MQTT_URL"),
            "unpublished": len(self._outbox),
        }

    async def run(self, stop: Any) -> None:
        """Watch until ``stop`` (an asyncio.Event) is set."""
        import asyncio

        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from rpm_core import topics

        producer = AIOKafkaProducer(**kafka_client_kwargs(self.bootstrap), acks="all", enable_idempotence=False)
        beats = AIOKafkaConsumer(**kafka_client_kwargs(self.bootstrap), group_id=None, enable_auto_commit=False,
                                 fetch_max_wait_ms=200)
        beats_out = self._heartbeat_sender(producer)
        await producer.start()
        await beats.start()
        try:
            await self._adopt()
            await assign_every_partition(beats, HEARTBEATS_TOPIC)
            await self._seek_back(beats, sorted(beats.assignment()))
            self.watchdog.started_at = self._clock()
            await beats.topics()
            self.watchdog.partitions = max(self.watchdog.partitions,
                                           len(beats.partitions_for_topic(topics.READINGS) or ()))
            self.kafka_ok = True
            next_beat = 0.0
            next_partitions = self._clock() + 60.0
            while not stop.is_set():
                await self._read(beats)
                self._take_status()
                self.watchdog.device_alarms_problem = self.mqtt_problem
                now = self._clock()
                self._outbox += self.watchdog.evaluate(now)
                self.last_evaluation = now
                await self._publish(producer)
                if now >= next_beat:
                    next_beat = now + 5.0
                    await beats_out.send(self._heartbeat(now))
                if now >= next_partitions:  # a heartbeats topic given more partitions: read them too
                    next_partitions = now + 60.0
                    await self._recheck_partitions(beats)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(EVALUATE_EVERY_S):
                        await stop.wait()
        finally:
            await beats_out.last(self._heartbeat(self._clock(), state="stopping"))
            await beats.stop()
            await producer.stop()

    async def _recheck_partitions(self, consumer: Any) -> None:
        """Read the partitions ``rpm.heartbeats`` gained, if any. Bounded and never fatal: Kafka's
        metadata not answering must neither stall the evaluation nor end the watchdog (the next
        minute tries again; reading what it already has goes on meanwhile)."""
        import asyncio

        from aiokafka.errors import KafkaError

        try:
            async with asyncio.timeout(RECHECK_WITHIN_S):
                await assign_every_partition(consumer, HEARTBEATS_TOPIC)
        except (KafkaError, TimeoutError) as exc:
            _LOGGER.warning("watchdog cannot check the partitions of %s (%s); it tries again in a minute",
                            HEARTBEATS_TOPIC, type(exc).__name__)

    async def _seek_back(self, consumer: Any, parts: list[Any]) -> None:
        """Position ``consumer`` at the first heartbeat of the last :data:`REMEMBER_S` in each of
        ``parts`` (the end where there is none)."""
        from aiokafka.errors import KafkaError

        since = int((self._clock() - REMEMBER_S) * 1000)
        try:
            found = await consumer.offsets_for_times(dict.fromkeys(parts, since))
        except (KafkaError, ValueError) as exc:
            _LOGGER.warning("watchdog cannot read back recent heartbeats (%s): it watches from now on", exc)
            found = {}
        for tp in parts:
            at = found.get(tp)
            if at is None or at.timestamp < 0:  # none that recent (Tansu answers -1 where Kafka answers None)
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, at.offset)

    async def _read(self, consumer: Any) -> None:
        from aiokafka.errors import KafkaError

        from rpm_core.technical import TechnicalAlertError, read_heartbeat

        try:
            batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
            self.kafka_ok = True
        except KafkaError as exc:
            self.kafka_ok = False
            _LOGGER.warning("watchdog cannot read heartbeats: %s", exc)
            return
        now = self._clock()
        for records in batches.values():
            for record in records:
                # one read back from before this run started is taken at the time it was sent
                sent = record.timestamp / 1000 if record.timestamp and record.timestamp > 0 else now
                at = min(sent, now) if sent < self.watchdog.started_at else now
                try:
                    self.watchdog.observe(read_heartbeat(self._keys, record.value, record.headers), at)
                except TechnicalAlertError as exc:
                    _LOGGER.warning("ignored a heartbeat: %s", exc)

    async def _publish(self, producer: Any) -> None:
        """Send what is due, in order; what fails stays for the next round (nothing is dropped)."""
        from aiokafka.errors import KafkaError

        from rpm_core import topics
        from rpm_core.technical import SYSTEM_SUBJECT

        while self._outbox:
            alert = self._outbox[0]
            key, value = (alert.patient or SYSTEM_SUBJECT).encode(), alert.encode()
            headers = self._keys.sign(topics.ALERTS, key, value) if self._keys is not None else None
            try:
                await producer.send_and_wait(topics.ALERTS, value, key=key, headers=headers)
            except KafkaError as exc:
                self.kafka_ok = False
                _LOGGER.error("watchdog cannot publish technical alerts (%s); %d waiting", exc, len(self._outbox))
                return
            self._outbox.pop(0)
            self.published += 1
            log = _LOGGER.warning if alert.state == "raised" else _LOGGER.info
            log("technical alert %s %s %s (wards %s): %s", alert.state, alert.rule, alert.scope or "-",
                ",".join(alert.wards), alert.message)

    def _heartbeat(self, now: float, state: str = "running") -> Heartbeat:
        return Heartbeat(component="watchdog", instance=self.instance, time=now, state=state,  # type: ignore[arg-type]
                         healthy=self.kafka_ok)

    def _heartbeat_sender(self, producer: Any) -> HeartbeatSender:
        """The watchdog's own heartbeats (signed: the stations trust only those), by which they tell that
        they are no longer supervised."""
        async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
            await producer.send_and_wait(HEARTBEATS_TOPIC, value, key=key, headers=headers)

        return HeartbeatSender(send, keys=self._keys, what="the watchdog (at the nurse stations)", logger=_LOGGER)

    async def _adopt(self) -> None:
        """Read back the technical alerts of ``rpm.alerts`` so a restart clears what an earlier run raised."""
        import asyncio

        from aiokafka import AIOKafkaConsumer

        from rpm_core import topics
        from rpm_core.technical import TechnicalAlertError, decode_technical, is_technical

        consumer = AIOKafkaConsumer(topics.ALERTS, **kafka_client_kwargs(self.bootstrap), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=200)
        await consumer.start()
        latest: dict[str, TechnicalAlert] = {}
        try:
            idle = 0
            async with asyncio.timeout(60):
                while idle < 3:  # read until nothing came for three polls in a row
                    batches = await consumer.getmany(timeout_ms=300, max_records=5_000)
                    idle = 0 if batches else idle + 1
                    for records in batches.values():
                        for record in records:
                            doc = _json(record.value)
                            if not is_technical(doc):
                                continue
                            with contextlib.suppress(TechnicalAlertError):
                                alert = decode_technical(doc)
                                latest[alert.alert_id] = alert
        except TimeoutError:
            _LOGGER.warning("watchdog: reading back rpm.alerts took over 60 s; going on with what was read")
        finally:
            await consumer.stop()
        for alert in latest.values():
            self.watchdog.adopt(alert)
        if self.watchdog.active:
            _LOGGER.info("watchdog: %d technical alert(s) still raised by an earlier run", len(self.watchdog.active))

    # -- device alarms from the edge agents' status (paho's thread hands them over) -----------------

    def on_status(self, topic: str, payload: bytes) -> None:
        """A status message (any thread): queued for the next evaluation."""
        self._status.append((topic, payload))

    def on_mqtt_state(self, problem: str | None) -> None:
        """Why device alarms cannot be read from MQTT now, or None (any thread: one assignment)."""
        self.mqtt_problem = problem

    def _take_status(self) -> None:
        while self._status:
            topic, payload = self._status.popleft()
            parts = topic.split("/")
            doc = _json(payload)
            alarm = isinstance(doc, dict) and doc.get("kind") == "alarm"
            if len(parts) == 5 and alarm and doc.get("patient") == parts[3]:
                self.watchdog.observe_device_alarm(parts[3], doc)


def _json(value: bytes | None) -> Any:
    from rpm_core.wire import loads_unique

    try:
        return loads_unique(value or b"")
    except ValueError:
        return None


def start_status_listener(mqtt_settings: Any, client_id: str, on_status: Callable[[str, bytes], None],
                          on_state: Callable[[str | None], None] = lambda _why: None) -> Any:
    """Subscribe to every patient's status topic (persistent session, QoS 1: alarms raised while the
    watchdog was away are delivered when it is back); returns the running paho client. ``on_state``
    (paho's thread) gets why device alarms cannot be read now, or None once subscribed."""
    from rpm_core.mqtt_client import message_topic, mqtt_client, session_properties
    from rpm_core.wire import status_topic

    client = mqtt_client(mqtt_settings, client_id)
    refused: list[str] = []  # why the last connection was refused (paho then reports a disconnection too)

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        refused.clear()
        if reason.is_failure:
            _LOGGER.error("MQTT refused the watchdog: %s (device alarms are not watched)", reason)
            refused.append(f"Mosquitto refused it: {reason}")
            on_state(refused[0])
            return
        c.subscribe(status_topic("+"), qos=1)

    def on_subscribe(_c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        on_state(f"its subscription was refused: {refused[0]}" if refused else None)
        if refused:
            _LOGGER.error("MQTT refused the watchdog's subscription to the agents' status: %s", refused[0])

    def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        on_state(refused[0] if refused else f"disconnected: {reason}")

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_message = lambda _c, _u, msg: on_status(message_topic(msg), bytes(msg.payload))
    client.connect_async(mqtt_settings.host, mqtt_settings.port, keepalive=30, clean_start=False,
                         properties=session_properties(7 * 24 * 3600))
    client.loop_start()
    return client


async def run_watchdog(settings: Any, options: WatchdogOptions) -> None:
    """``rpm watchdog``: run until SIGTERM/SIGINT."""
    import asyncio
    import signal

    from rpm_core import topics
    from rpm_core.roster import ROSTER_ENV, load_roster
    from stream.health import HealthServer

    roster_path = options.roster
    ward_of: dict[str, str] = {}
    if roster_path is not None or ROSTER_ENV in os.environ:
        roster = load_roster(roster_path)
        ward_of = {p: w.id for w in roster.wards.values() for p in w.patients}
    bootstrap = settings.kafka_bootstrap()
    await topics.ensure_topics(bootstrap)
    watchdog = Watchdog(config=options.config, partition_of=topics.partition_for, ward_of=ward_of)
    service = WatchdogService(bootstrap=bootstrap, watchdog=watchdog, instance=options.instance,
                              keys=settings.key_ring())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = None
    if not settings.mqtt_url:
        _LOGGER.warning("no RPM_MQTT_URL: the edge agents' device alarms (battery, sensor, bond) are not watched")
    else:
        service.mqtt_on, service.mqtt_problem = True, "not connected yet"
        client = start_status_listener(settings.mqtt(), options.instance, service.on_status,
                                       on_state=service.on_mqtt_state)
    health = HealthServer(service.health, port=options.health_port) if options.health_port is not None else None
    try:
        if health is not None:
            await health.start()
            _LOGGER.info("watchdog health on http://127.0.0.1:%d/healthz", health.port)
        _LOGGER.info("watchdog %s watching %s (%d roster patients)", options.instance, bootstrap, len(ward_of))
        await service.run(stop)
    finally:
        if health is not None:
            await health.stop()
        if client is not None:
            client.disconnect()
            client.loop_stop()
