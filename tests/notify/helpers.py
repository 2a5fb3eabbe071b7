"""Helpers of the notifier tests: a small routes file, alert events, a fake clock driving the router."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detectors.events import AlertEvent, alert_id
from notify.loader import parse_routes
from notify.model import Routes
from notify.router import Action, AlertUpdate, Dispatch, Escalated, Record, Router

T0 = 1764100000.0  # 2025-11-25 19:46:40 UTC

ROUTES = """
version: 1
defaults: {group_wait: 10s, group_interval: 60s, repeat_interval: 1h}
receivers:
  nurses: {channels: [{type: nurse_station}, {type: edge_agent, messages: {glucose_low: "Take 15 g of carbohydrate."}}]}
  oncall: {channels: [{type: webhook, url: "https://pager.example/x", secret_env: HOOK_SECRET}]}
  physician: {channels: [{type: webhook, name: mail, url: "https://mail.example/x", secret_env: HOOK_SECRET}]}
escalations:
  critical:
    steps:
      - {after: 0s, receiver: nurses}
      - {after: 5m, receiver: oncall}
      - {after: 15m, receiver: physician}
inhibit:
  - {source: critical, targets: [warning, info]}
route:
  receiver: nurses
  routes:
    - name: critical
      match: {severity: critical}
      escalation: critical
"""


def routes(text: str = ROUTES) -> Routes:
    """Parse a routes file given inline."""
    return parse_routes(text, source="test-routes.yaml")


def event(patient: str = "p0001", rule: str = "glucose_low", *, severity: str = "critical",
          state: str = "raised", since: float = T0, metric: str = "glucose", by: str | None = None) -> dict[str, Any]:
    """An ``rpm.alerts`` document, built by the detectors' own ``AlertEvent``."""
    return AlertEvent(alert_id=alert_id(patient, rule, since), patient=patient, rule=rule, severity=severity,  # type: ignore[arg-type]
                      metric=metric, state=state, time=since, value=float("nan"),  # type: ignore[arg-type]
                      message=f"{rule} for {patient} (now 48 mg/dL)", since=since, by=by).to_dict()


@dataclass
class Driver:
    """A router with a fake clock: feed events, step time, collect what it does."""

    router: Router
    now: float = T0
    dispatches: list[Dispatch] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    escalated: list[Escalated] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)  # receivers whose deliveries fail

    def take(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Dispatch):
                self.dispatches.append(a)
                if a.notification.kind == "step":
                    ok = a.notification.receiver not in self.fail
                    self.take(self.router.delivery_result(a.notification.id, delivered=ok, at=self.now))
            elif isinstance(a, Record):
                self.records.append(a)
            else:
                self.escalated.append(a)

    def observe(self, doc: dict[str, Any], at: float | None = None) -> None:
        self.now = self.now if at is None else at
        self.take(self.router.observe(AlertUpdate.from_doc(doc), self.now))

    def ack(self, alert: str, *, by: str = "Nurse Ana", source: str = "north-desk") -> None:
        self.take(self.router.acknowledge(alert, by=by, at=self.now, source=source))

    def run_until(self, end: float) -> None:
        """Advance to every deadline up to ``end`` (as the service's timer does)."""
        while True:
            deadline = self.router.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.take(self.router.advance(self.now))
        self.now = end
        self.take(self.router.advance(end))

    def steps(self) -> list[tuple[float, str, int, str]]:
        """(seconds after T0, kind, step, receiver) of every dispatch."""
        return [(d.notification.at - T0, d.notification.kind, d.notification.step, d.notification.receiver)
                for d in self.dispatches]


def driver(text: str = ROUTES, **kw: Any) -> Driver:
    """A :class:`Driver` over an inline routes file."""
    return Driver(Router(routes(text), **kw))
