"""Constants of the edge agent, with the unit in the name and the reason beside it.

Section numbers (§n) refer to /work/shared/ble/HEALTH_PROFILES.md, the byte-level authority.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Final

# §top: every 16-bit SIG UUID is shorthand for 0000xxxx-0000-1000-8000-00805f9b34fb.
BLUETOOTH_BASE_UUID_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"


def uuid16(n: int) -> str:
    """Expand a 16-bit SIG UUID to the 128-bit string form bleak reports (``uuid16(0x180D)``)."""
    if not isinstance(n, int) or not 0 <= n <= 0xFFFF:
        raise ValueError(f"not a 16-bit UUID: {n!r}")
    return f"0000{n:04x}{BLUETOOTH_BASE_UUID_SUFFIX}"


# --- Services -----------------------------------------------------------------------------------
CURRENT_TIME_SERVICE_UUID16: Final = 0x1805
GLUCOSE_SERVICE_UUID16: Final = 0x1808
DEVICE_INFORMATION_SERVICE_UUID16: Final = 0x180A
HEART_RATE_SERVICE_UUID16: Final = 0x180D
BATTERY_SERVICE_UUID16: Final = 0x180F
CGM_SERVICE_UUID16: Final = 0x181F

CURRENT_TIME_SERVICE_UUID: Final = uuid16(CURRENT_TIME_SERVICE_UUID16)
GLUCOSE_SERVICE_UUID: Final = uuid16(GLUCOSE_SERVICE_UUID16)
DEVICE_INFORMATION_SERVICE_UUID: Final = uuid16(DEVICE_INFORMATION_SERVICE_UUID16)
HEART_RATE_SERVICE_UUID: Final = uuid16(HEART_RATE_SERVICE_UUID16)
BATTERY_SERVICE_UUID: Final = uuid16(BATTERY_SERVICE_UUID16)
CGM_SERVICE_UUID: Final = uuid16(CGM_SERVICE_UUID16)

# --- Characteristics and descriptors -------------------------------------------------------------
CLIENT_CHARACTERISTIC_CONFIGURATION_UUID16: Final = 0x2902
LOCAL_TIME_INFORMATION_UUID16: Final = 0x2A0F
GLUCOSE_MEASUREMENT_UUID16: Final = 0x2A18
BATTERY_LEVEL_UUID16: Final = 0x2A19
SYSTEM_ID_UUID16: Final = 0x2A23
MODEL_NUMBER_UUID16: Final = 0x2A24
SERIAL_NUMBER_UUID16: Final = 0x2A25
FIRMWARE_REVISION_UUID16: Final = 0x2A26
HARDWARE_REVISION_UUID16: Final = 0x2A27
SOFTWARE_REVISION_UUID16: Final = 0x2A28
MANUFACTURER_NAME_UUID16: Final = 0x2A29
REGULATORY_CERTIFICATION_DATA_LIST_UUID16: Final = 0x2A2A
CURRENT_TIME_UUID16: Final = 0x2A2B
GLUCOSE_MEASUREMENT_CONTEXT_UUID16: Final = 0x2A34
HEART_RATE_MEASUREMENT_UUID16: Final = 0x2A37
BODY_SENSOR_LOCATION_UUID16: Final = 0x2A38
HEART_RATE_CONTROL_POINT_UUID16: Final = 0x2A39
PNP_ID_UUID16: Final = 0x2A50
GLUCOSE_FEATURE_UUID16: Final = 0x2A51
RECORD_ACCESS_CONTROL_POINT_UUID16: Final = 0x2A52
CGM_MEASUREMENT_UUID16: Final = 0x2AA7
CGM_FEATURE_UUID16: Final = 0x2AA8
CGM_STATUS_UUID16: Final = 0x2AA9
CGM_SESSION_START_TIME_UUID16: Final = 0x2AAA
CGM_SESSION_RUN_TIME_UUID16: Final = 0x2AAB
CGM_SPECIFIC_OPS_CONTROL_POINT_UUID16: Final = 0x2AAC

CLIENT_CHARACTERISTIC_CONFIGURATION_UUID: Final = uuid16(CLIENT_CHARACTERISTIC_CONFIGURATION_UUID16)
LOCAL_TIME_INFORMATION_UUID: Final = uuid16(LOCAL_TIME_INFORMATION_UUID16)
GLUCOSE_MEASUREMENT_UUID: Final = uuid16(GLUCOSE_MEASUREMENT_UUID16)
BATTERY_LEVEL_UUID: Final = uuid16(BATTERY_LEVEL_UUID16)
SYSTEM_ID_UUID: Final = uuid16(SYSTEM_ID_UUID16)
MODEL_NUMBER_UUID: Final = uuid16(MODEL_NUMBER_UUID16)
SERIAL_NUMBER_UUID: Final = uuid16(SERIAL_NUMBER_UUID16)
FIRMWARE_REVISION_UUID: Final = uuid16(FIRMWARE_REVISION_UUID16)
HARDWARE_REVISION_UUID: Final = uuid16(HARDWARE_REVISION_UUID16)
SOFTWARE_REVISION_UUID: Final = uuid16(SOFTWARE_REVISION_UUID16)
MANUFACTURER_NAME_UUID: Final = uuid16(MANUFACTURER_NAME_UUID16)
REGULATORY_CERTIFICATION_DATA_LIST_UUID: Final = uuid16(REGULATORY_CERTIFICATION_DATA_LIST_UUID16)
CURRENT_TIME_UUID: Final = uuid16(CURRENT_TIME_UUID16)
GLUCOSE_MEASUREMENT_CONTEXT_UUID: Final = uuid16(GLUCOSE_MEASUREMENT_CONTEXT_UUID16)
HEART_RATE_MEASUREMENT_UUID: Final = uuid16(HEART_RATE_MEASUREMENT_UUID16)
BODY_SENSOR_LOCATION_UUID: Final = uuid16(BODY_SENSOR_LOCATION_UUID16)
HEART_RATE_CONTROL_POINT_UUID: Final = uuid16(HEART_RATE_CONTROL_POINT_UUID16)
PNP_ID_UUID: Final = uuid16(PNP_ID_UUID16)
GLUCOSE_FEATURE_UUID: Final = uuid16(GLUCOSE_FEATURE_UUID16)
RECORD_ACCESS_CONTROL_POINT_UUID: Final = uuid16(RECORD_ACCESS_CONTROL_POINT_UUID16)
CGM_MEASUREMENT_UUID: Final = uuid16(CGM_MEASUREMENT_UUID16)
CGM_FEATURE_UUID: Final = uuid16(CGM_FEATURE_UUID16)
CGM_STATUS_UUID: Final = uuid16(CGM_STATUS_UUID16)
CGM_SESSION_START_TIME_UUID: Final = uuid16(CGM_SESSION_START_TIME_UUID16)
CGM_SESSION_RUN_TIME_UUID: Final = uuid16(CGM_SESSION_RUN_TIME_UUID16)
CGM_SPECIFIC_OPS_CONTROL_POINT_UUID: Final = uuid16(CGM_SPECIFIC_OPS_CONTROL_POINT_UUID16)

# --- ATT application error codes on control-point writes (§1, §2, §3; surface as
# BleakGATTProtocolError). The same code means different things per service, hence the prefixes.
ATT_ERROR_INSUFFICIENT_AUTHENTICATION: Final = 0x05  # passkey pairing needed first (CGMS, §3)
ATT_ERROR_INSUFFICIENT_ENCRYPTION: Final = 0x0F  # bond first (GLS, §2)
ATT_ERROR_HRCP_VALUE_NOT_SUPPORTED: Final = 0x80
ATT_ERROR_GLS_PROCEDURE_ALREADY_IN_PROGRESS: Final = 0x80
ATT_ERROR_GLS_CCCD_IMPROPERLY_CONFIGURED: Final = 0x81  # RACP indications not enabled
ATT_ERROR_CGMS_MISSING_CRC: Final = 0x80  # E2E-CRC supported but not appended
ATT_ERROR_CGMS_INVALID_CRC: Final = 0x81
ATT_ERROR_CGMS_CCCD_IMPROPERLY_CONFIGURED: Final = 0xFD
ATT_ERROR_CGMS_PROCEDURE_ALREADY_IN_PROGRESS: Final = 0xFE

# --- Units and scales ---------------------------------------------------------------------------
# §1: RR-intervals tick at 1/1024 s, so seconds = ticks / 1024 is exact in binary floating point.
RR_INTERVAL_TICKS_PER_S: Final = 1024
# §1: at the default 20-byte ATT payload a notification holds at most this many RR-intervals.
HR_MAX_RR_INTERVALS_PER_DEFAULT_MTU: Final = 9
# §4: 1 kg/L = 10^6 mg per 10 dL.
GLUCOSE_MG_DL_PER_KG_L: Final = 100_000
# §4: mol/L -> mmol/L.
GLUCOSE_MMOL_L_PER_MOL_L: Final = 1_000
# §4: glucose molar mass 180.16 g/mol. 18.0 is common clinically and Nordic uses 18.2; we keep
# the exact factor (as a Fraction so that conversions stay correctly rounded).
GLUCOSE_MG_DL_PER_MMOL_L: Final = Fraction(18016, 1000)
# §2 context: carbohydrate in kg (SIG unit) -> g; medication kg -> mg and L -> mL.
GRAMS_PER_KG: Final = 1_000
MILLIGRAMS_PER_KG: Final = 1_000_000
MILLILITRES_PER_L: Final = 1_000
# §2 context: an exercise duration of 0xFFFF s means "overrun" (it went on longer than that).
GLUCOSE_EXERCISE_DURATION_OVERRUN_S: Final = 0xFFFF
# §3: the smallest CGM Measurement record: Size, Flags, glucose SFLOAT, Time Offset.
CGM_RECORD_MIN_BYTES: Final = 6
# §3: Session Start Time / Local Time Information time zone counts quarter hours.
TIME_ZONE_STEP_MIN: Final = 15
# §3: the CGM Time Offset is a u16 minute counter and wraps after about 45.5 days.
CGM_TIME_OFFSET_WRAP_MIN: Final = 65_536
# §top / GSS Date Time: years before the Gregorian reform are invalid; 0 means "unknown".
DATE_TIME_MIN_YEAR: Final = 1582
DATE_TIME_MAX_YEAR: Final = 9999
# §5: Battery Level is a percentage.
BATTERY_LEVEL_MAX_PCT: Final = 100
# §6: CRC-16/MCRF4XX (CGM E2E-CRC): reflected CCITT polynomial, seed 0xFFFF, no final XOR.
E2E_CRC_SEED: Final = 0xFFFF
E2E_CRC_POLY_REFLECTED: Final = 0x8408
# §3: CGM Feature carries this in its CRC field when E2E-CRC is not supported.
E2E_CRC_PLACEHOLDER: Final = 0xFFFF

# --- Agent runtime ------------------------------------------------------------------------------
# Readings waiting between BLE callbacks and the SQLite writer. A callback never blocks, so when
# this is full a reading is dropped (and counted); 10,000 is minutes of every device at once.
READING_QUEUE_MAX_ENTRIES: Final = 10_000
# The writer commits what has queued up in one transaction (one fsync), up to this many entries.
OUTBOX_WRITE_BATCH_MAX_ENTRIES: Final = 1_000
# Default disk budget of the outbox: weeks of a heart-rate strap at 1 Hz with RR intervals.
DEFAULT_OUTBOX_BUDGET_BYTES: Final = 256 * 1024 * 1024
# The budget is enforced on the number of stored readings: measured on disk (table + indexes, WAL
# checkpointed, 20-character device ids) a reading costs ~106 bytes; 120 leaves room for the WAL.
OUTBOX_BYTES_PER_READING: Final = 120
# After an eviction the outbox is brought down to this fraction of its budget, so that a full
# outbox evicts in chunks rather than on every write.
OUTBOX_LOW_WATER_FRACTION: Final = 0.9
# A "disk full" episode is over (and reported as such) once the outbox is below this fraction.
OUTBOX_FULL_CLEARED_FRACTION: Final = 0.5
# How long the outbox keeps a de-duplication key (a glucose record's serial|sequence|base time, a
# CGM record's session|offset), from when it was first stored. Within it a record the device sends
# again is not stored (nor sent) twice. A CGM may send any record of its current session again (a
# backfill after a gap), and sessions last up to 15 days (Dexcom G7 10 days + 12 h grace period;
# FreeStyle Libre 3 14 days, Libre 3 Plus 15 days, per their user guides); a meter is asked only for
# records after its last sequence number, so its repeats are recent. Twice the longest session.
# Beyond it a repeat would be sent again and dropped downstream (InfluxDB points are keyed, the
# detectors drop samples they have seen): harmless, where an unbounded table was not.
OUTBOX_SEEN_KEEP_S: Final = 30 * 86_400
# And at most this many keys whatever the clock says (the newest kept): a 1-minute CGM for 30 days
# is 43,200 keys, a meter a few a day. ~100 bytes each on disk: ~10 MB at most.
OUTBOX_SEEN_MAX_KEYS: Final = 100_000
# Old keys are deleted at most this often (at open, then by the next write after it), in the
# write's transaction: one indexed DELETE.
OUTBOX_SEEN_PRUNE_EVERY_S: Final = 3_600.0
# Samples in one MQTT message (the wire allows 2,000): ~25 kB of JSON, one device each.
PUBLISH_BATCH_MAX_SAMPLES: Final = 500
# QoS 1 messages awaiting PUBACK at once; Mosquitto's default receive maximum is 20.
PUBLISH_MAX_INFLIGHT: Final = 20
# MQTT keepalive: the broker publishes the last will ~1.5x this after the agent vanishes.
MQTT_KEEPALIVE_S: Final = 30
# CONNACK must arrive within this after the TCP (and TLS) connection is up.
MQTT_CONNACK_TIMEOUT_S: Final = 10.0
# Reconnect backoff to the broker: equal-jitter exponential from 0.5 s up to this cap.
MQTT_BACKOFF_MIN_S: Final = 0.5
DEFAULT_MQTT_BACKOFF_MAX_S: Final = 60.0
# PUBACK reason code 0x10 "No matching subscribers": the broker accepted the message but had
# nobody to give it to (no bridge subscribed yet, e.g. just after a broker restart, which does not
# restore shared subscriptions). The message stays in the outbox and is offered again after this.
MQTT_NO_SUBSCRIBER_RETRY_S: Final = 1.0
# On a graceful stop, how long to wait for the "offline" status to be acknowledged.
MQTT_GOODBYE_TIMEOUT_S: Final = 2.0
# BLE reconnect backoff cap: a device out of range is looked for at least this often.
DEFAULT_BLE_BACKOFF_MAX_S: Final = 60.0
# How long one scan looks for a paired device that BlueZ does not know any more.
BLE_SCAN_TIMEOUT_S: Final = 10.0
# bleak-retry-connector attempts per connect (transient radio errors are retried inside).
BLE_CONNECT_ATTEMPTS: Final = 3
# A GATT error such as "not paired" will not fix itself quickly: retry slowly.
BLE_PROTOCOL_ERROR_BACKOFF_S: Final = 30.0
# §2: a meter sends its records back to back; 30 s without any record or the final indication
# is a hang. Silence, not the whole transfer: a meter with 1,000 records at 10 per second takes
# minutes and is still working (issue 14, item 3).
GLUCOSE_RACP_IDLE_TIMEOUT_S: Final = 30.0
# A context record (§2 b4) follows its measurement at once; don't hold a record longer than this.
GLUCOSE_CONTEXT_WAIT_S: Final = 2.0
# While a meter stays connected, ask for new records this often (GLS sends records only on RACP).
GLUCOSE_RESYNC_INTERVAL_S: Final = 300.0
# §3: a CGM backfill may span days of 5-minute records (~4,000 a fortnight); like the meter's,
# it is aborted after this long without a record, however long it runs.
CGM_RACP_IDLE_TIMEOUT_S: Final = 60.0
# §2 status bits 5/6 with +INF/-INF: a result beyond what the meter can measure ("HI"/"LO").
# The wire carries it flagged ABOVE_RANGE/BELOW_RANGE with the meter's limit (issue 14); GLS
# does not tell the limit, so this is the measuring interval of most home meters (20-600 mg/dL:
# Ascensia Contour Next One, Roche Accu-Chek Guide, LifeScan OneTouch Verio user manuals).
GLUCOSE_METER_HIGH_LIMIT_MG_DL: Final = 600.0
GLUCOSE_METER_LOW_LIMIT_MG_DL: Final = 20.0
# §3 warning bits 22/23 ("below/above what the device can process") or ±INF on a CGM: the
# reporting range of current sensors is 40-400 mg/dL (Dexcom G6/G7, FreeStyle Libre 2/3 manuals).
CGM_HIGH_LIMIT_MG_DL: Final = 400.0
CGM_LOW_LIMIT_MG_DL: Final = 40.0
# A CGM record that failed its E2E-CRC is asked for again at once, up to this many times per hole,
# before the hole is reported as a gap (issue 14, item 1).
CGM_REFETCH_ATTEMPTS: Final = 3
# The step between CGM records when too few were seen to tell (§3 examples: 5 min).
CGM_DEFAULT_INTERVAL_MIN: Final = 5
# Offsets of stored CGM records kept in memory to find unfillable holes: days of 1-min records.
CGM_OFFSETS_REMEMBERED: Final = 5_000
# §3 Quality is a device-defined percentage; below half we mark the sample LOW_QUALITY.
CGM_LOW_QUALITY_PCT: Final = 50.0
# §3: Time Offset is u16 minutes; a jump back by more than half the range is a wrap, not disorder.
CGM_TIME_OFFSET_HALF_RANGE_MIN: Final = 32_768
# Device trouble (issue 14, item 6). Battery: a "battery_low" alarm at or below this level
# (RPM_EDGE_BATTERY_LOW_PCT), critical at or below the second; cleared 5 % above the first.
DEFAULT_BATTERY_LOW_PCT: Final = 20
BATTERY_CRITICAL_PCT: Final = 5
BATTERY_LOW_HYSTERESIS_PCT: Final = 5
# A paired device that gave no reading for this long is "silent" (strap off, out of range, meter
# not used): a strap is worn all day, a CGM sends every 1-5 min (Dexcom's signal loss alert: 20 min),
# a meter is used a few times a day (two days without a sync is worth a call).
DEVICE_SILENT_AFTER_S: Final = {"heart_rate": 3600.0, "cgm": 1800.0, "glucose_meter": 48 * 3600.0}
# Active alarms are published again this often (besides after every reconnection), so a watchdog
# that started or subscribed after an alarm was raised hears of it within this time.
ALARM_REFRESH_INTERVAL_S: Final = 300.0
# `rpm edge status`: a status file older than this means the agent is not running.
STATUS_FILE_STALE_S: Final = 60.0
# How often the agent looks for silent devices, newly paired ones, and rewrites its status file.
DEVICE_CHECK_INTERVAL_S: Final = 10.0
# A CGM sensor session is about to end within this (the patient needs a new sensor at hand).
CGM_SESSION_ENDING_WARN_S: Final = 24 * 3600.0
# A meter clock further than this from ours is "far off" (its times are corrected, but a clock
# that far off was likely never set, or reset by a battery change).
METER_CLOCK_TOLERANCE_S: Final = 300.0
# With consent, a meter clock is set when it is further off than this (the skew is measured to the
# second over BLE, so a smaller one is noise, and setting it on every connection would wear nothing
# but also correct nothing).
METER_CLOCK_SET_THRESHOLD_S: Final = 30.0
# Between the start and the end of one sync a meter's clock moves by the sync's length; more than
# this beyond it means the clock was changed during the sync (times of that sync are uncertain).
METER_CLOCK_JUMP_S: Final = 60.0
# Pairing: how long `rpm edge pair` scans by default.
DEFAULT_PAIR_SCAN_TIMEOUT_S: Final = 10.0
# Disconnecting on the way out: BlueZ answers at once; a hung D-Bus must not block the stop.
BLE_DISCONNECT_TIMEOUT_S: Final = 5.0
# Decoded notifications waiting for a glucose/CGM session (a backfill is a burst of records).
SESSION_QUEUE_MAX_ITEMS: Final = 5_000
