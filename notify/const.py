"""Constants of the notifier, with their unit in the name and the reason beside them."""

from __future__ import annotations

from typing import Final

ROUTES_ENV: Final = "RPM_ROUTES"
DEFAULT_ROUTES_FILE: Final = "routes.yaml"
ROUTES_VERSION: Final = 1

CONSUMER_GROUP: Final = "rpm-notifier"
# Several notifiers share the patients' acknowledgements (MQTT v5 shared subscription, as the bridges do).
MQTT_SHARED_GROUP: Final = "rpm-notifiers"
PATIENT_ACK_FILTER: Final = "rpm/v1/p/+/ack"
# Who a patient's own acknowledgement is recorded as on rpm.alert-acks.
PATIENT_ACK_BY: Final = "patient (edge agent)"
PATIENT_ACK_STATION: Final = "edge-agent"
# Kept by Mosquitto while the notifier is away, so acknowledgements sent meanwhile are not lost.
MQTT_SESSION_EXPIRY_S: Final = 7 * 24 * 3600

# Alertmanager's defaults, shortened where a ward needs faster answers.
DEFAULT_GROUP_WAIT_S: Final = 30.0
DEFAULT_GROUP_INTERVAL_S: Final = 5 * 60.0
DEFAULT_REPEAT_INTERVAL_S: Final = 4 * 3600.0
# A phone gateway or mail relay that has not answered in 10 s will not; three tries cover a restart.
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_RETRIES: Final = 3
# Retry delays: jittered exponential backoff capped at this (aiomqtt's shape), short enough that a
# failing step is skipped to the next one within a minute.
DEFAULT_BACKOFF_MAX_S: Final = 10.0
DEFAULT_BACKOFF_BASE_S: Final = 1.0

# The webhook signs "<timestamp>.<body>"; receivers reject timestamps older than this (replay).
WEBHOOK_TOLERANCE_S: Final = 300.0
SIGNATURE_HEADER: Final = "X-RPM-Signature"
TIMESTAMP_HEADER: Final = "X-RPM-Timestamp"
DELIVERY_HEADER: Final = "X-RPM-Delivery"

# rpm.alerts and rpm.alert-acks are replayed this far back on start to rebuild pending chains.
DEFAULT_REPLAY_WINDOW_S: Final = 7 * 24 * 3600.0
# A nurse's or patient's clock may run a little behind the worker's: an ack this much "before" the
# (re)raise it answers still counts (the nurse station uses the same slack).
ACK_CLOCK_SLACK_S: Final = 5.0
# Acks read before their alert (two topics replay in any order) wait here, at most this many.
PENDING_ACKS_MAX: Final = 10_000
# Alert history kept for the daily caregiver digest.
DIGEST_WINDOW_S: Final = 24 * 3600.0
# In-flight deliveries at once (each holds a connection to a gateway or relay).
MAX_CONCURRENT_DELIVERIES: Final = 32
# Audit lines waiting for InfluxDB; beyond this the oldest are dropped (and said so) so memory stays bounded.
AUDIT_QUEUE_MAX_LINES: Final = 100_000
# Longest sleep of the timer loop: wakes to re-check deadlines even if nothing happened.
MAX_TIMER_SLEEP_S: Final = 30.0

# Heartbeats to rpm watchdog (rpm_core.technical): the notifier is "stuck" when it has not been
# routing (live) for NOT_LIVE_AFTER_S, and tells of notifications that reached none of their
# channels for UNDELIVERED_HOLD_S after the last one.
NOT_LIVE_AFTER_S: Final = 60.0
UNDELIVERED_HOLD_S: Final = 900.0
