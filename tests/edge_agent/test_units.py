"""Pure parts of the agent: sample conversion, settings, the pairing registry, backoff policies."""

from __future__ import annotations

import random
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.config import AgentSettings
from edge_agent.errors import (
    AgentConfigError,
    DeviceConnectionError,
    DeviceNotFoundError,
    DeviceProtocolError,
    RegistryError,
)
from edge_agent.gatt import (
    CgmMeasurement,
    CgmSensorStatus,
    GlucoseMeasurement,
    GlucoseSensorStatus,
    HeartRateMeasurement,
    SampleLocation,
    SampleType,
    SensorContact,
    SFloat,
)
from edge_agent.link import reconnect_delay_s
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry, RegistryStore, normalize_address
from edge_agent.publisher import mqtt_backoff_s
from edge_agent.samples import (
    Problems,
    cgm_sample,
    glucose_sample,
    heart_rate_samples,
    unwrap_offset,
    valid_samples,
)
from rpm_core.wire import SampleFlag

NOW = 1_710_489_600.0


# --- samples -----------------------------------------------------------------------------------------


def test_each_beat_gets_the_notification_time_minus_the_intervals_after_it() -> None:
    m = HeartRateMeasurement(72, SensorContact.DETECTED, None, (1024, 512, 256))  # 1 s, 0.5 s, 0.25 s
    samples = heart_rate_samples(m, NOW)
    assert samples == [
        ("heart_rate", NOW, 72.0, 0),
        ("rr_interval", NOW - 0.75, 1.0, 0),
        ("rr_interval", NOW - 0.25, 0.5, 0),
        ("rr_interval", NOW, 0.25, 0),
    ]


def test_contact_lost_flags_the_heart_rate_and_its_beats() -> None:
    lost = heart_rate_samples(HeartRateMeasurement(80, SensorContact.NOT_DETECTED, None, (800,)), NOW)
    assert {s[3] for s in lost} == {int(SampleFlag.CONTACT_LOST)}
    unsupported = heart_rate_samples(HeartRateMeasurement(80), NOW)
    assert unsupported == [("heart_rate", NOW, 80.0, 0)]


def test_implausible_samples_are_counted_not_sent() -> None:
    problems = Problems("hr-X")
    kept = valid_samples([("heart_rate", NOW, 0.0, 0), ("heart_rate", NOW, 60.0, 0), ("rr_interval", 10.0, 1.0, 0)],
                         problems, now_s=NOW)
    assert kept == (("heart_rate", NOW, 60.0, 0),)
    assert sum(problems.counts.values()) == 2


def glucose(**fields: object) -> GlucoseMeasurement:
    defaults: dict[str, object] = {
        "sequence_number": 7, "base_time": datetime(2024, 3, 15, 8, 30),
        "concentration": SFloat.from_value(100e-5, exponent=-5), "sample_type": SampleType.CAPILLARY_WHOLE_BLOOD,
        "sample_location": SampleLocation.FINGER,
    }
    defaults.update(fields)
    return GlucoseMeasurement(**defaults)  # type: ignore[arg-type]


def test_glucose_sample_units_flags_and_skips() -> None:
    at = datetime(2024, 3, 15, 7, 30, tzinfo=UTC)
    problems = Problems("bgm-X")
    assert glucose_sample(glucose(), at, problems) == ("glucose", at.timestamp(), 100.0, 0)
    warned = glucose_sample(glucose(status_flags=GlucoseSensorStatus.SENSOR_MALFUNCTION), at, problems)
    assert warned is not None and warned[3] == int(SampleFlag.DEVICE_WARNING)
    assert glucose_sample(glucose(sample_type=SampleType.CONTROL_SOLUTION), at, problems) is None
    assert glucose_sample(glucose(concentration=SFloat(0x07FF)), at, problems) is None  # NaN
    assert glucose_sample(glucose(concentration=None, sample_type=None, sample_location=None), at, problems) is None
    assert len(problems.counts) == 3
    # a low battery says nothing against the value (it is device trouble of its own)
    assert glucose_sample(glucose(status_flags=GlucoseSensorStatus.DEVICE_BATTERY_LOW), at, problems) == (
        "glucose", at.timestamp(), 100.0, 0)


HI, LO = int(SampleFlag.ABOVE_RANGE), int(SampleFlag.BELOW_RANGE)


@pytest.mark.parametrize(("fields", "expected"), [
    # the spec's vector: +INF with status bit 5 -> the meter's limit, flagged above range
    ({"concentration": SFloat(0x07FE), "status_flags": GlucoseSensorStatus.RESULT_TOO_HIGH}, (600.0, HI)),
    ({"concentration": SFloat(0x07FE)}, (600.0, HI)),  # +INF without the status bit
    ({"concentration": SFloat(0x0802), "status_flags": GlucoseSensorStatus.RESULT_TOO_LOW}, (20.0, LO)),
    # a meter that sends its own limit with the status bit: its value is kept
    ({"concentration": SFloat.from_value(550e-5, exponent=-5), "status_flags": GlucoseSensorStatus.RESULT_TOO_HIGH},
     (550.0, HI)),
    # ... unless it is not a plausible glucose (0 with "LO"): the default limit
    ({"concentration": SFloat.from_value(0), "status_flags": GlucoseSensorStatus.RESULT_TOO_LOW}, (20.0, LO)),
    # a doubtful HI (strip error) keeps its quality flag, so detectors ignore it
    ({"concentration": SFloat(0x07FE),
      "status_flags": GlucoseSensorStatus.RESULT_TOO_HIGH | GlucoseSensorStatus.STRIP_INSERTION_ERROR},
     (600.0, HI | int(SampleFlag.DEVICE_WARNING))),
])
def test_a_hi_or_lo_meter_result_is_a_flagged_reading(fields: dict[str, object], expected: tuple[float, int]) -> None:
    at = datetime(2024, 3, 15, 7, 30, tzinfo=UTC)
    problems = Problems("bgm-X")
    assert glucose_sample(glucose(**fields), at, problems) == ("glucose", at.timestamp(), *expected)
    assert not problems.counts


def test_contradictory_hi_and_lo_is_counted_not_sent() -> None:
    problems = Problems("bgm-X")
    both = GlucoseSensorStatus.RESULT_TOO_HIGH | GlucoseSensorStatus.RESULT_TOO_LOW
    assert glucose_sample(glucose(concentration=SFloat(0x07FE), status_flags=both), datetime.now(UTC), problems) is None
    assert sum(problems.counts.values()) == 1


def test_cgm_sample_flags_annunciations_and_low_quality() -> None:
    at = datetime(2024, 3, 15, 7, 5, tzinfo=UTC)
    problems = Problems("cgm-X")
    plain = CgmMeasurement(SFloat.from_value(120), 5)
    assert cgm_sample(plain, at, problems) == ("glucose", at.timestamp(), 120.0, 0)
    poor = CgmMeasurement(SFloat.from_value(60), 5, warning=CgmSensorStatus.BELOW_HYPO, quality=SFloat.from_value(20))
    sample = cgm_sample(poor, at, problems)
    assert sample is not None and sample[3] == int(SampleFlag.LOW_QUALITY)
    faulty = CgmMeasurement(SFloat.from_value(60), 5, status=CgmSensorStatus.SENSOR_MALFUNCTION)
    assert cgm_sample(faulty, at, problems) == ("glucose", at.timestamp(), 60.0, int(SampleFlag.DEVICE_WARNING))
    assert cgm_sample(CgmMeasurement(SFloat(0x07FF), 5), at, problems) is None  # NaN


def test_a_cgm_hypo_warning_does_not_hide_the_low_reading_it_warns_about() -> None:
    """The warning octet's clinical bits describe a good value: flagging them gated every low."""
    at = datetime(2024, 3, 15, 7, 5, tzinfo=UTC)
    clinical = (CgmSensorStatus.BELOW_PATIENT_LOW | CgmSensorStatus.BELOW_HYPO
                | CgmSensorStatus.RATE_OF_DECREASE_EXCEEDED)
    low = CgmMeasurement(SFloat.from_value(48), 5, warning=clinical)
    assert cgm_sample(low, at, Problems("cgm-X")) == ("glucose", at.timestamp(), 48.0, 0)
    battery = CgmMeasurement(SFloat.from_value(120), 5, status=CgmSensorStatus.DEVICE_BATTERY_LOW)
    assert cgm_sample(battery, at, Problems("cgm-X")) == ("glucose", at.timestamp(), 120.0, 0)


def test_a_cgm_result_beyond_its_range_is_a_flagged_reading() -> None:
    at = datetime(2024, 3, 15, 7, 5, tzinfo=UTC)
    high = CgmMeasurement(SFloat(0x07FE), 5, warning=CgmSensorStatus.ABOVE_DEVICE_RANGE)
    assert cgm_sample(high, at, Problems("cgm-X")) == ("glucose", at.timestamp(), 400.0, int(SampleFlag.ABOVE_RANGE))
    low = CgmMeasurement(SFloat.from_value(40), 5, warning=CgmSensorStatus.BELOW_DEVICE_RANGE)
    assert cgm_sample(low, at, Problems("cgm-X")) == ("glucose", at.timestamp(), 40.0, int(SampleFlag.BELOW_RANGE))


def test_cgm_time_offset_unwraps_at_65536_minutes() -> None:
    assert unwrap_offset(10, None) == 10
    assert unwrap_offset(15, 10) == 15
    assert unwrap_offset(3, 65_530) == 65_539
    assert unwrap_offset(65_530, 65_539) == 65_530  # an older record (backfill), not a second wrap


# --- settings ----------------------------------------------------------------------------------------


def test_plaintext_mqtt_to_a_remote_broker_is_refused_unless_allowed(tmp_path: Path) -> None:
    env = {"RPM_EDGE_STATE": str(tmp_path), "RPM_MQTT_URL": "mqtt://agent-p1:pw@broker.example:1883"}
    with pytest.raises(AgentConfigError, match="RPM_EDGE_ALLOW_PLAINTEXT"):
        AgentSettings.from_env(env)
    assert AgentSettings.from_env({**env, "RPM_EDGE_ALLOW_PLAINTEXT": "1"}).mqtt().host == "broker.example"
    assert AgentSettings.from_env(env, allow_plaintext=True).mqtt().port == 1883
    local = AgentSettings.from_env({**env, "RPM_MQTT_URL": "mqtt://agent-p1:pw@127.0.0.1:1883"})
    assert not local.mqtt().tls
    tls = AgentSettings.from_env({**env, "RPM_MQTT_URL": "mqtts://agent-p1:pw@broker.example"})
    assert tls.mqtt().port == 8883
    context = tls.mqtt().ssl_context()
    assert context is not None and context.check_hostname
    assert "pw" not in repr(tls)


def test_state_directory_defaults(tmp_path: Path) -> None:
    assert AgentSettings.from_env({"STATE_DIRECTORY": "/var/lib/rpm-edge"}).state_dir == Path("/var/lib/rpm-edge")
    assert AgentSettings.from_env({"XDG_STATE_HOME": "/x"}).state_dir == Path("/x/rpm-edge")
    assert AgentSettings.from_env({"HOME": "/home/p"}).state_dir == Path("/home/p/.local/state/rpm-edge")
    assert AgentSettings.from_env({"RPM_EDGE_STATE": str(tmp_path)}).state_dir == tmp_path


@pytest.mark.parametrize(("name", "value"), [("RPM_EDGE_ALLOW_PLAINTEXT", "maybe"), ("RPM_EDGE_OUTBOX_MAX_MB", "-1")])
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(AgentConfigError, match=name):
        AgentSettings.from_env({name: value, "HOME": "/tmp"})


# --- the pairing registry ----------------------------------------------------------------------------


def test_registry_round_trips_atomically_with_mode_0600(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "state" / "pairings.json")
    device = PairedDevice(address="C0:FF:EE:00:00:01", kind=DeviceKind.CGM, name="CGM",
                          info=DeviceInfo("Acme", "CGM-1", "SN1", "1.0"), battery_pct=50, bonded=True,
                          paired_at="2024-03-15T08:00:00+00:00")
    with store.locked() as registry:
        store.save(registry.with_device("p0001", device))
    assert store.load() == Registry("p0001", (device,))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert list(store.path.parent.glob(".pairings-*")) == []  # no temp file left behind
    assert device.device_id == "cgm-C0:FF:EE:00:00:01"
    with pytest.raises(RegistryError, match="provisioned for patient p0001"):
        store.load().with_device("p0002", device)
    assert store.load().without("c0-ff-ee-00-00-01").devices == ()


def test_registry_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "pairings.json"
    path.write_text('{"version": 1,\n "devices": [}')
    with pytest.raises(RegistryError, match=r"pairings.json:2"):
        RegistryStore(path).load()
    with pytest.raises(RegistryError, match="not a Bluetooth address"):
        normalize_address("C0:FF:EE")
    with pytest.raises(RegistryError, match="patient id"):
        Registry().with_device("bad id!", PairedDevice(address="C0:FF:EE:00:00:01", kind=DeviceKind.HEART_RATE))


# --- backoff policies --------------------------------------------------------------------------------


def test_mqtt_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(1)
    delays = [mqtt_backoff_s(a, cap_s=60, rng=rng) for a in range(12)]
    assert all(const.MQTT_BACKOFF_MIN_S / 2 <= d <= 60 for d in delays)
    assert delays[0] <= const.MQTT_BACKOFF_MIN_S
    assert all(30 <= d <= 60 for d in delays[8:])


def test_ble_reconnect_delay_depends_on_what_went_wrong() -> None:
    from bleak.exc import BleakError

    rng = random.Random(2)
    assert reconnect_delay_s(None, 5, cap_s=60, rng=rng) <= 0.5  # the link worked: come back at once
    assert 1 <= reconnect_delay_s(DeviceNotFoundError("A"), 0, cap_s=60, rng=rng) <= 2
    assert 30 <= reconnect_delay_s(DeviceNotFoundError("A"), 10, cap_s=60, rng=rng) <= 60
    assert reconnect_delay_s(DeviceProtocolError("A", "not paired"), 0, cap_s=60, rng=rng) >= 15
    transient = DeviceConnectionError("A", "abort")
    transient.__cause__ = BleakError("le-connection-abort-by-local")
    assert 0.25 <= reconnect_delay_s(transient, 0, cap_s=60, rng=rng) <= 1.25
    assert reconnect_delay_s(RuntimeError("bug"), 20, cap_s=5, rng=rng) <= 5
    assert timedelta(seconds=reconnect_delay_s(DeviceNotFoundError("A"), 30, cap_s=60)) <= timedelta(minutes=1)
