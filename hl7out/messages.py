"""The HL7 v2.6 codec: vitals (ORU^R01), alerts (ORU^R40 Report Alert) and ACKs, with hl7apy.

Everything we build is validated against the HL7 2.6 message structure (hl7apy, strict) before
it leaves; everything we receive is parsed the same way. Free text (alert messages, names) is
escaped per HL7 2.6 §2.7 (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``; line breaks become spaces), so no
delimiter in a message text can add a field, a component or a segment.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from hl7out import codes
from hl7out.errors import AckError, Hl7EncodeError
from rpm_core.wire import MAX_EPOCH_S, MIN_SAMPLE_EPOCH_S, is_valid_id

AckCode = Literal["AA", "AE", "AR"]
Kind = Literal["clinical", "technical"]

PCD01_PROFILE: Final = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
PCD04_PROFILE: Final = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4.4^ISO"
SEGMENT_SEP: Final = "\r"
# 2.6 §2.7.4: escape sequences for the delimiters in text; "\" first so the others are not re-escaped
_ESCAPES: Final = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"),
                   ("\r\n", " "), ("\n", " "), ("\r", " "))
# Other control characters (C0 but CR/LF, DEL, C1 with NEL, the Unicode line and paragraph separators)
# become spaces: MLLP's 0x0B/0x1C in a text made every attempt fail at framing, and a receiver may
# take any of the others for a line break.
_CONTROL_RE: Final = re.compile("[\x00-\x09\x0b-\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
# hl7apy's (HL7 2.6) longest field or component value: a longer one is refused when the message is built.
MAX_VALUE_CHARS: Final = 999


def escape_text(text: str) -> str:
    """``text`` with the HL7 delimiters and line breaks as escape sequences, other control characters
    as spaces."""
    for raw, esc in _ESCAPES:
        text = text.replace(raw, esc)
    return _CONTROL_RE.sub(" ", text)


def escape_fitted(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """:func:`escape_text` of ``text``, cut (ending in "...") so that it stays within ``limit`` characters:
    escaping grows a text (``&`` is ``\\T\\``, three times longer), and a value beyond hl7apy's limit
    made building the message fail (the alert was never sent)."""
    escaped = escape_text(text)
    if len(escaped) <= limit:
        return escaped
    out, size = [], 0
    for ch in text:
        piece = escape_text(ch)
        if size + len(piece) > limit - 3:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + "..."


def unescape_text(text: str) -> str:
    """The inverse of :func:`escape_text` (except line breaks, which were sent as spaces)."""
    out, i = [], 0
    table = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}
    while i < len(text):
        end = text.find("\\", i + 1) if text[i] == "\\" else -1
        if end > i and text[i + 1:end] in table:
            out.append(table[text[i + 1:end]])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def hl7_time(epoch_s: float) -> str:
    """DTM in UTC to the millisecond: ``20260101120000.000+0000``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y%m%d%H%M%S.%f")[:-3] + "+0000"


def _number(value: float) -> str:
    """NM: plain decimal, at most one decimal place, never an exponent."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True, slots=True)
class Header:
    """Who sends and who receives (MSH-3..6) and whose patient ids we send (PID-3 assigning authority)."""

    receiving_app: str = "EMR"
    receiving_facility: str = "HOSPITAL"
    sending_app: str = "RPM"
    sending_facility: str = "RPM"
    patient_authority: str = "RPM"


@dataclass(frozen=True, slots=True)
class Observation:
    """One value of a vitals message: a reading, or a mean of ``n`` readings over a period."""

    metric: Literal["heart_rate", "glucose"]
    device: str
    time_s: float
    value: float
    n: int = 1
    interpretation: Literal["", "L", "LL", "H", "HH"] = ""

    def __post_init__(self) -> None:
        if not (is_valid_id(self.device) and self.value == self.value and abs(self.value) < 1e9):
            raise Hl7EncodeError(f"observation of {self.device!r} cannot be sent: bad device id or value")

    @property
    def code(self) -> tuple[str, str, str]:
        """(LOINC code, text, UCUM unit), by metric and device kind."""
        if self.metric == "heart_rate":
            return codes.HEART_RATE
        if self.device.startswith("cgm-"):
            return codes.CGM_GLUCOSE
        return codes.METER_GLUCOSE if self.device.startswith("bgm-") else codes.BLOOD_GLUCOSE


@dataclass(frozen=True, slots=True)
class VitalsReport:
    """One ORU^R01: a patient's observations of one period."""

    patient: str
    time_s: float
    observations: tuple[Observation, ...]

    def __post_init__(self) -> None:
        if not is_valid_id(self.patient) or not self.observations:
            raise Hl7EncodeError(f"vitals of {self.patient!r}: bad patient id or no observations")


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One state change of an alert, as an ORU^R40 Report Alert."""

    alert_id: str
    patient: str
    rule: str
    severity: str
    metric: str
    state: Literal["raised", "escalated", "acknowledged", "cleared"]
    time_s: float
    message: str = ""
    value: float | None = None
    by: str | None = None
    kind: Kind = "clinical"
    device: str = field(default="")

    def __post_init__(self) -> None:
        if not is_valid_id(self.patient) or self.state not in codes.FACETS:
            raise Hl7EncodeError(f"alert {self.alert_id[:64]!r}: bad patient id or state {self.state[:20]!r}")
        if not (math.isfinite(self.time_s) and MIN_SAMPLE_EPOCH_S <= self.time_s < MAX_EPOCH_S):
            raise Hl7EncodeError(f"alert {self.alert_id[:64]!r}: time {self.time_s!r} is not from 2000 to 2100")


def control_id(*parts: object) -> str:
    """MSH-10: the same content always gets the same id (a retry is recognisable as one), 20 hex digits."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:20]


def _msh(msg: Any, header: Header, kind: str, cid: str, now_s: float, profile: str) -> None:
    msh = msg.msh
    msh.msh_3, msh.msh_4 = header.sending_app, header.sending_facility
    msh.msh_5, msh.msh_6 = header.receiving_app, header.receiving_facility
    msh.msh_7 = hl7_time(now_s)
    msh.msh_9 = kind
    msh.msh_10 = cid
    msh.msh_11 = "P"
    msh.msh_12 = codes.HL7_VERSION
    msh.msh_15 = "AL"  # accept acknowledgement: always
    msh.msh_16 = "NE"  # application acknowledgement: never (the ACK we wait for is the accept/commit ACK)
    msh.msh_21 = profile


def _patient(msg: Any, header: Header, patient: str) -> Any:
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = f"{patient}^^^{header.patient_authority}^PI"
    pid.pid_5 = "^^^^^^U"  # required; rpm holds no names (pseudonymous ids): name type U, unspecified
    return result


def _obx(group: Any, i: int, *, kind: str, code: str, value: str, unit: str = "", sub_id: str = "",
         flags: tuple[str, ...] = (), time_s: float | None = None, device: str = "", observer: str = "") -> None:
    obx = group.add_group("ORU_R01_OBSERVATION").obx
    obx.obx_1, obx.obx_2, obx.obx_3 = str(i), kind, code
    if sub_id:
        obx.obx_4 = sub_id
    obx.obx_5.value = value
    if unit:
        obx.obx_6 = unit
    for flag in flags:
        obx.add_field("obx_8").value = flag
    obx.obx_11 = "F"
    if time_s is not None:
        obx.obx_14 = hl7_time(time_s)
    if observer:
        obx.obx_16.value = observer
    if device:
        obx.obx_18 = f"{device}^RPM"


def _finish(msg: Any) -> str:
    try:
        msg.validate()
    except HL7apyException as exc:
        raise Hl7EncodeError(f"built an invalid HL7 message: {exc}") from exc
    text: str = msg.to_er7()
    return text


def encode_vitals(report: VitalsReport, *, header: Header, now_s: float) -> tuple[str, str]:
    """(control id, ER7) of the ORU^R01 of ``report``: one OBR, one OBX per observation."""
    cid = control_id("vitals", report.patient, report.time_s, *(
        (o.device, o.time_s, o.value) for o in report.observations))
    msg = Message("ORU_R01", version=codes.HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _msh(msg, header, "ORU^R01^ORU_R01", cid, now_s, PCD01_PROFILE)
    order = _patient(msg, header, report.patient).add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_3 = f"{cid}^RPM"
    order.obr.obr_4 = "182777000^monitoring of patient^SCT"
    order.obr.obr_7 = hl7_time(report.time_s)
    for i, o in enumerate(report.observations, start=1):
        code, text, unit = o.code
        _obx(order, i, kind="NM", code=f"{code}^{text}^{codes.LOINC}", value=_number(o.value),
             unit=f"{unit}^{unit}^{codes.UCUM}", flags=(o.interpretation,) if o.interpretation else (),
             time_s=o.time_s, device=o.device)
    return cid, _finish(msg)


def encode_alert(change: AlertChange, *, header: Header, now_s: float) -> tuple[str, str]:
    """(control id, ER7) of the ORU^R40 Report Alert of ``change`` with its ACM facets (IHE PCD-04);
    :class:`Hl7EncodeError` if it cannot be built (the message text is cut to fit, not refused)."""
    try:
        return _encode_alert(change, header=header, now_s=now_s)
    except HL7apyException as exc:  # a value hl7apy refuses (an id or a rule name too long)
        raise Hl7EncodeError(f"alert {change.alert_id[:64]!r} cannot be encoded: {str(exc)[-200:]}") from exc


def _encode_alert(change: AlertChange, *, header: Header, now_s: float) -> tuple[str, str]:
    cid = control_id("alert", change.alert_id, change.state, change.time_s)
    msg = Message("ORU_R01", version=codes.HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _msh(msg, header, "ORU^R40^ORU_R01", cid, now_s, PCD04_PROFILE)
    order = _patient(msg, header, change.patient).add_group("ORU_R01_ORDER_OBSERVATION")
    evt_code, evt_name = codes.MDC_EVT_ALARM
    order.obr.obr_1 = "1"
    order.obr.obr_3 = f"{escape_text(change.alert_id)}^RPM"
    order.obr.obr_4 = f"{evt_code}^{evt_name}^{codes.MDC}"
    order.obr.obr_7 = hl7_time(change.time_s)
    phase, state, inactivation = codes.FACETS[change.state]
    source = codes.SOURCE_TECHNICAL if change.kind == "technical" else codes.SOURCE_PHYSIOLOGICAL
    flags = (codes.PRIORITY.get(change.severity, "PL"), source)
    rule = escape_text(change.rule)
    _obx(order, 1, kind="ST", code=f"{rule}^{rule}^{codes.LOCAL_RULES}", sub_id="1.0.0.1",
         value=escape_fitted(change.message or change.rule), flags=flags, time_s=change.time_s, device=change.device)
    i = 2
    if change.value is not None and change.metric in ("heart_rate", "glucose"):
        o = Observation(metric=change.metric, device=change.device or "unknown", time_s=change.time_s,  # type: ignore[arg-type]
                        value=change.value)
        code, text, unit = o.code
        _obx(order, i, kind="NM", code=f"{code}^{text}^{codes.LOINC}", sub_id="1.0.0.2", value=_number(change.value),
             unit=f"{unit}^{unit}^{codes.UCUM}", time_s=change.time_s)
        i += 1
    for (code, name), value in ((codes.MDC_ATTR_EVENT_PHASE, phase), (codes.MDC_ATTR_ALARM_STATE, state),
                                (codes.MDC_ATTR_ALARM_INACTIVATION_STATE, inactivation)):
        observer = f"^{escape_text(change.by)}" if change.by and value == "alert-acknowledged" else ""
        _obx(order, i, kind="ST", code=f"{code}^{name}^{codes.MDC}", sub_id=f"1.0.0.{i}", value=value,
             observer=observer)
        i += 1
    return cid, _finish(msg)


# -- receiving ---------------------------------------------------------------------------------------


def parse(text: str) -> Any:
    """An ER7 message parsed and validated against HL7 2.6 (hl7apy strict); :class:`HL7apyException` if invalid."""
    msg = parse_message(text.replace("\n", SEGMENT_SEP), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    msg.validate()
    return msg


@dataclass(frozen=True, slots=True)
class Ack:
    """The peer's answer to one message (MSA-1, MSA-2, and why: MSA-3 or ERR-8)."""

    code: AckCode
    control_id: str
    text: str


def parse_ack(text: str, *, control_id: str) -> Ack:
    """The ACK of the message ``control_id``; :class:`AckError` if it is not one."""
    try:
        msg = parse_message(text.replace("\n", SEGMENT_SEP), validation_level=VALIDATION_LEVEL.TOLERANT,
                            find_groups=False)
        code = msg.msa.msa_1.value
        acked = msg.msa.msa_2.value
        reason = msg.msa.msa_3.value if msg.msa.msa_3.value else ""
        errs = [e.err_8.value for e in msg.children.get("ERR")] if "ERR" in [c.name for c in msg.children] else []
    except (HL7apyException, AttributeError, IndexError) as exc:
        raise AckError(f"the answer is not an HL7 ACK: {exc}") from exc
    if code in ("CA", "CE", "CR"):  # enhanced mode commit ACKs say the same thing
        code = "A" + code[1]
    if code not in ("AA", "AE", "AR"):
        raise AckError(f"the answer's MSA-1 is {code!r}, not AA, AE or AR")
    if acked != control_id:
        raise AckError(f"the ACK is for message {acked!r}, not {control_id!r}")
    detail = "; ".join(unescape_text(x) for x in [reason, *errs] if x)
    return Ack(code=code, control_id=acked, text=detail)


def build_ack(message: str, code: AckCode, reason: str = "", *, now_s: float | None = None) -> str:
    """An ACK (for receivers, e.g. a test listener) of ``message``: MSA with ``code`` and ``reason`` (ERR too)."""
    fields = message.split(SEGMENT_SEP, 1)[0].split("|")

    def get(i: int) -> str:  # MSH-n is fields[n - 1]
        return fields[i] if len(fields) > i else ""

    ack = Message("ACK", version=codes.HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    ack.msh.msh_3, ack.msh.msh_4, ack.msh.msh_5, ack.msh.msh_6 = get(4), get(5), get(2), get(3)
    ack.msh.msh_7 = hl7_time(now_s if now_s is not None else datetime.now(UTC).timestamp())
    ack.msh.msh_9 = "ACK^" + [*get(8).split("^"), ""][1] + "^ACK"
    ack.msh.msh_10 = control_id("ack", get(9), code)
    ack.msh.msh_11, ack.msh.msh_12 = "P", codes.HL7_VERSION
    ack.msa.msa_1, ack.msa.msa_2 = code, get(9)
    if reason:
        err = ack.add_segment("ERR")
        err.err_3 = "207^Application internal error^HL70357" if code == "AE" else "200^Unsupported message type^HL70357"
        err.err_4 = "E"
        err.err_8.value = escape_text(reason)
    return _finish(ack)
