"""Codecs for the Bluetooth SIG health profiles the edge agent collects (HRS, GLS, CGMS, BAS, DIS, CTS).

The byte layouts follow /work/shared/ble/HEALTH_PROFILES.md, the authority; "§n" below refers to
its sections. Every payload is one frozen, slotted dataclass with ``from_bytes`` and ``__bytes__``
(simulators emit spec-exact bytes with the latter), flags are :class:`enum.IntFlag`, code lists are
:class:`enum.IntEnum`, and ``__post_init__`` range-checks every field.

Decoding contract: a decoder returns a fully valid object or raises :class:`GattDecodeError` (a
``ValueError``) naming the field at fault; it never returns garbage and never raises anything else.
Truncated payloads, trailing bytes where the flags fix the length, reserved code values, impossible
dates and inconsistent length fields are all errors. Reserved *flag bits* are ignored, as the SIG
requires of receivers (the CGM record keeps them, because its E2E-CRC covers them).

Numbers: SFLOAT/FLOAT fields are kept as :class:`SFloat` (the raw 16-bit code) so that re-encoding
is byte-exact and NaN/NRes stay distinguishable; properties convert them to ``float`` in the unit
their name carries. IEEE 11073 values are decoded as the double nearest to ``m × 10^e`` (computed
with exact rational arithmetic), which is what rounding to 12 digits approximates.

Time: the Glucose Date Time and CGM session times are device-local wall-clock time, so they are
naive ``datetime`` objects; only :attr:`SessionStartTime.utc` is timezone-aware.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from fractions import Fraction
from typing import Final, Self, TypeAlias, TypeVar

from edge_agent import const
from edge_agent.errors import GattDecodeError, OverlongPayloadError

_E = TypeVar("_E", bound=enum.IntEnum)
# What bleak hands a notify callback (bytearray) and what tests / simulators use (bytes).
BytesLike: TypeAlias = bytes | bytearray | memoryview


# ================================================================================================
# Low-level helpers
# ================================================================================================


class _Reader:
    """A cursor over one payload; every read names the field it decodes, for :class:`GattDecodeError`."""

    __slots__ = ("_data", "_pos", "payload")

    def __init__(self, data: BytesLike, payload: str) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise GattDecodeError("data", f"expected bytes, got {type(data).__name__}", payload)
        self._data = bytes(data)
        self._pos = 0
        self.payload = payload

    @property
    def position(self) -> int:
        """Bytes read so far."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._pos

    def error(self, field: str, reason: str) -> GattDecodeError:
        """A decode error for ``field`` of this payload."""
        return GattDecodeError(field, reason, self.payload)

    def take(self, size: int, field: str) -> bytes:
        """The next ``size`` bytes, or a "truncated" error naming ``field``."""
        if size > self.remaining:
            raise self.error(field, f"truncated: needs {size} byte(s) at offset {self._pos}, {self.remaining} left")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def uint(self, size: int, field: str) -> int:
        """A little-endian unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.take(size, field), "little")

    def sint(self, size: int, field: str) -> int:
        """A little-endian two's-complement integer of ``size`` bytes."""
        return int.from_bytes(self.take(size, field), "little", signed=True)

    def sfloat(self, field: str) -> SFloat:
        """An IEEE 11073 SFLOAT."""
        return SFloat(self.uint(2, field))

    def to_enum(self, cls: type[_E], value: int, field: str) -> _E:
        """``cls(value)``, or an error naming ``field`` if the value is reserved."""
        try:
            return cls(value)
        except ValueError:
            raise self.error(field, f"reserved value {value} for {cls.__name__}") from None

    def enum(self, cls: type[_E], field: str) -> _E:
        """A one-byte code from the list ``cls``."""
        return self.to_enum(cls, self.uint(1, field), field)

    def end(self) -> None:
        """Fail (:class:`OverlongPayloadError`) if bytes are left over where the format fixes the length."""
        if self.remaining:
            reason = f"over-long: {self.remaining} unexpected byte(s) at offset {self._pos}"
            raise OverlongPayloadError("length", reason, self.payload, self._pos)


def _require(ok: bool, payload: str, field: str, reason: str) -> None:
    if not ok:
        raise GattDecodeError(field, reason, payload)


def _check_uint(payload: str, field: str, value: int | None, bits: int) -> None:
    """Range check for an optional unsigned field of ``bits`` bits."""
    if value is not None:
        top = (1 << bits) - 1
        _require(isinstance(value, int) and 0 <= value <= top, payload, field, f"{value!r} outside 0..{top}")


def _check_sint(payload: str, field: str, value: int | None, bits: int) -> None:
    """Range check for an optional two's-complement field of ``bits`` bits."""
    if value is not None:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        _require(isinstance(value, int) and lo <= value <= hi, payload, field, f"{value!r} outside {lo}..{hi}")


def _check_together(payload: str, **fields: object) -> None:
    """Fields that share one flag bit must be all present or all absent."""
    present = [value is not None for value in fields.values()]
    _require(all(present) or not any(present), payload, next(iter(fields)), f"{', '.join(fields)} go together")


def _u8(value: int) -> bytes:
    return value.to_bytes(1, "little")


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def _s16(value: int) -> bytes:
    return value.to_bytes(2, "little", signed=True)


def _nibbles(low: int, high: int) -> bytes:
    return _u8(low | high << 4)


# ================================================================================================
# §4 IEEE 11073-20601 SFLOAT and FLOAT
# ================================================================================================


@dataclass(frozen=True, slots=True)
class _NumberFormat:
    """SFLOAT (12-bit mantissa, 4-bit exponent) or FLOAT (24/8); special codes have exponent 0."""

    name: str
    mantissa_bits: int
    exponent_bits: int

    @property
    def nan_raw(self) -> int:
        return (1 << (self.mantissa_bits - 1)) - 1

    @property
    def exponent_range(self) -> range:
        half = 1 << (self.exponent_bits - 1)
        return range(-half, half)

    def is_special(self, raw: int) -> bool:
        # NaN, NRes, +INF, -INF and the reserved code sit at nan_raw - 1 .. nan_raw + 3.
        return self.nan_raw - 1 <= raw <= self.nan_raw + 3

    def special_value(self, raw: int) -> float:
        return {self.nan_raw - 1: math.inf, self.nan_raw + 3: -math.inf}.get(raw, math.nan)

    def special_raw(self, value: float) -> int | None:
        if math.isnan(value):
            return self.nan_raw
        if math.isinf(value):
            return self.nan_raw - 1 if value > 0 else self.nan_raw + 3
        return None

    def split(self, raw: int) -> tuple[int, int]:
        """(mantissa, exponent), both sign-extended."""
        mantissa = _sign_extend(raw & ((1 << self.mantissa_bits) - 1), self.mantissa_bits)
        return mantissa, _sign_extend(raw >> self.mantissa_bits, self.exponent_bits)

    def mantissa_fits(self, mantissa: int, exponent: int) -> bool:
        # With exponent 0 the five codes nearest the mantissa limits are special values.
        limit = (1 << (self.mantissa_bits - 1)) - (3 if exponent == 0 else 1)
        return -limit - (0 if exponent == 0 else 1) <= mantissa <= limit

    def join(self, mantissa: int, exponent: int) -> int:
        exponent_code = exponent & ((1 << self.exponent_bits) - 1)
        return exponent_code << self.mantissa_bits | mantissa & ((1 << self.mantissa_bits) - 1)


_SFLOAT: Final = _NumberFormat("sfloat", 12, 4)
_FLOAT: Final = _NumberFormat("float", 24, 8)


def _sign_extend(value: int, bits: int) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _exact(mantissa: int, exponent: int, factor: Fraction | int = 1) -> float:
    """``mantissa × 10^exponent × factor`` as the nearest double (``float(Fraction)`` rounds correctly)."""
    return float(Fraction(mantissa) * Fraction(10) ** exponent * factor)


def _decode_number(raw: int, fmt: _NumberFormat, factor: Fraction | int = 1) -> float:
    bits = fmt.mantissa_bits + fmt.exponent_bits
    if not isinstance(raw, int) or not 0 <= raw < 1 << bits:
        raise GattDecodeError(fmt.name, f"{raw!r} is not a {bits}-bit code")
    if fmt.is_special(raw):
        return fmt.special_value(raw)
    return _exact(*fmt.split(raw), factor)


def _to_decimal(value: float, fmt: _NumberFormat) -> Decimal:
    # repr() gives the shortest decimal that round-trips, so 12.34 encodes as 1234e-2, not as
    # the binary expansion of the double.
    try:
        return Decimal(value) if isinstance(value, int) else Decimal(repr(float(value)))
    except (TypeError, ValueError, InvalidOperation):
        raise GattDecodeError(fmt.name, f"not a number: {value!r}") from None


def _mantissa_at(value: Decimal, exponent: int) -> int:
    return int(value.scaleb(-exponent).to_integral_value(ROUND_HALF_EVEN))


def _pick_exponent(value: Decimal, fmt: _NumberFormat) -> int:
    """The exponent closest to 0 that holds ``value`` exactly, else the most precise that fits."""
    fitting: list[tuple[int, bool]] = []
    for exponent in fmt.exponent_range:
        scaled = value.scaleb(-exponent)
        mantissa = int(scaled.to_integral_value(ROUND_HALF_EVEN))
        if fmt.mantissa_fits(mantissa, exponent):
            fitting.append((exponent, scaled == mantissa))
    exact = [exponent for exponent, is_exact in fitting if is_exact]
    if exact:
        return min(exact, key=abs)
    if fitting:
        return fitting[0][0]
    raise GattDecodeError(fmt.name, f"{value} is out of range")


def _encode_number(value: float, exponent: int | None, fmt: _NumberFormat) -> int:
    special = fmt.special_raw(float(value)) if isinstance(value, float) else None
    if special is not None:
        return special
    exact = _to_decimal(value, fmt)
    if exponent is None:
        exponent = _pick_exponent(exact, fmt)
    _require(exponent in fmt.exponent_range, "", fmt.name, f"exponent {exponent} out of range")
    mantissa = _mantissa_at(exact, exponent)
    _require(fmt.mantissa_fits(mantissa, exponent), "", fmt.name, f"{value!r} does not fit at 10^{exponent}")
    return fmt.join(mantissa, exponent)


def decode_sfloat(raw: int) -> float:
    """Decode a 16-bit IEEE 11073 SFLOAT code (§4): NaN, NRes and the reserved code give NaN."""
    return _decode_number(raw, _SFLOAT)


def encode_sfloat(value: float, *, exponent: int | None = None) -> int:
    """Encode ``value`` as a 16-bit SFLOAT code; NaN/±inf map to the special codes (§4).

    Without ``exponent``, an exact decimal representation is preferred (exponent nearest 0),
    else the most precise one that fits. Raises :class:`GattDecodeError` if nothing fits.
    """
    return _encode_number(value, exponent, _SFLOAT)


def decode_float(raw: int) -> float:
    """Decode a 32-bit IEEE 11073 FLOAT code (§4)."""
    return _decode_number(raw, _FLOAT)


def encode_float(value: float, *, exponent: int | None = None) -> int:
    """Encode ``value`` as a 32-bit IEEE 11073 FLOAT code (see :func:`encode_sfloat`)."""
    return _encode_number(value, exponent, _FLOAT)


@dataclass(frozen=True, slots=True)
class SFloat:
    """An IEEE 11073 SFLOAT kept as its raw code, so that re-encoding is byte-exact (``0c 10`` and
    ``78 00`` are both 120) and NaN codes compare equal."""

    raw: int

    def __post_init__(self) -> None:
        _check_uint("SFloat", "raw", self.raw, 16)

    @classmethod
    def from_value(cls, value: float, *, exponent: int | None = None) -> Self:
        """The SFLOAT code for ``value`` (see :func:`encode_sfloat`)."""
        return cls(encode_sfloat(value, exponent=exponent))

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode exactly two little-endian bytes."""
        reader = _Reader(data, cls.__name__)
        value = reader.sfloat("raw")
        reader.end()
        return cls(value.raw)

    def __bytes__(self) -> bytes:
        return _u16(self.raw)

    def __float__(self) -> float:
        return self.value

    @property
    def value(self) -> float:
        """The decoded number (NaN for NaN/NRes/reserved, ±inf for ±INF)."""
        return decode_sfloat(self.raw)

    def scaled(self, factor: Fraction | int) -> float:
        """``value × factor`` rounded once, e.g. kg/L × 100 000 -> exactly 100.0 mg/dL."""
        return _decode_number(self.raw, _SFLOAT, factor)


SFLOAT_NAN: Final = SFloat(0x07FF)
SFLOAT_NRES: Final = SFloat(0x0800)
SFLOAT_POSITIVE_INFINITY: Final = SFloat(0x07FE)
SFLOAT_NEGATIVE_INFINITY: Final = SFloat(0x0802)


# ================================================================================================
# Date Time (7 B), time zone and DST
# ================================================================================================

_DATE_TIME_FIELDS: Final = (("month", 12), ("day", 31), ("hours", 23), ("minutes", 59), ("seconds", 59))
_DST_CODE_TO_MIN: Final = {0: 0, 2: 30, 4: 60, 8: 120}
_DST_UNKNOWN: Final = 255
_TIME_ZONE_UNKNOWN: Final = -128
_TIME_ZONE_RANGE: Final = range(-48, 57)


def _read_date_time(reader: _Reader, field: str) -> datetime | None:
    """Date Time; 0 in year, month or day means "unknown" -> None. Other fields are still checked."""
    year = reader.uint(2, f"{field}.year")
    if year and not const.DATE_TIME_MIN_YEAR <= year <= const.DATE_TIME_MAX_YEAR:
        raise reader.error(f"{field}.year", f"{year} outside {const.DATE_TIME_MIN_YEAR}..9999")
    parts = [year]
    for name, top in _DATE_TIME_FIELDS:
        value = reader.uint(1, f"{field}.{name}")
        if value > top:
            raise reader.error(f"{field}.{name}", f"{value} outside 0..{top}")
        parts.append(value)
    if 0 in parts[:3]:
        return None
    year, month, day, hours, minutes, seconds = parts
    try:
        return datetime(year, month, day, hours, minutes, seconds)  # noqa: DTZ001 - device-local, zone unknown
    except ValueError as exc:
        raise reader.error(f"{field}.day", str(exc)) from None


def _check_date_time(payload: str, field: str, value: datetime | None) -> None:
    if value is None:
        return
    _require(isinstance(value, datetime), payload, field, f"expected datetime, got {value!r}")
    _require(value.tzinfo is None, payload, field, "must be naive (device-local time)")
    _require(value.microsecond == 0, payload, field, "Date Time has whole seconds only")
    _require(value.year >= const.DATE_TIME_MIN_YEAR, payload, field, f"year {value.year} before 1582")


def encode_date_time(value: datetime | None) -> bytes:
    """The 7-byte Date Time of a naive ``datetime``; None encodes as all zeros ("unknown")."""
    _check_date_time("DateTime", "value", value)
    if value is None:
        return bytes(7)
    fields = (value.month, value.day, value.hour, value.minute, value.second)
    return _u16(value.year) + bytes(fields)


def decode_date_time(data: BytesLike) -> datetime | None:
    """Decode exactly 7 bytes of Date Time; None if year, month or day is 0 ("unknown")."""
    reader = _Reader(data, "DateTime")
    value = _read_date_time(reader, "value")
    reader.end()
    return value


def _read_time_zone(reader: _Reader, field: str) -> int | None:
    """Time zone in quarter hours (s8) -> minutes; -128 = unknown -> None."""
    code = reader.sint(1, field)
    if code == _TIME_ZONE_UNKNOWN:
        return None
    if code not in _TIME_ZONE_RANGE:
        raise reader.error(field, f"{code} outside -48..56 quarter hours")
    return code * const.TIME_ZONE_STEP_MIN


def _read_dst(reader: _Reader, field: str) -> int | None:
    """DST code (0/2/4/8 = +0/30/60/120 min) -> minutes; 255 = unknown -> None."""
    code = reader.uint(1, field)
    if code == _DST_UNKNOWN:
        return None
    if code not in _DST_CODE_TO_MIN:
        raise reader.error(field, f"reserved DST code {code}")
    return _DST_CODE_TO_MIN[code]


def _check_time_zone(payload: str, value: int | None) -> None:
    if value is not None:
        quarters, rest = divmod(value, const.TIME_ZONE_STEP_MIN)
        ok = rest == 0 and quarters in _TIME_ZONE_RANGE
        _require(ok, payload, "tz_offset_min", f"{value} is not a multiple of 15 in -720..840")


def _check_dst(payload: str, value: int | None) -> None:
    ok = value is None or value in _DST_CODE_TO_MIN.values()
    _require(ok, payload, "dst_offset_min", f"{value} not one of 0, 30, 60, 120")


def _time_zone_byte(value: int | None) -> bytes:
    code = _TIME_ZONE_UNKNOWN if value is None else value // const.TIME_ZONE_STEP_MIN
    return code.to_bytes(1, "little", signed=True)


def _dst_byte(value: int | None) -> bytes:
    codes = {minutes: code for code, minutes in _DST_CODE_TO_MIN.items()}
    return _u8(_DST_UNKNOWN if value is None else codes[value])


# ================================================================================================
# §6 CGM E2E-CRC (CRC-16/MCRF4XX)
# ================================================================================================


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ const.E2E_CRC_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16_mcrf4xx(data: BytesLike) -> int:
    """CRC-16/MCRF4XX, the CGM E2E-CRC (§6): check value ``crc16_mcrf4xx(b"123456789") == 0x6F91``."""
    crc = const.E2E_CRC_SEED
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def append_e2e_crc(data: BytesLike) -> bytes:
    """``data`` followed by its E2E-CRC, LSB first (§6), as CGMS collectors must write it."""
    return bytes(data) + _u16(crc16_mcrf4xx(data))


def verify_e2e_crc(data: BytesLike, payload: str = "") -> bytes:
    """Check the trailing E2E-CRC of ``data`` and return the bytes before it.

    Raises :class:`GattDecodeError` (field ``e2e_crc``) if it is missing or does not match.
    """
    reader = _Reader(data, payload)
    if reader.remaining < 3:
        raise reader.error("e2e_crc", f"truncated: {reader.remaining} byte(s) cannot hold a value and a CRC")
    body, received = bytes(data[:-2]), int.from_bytes(data[-2:], "little")
    computed = crc16_mcrf4xx(body)
    if received != computed:
        raise reader.error("e2e_crc", f"mismatch: received 0x{received:04X}, computed 0x{computed:04X}")
    return body


def _with_crc(body: bytes, e2e_crc: bool) -> bytes:
    return append_e2e_crc(body) if e2e_crc else body


def _read_optional_crc(reader: _Reader) -> int | None:
    """A trailing E2E-CRC if bytes remain (CGM Status / SST / Run Time, whose length tells)."""
    crc = reader.uint(2, "crc") if reader.remaining else None
    reader.end()
    return crc


# ================================================================================================
# §1 Heart Rate Service
# ================================================================================================


class HeartRateFlags(enum.IntFlag):
    """Flags octet of Heart Rate Measurement 0x2A37."""

    HEART_RATE_UINT16 = 0x01
    SENSOR_CONTACT_DETECTED = 0x02
    SENSOR_CONTACT_SUPPORTED = 0x04
    ENERGY_EXPENDED_PRESENT = 0x08
    RR_INTERVALS_PRESENT = 0x10


class SensorContact(enum.Enum):
    """Sensor contact state; "detected" only means something when contact detection is supported."""

    NOT_SUPPORTED = "not supported"
    NOT_DETECTED = "not detected"
    DETECTED = "detected"


_CONTACT_FLAGS: Final = {
    SensorContact.NOT_SUPPORTED: HeartRateFlags(0),
    SensorContact.NOT_DETECTED: HeartRateFlags.SENSOR_CONTACT_SUPPORTED,
    SensorContact.DETECTED: HeartRateFlags.SENSOR_CONTACT_SUPPORTED | HeartRateFlags.SENSOR_CONTACT_DETECTED,
}


def _sensor_contact(flags: HeartRateFlags) -> SensorContact:
    # §1: when "supported" (b2) is clear, the "detected" bit (b1) carries no information.
    if HeartRateFlags.SENSOR_CONTACT_SUPPORTED not in flags:
        return SensorContact.NOT_SUPPORTED
    if HeartRateFlags.SENSOR_CONTACT_DETECTED in flags:
        return SensorContact.DETECTED
    return SensorContact.NOT_DETECTED


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """Heart Rate Measurement 0x2A37 (§1).

    ``rr_intervals`` are raw ticks of 1/1024 s; None means the RR flag is clear, ``()`` that it is
    set with no intervals. ``bpm`` above 255 is encoded in the u16 format.
    """

    bpm: int
    sensor_contact: SensorContact = SensorContact.NOT_SUPPORTED
    energy_expended_kj: int | None = None
    rr_intervals: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_uint(name, "bpm", self.bpm, 16)
        _check_uint(name, "energy_expended_kj", self.energy_expended_kj, 16)
        rr_ok = self.rr_intervals is None or isinstance(self.rr_intervals, tuple)
        _require(rr_ok, name, "rr_intervals", "must be a tuple (or None)")
        for rr in self.rr_intervals or ():
            _check_uint(name, "rr_intervals", rr, 16)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a notification."""
        reader = _Reader(data, cls.__name__)
        flags = HeartRateFlags(reader.uint(1, "flags"))
        bpm = reader.uint(2 if HeartRateFlags.HEART_RATE_UINT16 in flags else 1, "bpm")
        energy = reader.uint(2, "energy_expended_kj") if HeartRateFlags.ENERGY_EXPENDED_PRESENT in flags else None
        rr = _read_rr_intervals(reader) if HeartRateFlags.RR_INTERVALS_PRESENT in flags else None
        reader.end()
        return cls(bpm, _sensor_contact(flags), energy, rr)

    def __bytes__(self) -> bytes:
        flags = self.flags
        out = _u8(flags) + self.bpm.to_bytes(2 if HeartRateFlags.HEART_RATE_UINT16 in flags else 1, "little")
        if self.energy_expended_kj is not None:
            out += _u16(self.energy_expended_kj)
        return out + b"".join(_u16(rr) for rr in self.rr_intervals or ())

    @property
    def flags(self) -> HeartRateFlags:
        """The flags octet this measurement encodes with."""
        flags = _CONTACT_FLAGS[self.sensor_contact]
        if self.bpm > 0xFF:
            flags |= HeartRateFlags.HEART_RATE_UINT16
        if self.energy_expended_kj is not None:
            flags |= HeartRateFlags.ENERGY_EXPENDED_PRESENT
        if self.rr_intervals is not None:
            flags |= HeartRateFlags.RR_INTERVALS_PRESENT
        return flags

    @property
    def rr_intervals_s(self) -> tuple[float, ...]:
        """RR-intervals in seconds (exact: the tick is a power of two)."""
        return tuple(rr / const.RR_INTERVAL_TICKS_PER_S for rr in self.rr_intervals or ())


def _read_rr_intervals(reader: _Reader) -> tuple[int, ...]:
    # §1: n = remaining bytes / 2, and n may be 0; an odd remainder is not an interval (strict
    # decoding refuses it; decode_padded takes it as one byte of padding).
    intervals = tuple(reader.uint(2, "rr_intervals") for _ in range(reader.remaining // 2))
    if reader.remaining:
        raise OverlongPayloadError(
            "rr_intervals", "odd number of bytes for u16 intervals", reader.payload, reader.position
        )
    return intervals


class BodySensorLocation(enum.IntEnum):
    """Body Sensor Location 0x2A38 (§1)."""

    OTHER = 0
    CHEST = 1
    WRIST = 2
    FINGER = 3
    HAND = 4
    EAR_LOBE = 5
    FOOT = 6


def parse_body_sensor_location(data: BytesLike) -> BodySensorLocation:
    """Decode Body Sensor Location 0x2A38 (one byte)."""
    reader = _Reader(data, "BodySensorLocation")
    location = reader.enum(BodySensorLocation, "location")
    reader.end()
    return location


def encode_body_sensor_location(location: BodySensorLocation) -> bytes:
    """Encode Body Sensor Location 0x2A38."""
    return _u8(BodySensorLocation(location))


class HeartRateControlPointOpCode(enum.IntEnum):
    """HR Control Point 0x2A39 (§1): the only defined value; others get ATT error 0x80."""

    RESET_ENERGY_EXPENDED = 0x01


def hrcp_reset_energy_expended() -> bytes:
    """HR Control Point request that resets Energy Expended to 0 (write with response)."""
    return _u8(HeartRateControlPointOpCode.RESET_ENERGY_EXPENDED)


# ================================================================================================
# §2 Glucose Service: shared code lists
# ================================================================================================


class SampleType(enum.IntEnum):
    """Glucose sample type / CGM type (low nibble of the type-location octet)."""

    CAPILLARY_WHOLE_BLOOD = 1
    CAPILLARY_PLASMA = 2
    VENOUS_WHOLE_BLOOD = 3
    VENOUS_PLASMA = 4
    ARTERIAL_WHOLE_BLOOD = 5
    ARTERIAL_PLASMA = 6
    UNDETERMINED_WHOLE_BLOOD = 7
    UNDETERMINED_PLASMA = 8
    INTERSTITIAL_FLUID = 9
    CONTROL_SOLUTION = 10


class SampleLocation(enum.IntEnum):
    """Sample location (high nibble of the type-location octet); 5 is used by CGM."""

    FINGER = 1
    ALTERNATE_SITE_TEST = 2
    EARLOBE = 3
    CONTROL_SOLUTION = 4
    SUBCUTANEOUS_TISSUE = 5
    NOT_AVAILABLE = 15


def _read_type_location(reader: _Reader, field: str) -> tuple[SampleType, SampleLocation]:
    # §2: type in the LOW nibble, location in the HIGH one (SIG, Nordic, nRF Connect SDK;
    # Tidepool's ble-glucose reads them the other way round).
    octet = reader.uint(1, field)
    return (
        reader.to_enum(SampleType, octet & 0x0F, "sample_type"),
        reader.to_enum(SampleLocation, octet >> 4, "sample_location"),
    )


# ================================================================================================
# §2 Glucose Measurement 0x2A18
# ================================================================================================


class GlucoseMeasurementFlags(enum.IntFlag):
    """Flags octet of Glucose Measurement 0x2A18."""

    TIME_OFFSET_PRESENT = 0x01
    CONCENTRATION_PRESENT = 0x02  # with the type-location octet
    UNIT_MOL_PER_L = 0x04  # else kg/L
    SENSOR_STATUS_PRESENT = 0x08
    CONTEXT_FOLLOWS = 0x10


class GlucoseUnit(enum.Enum):
    """Unit of the Glucose Measurement concentration SFLOAT."""

    KG_PER_L = "kg/L"
    MOL_PER_L = "mol/L"


class GlucoseSensorStatus(enum.IntFlag):
    """Sensor Status Annunciation of Glucose Measurement (§2).

    Bit 5 is "too high" and bit 6 "too low" (SIG XML, nRF5 ``ble_gls.h``); Nordic's Android
    library swaps them.
    """

    DEVICE_BATTERY_LOW = 1 << 0
    SENSOR_MALFUNCTION = 1 << 1
    SAMPLE_SIZE_INSUFFICIENT = 1 << 2
    STRIP_INSERTION_ERROR = 1 << 3
    STRIP_TYPE_INCORRECT = 1 << 4
    RESULT_TOO_HIGH = 1 << 5
    RESULT_TOO_LOW = 1 << 6
    TEMPERATURE_TOO_HIGH = 1 << 7
    TEMPERATURE_TOO_LOW = 1 << 8
    READ_INTERRUPTED = 1 << 9  # strip pulled too soon
    GENERAL_DEVICE_FAULT = 1 << 10
    TIME_FAULT = 1 << 11


_MMOL_L_PER_KG_L: Final = Fraction(const.GLUCOSE_MG_DL_PER_KG_L) / const.GLUCOSE_MG_DL_PER_MMOL_L
_MG_DL_PER_MOL_L: Final = const.GLUCOSE_MMOL_L_PER_MOL_L * const.GLUCOSE_MG_DL_PER_MMOL_L


@dataclass(frozen=True, slots=True)
class GlucoseMeasurement:
    """Glucose Measurement 0x2A18 (§2).

    ``concentration`` is the raw SFLOAT in ``unit`` (kg/L or mol/L); use :attr:`glucose_mg_dl`.
    ``concentration``, ``sample_type`` and ``sample_location`` share flag b1: all or none.
    ``base_time`` is the meter's local clock (None if it reports "unknown").
    """

    sequence_number: int
    base_time: datetime | None
    time_offset_min: int | None = None
    concentration: SFloat | None = None
    unit: GlucoseUnit = GlucoseUnit.KG_PER_L
    sample_type: SampleType | None = None
    sample_location: SampleLocation | None = None
    status_flags: GlucoseSensorStatus | None = None
    context_follows: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_uint(name, "sequence_number", self.sequence_number, 16)
        _check_date_time(name, "base_time", self.base_time)
        _check_sint(name, "time_offset_min", self.time_offset_min, 16)
        _check_uint(name, "status_flags", self.status_flags, 16)
        _check_together(
            name, concentration=self.concentration, sample_type=self.sample_type, sample_location=self.sample_location
        )
        self._check_user_facing_time()

    def _check_user_facing_time(self) -> None:
        try:
            self.user_facing_time  # noqa: B018 - evaluated for its OverflowError
        except OverflowError:
            reason = "base time + offset is out of range"
            raise GattDecodeError("time_offset_min", reason, type(self).__name__) from None

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a notification."""
        reader = _Reader(data, cls.__name__)
        flags = GlucoseMeasurementFlags(reader.uint(1, "flags"))
        sequence_number = reader.uint(2, "sequence_number")
        base_time = _read_date_time(reader, "base_time")
        offset = reader.sint(2, "time_offset_min") if GlucoseMeasurementFlags.TIME_OFFSET_PRESENT in flags else None
        concentration, sample_type, sample_location = _read_concentration(reader, flags)
        status = _read_glucose_status(reader) if GlucoseMeasurementFlags.SENSOR_STATUS_PRESENT in flags else None
        reader.end()
        unit = GlucoseUnit.MOL_PER_L if GlucoseMeasurementFlags.UNIT_MOL_PER_L in flags else GlucoseUnit.KG_PER_L
        follows = GlucoseMeasurementFlags.CONTEXT_FOLLOWS in flags
        return cls(
            sequence_number, base_time, offset, concentration, unit, sample_type, sample_location, status, follows
        )

    def __bytes__(self) -> bytes:
        out = _u8(self.flags) + _u16(self.sequence_number) + encode_date_time(self.base_time)
        if self.time_offset_min is not None:
            out += _s16(self.time_offset_min)
        if self.concentration is not None and self.sample_type is not None and self.sample_location is not None:
            out += bytes(self.concentration) + _nibbles(self.sample_type, self.sample_location)
        if self.status_flags is not None:
            out += _u16(self.status_flags)
        return out

    @property
    def flags(self) -> GlucoseMeasurementFlags:
        """The flags octet this measurement encodes with."""
        flags = GlucoseMeasurementFlags(0)
        presence = (
            (self.time_offset_min is not None, GlucoseMeasurementFlags.TIME_OFFSET_PRESENT),
            (self.concentration is not None, GlucoseMeasurementFlags.CONCENTRATION_PRESENT),
            (self.unit is GlucoseUnit.MOL_PER_L, GlucoseMeasurementFlags.UNIT_MOL_PER_L),
            (self.status_flags is not None, GlucoseMeasurementFlags.SENSOR_STATUS_PRESENT),
            (self.context_follows, GlucoseMeasurementFlags.CONTEXT_FOLLOWS),
        )
        for present, bit in presence:
            flags |= bit if present else 0
        return flags

    @property
    def user_facing_time(self) -> datetime | None:
        """Base Time + Time Offset (naive, meter-local), or None if the base time is unknown."""
        if self.base_time is None:
            return None
        return self.base_time + timedelta(minutes=self.time_offset_min or 0)

    @property
    def glucose_mg_dl(self) -> float | None:
        """Concentration in mg/dL (kg/L × 100 000; mol/L × 1000 × 18.016), None if absent."""
        if self.concentration is None:
            return None
        factor = const.GLUCOSE_MG_DL_PER_KG_L if self.unit is GlucoseUnit.KG_PER_L else _MG_DL_PER_MOL_L
        return self.concentration.scaled(factor)

    @property
    def glucose_mmol_l(self) -> float | None:
        """Concentration in mmol/L (mol/L × 1000; kg/L via 180.16 g/mol), None if absent."""
        if self.concentration is None:
            return None
        factor = const.GLUCOSE_MMOL_L_PER_MOL_L if self.unit is GlucoseUnit.MOL_PER_L else _MMOL_L_PER_KG_L
        return self.concentration.scaled(factor)


def _read_concentration(
    reader: _Reader, flags: GlucoseMeasurementFlags
) -> tuple[SFloat, SampleType, SampleLocation] | tuple[None, None, None]:
    if GlucoseMeasurementFlags.CONCENTRATION_PRESENT not in flags:
        return None, None, None
    return reader.sfloat("concentration"), *_read_type_location(reader, "type_location")


def _read_glucose_status(reader: _Reader) -> GlucoseSensorStatus:
    return GlucoseSensorStatus(reader.uint(2, "status_flags"))


# ================================================================================================
# §2 Glucose Measurement Context 0x2A34
# ================================================================================================


class GlucoseContextFlags(enum.IntFlag):
    """Flags octet of Glucose Measurement Context 0x2A34."""

    CARBOHYDRATE_PRESENT = 0x01
    MEAL_PRESENT = 0x02
    TESTER_HEALTH_PRESENT = 0x04
    EXERCISE_PRESENT = 0x08
    MEDICATION_PRESENT = 0x10
    MEDICATION_UNIT_LITERS = 0x20  # else kilograms
    HBA1C_PRESENT = 0x40
    EXTENDED_FLAGS_PRESENT = 0x80


class CarbohydrateId(enum.IntEnum):
    """Carbohydrate ID of the glucose context."""

    BREAKFAST = 1
    LUNCH = 2
    DINNER = 3
    SNACK = 4
    DRINK = 5
    SUPPER = 6
    BRUNCH = 7


class Meal(enum.IntEnum):
    """Meal of the glucose context."""

    PREPRANDIAL = 1
    POSTPRANDIAL = 2
    FASTING = 3
    CASUAL = 4
    BEDTIME = 5


class GlucoseTester(enum.IntEnum):
    """Tester (low nibble of the tester-health octet)."""

    SELF = 1
    HEALTH_CARE_PROFESSIONAL = 2
    LAB_TEST = 3
    NOT_AVAILABLE = 15


class GlucoseHealth(enum.IntEnum):
    """Health (high nibble of the tester-health octet)."""

    MINOR_HEALTH_ISSUES = 1
    MAJOR_HEALTH_ISSUES = 2
    DURING_MENSES = 3
    UNDER_STRESS = 4
    NO_HEALTH_ISSUES = 5
    NOT_AVAILABLE = 15


class MedicationId(enum.IntEnum):
    """Medication ID of the glucose context."""

    RAPID_ACTING_INSULIN = 1
    SHORT_ACTING_INSULIN = 2
    INTERMEDIATE_ACTING_INSULIN = 3
    LONG_ACTING_INSULIN = 4
    PRE_MIXED_INSULIN = 5


class MedicationUnit(enum.Enum):
    """Unit of the medication SFLOAT (flag b5)."""

    KILOGRAMS = "kg"
    LITERS = "L"


@dataclass(frozen=True, slots=True)
class GlucoseMeasurementContext:
    """Glucose Measurement Context 0x2A34 (§2); ``sequence_number`` matches its measurement.

    Paired fields share one flag and are all set or all None: (carbohydrate_id, carbohydrate),
    (tester, health), (exercise_duration_s, exercise_intensity_pct), (medication_id, medication).
    SFLOATs are in SIG units: carbohydrate kg, medication kg or L (``medication_unit``), HbA1c %.
    """

    sequence_number: int
    extended_flags: int | None = None
    carbohydrate_id: CarbohydrateId | None = None
    carbohydrate: SFloat | None = None
    meal: Meal | None = None
    tester: GlucoseTester | None = None
    health: GlucoseHealth | None = None
    exercise_duration_s: int | None = None
    exercise_intensity_pct: int | None = None
    medication_id: MedicationId | None = None
    medication: SFloat | None = None
    medication_unit: MedicationUnit = MedicationUnit.KILOGRAMS
    hba1c: SFloat | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_uint(name, "sequence_number", self.sequence_number, 16)
        _check_uint(name, "extended_flags", self.extended_flags, 8)
        _check_uint(name, "exercise_duration_s", self.exercise_duration_s, 16)
        intensity = self.exercise_intensity_pct
        _require(intensity is None or 0 <= intensity <= 100, name, "exercise_intensity_pct", f"{intensity} > 100")
        _check_together(name, carbohydrate_id=self.carbohydrate_id, carbohydrate=self.carbohydrate)
        _check_together(name, tester=self.tester, health=self.health)
        _check_together(name, exercise_duration_s=self.exercise_duration_s, exercise_intensity_pct=intensity)
        _check_together(name, medication_id=self.medication_id, medication=self.medication)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a notification."""
        reader = _Reader(data, cls.__name__)
        flags = GlucoseContextFlags(reader.uint(1, "flags"))
        sequence_number = reader.uint(2, "sequence_number")
        # §2: the extended flags come right after Seq although they are flag b7.
        extended = reader.uint(1, "extended_flags") if GlucoseContextFlags.EXTENDED_FLAGS_PRESENT in flags else None
        carb_id, carb = _read_id_and_sfloat(reader, flags, GlucoseContextFlags.CARBOHYDRATE_PRESENT, CarbohydrateId)
        meal = reader.enum(Meal, "meal") if GlucoseContextFlags.MEAL_PRESENT in flags else None
        tester, health = _read_tester_health(reader, flags)
        duration, intensity = _read_exercise(reader, flags)
        med_id, med = _read_id_and_sfloat(reader, flags, GlucoseContextFlags.MEDICATION_PRESENT, MedicationId)
        hba1c = reader.sfloat("hba1c") if GlucoseContextFlags.HBA1C_PRESENT in flags else None
        reader.end()
        liters = GlucoseContextFlags.MEDICATION_UNIT_LITERS in flags
        unit = MedicationUnit.LITERS if liters else MedicationUnit.KILOGRAMS
        tester_health_exercise = (tester, health, duration, intensity)
        return cls(sequence_number, extended, carb_id, carb, meal, *tester_health_exercise, med_id, med, unit, hba1c)

    def __bytes__(self) -> bytes:
        parts: list[bytes | None] = [
            _u8(self.flags),
            _u16(self.sequence_number),
            None if self.extended_flags is None else _u8(self.extended_flags),
            _id_and_sfloat(self.carbohydrate_id, self.carbohydrate),
            None if self.meal is None else _u8(self.meal),
            None if self.tester is None or self.health is None else _nibbles(self.tester, self.health),
            _exercise_bytes(self.exercise_duration_s, self.exercise_intensity_pct),
            _id_and_sfloat(self.medication_id, self.medication),
            None if self.hba1c is None else bytes(self.hba1c),
        ]
        return b"".join(part for part in parts if part is not None)

    @property
    def flags(self) -> GlucoseContextFlags:
        """The flags octet this context encodes with."""
        presence = (
            (self.carbohydrate is not None, GlucoseContextFlags.CARBOHYDRATE_PRESENT),
            (self.meal is not None, GlucoseContextFlags.MEAL_PRESENT),
            (self.tester is not None, GlucoseContextFlags.TESTER_HEALTH_PRESENT),
            (self.exercise_duration_s is not None, GlucoseContextFlags.EXERCISE_PRESENT),
            (self.medication is not None, GlucoseContextFlags.MEDICATION_PRESENT),
            (self.medication_unit is MedicationUnit.LITERS, GlucoseContextFlags.MEDICATION_UNIT_LITERS),
            (self.hba1c is not None, GlucoseContextFlags.HBA1C_PRESENT),
            (self.extended_flags is not None, GlucoseContextFlags.EXTENDED_FLAGS_PRESENT),
        )
        flags = GlucoseContextFlags(0)
        for present, bit in presence:
            flags |= bit if present else 0
        return flags

    @property
    def carbohydrate_kg(self) -> float | None:
        """Carbohydrate in kilograms (the SIG unit)."""
        return None if self.carbohydrate is None else self.carbohydrate.value

    @property
    def carbohydrate_g(self) -> float | None:
        """Carbohydrate in grams (the SIG unit is kg)."""
        return None if self.carbohydrate is None else self.carbohydrate.scaled(const.GRAMS_PER_KG)

    @property
    def medication_mg(self) -> float | None:
        """Medication in milligrams, if it was sent in kg."""
        if self.medication is None or self.medication_unit is not MedicationUnit.KILOGRAMS:
            return None
        return self.medication.scaled(const.MILLIGRAMS_PER_KG)

    @property
    def medication_ml(self) -> float | None:
        """Medication in millilitres, if it was sent in litres."""
        if self.medication is None or self.medication_unit is not MedicationUnit.LITERS:
            return None
        return self.medication.scaled(const.MILLILITRES_PER_L)

    @property
    def hba1c_pct(self) -> float | None:
        """HbA1c in percent."""
        return None if self.hba1c is None else self.hba1c.value

    @property
    def exercise_overrun(self) -> bool:
        """True if the exercise lasted longer than the field can count."""
        return self.exercise_duration_s == const.GLUCOSE_EXERCISE_DURATION_OVERRUN_S


def _read_id_and_sfloat(
    reader: _Reader, flags: GlucoseContextFlags, bit: GlucoseContextFlags, cls: type[_E]
) -> tuple[_E, SFloat] | tuple[None, None]:
    if bit not in flags:
        return None, None
    prefix = "carbohydrate" if bit is GlucoseContextFlags.CARBOHYDRATE_PRESENT else "medication"
    return reader.enum(cls, f"{prefix}_id"), reader.sfloat(prefix)


def _read_tester_health(
    reader: _Reader, flags: GlucoseContextFlags
) -> tuple[GlucoseTester, GlucoseHealth] | tuple[None, None]:
    if GlucoseContextFlags.TESTER_HEALTH_PRESENT not in flags:
        return None, None
    octet = reader.uint(1, "tester_health")
    return reader.to_enum(GlucoseTester, octet & 0x0F, "tester"), reader.to_enum(GlucoseHealth, octet >> 4, "health")


def _read_exercise(reader: _Reader, flags: GlucoseContextFlags) -> tuple[int, int] | tuple[None, None]:
    if GlucoseContextFlags.EXERCISE_PRESENT not in flags:
        return None, None
    duration = reader.uint(2, "exercise_duration_s")
    intensity = reader.uint(1, "exercise_intensity_pct")
    if intensity > 100:
        raise reader.error("exercise_intensity_pct", f"{intensity} > 100")
    return duration, intensity


def _id_and_sfloat(code: enum.IntEnum | None, value: SFloat | None) -> bytes | None:
    return None if code is None or value is None else _u8(code) + bytes(value)


def _exercise_bytes(duration_s: int | None, intensity_pct: int | None) -> bytes | None:
    return None if duration_s is None or intensity_pct is None else _u16(duration_s) + _u8(intensity_pct)


# ================================================================================================
# §2 Glucose Feature 0x2A51
# ================================================================================================


class GlucoseFeatureFlags(enum.IntFlag):
    """Glucose Feature 0x2A51 bits."""

    LOW_BATTERY_DETECTION = 1 << 0
    SENSOR_MALFUNCTION_DETECTION = 1 << 1
    SENSOR_SAMPLE_SIZE = 1 << 2
    SENSOR_STRIP_INSERTION_ERROR_DETECTION = 1 << 3
    SENSOR_STRIP_TYPE_ERROR_DETECTION = 1 << 4
    SENSOR_RESULT_HIGH_LOW_DETECTION = 1 << 5
    SENSOR_TEMPERATURE_HIGH_LOW_DETECTION = 1 << 6
    SENSOR_READ_INTERRUPT_DETECTION = 1 << 7
    GENERAL_DEVICE_FAULT = 1 << 8
    TIME_FAULT = 1 << 9
    MULTIPLE_BOND = 1 << 10


@dataclass(frozen=True, slots=True)
class GlucoseFeature:
    """Glucose Feature 0x2A51 (§2): exactly 2 bytes."""

    features: GlucoseFeatureFlags

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "features", self.features, 16)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read."""
        reader = _Reader(data, cls.__name__)
        features = GlucoseFeatureFlags(reader.uint(2, "features"))
        reader.end()
        return cls(features)

    def __bytes__(self) -> bytes:
        return _u16(self.features)


# ================================================================================================
# §2 / §3 Record Access Control Point 0x2A52
# ================================================================================================


class RacpOpCode(enum.IntEnum):
    """RACP op codes; 5 and 6 only appear in indications."""

    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT_OPERATION = 3
    REPORT_NUMBER_OF_RECORDS = 4
    NUMBER_OF_RECORDS_RESPONSE = 5
    RESPONSE_CODE = 6


class RacpOperator(enum.IntEnum):
    """RACP operators."""

    NULL = 0
    ALL_RECORDS = 1
    LESS_THAN_OR_EQUAL_TO = 2
    GREATER_THAN_OR_EQUAL_TO = 3
    WITHIN_RANGE_OF = 4  # inclusive
    FIRST_RECORD = 5  # oldest
    LAST_RECORD = 6  # newest


class RacpFilterType(enum.IntEnum):
    """RACP operand filter type. Code 1 is the sequence number in GLS and the time offset in CGMS."""

    SEQUENCE_NUMBER = 1
    USER_FACING_TIME = 2
    TIME_OFFSET = 1  # CGMS meaning of code 1: an alias of SEQUENCE_NUMBER


class RacpResponseCode(enum.IntEnum):
    """RACP response codes (``06 00 <request opcode> <code>``)."""

    SUCCESS = 1
    OP_CODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS_FOUND = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9


_RACP_REQUEST_OPCODES: Final = frozenset(RacpOpCode) - {
    RacpOpCode.NUMBER_OF_RECORDS_RESPONSE,
    RacpOpCode.RESPONSE_CODE,
}
# How many filter values each operator takes.
_RACP_OPERAND_COUNT: Final = {
    RacpOperator.LESS_THAN_OR_EQUAL_TO: 1,
    RacpOperator.GREATER_THAN_OR_EQUAL_TO: 1,
    RacpOperator.WITHIN_RANGE_OF: 2,
}


@dataclass(frozen=True, slots=True)
class RacpRequest:
    """A RACP command ``[opcode][operator][filter][value…]`` (§2), as a collector writes it.

    ``operand`` holds the filter values: u16 sequence numbers / time offsets for filter 1, naive
    datetimes for filter 2 (GLS user-facing time); one value for ≤ and ≥, two for a range.
    The CGMS E2E-CRC is not part of the object: see :func:`append_e2e_crc`.
    """

    opcode: RacpOpCode
    operator: RacpOperator
    filter_type: RacpFilterType | None = None
    operand: tuple[int | datetime, ...] = ()

    def __post_init__(self) -> None:
        name = type(self).__name__
        _require(self.opcode in _RACP_REQUEST_OPCODES, name, "opcode", f"{self.opcode!r} is not a request")
        _require(isinstance(self.operand, tuple), name, "operand", "must be a tuple")
        is_abort = self.opcode is RacpOpCode.ABORT_OPERATION
        null_ok = (self.operator is RacpOperator.NULL) == is_abort
        _require(null_ok, name, "operator", "abort takes the null operator, every other request a real one")
        count = _RACP_OPERAND_COUNT.get(self.operator, 0)
        _require(len(self.operand) == count, name, "operand", f"{self.operator.name} takes {count} value(s)")
        _require((self.filter_type is None) == (count == 0), name, "filter_type", "needed exactly with an operand")
        for value in self.operand:
            self._check_value(value)
        _require(count < 2 or _ordered(self.operand), name, "operand", "range must be low..high")

    def _check_value(self, value: int | datetime) -> None:
        name = type(self).__name__
        if self.filter_type is RacpFilterType.USER_FACING_TIME:
            _require(isinstance(value, datetime), name, "operand", f"expected datetime, got {value!r}")
            _check_date_time(name, "operand", value if isinstance(value, datetime) else None)
        else:
            _require(isinstance(value, int), name, "operand", f"expected int, got {value!r}")
            _check_uint(name, "operand", value if isinstance(value, int) else None, 16)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a command (for meter simulators); strip any E2E-CRC first."""
        reader = _Reader(data, cls.__name__)
        opcode = reader.enum(RacpOpCode, "opcode")
        if opcode not in _RACP_REQUEST_OPCODES:
            raise reader.error("opcode", f"{opcode.name} is a response, not a request")
        operator = reader.enum(RacpOperator, "operator")
        filter_type, operand = _read_racp_operand(reader, operator)
        reader.end()
        return cls(opcode, operator, filter_type, operand)

    def __bytes__(self) -> bytes:
        out = _u8(self.opcode) + _u8(self.operator)
        if self.filter_type is not None:
            out += _u8(self.filter_type)
        for value in self.operand:
            out += encode_date_time(value) if isinstance(value, datetime) else _u16(value)
        return out


def _ordered(operand: tuple[int | datetime, ...]) -> bool:
    low, high = operand
    if isinstance(low, datetime) and isinstance(high, datetime):
        return low <= high
    if isinstance(low, int) and isinstance(high, int):
        return low <= high
    return False


def _read_racp_operand(
    reader: _Reader, operator: RacpOperator
) -> tuple[RacpFilterType | None, tuple[int | datetime, ...]]:
    count = _RACP_OPERAND_COUNT.get(operator, 0)
    if not count:
        return None, ()
    filter_type = reader.enum(RacpFilterType, "filter_type")
    return filter_type, tuple(_read_racp_value(reader, filter_type) for _ in range(count))


def _read_racp_value(reader: _Reader, filter_type: RacpFilterType) -> int | datetime:
    if filter_type is not RacpFilterType.USER_FACING_TIME:
        return reader.uint(2, "operand")
    value = _read_date_time(reader, "operand")
    if value is None:
        raise reader.error("operand", "a time filter needs a known date")
    return value


@dataclass(frozen=True, slots=True)
class RacpNumberOfRecords:
    """RACP indication ``05 00 <u16 count>``: the answer to "report number of records"."""

    count: int

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "count", self.count, 16)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode an indication (without E2E-CRC)."""
        reader = _Reader(data, cls.__name__)
        _expect_code(reader, "opcode", RacpOpCode.NUMBER_OF_RECORDS_RESPONSE)
        _expect_code(reader, "operator", RacpOperator.NULL)
        count = reader.uint(2, "count")
        reader.end()
        return cls(count)

    def __bytes__(self) -> bytes:
        return bytes((RacpOpCode.NUMBER_OF_RECORDS_RESPONSE, RacpOperator.NULL)) + _u16(self.count)


@dataclass(frozen=True, slots=True)
class RacpResponse:
    """RACP indication ``06 00 <request opcode> <response code>``.

    ``request_opcode`` stays a plain int when it is not a known op code: a meter answers an
    unknown request with "op code not supported" and echoes it.
    """

    request_opcode: RacpOpCode | int
    response_code: RacpResponseCode

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "request_opcode", self.request_opcode, 8)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode an indication (without E2E-CRC)."""
        reader = _Reader(data, cls.__name__)
        _expect_code(reader, "opcode", RacpOpCode.RESPONSE_CODE)
        _expect_code(reader, "operator", RacpOperator.NULL)
        request = _maybe_enum(RacpOpCode, reader.uint(1, "request_opcode"))
        code = reader.enum(RacpResponseCode, "response_code")
        reader.end()
        return cls(request, code)

    def __bytes__(self) -> bytes:
        return bytes((RacpOpCode.RESPONSE_CODE, RacpOperator.NULL, self.request_opcode, self.response_code))


def _expect_code(reader: _Reader, field: str, expected: int) -> None:
    value = reader.uint(1, field)
    if value != expected:
        raise reader.error(field, f"expected {expected}, got {value}")


def _maybe_enum(cls: type[_E], value: int) -> _E | int:
    try:
        return cls(value)
    except ValueError:
        return value


def parse_racp_response(data: BytesLike, *, e2e_crc: bool = False) -> RacpNumberOfRecords | RacpResponse:
    """Decode a RACP indication; with ``e2e_crc`` (CGMS, Feature b12) check and strip the CRC first."""
    body = verify_e2e_crc(data, "RacpResponse") if e2e_crc else data
    reader = _Reader(body, "RacpResponse")
    opcode = reader.uint(1, "opcode")
    if opcode == RacpOpCode.NUMBER_OF_RECORDS_RESPONSE:
        return RacpNumberOfRecords.from_bytes(body)
    if opcode == RacpOpCode.RESPONSE_CODE:
        return RacpResponse.from_bytes(body)
    raise reader.error("opcode", f"{opcode} is not a RACP response op code")


def racp_report_all(*, e2e_crc: bool = False) -> bytes:
    """``01 01``: report all stored records (first sync)."""
    return _with_crc(bytes(RacpRequest(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.ALL_RECORDS)), e2e_crc)


def _racp_filtered(
    opcode: RacpOpCode, operator: RacpOperator, filter_type: RacpFilterType, *values: int | datetime
) -> bytes:
    return bytes(RacpRequest(opcode, operator, filter_type, values))


def racp_report_seq_at_least(sequence_number: int) -> bytes:
    """GLS ``01 03 01 <u16>``: records with sequence number ≥ ``sequence_number``."""
    return _racp_filtered(
        RacpOpCode.REPORT_STORED_RECORDS,
        RacpOperator.GREATER_THAN_OR_EQUAL_TO,
        RacpFilterType.SEQUENCE_NUMBER,
        sequence_number,
    )


def racp_report_seq_range(first: int, last: int) -> bytes:
    """GLS ``01 04 01 <lo> <hi>``: records with first ≤ sequence number ≤ last."""
    return _racp_filtered(
        RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.WITHIN_RANGE_OF, RacpFilterType.SEQUENCE_NUMBER, first, last
    )


def racp_report_time_at_least(user_facing_time: datetime) -> bytes:
    """GLS ``01 03 02 <Date Time>``: records with user-facing time ≥ the given (meter-local) time."""
    return _racp_filtered(
        RacpOpCode.REPORT_STORED_RECORDS,
        RacpOperator.GREATER_THAN_OR_EQUAL_TO,
        RacpFilterType.USER_FACING_TIME,
        user_facing_time,
    )


def racp_report_after(last_seq: int | None) -> bytes:
    """The GLS sync request (§2 collection flow, §7): all records on first sync, else seq ≥ last + 1.

    There is no ">" operator. After seq 65535 nothing larger can be asked for, so it asks for
    everything and relies on de-duplication by (serial, seq, base time).
    """
    if last_seq is None or last_seq >= 0xFFFF:
        return racp_report_all()
    return racp_report_seq_at_least(last_seq + 1)


def racp_report_time_offset_at_least(time_offset_min: int, *, e2e_crc: bool = False) -> bytes:
    """CGMS ``01 03 01 <u16>`` (+CRC): records with time offset ≥ ``time_offset_min``."""
    body = _racp_filtered(
        RacpOpCode.REPORT_STORED_RECORDS,
        RacpOperator.GREATER_THAN_OR_EQUAL_TO,
        RacpFilterType.TIME_OFFSET,
        time_offset_min,
    )
    return _with_crc(body, e2e_crc)


def racp_report_time_offset_range(first_min: int, last_min: int, *, e2e_crc: bool = False) -> bytes:
    """CGMS ``01 04 01 <lo> <hi>`` (+CRC): refill a gap of missing time offsets."""
    body = _racp_filtered(
        RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.WITHIN_RANGE_OF, RacpFilterType.TIME_OFFSET, first_min, last_min
    )
    return _with_crc(body, e2e_crc)


def racp_report_number_of_records(*, e2e_crc: bool = False) -> bytes:
    """``04 01``: how many records are stored (answered by ``05 00 <u16>``)."""
    return _with_crc(bytes(RacpRequest(RacpOpCode.REPORT_NUMBER_OF_RECORDS, RacpOperator.ALL_RECORDS)), e2e_crc)


def racp_abort(*, e2e_crc: bool = False) -> bytes:
    """``03 00``: abort the running procedure (on timeout)."""
    return _with_crc(bytes(RacpRequest(RacpOpCode.ABORT_OPERATION, RacpOperator.NULL)), e2e_crc)


def racp_delete_all(*, e2e_crc: bool = False) -> bytes:
    """``02 01``: delete all stored records (some meters restart numbering afterwards)."""
    return _with_crc(bytes(RacpRequest(RacpOpCode.DELETE_STORED_RECORDS, RacpOperator.ALL_RECORDS)), e2e_crc)


# ================================================================================================
# §3 CGM Measurement 0x2AA7
# ================================================================================================


class CgmMeasurementFlags(enum.IntFlag):
    """Flags octet of a CGM Measurement record; bits 2-4 are reserved."""

    TREND_PRESENT = 0x01
    QUALITY_PRESENT = 0x02
    WARNING_OCTET_PRESENT = 0x20
    CAL_TEMP_OCTET_PRESENT = 0x40
    STATUS_OCTET_PRESENT = 0x80


_CGM_RFU_FLAGS: Final = 0x1C


class CgmSensorStatus(enum.IntFlag):
    """CGM Sensor Status Annunciation: Status (bits 0-7), Cal/Temp (8-15), Warning (16-23)."""

    SESSION_STOPPED = 1 << 0
    DEVICE_BATTERY_LOW = 1 << 1
    SENSOR_TYPE_INCORRECT = 1 << 2
    SENSOR_MALFUNCTION = 1 << 3
    DEVICE_SPECIFIC_ALERT = 1 << 4
    GENERAL_DEVICE_FAULT = 1 << 5
    TIME_SYNCHRONIZATION_REQUIRED = 1 << 8
    CALIBRATION_NOT_ALLOWED = 1 << 9
    CALIBRATION_RECOMMENDED = 1 << 10
    CALIBRATION_REQUIRED = 1 << 11
    TEMPERATURE_TOO_HIGH = 1 << 12
    TEMPERATURE_TOO_LOW = 1 << 13
    CALIBRATION_PENDING = 1 << 14  # newer GSS only
    BELOW_PATIENT_LOW = 1 << 16
    ABOVE_PATIENT_HIGH = 1 << 17
    BELOW_HYPO = 1 << 18
    ABOVE_HYPER = 1 << 19
    RATE_OF_DECREASE_EXCEEDED = 1 << 20
    RATE_OF_INCREASE_EXCEEDED = 1 << 21
    BELOW_DEVICE_RANGE = 1 << 22
    ABOVE_DEVICE_RANGE = 1 << 23


# §3: on the wire the present octets go Status -> Cal/Temp -> Warning (flag b7, b6, b5), whatever
# the flag order. Nordic's Android library and BLECgmSim disagree and are wrong when only some
# octets are present.
_CGM_OCTETS: Final = (
    ("status", CgmMeasurementFlags.STATUS_OCTET_PRESENT, 0),
    ("cal_temp", CgmMeasurementFlags.CAL_TEMP_OCTET_PRESENT, 8),
    ("warning", CgmMeasurementFlags.WARNING_OCTET_PRESENT, 16),
)


@dataclass(frozen=True, slots=True)
class CgmMeasurement:
    """One CGM Measurement record (§3); a notification may carry several.

    ``status``, ``cal_temp`` and ``warning`` are the three optional annunciation octets, each as a
    :class:`CgmSensorStatus` restricted to its own byte (None = octet absent). ``crc`` is the E2E-CRC
    as received/to send (None = no CRC): check :attr:`crc_ok`; :meth:`with_crc` fills in the right one.
    ``rfu_flags`` keeps reserved flag bits 2-4 because the CRC covers them.
    """

    glucose: SFloat
    time_offset_min: int
    status: CgmSensorStatus | None = None
    cal_temp: CgmSensorStatus | None = None
    warning: CgmSensorStatus | None = None
    trend: SFloat | None = None
    quality: SFloat | None = None
    crc: int | None = None
    rfu_flags: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_uint(name, "time_offset_min", self.time_offset_min, 16)
        for field, _bit, shift in _CGM_OCTETS:
            octet = getattr(self, field)
            ok = octet is None or (isinstance(octet, int) and octet & ~(0xFF << shift) == 0)
            _require(ok, name, field, f"{octet!r} uses bits outside {shift}..{shift + 7}")
        _check_uint(name, "crc", self.crc, 16)
        _require(self.rfu_flags & ~_CGM_RFU_FLAGS == 0, name, "rfu_flags", "only bits 2-4 are reserved")

    @classmethod
    def from_bytes(cls, data: BytesLike, *, e2e_crc: bool) -> Self:
        """Decode exactly one record (Size byte == len(data)); see :func:`parse_cgm_measurements`."""
        reader = _Reader(data, cls.__name__)
        size = reader.uint(1, "size")
        flags = CgmMeasurementFlags(reader.uint(1, "flags"))
        _check_record_size(reader, size, len(data), _cgm_record_size(flags, e2e_crc))
        glucose = reader.sfloat("glucose")
        offset = reader.uint(2, "time_offset_min")
        octets = {
            field: CgmSensorStatus(reader.uint(1, field) << shift) if bit in flags else None
            for field, bit, shift in _CGM_OCTETS
        }
        trend = reader.sfloat("trend") if CgmMeasurementFlags.TREND_PRESENT in flags else None
        quality = reader.sfloat("quality") if CgmMeasurementFlags.QUALITY_PRESENT in flags else None
        crc = reader.uint(2, "crc") if e2e_crc else None
        reader.end()
        return cls(
            glucose, offset, **octets, trend=trend, quality=quality, crc=crc, rfu_flags=int(flags) & _CGM_RFU_FLAGS
        )

    def _encode(self, *, crc_present: bool) -> bytes:
        flags = self.flags
        out = _u8(_cgm_record_size(flags, crc_present)) + _u8(flags) + bytes(self.glucose)
        out += _u16(self.time_offset_min)
        for field, _bit, shift in _CGM_OCTETS:
            octet = getattr(self, field)
            out += b"" if octet is None else _u8(octet >> shift)
        for value in (self.trend, self.quality):
            out += b"" if value is None else bytes(value)
        return out

    def __bytes__(self) -> bytes:
        body = self._encode(crc_present=self.crc is not None)
        return body if self.crc is None else body + _u16(self.crc)

    def with_crc(self) -> Self:
        """A copy carrying the correct E2E-CRC (for simulators of E2E-capable sensors)."""
        return replace(self, crc=crc16_mcrf4xx(self._encode(crc_present=True)))

    @property
    def crc_ok(self) -> bool:
        """False if a CRC is present and does not match the record; the caller rejects such records."""
        return self.crc is None or self.crc == crc16_mcrf4xx(self._encode(crc_present=True))

    @property
    def flags(self) -> CgmMeasurementFlags:
        """The flags octet this record encodes with."""
        flags = CgmMeasurementFlags(self.rfu_flags)
        for field, bit, _shift in _CGM_OCTETS:
            flags |= bit if getattr(self, field) is not None else 0
        flags |= CgmMeasurementFlags.TREND_PRESENT if self.trend is not None else 0
        flags |= CgmMeasurementFlags.QUALITY_PRESENT if self.quality is not None else 0
        return flags

    @property
    def glucose_mg_dl(self) -> float:
        """Glucose concentration in mg/dL (CGM always uses mg/dL); NaN if the sensor sent NaN/NRes."""
        return self.glucose.value

    @property
    def trend_mg_dl_min(self) -> float | None:
        """Trend in (mg/dL)/min, None if absent."""
        return None if self.trend is None else self.trend.value

    @property
    def quality_pct(self) -> float | None:
        """Quality in percent, None if absent."""
        return None if self.quality is None else self.quality.value

    @property
    def status_flags(self) -> CgmSensorStatus:
        """All present annunciation octets combined (absent octets count as 0)."""
        combined = CgmSensorStatus(0)
        for octet in (self.status, self.cal_temp, self.warning):
            combined |= octet or 0
        return combined

    def reading_time(self, session_start: datetime) -> datetime:
        """``session_start`` + Time Offset. The offset wraps at 65536 min: unwrap before calling."""
        return session_start + timedelta(minutes=self.time_offset_min)


def _cgm_record_size(flags: CgmMeasurementFlags, crc_present: bool) -> int:
    octets = sum(bit in flags for _field, bit, _shift in _CGM_OCTETS)
    sfloats = (CgmMeasurementFlags.TREND_PRESENT in flags) + (CgmMeasurementFlags.QUALITY_PRESENT in flags)
    return const.CGM_RECORD_MIN_BYTES + octets + 2 * sfloats + 2 * crc_present


def _check_record_size(reader: _Reader, size: int, available: int, expected: int) -> None:
    if size != available:
        raise reader.error("size", f"Size byte says {size} but the record has {available} byte(s)")
    if size != expected:
        raise reader.error("size", f"Size byte says {size} but the flags (and E2E-CRC) need {expected}")


def parse_cgm_measurements(data: BytesLike, *, e2e_crc: bool) -> tuple[CgmMeasurement, ...]:
    """Split a CGM Measurement notification into its records, each sized by its own Size byte.

    ``e2e_crc`` is CGM Feature bit 12. Records whose CRC does not match are returned with
    ``crc_ok=False``; a Size byte below 6 or beyond the buffer raises :class:`GattDecodeError`.
    """
    reader = _Reader(data, "CgmMeasurement")
    if not reader.remaining:
        raise reader.error("size", "empty notification")
    records = []
    while reader.remaining:
        size = data[len(data) - reader.remaining]
        if size < const.CGM_RECORD_MIN_BYTES or size > reader.remaining:
            raise reader.error("size", f"Size byte {size} outside 6..{reader.remaining}")
        records.append(CgmMeasurement.from_bytes(reader.take(size, "size"), e2e_crc=e2e_crc))
    return tuple(records)


def encode_cgm_measurements(records: Iterable[CgmMeasurement]) -> bytes:
    """Concatenate records into one notification (for simulators)."""
    return b"".join(bytes(record) for record in records)


# ================================================================================================
# §3 CGM Feature, Status, Session Start Time, Session Run Time
# ================================================================================================


class CgmFeatureFlags(enum.IntFlag):
    """The 24-bit CGM Feature field."""

    CALIBRATION = 1 << 0
    PATIENT_HIGH_LOW_ALERTS = 1 << 1
    HYPO_ALERTS = 1 << 2
    HYPER_ALERTS = 1 << 3
    RATE_OF_INCREASE_DECREASE_ALERTS = 1 << 4
    DEVICE_SPECIFIC_ALERT = 1 << 5
    SENSOR_MALFUNCTION_DETECTION = 1 << 6
    SENSOR_TEMPERATURE_HIGH_LOW_DETECTION = 1 << 7
    SENSOR_RESULT_HIGH_LOW_DETECTION = 1 << 8
    LOW_BATTERY_DETECTION = 1 << 9
    SENSOR_TYPE_ERROR_DETECTION = 1 << 10
    GENERAL_DEVICE_FAULT = 1 << 11
    E2E_CRC = 1 << 12
    MULTIPLE_BOND = 1 << 13
    MULTIPLE_SESSIONS = 1 << 14
    TREND_INFORMATION = 1 << 15
    QUALITY = 1 << 16


@dataclass(frozen=True, slots=True)
class CgmFeature:
    """CGM Feature 0x2AA8 (§3): always 6 bytes; the CRC is 0xFFFF when E2E-CRC is unsupported."""

    features: CgmFeatureFlags
    sample_type: SampleType
    sample_location: SampleLocation
    crc: int = const.E2E_CRC_PLACEHOLDER

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "features", self.features, 24)
        _check_uint(type(self).__name__, "crc", self.crc, 16)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read."""
        reader = _Reader(data, cls.__name__)
        features = CgmFeatureFlags(reader.uint(3, "features"))
        sample_type, sample_location = _read_type_location(reader, "type_location")
        crc = reader.uint(2, "crc")
        reader.end()
        return cls(features, sample_type, sample_location, crc)

    def _body(self) -> bytes:
        return self.features.to_bytes(3, "little") + _nibbles(self.sample_type, self.sample_location)

    def __bytes__(self) -> bytes:
        return self._body() + _u16(self.crc)

    @property
    def e2e_crc(self) -> bool:
        """Whether the sensor protects its values (and wants our writes protected) with E2E-CRC."""
        return CgmFeatureFlags.E2E_CRC in self.features

    @property
    def crc_ok(self) -> bool:
        """The CRC matches (E2E supported) or is the 0xFFFF placeholder (not supported)."""
        return self.crc == self.with_crc().crc

    def with_crc(self) -> Self:
        """A copy with the right CRC field: the CRC, or the placeholder without E2E support."""
        crc = crc16_mcrf4xx(self._body()) if self.e2e_crc else const.E2E_CRC_PLACEHOLDER
        return replace(self, crc=crc)


@dataclass(frozen=True, slots=True)
class CgmStatus:
    """CGM Status 0x2AA9 (§3): 5 bytes, or 7 with E2E-CRC."""

    time_offset_min: int
    status: CgmSensorStatus
    crc: int | None = None

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "time_offset_min", self.time_offset_min, 16)
        _check_uint(type(self).__name__, "status", self.status, 24)
        _check_uint(type(self).__name__, "crc", self.crc, 16)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read; a CRC is expected exactly when the value has 7 bytes."""
        reader = _Reader(data, cls.__name__)
        offset = reader.uint(2, "time_offset_min")
        status = CgmSensorStatus(reader.uint(3, "status"))
        return cls(offset, status, _read_optional_crc(reader))

    def _body(self) -> bytes:
        return _u16(self.time_offset_min) + self.status.to_bytes(3, "little")

    def __bytes__(self) -> bytes:
        return self._body() + (b"" if self.crc is None else _u16(self.crc))

    @property
    def status_flags(self) -> CgmSensorStatus:
        """Alias of ``status``, as on :class:`CgmMeasurement`."""
        return self.status

    @property
    def crc_ok(self) -> bool:
        """True if there is no CRC or it matches."""
        return self.crc is None or self.crc == crc16_mcrf4xx(self._body())

    def with_crc(self) -> Self:
        """A copy carrying the correct E2E-CRC."""
        return replace(self, crc=crc16_mcrf4xx(self._body()))


@dataclass(frozen=True, slots=True)
class SessionStartTime:
    """CGM Session Start Time 0x2AAA (§3): local Date Time, time zone, DST [+CRC] = 9 or 11 bytes.

    ``tz_offset_min`` is a multiple of 15 in -720..840, ``dst_offset_min`` one of 0/30/60/120;
    None means "unknown" (TZ code -128, DST code 255).
    """

    local_time: datetime | None
    tz_offset_min: int | None
    dst_offset_min: int | None
    crc: int | None = None

    def __post_init__(self) -> None:
        _check_date_time(type(self).__name__, "local_time", self.local_time)
        _check_time_zone(type(self).__name__, self.tz_offset_min)
        _check_dst(type(self).__name__, self.dst_offset_min)
        _check_uint(type(self).__name__, "crc", self.crc, 16)
        try:
            self.utc  # noqa: B018 - evaluated for its OverflowError
        except OverflowError:
            raise GattDecodeError("local_time", "UTC time is out of range", type(self).__name__) from None

    @classmethod
    def from_local(cls, now: datetime) -> Self:
        """What a collector writes after starting a session: its own aware local time, TZ and DST."""
        name = cls.__name__
        offset, dst = now.utcoffset(), now.dst()
        _require(offset is not None, name, "local_time", "needs an aware datetime")
        total_min = int((offset or timedelta()).total_seconds()) // 60
        dst_min = None if dst is None else int(dst.total_seconds()) // 60
        tz_min = total_min - (dst_min or 0)
        return cls(now.replace(tzinfo=None, microsecond=0), tz_min, dst_min)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read; a CRC is expected exactly when the value has 11 bytes."""
        reader = _Reader(data, cls.__name__)
        local_time = _read_date_time(reader, "local_time")
        tz_min = _read_time_zone(reader, "tz_offset_min")
        dst_min = _read_dst(reader, "dst_offset_min")
        return cls(local_time, tz_min, dst_min, _read_optional_crc(reader))

    def _body(self) -> bytes:
        return encode_date_time(self.local_time) + _time_zone_byte(self.tz_offset_min) + _dst_byte(self.dst_offset_min)

    def __bytes__(self) -> bytes:
        return self._body() + (b"" if self.crc is None else _u16(self.crc))

    @property
    def utc(self) -> datetime | None:
        """Session start in UTC (aware): local − (TZ + DST); None if any part is unknown."""
        if self.local_time is None or self.tz_offset_min is None or self.dst_offset_min is None:
            return None
        offset = timedelta(minutes=self.tz_offset_min + self.dst_offset_min)
        return (self.local_time - offset).replace(tzinfo=UTC)

    @property
    def crc_ok(self) -> bool:
        """True if there is no CRC or it matches."""
        return self.crc is None or self.crc == crc16_mcrf4xx(self._body())

    def with_crc(self) -> Self:
        """A copy carrying the correct E2E-CRC (required on the write when Feature b12 is set)."""
        return replace(self, crc=crc16_mcrf4xx(self._body()))


@dataclass(frozen=True, slots=True)
class SessionRunTime:
    """CGM Session Run Time 0x2AAB (§3): u16 hours [+CRC] = 2 or 4 bytes."""

    run_time_hours: int
    crc: int | None = None

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "run_time_hours", self.run_time_hours, 16)
        _check_uint(type(self).__name__, "crc", self.crc, 16)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read; a CRC is expected exactly when the value has 4 bytes."""
        reader = _Reader(data, cls.__name__)
        hours = reader.uint(2, "run_time_hours")
        return cls(hours, _read_optional_crc(reader))

    def __bytes__(self) -> bytes:
        return _u16(self.run_time_hours) + (b"" if self.crc is None else _u16(self.crc))

    @property
    def crc_ok(self) -> bool:
        """True if there is no CRC or it matches."""
        return self.crc is None or self.crc == crc16_mcrf4xx(_u16(self.run_time_hours))

    def with_crc(self) -> Self:
        """A copy carrying the correct E2E-CRC."""
        return replace(self, crc=crc16_mcrf4xx(_u16(self.run_time_hours)))


# ================================================================================================
# §3 CGM Specific Ops Control Point 0x2AAC
# ================================================================================================


class SocpOpCode(enum.IntEnum):
    """SOCP op codes; alert levels come in set / get / response triples."""

    SET_COMMUNICATION_INTERVAL = 0x01
    GET_COMMUNICATION_INTERVAL = 0x02
    COMMUNICATION_INTERVAL_RESPONSE = 0x03
    SET_CALIBRATION_VALUE = 0x04
    GET_CALIBRATION_VALUE = 0x05
    CALIBRATION_VALUE_RESPONSE = 0x06
    SET_PATIENT_HIGH_ALERT_LEVEL = 0x07
    GET_PATIENT_HIGH_ALERT_LEVEL = 0x08
    PATIENT_HIGH_ALERT_LEVEL_RESPONSE = 0x09
    SET_PATIENT_LOW_ALERT_LEVEL = 0x0A
    GET_PATIENT_LOW_ALERT_LEVEL = 0x0B
    PATIENT_LOW_ALERT_LEVEL_RESPONSE = 0x0C
    SET_HYPO_ALERT_LEVEL = 0x0D
    GET_HYPO_ALERT_LEVEL = 0x0E
    HYPO_ALERT_LEVEL_RESPONSE = 0x0F
    SET_HYPER_ALERT_LEVEL = 0x10
    GET_HYPER_ALERT_LEVEL = 0x11
    HYPER_ALERT_LEVEL_RESPONSE = 0x12
    SET_RATE_OF_DECREASE_ALERT_LEVEL = 0x13
    GET_RATE_OF_DECREASE_ALERT_LEVEL = 0x14
    RATE_OF_DECREASE_ALERT_LEVEL_RESPONSE = 0x15
    SET_RATE_OF_INCREASE_ALERT_LEVEL = 0x16
    GET_RATE_OF_INCREASE_ALERT_LEVEL = 0x17
    RATE_OF_INCREASE_ALERT_LEVEL_RESPONSE = 0x18
    RESET_DEVICE_SPECIFIC_ALERT = 0x19
    START_SESSION = 0x1A
    STOP_SESSION = 0x1B
    RESPONSE_CODE = 0x1C


class CgmAlert(enum.IntEnum):
    """An alert level SOCP can set; the value is its "set" op code (get = +1, response = +2)."""

    PATIENT_HIGH = 0x07
    PATIENT_LOW = 0x0A
    HYPO = 0x0D
    HYPER = 0x10
    RATE_OF_DECREASE = 0x13
    RATE_OF_INCREASE = 0x16


class SocpResponseCode(enum.IntEnum):
    """SOCP response codes (``1C <request opcode> <code>``)."""

    SUCCESS = 1
    OP_CODE_NOT_SUPPORTED = 2
    INVALID_OPERAND = 3
    PROCEDURE_NOT_COMPLETED = 4
    PARAMETER_OUT_OF_RANGE = 5


class CgmCalibrationStatus(enum.IntFlag):
    """Status octet of a CGM calibration record."""

    REJECTED = 1 << 0
    OUT_OF_RANGE = 1 << 1
    PROCESS_PENDING = 1 << 2


@dataclass(frozen=True, slots=True)
class CgmCalibration:
    """The 10-byte SOCP calibration operand (§3): glucose SFLOAT mg/dL, time u16 min, type-location
    octet (type low nibble, location high nibble: Nordic's Android library shifts by 8), next
    calibration time u16 min, record number u16, status u8."""

    glucose: SFloat
    time_min: int
    sample_type: SampleType
    sample_location: SampleLocation
    next_calibration_time_min: int
    record_number: int
    status: CgmCalibrationStatus = CgmCalibrationStatus(0)  # noqa: RUF009 - an immutable enum value

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_uint(name, "time_min", self.time_min, 16)
        _check_uint(name, "next_calibration_time_min", self.next_calibration_time_min, 16)
        _check_uint(name, "record_number", self.record_number, 16)
        _check_uint(name, "status", self.status, 8)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode exactly 10 bytes."""
        reader = _Reader(data, cls.__name__)
        value = cls._read(reader)
        reader.end()
        return value

    @classmethod
    def _read(cls, reader: _Reader) -> Self:
        glucose = reader.sfloat("glucose")
        time_min = reader.uint(2, "time_min")
        sample_type, sample_location = _read_type_location(reader, "type_location")
        next_min = reader.uint(2, "next_calibration_time_min")
        record = reader.uint(2, "record_number")
        status = CgmCalibrationStatus(reader.uint(1, "status"))
        return cls(glucose, time_min, sample_type, sample_location, next_min, record, status)

    def __bytes__(self) -> bytes:
        return (
            bytes(self.glucose)
            + _u16(self.time_min)
            + _nibbles(self.sample_type, self.sample_location)
            + _u16(self.next_calibration_time_min)
            + _u16(self.record_number)
            + _u8(self.status)
        )

    @property
    def glucose_mg_dl(self) -> float:
        """Calibration glucose in mg/dL."""
        return self.glucose.value


_SOCP_ALERT_SETS: Final = frozenset(SocpOpCode(alert) for alert in CgmAlert)
_SOCP_ALERT_GETS: Final = frozenset(SocpOpCode(alert + 1) for alert in CgmAlert)
_SOCP_ALERT_RESPONSES: Final = frozenset(SocpOpCode(alert + 2) for alert in CgmAlert)
_SOCP_NO_OPERAND: Final = _SOCP_ALERT_GETS | {
    SocpOpCode.GET_COMMUNICATION_INTERVAL,
    SocpOpCode.RESET_DEVICE_SPECIFIC_ALERT,
    SocpOpCode.START_SESSION,
    SocpOpCode.STOP_SESSION,
}
_SOCP_INT_OPERAND_BITS: Final = {SocpOpCode.SET_COMMUNICATION_INTERVAL: 8, SocpOpCode.GET_CALIBRATION_VALUE: 16}

SocpOperand = int | SFloat | CgmCalibration | None


@dataclass(frozen=True, slots=True)
class SocpRequest:
    """A SOCP command (§3) without E2E-CRC.

    ``operand``: minutes (u8) for set-communication-interval (0 = off, 0xFF = fastest), record
    number (u16, 0xFFFF = last) for get-calibration, :class:`CgmCalibration` for set-calibration,
    an :class:`SFloat` level for set-alert op codes, None otherwise.
    """

    opcode: SocpOpCode
    operand: SocpOperand = None

    def __post_init__(self) -> None:
        name, operand = type(self).__name__, self.operand
        expected = _socp_operand_type(self.opcode)
        _require(expected is not None, name, "opcode", f"{self.opcode!r} is not a request")
        _require(type(operand) is expected, name, "operand", f"{self.opcode!r} takes {expected}, not {operand!r}")
        bits = _SOCP_INT_OPERAND_BITS.get(self.opcode)
        if bits is not None and isinstance(operand, int):
            _check_uint(name, "operand", operand, bits)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a command (for CGM simulators); strip any E2E-CRC first."""
        reader = _Reader(data, cls.__name__)
        opcode = reader.enum(SocpOpCode, "opcode")
        operand = _read_socp_operand(reader, opcode)
        reader.end()
        return cls(opcode, operand)

    def __bytes__(self) -> bytes:
        operand = self.operand
        if isinstance(operand, int):
            operand_bytes = operand.to_bytes(_SOCP_INT_OPERAND_BITS[self.opcode] // 8, "little")
        else:
            operand_bytes = b"" if operand is None else bytes(operand)
        return _u8(self.opcode) + operand_bytes


def _socp_operand_type(opcode: SocpOpCode) -> type | None:
    """The operand type a request op code takes; None if it is not a request."""
    if opcode in _SOCP_NO_OPERAND:
        return type(None)
    if opcode in _SOCP_ALERT_SETS:
        return SFloat
    if opcode in _SOCP_INT_OPERAND_BITS:
        return int
    return CgmCalibration if opcode is SocpOpCode.SET_CALIBRATION_VALUE else None


def _read_socp_operand(reader: _Reader, opcode: SocpOpCode) -> SocpOperand:
    expected = _socp_operand_type(opcode)
    if expected is None:
        raise reader.error("opcode", f"{opcode.name} is not a request")
    if expected is int:
        return reader.uint(_SOCP_INT_OPERAND_BITS[opcode] // 8, "operand")
    if expected is SFloat:
        return reader.sfloat("operand")
    return CgmCalibration._read(reader) if expected is CgmCalibration else None


@dataclass(frozen=True, slots=True)
class SocpResponse:
    """SOCP indication ``1C <request opcode> <response code>``; unknown request op codes stay ints."""

    request_opcode: SocpOpCode | int
    response_code: SocpResponseCode

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "request_opcode", self.request_opcode, 8)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode an indication (without E2E-CRC)."""
        reader = _Reader(data, cls.__name__)
        _expect_code(reader, "opcode", SocpOpCode.RESPONSE_CODE)
        request = _maybe_enum(SocpOpCode, reader.uint(1, "request_opcode"))
        code = reader.enum(SocpResponseCode, "response_code")
        reader.end()
        return cls(request, code)

    def __bytes__(self) -> bytes:
        return bytes((SocpOpCode.RESPONSE_CODE, self.request_opcode, self.response_code))


@dataclass(frozen=True, slots=True)
class SocpCommunicationInterval:
    """SOCP indication ``03 <u8 minutes>``: the current communication interval."""

    minutes: int

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "minutes", self.minutes, 8)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode an indication (without E2E-CRC)."""
        reader = _Reader(data, cls.__name__)
        _expect_code(reader, "opcode", SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE)
        minutes = reader.uint(1, "minutes")
        reader.end()
        return cls(minutes)

    def __bytes__(self) -> bytes:
        return bytes((SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE, self.minutes))


@dataclass(frozen=True, slots=True)
class SocpCalibrationValue:
    """SOCP indication ``06 <calibration record>``."""

    calibration: CgmCalibration

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode an indication (without E2E-CRC)."""
        reader = _Reader(data, cls.__name__)
        _expect_code(reader, "opcode", SocpOpCode.CALIBRATION_VALUE_RESPONSE)
        calibration = CgmCalibration._read(reader)
        reader.end()
        return cls(calibration)

    def __bytes__(self) -> bytes:
        return _u8(SocpOpCode.CALIBRATION_VALUE_RESPONSE) + bytes(self.calibration)


@dataclass(frozen=True, slots=True)
class SocpAlertLevel:
    """SOCP indication ``<alert response opcode> <SFLOAT level>`` (mg/dL, or (mg/dL)/min for rates)."""

    alert: CgmAlert
    level: SFloat

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode an indication (without E2E-CRC)."""
        reader = _Reader(data, cls.__name__)
        opcode = reader.uint(1, "opcode")
        if opcode not in _SOCP_ALERT_RESPONSES:
            raise reader.error("opcode", f"{opcode} is not an alert-level response")
        level = reader.sfloat("level")
        reader.end()
        return cls(CgmAlert(opcode - 2), level)

    def __bytes__(self) -> bytes:
        return _u8(self.alert + 2) + bytes(self.level)


SocpIndication = SocpResponse | SocpCommunicationInterval | SocpCalibrationValue | SocpAlertLevel


def parse_socp_response(data: BytesLike, *, e2e_crc: bool = False) -> SocpIndication:
    """Decode a SOCP indication; with ``e2e_crc`` check and strip the CRC first."""
    body = verify_e2e_crc(data, "SocpResponse") if e2e_crc else data
    reader = _Reader(body, "SocpResponse")
    opcode = reader.uint(1, "opcode")
    if opcode == SocpOpCode.RESPONSE_CODE:
        return SocpResponse.from_bytes(body)
    if opcode == SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE:
        return SocpCommunicationInterval.from_bytes(body)
    if opcode == SocpOpCode.CALIBRATION_VALUE_RESPONSE:
        return SocpCalibrationValue.from_bytes(body)
    if opcode in _SOCP_ALERT_RESPONSES:
        return SocpAlertLevel.from_bytes(body)
    raise reader.error("opcode", f"{opcode} is not a SOCP response op code")


def _socp(opcode: SocpOpCode, operand: SocpOperand, e2e_crc: bool) -> bytes:
    return _with_crc(bytes(SocpRequest(opcode, operand)), e2e_crc)


def socp_set_communication_interval(minutes: int, *, e2e_crc: bool = False) -> bytes:
    """``01 <u8>``: 0 turns periodic notifications off (not 0xFF, Nordic's trap), 0xFF = fastest."""
    return _socp(SocpOpCode.SET_COMMUNICATION_INTERVAL, minutes, e2e_crc)


def socp_get_communication_interval(*, e2e_crc: bool = False) -> bytes:
    """``02``: answered by ``03 <minutes>``."""
    return _socp(SocpOpCode.GET_COMMUNICATION_INTERVAL, None, e2e_crc)


def socp_set_calibration(calibration: CgmCalibration, *, e2e_crc: bool = False) -> bytes:
    """``04 <calibration record>``."""
    return _socp(SocpOpCode.SET_CALIBRATION_VALUE, calibration, e2e_crc)


def socp_get_calibration(record_number: int, *, e2e_crc: bool = False) -> bytes:
    """``05 <u16 record number>``: answered by ``06 <calibration record>``."""
    return _socp(SocpOpCode.GET_CALIBRATION_VALUE, record_number, e2e_crc)


def socp_set_alert_level(alert: CgmAlert, level: SFloat | float, *, e2e_crc: bool = False) -> bytes:
    """Set an alert level (mg/dL, rates in (mg/dL)/min)."""
    value = level if isinstance(level, SFloat) else SFloat.from_value(level)
    return _socp(SocpOpCode(alert), value, e2e_crc)


def socp_get_alert_level(alert: CgmAlert, *, e2e_crc: bool = False) -> bytes:
    """Ask for an alert level: answered by the matching response op code and an SFLOAT."""
    return _socp(SocpOpCode(alert + 1), None, e2e_crc)


def socp_reset_device_specific_alert(*, e2e_crc: bool = False) -> bytes:
    """``19``."""
    return _socp(SocpOpCode.RESET_DEVICE_SPECIFIC_ALERT, None, e2e_crc)


def socp_start_session(*, e2e_crc: bool = False) -> bytes:
    """``1a`` (``1a 5c b0`` with E2E-CRC); then write the Session Start Time."""
    return _socp(SocpOpCode.START_SESSION, None, e2e_crc)


def socp_stop_session(*, e2e_crc: bool = False) -> bytes:
    """``1b``."""
    return _socp(SocpOpCode.STOP_SESSION, None, e2e_crc)


# ================================================================================================
# §5 Battery, Device Information, Current Time
# ================================================================================================


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    """Battery Level 0x2A19: one byte, 0-100 %."""

    percent: int

    def __post_init__(self) -> None:
        ok = isinstance(self.percent, int) and 0 <= self.percent <= const.BATTERY_LEVEL_MAX_PCT
        _require(ok, type(self).__name__, "percent", f"{self.percent!r} outside 0..100")

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read or notification."""
        reader = _Reader(data, cls.__name__)
        percent = reader.uint(1, "percent")
        reader.end()
        if percent > const.BATTERY_LEVEL_MAX_PCT:
            raise reader.error("percent", f"{percent} > 100")
        return cls(percent)

    def __bytes__(self) -> bytes:
        return _u8(self.percent)


def decode_dis_string(data: BytesLike) -> str:
    """A Device Information string (manufacturer, model, serial, revisions): UTF-8, trailing NULs
    stripped (some devices pad with them)."""
    reader = _Reader(data, "DeviceInformation")
    try:
        return bytes(data).rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise reader.error("string", f"not UTF-8: {exc.reason} at byte {exc.start}") from None


def encode_dis_string(value: str) -> bytes:
    """Encode a Device Information string (UTF-8, no terminator)."""
    return value.encode("utf-8")


class VendorIdSource(enum.IntEnum):
    """PnP ID vendor ID source."""

    BLUETOOTH_SIG = 1
    USB_IMPLEMENTERS_FORUM = 2


@dataclass(frozen=True, slots=True)
class PnpId:
    """PnP ID 0x2A50: source u8, vendor u16, product u16, version u16 (7 bytes)."""

    vendor_id_source: VendorIdSource
    vendor_id: int
    product_id: int
    product_version: int

    def __post_init__(self) -> None:
        for field in ("vendor_id", "product_id", "product_version"):
            _check_uint(type(self).__name__, field, getattr(self, field), 16)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read."""
        reader = _Reader(data, cls.__name__)
        source = reader.enum(VendorIdSource, "vendor_id_source")
        vendor, product, version = (reader.uint(2, name) for name in ("vendor_id", "product_id", "product_version"))
        reader.end()
        return cls(source, vendor, product, version)

    def __bytes__(self) -> bytes:
        return _u8(self.vendor_id_source) + _u16(self.vendor_id) + _u16(self.product_id) + _u16(self.product_version)


@dataclass(frozen=True, slots=True)
class SystemId:
    """System ID 0x2A23: u64 LE = OUI << 40 | 40-bit manufacturer-defined ID (as Bumble packs it)."""

    manufacturer_id: int
    oui: int

    def __post_init__(self) -> None:
        _check_uint(type(self).__name__, "manufacturer_id", self.manufacturer_id, 40)
        _check_uint(type(self).__name__, "oui", self.oui, 24)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read."""
        reader = _Reader(data, cls.__name__)
        value = reader.uint(8, "system_id")
        reader.end()
        return cls(value & (1 << 40) - 1, value >> 40)

    def __bytes__(self) -> bytes:
        return (self.oui << 40 | self.manufacturer_id).to_bytes(8, "little")


class DayOfWeek(enum.IntEnum):
    """Day of week of Current Time (0 = unknown)."""

    UNKNOWN = 0
    MONDAY = 1
    TUESDAY = 2
    WEDNESDAY = 3
    THURSDAY = 4
    FRIDAY = 5
    SATURDAY = 6
    SUNDAY = 7


class AdjustReason(enum.IntFlag):
    """Adjust Reason octet of Current Time."""

    MANUAL_TIME_UPDATE = 1 << 0
    EXTERNAL_REFERENCE_TIME_UPDATE = 1 << 1
    TIME_ZONE_CHANGE = 1 << 2
    DST_CHANGE = 1 << 3


@dataclass(frozen=True, slots=True)
class CurrentTime:
    """Current Time 0x2A2B (§5): Date Time + day of week + Fractions256 + Adjust Reason (10 bytes).

    Read it from a meter to measure the skew of the clock its base times come from.
    """

    time: datetime | None
    day_of_week: DayOfWeek = DayOfWeek.UNKNOWN
    fractions256: int = 0
    adjust_reason: AdjustReason = AdjustReason(0)  # noqa: RUF009 - an immutable enum value

    def __post_init__(self) -> None:
        _check_date_time(type(self).__name__, "time", self.time)
        _check_uint(type(self).__name__, "fractions256", self.fractions256, 8)
        _check_uint(type(self).__name__, "adjust_reason", self.adjust_reason, 8)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read or notification."""
        reader = _Reader(data, cls.__name__)
        time = _read_date_time(reader, "time")
        day = reader.enum(DayOfWeek, "day_of_week")
        fractions = reader.uint(1, "fractions256")
        reason = AdjustReason(reader.uint(1, "adjust_reason"))
        reader.end()
        return cls(time, day, fractions, reason)

    def __bytes__(self) -> bytes:
        return encode_date_time(self.time) + bytes((self.day_of_week, self.fractions256, self.adjust_reason))

    @property
    def sub_s(self) -> float:
        """The fraction of a second (Fractions256 / 256)."""
        return self.fractions256 / 256


@dataclass(frozen=True, slots=True)
class LocalTimeInformation:
    """Local Time Information 0x2A0F: time zone s8 × 15 min + DST code (2 bytes)."""

    tz_offset_min: int | None
    dst_offset_min: int | None

    def __post_init__(self) -> None:
        _check_time_zone(type(self).__name__, self.tz_offset_min)
        _check_dst(type(self).__name__, self.dst_offset_min)

    @classmethod
    def from_bytes(cls, data: BytesLike) -> Self:
        """Decode a read."""
        reader = _Reader(data, cls.__name__)
        tz_min = _read_time_zone(reader, "tz_offset_min")
        dst_min = _read_dst(reader, "dst_offset_min")
        reader.end()
        return cls(tz_min, dst_min)

    def __bytes__(self) -> bytes:
        return _time_zone_byte(self.tz_offset_min) + _dst_byte(self.dst_offset_min)


# ================================================================================================
# Module-level entry points (thin wrappers; what the BLE notify callbacks call)
# ================================================================================================


def parse_heart_rate_measurement(data: BytesLike) -> HeartRateMeasurement:
    """Decode Heart Rate Measurement 0x2A37."""
    return HeartRateMeasurement.from_bytes(data)


_T = TypeVar("_T")


def decode_padded(decode: Callable[[BytesLike], _T], data: BytesLike) -> tuple[_T, int]:
    """``decode(data)``, tolerating padding: bytes after the fields the flags announce are ignored.

    Returns the payload and how many trailing bytes were ignored (0 for an exact payload), so the
    caller can count them. Real devices pad notifications (a heart rate ``00 48 00``); tolerant
    collectors (Home Assistant's parsers, Tidepool) decode the announced fields and drop the rest.
    Anything else that is wrong still raises :class:`GattDecodeError`.
    """
    try:
        return decode(data), 0
    except OverlongPayloadError as exc:
        return decode(bytes(data[: exc.consumed])), len(data) - exc.consumed


def parse_glucose_measurement(data: BytesLike) -> GlucoseMeasurement:
    """Decode Glucose Measurement 0x2A18."""
    return GlucoseMeasurement.from_bytes(data)


def parse_glucose_context(data: BytesLike) -> GlucoseMeasurementContext:
    """Decode Glucose Measurement Context 0x2A34."""
    return GlucoseMeasurementContext.from_bytes(data)


def parse_glucose_feature(data: BytesLike) -> GlucoseFeature:
    """Decode Glucose Feature 0x2A51."""
    return GlucoseFeature.from_bytes(data)


def parse_cgm_feature(data: BytesLike) -> CgmFeature:
    """Decode CGM Feature 0x2AA8."""
    return CgmFeature.from_bytes(data)


def parse_cgm_status(data: BytesLike) -> CgmStatus:
    """Decode CGM Status 0x2AA9."""
    return CgmStatus.from_bytes(data)


def parse_session_start_time(data: BytesLike) -> SessionStartTime:
    """Decode CGM Session Start Time 0x2AAA."""
    return SessionStartTime.from_bytes(data)


def parse_session_run_time(data: BytesLike) -> SessionRunTime:
    """Decode CGM Session Run Time 0x2AAB."""
    return SessionRunTime.from_bytes(data)


def parse_battery_level(data: BytesLike) -> int:
    """Decode Battery Level 0x2A19 to a percentage."""
    return BatteryLevel.from_bytes(data).percent


def parse_pnp_id(data: BytesLike) -> PnpId:
    """Decode PnP ID 0x2A50."""
    return PnpId.from_bytes(data)


def parse_system_id(data: BytesLike) -> SystemId:
    """Decode System ID 0x2A23."""
    return SystemId.from_bytes(data)


def parse_current_time(data: BytesLike) -> CurrentTime:
    """Decode Current Time 0x2A2B."""
    return CurrentTime.from_bytes(data)
