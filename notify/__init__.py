"""notify: routing, escalation chains, channels and delivery receipts for alerts (issue 9).

``rpm notifier`` consumes ``rpm.alerts`` (and ``rpm.alert-acks``), runs the pure
:class:`notify.router.Router` over the events and a clock, hands the notifications it decides on
to the channel adapters in :mod:`notify.channels`, and records every attempt, delivery, failure,
skip and acknowledgement in InfluxDB (measurement ``notifications``). See ``docs/routing.md``.
"""
