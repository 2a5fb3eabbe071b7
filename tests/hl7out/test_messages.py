"""The HL7 codec: what we build validates against HL7 2.6 (hl7apy strict) and says what it should."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hl7out.errors import AckError, Hl7EncodeError, MllpError
from hl7out.messages import (
    AlertChange,
    Header,
    Observation,
    VitalsReport,
    build_ack,
    encode_alert,
    encode_vitals,
    escape_text,
    parse,
    parse_ack,
    unescape_text,
)
from hl7out.mllp import END, START, FrameReader, frame

T0 = 1764100000.0
HEADER = Header(receiving_app="EPIC", receiving_facility="WARD7")


def _obx(msg: object) -> list[object]:
    order = msg.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION[0]  # type: ignore[attr-defined]
    return [o.obx for o in order.ORU_R01_OBSERVATION]


def test_vitals_are_an_oru_r01_with_loinc_codes_and_ucum_units() -> None:
    report = VitalsReport("p0001", T0, (
        Observation("heart_rate", "hrs-1", T0, 72.4, n=300, interpretation=""),
        Observation("glucose", "cgm-1", T0 + 10, 48.0, interpretation="LL"),
        Observation("glucose", "bgm-1", T0 + 20, 51.0),
    ))
    cid, text = encode_vitals(report, header=HEADER, now_s=T0 + 60)
    msg = parse(text)
    assert msg.msh.msh_9.value == "ORU^R01^ORU_R01" and msg.msh.msh_10.value == cid
    assert msg.msh.msh_5.value == "EPIC" and msg.msh.msh_12.value == "2.6"
    pid = msg.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.pid
    assert pid.pid_3.value == "p0001^^^RPM^PI"
    obx = _obx(msg)
    assert [o.obx_3.value for o in obx] == ["8867-4^Heart rate^LN",
                                           "99504-3^Glucose [Mass/volume] in Interstitial fluid^LN",
                                           "41653-7^Glucose [Mass/volume] in Capillary blood by Glucometer^LN"]
    assert [o.obx_5.value for o in obx] == ["72.4", "48", "51"]
    assert [o.obx_6.value for o in obx] == ["/min^/min^UCUM", "mg/dL^mg/dL^UCUM", "mg/dL^mg/dL^UCUM"]
    assert obx[1].obx_8.value == "LL" and obx[0].obx_8.value == ""
    assert obx[1].obx_14.value == "20251125194650.000+0000"
    assert obx[1].obx_18.value == "cgm-1^RPM"


EXPECTED_FACETS = {"raised": ("start", "active", "enabled"), "escalated": ("escalate", "active", "enabled"),
                   "acknowledged": ("update", "active", "alert-acknowledged"),
                   "cleared": ("end", "inactive", "enabled")}


@pytest.mark.parametrize(("state", "severity", "kind"),
                         list(itertools.product(EXPECTED_FACETS, ("critical", "warning", "info"),
                                                ("clinical", "technical"))))
def test_alerts_are_pcd04_report_alerts_with_acm_facets(state: str, severity: str, kind: str) -> None:
    change = AlertChange(alert_id="a1", patient="p0001", rule="glucose_low", severity=severity, metric="glucose",
                         state=state, time_s=T0, message="Glucose below 54 mg/dL", value=49.0,  # type: ignore[arg-type]
                         by="Ana Lima" if state == "acknowledged" else None, kind=kind, device="cgm-1")  # type: ignore[arg-type]
    cid, text = encode_alert(change, header=HEADER, now_s=T0)
    msg = parse(text)
    assert msg.msh.msh_9.value == "ORU^R40^ORU_R01"
    assert msg.msh.msh_21.value.startswith("IHE_PCD_ACM_001")
    order = msg.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION[0]
    assert order.obr.obr_4.value == "196616^MDC_EVT_ALARM^MDC" and order.obr.obr_3.value == "a1^RPM"
    obx = _obx(msg)
    assert obx[0].obx_3.value == "glucose_low^glucose_low^99RPM"
    assert obx[0].obx_5.value == "Glucose below 54 mg/dL"
    flags = [f.value for f in obx[0].children.get("OBX_8")]
    assert flags == [{"critical": "PH", "warning": "PM", "info": "PL"}[severity],
                     "ST" if kind == "technical" else "SP"]
    assert obx[1].obx_3.value.startswith("99504-3^") and obx[1].obx_5.value == "49"
    facets = {o.obx_3.value.split("^")[1]: o.obx_5.value for o in obx[2:]}
    assert (facets["MDC_ATTR_EVENT_PHASE"], facets["MDC_ATTR_ALARM_STATE"],
            facets["MDC_ATTR_ALARM_INACTIVATION_STATE"]) == EXPECTED_FACETS[state]
    if state == "acknowledged":
        assert obx[-1].obx_16.value == "^Ana Lima"
    # the same change always gets the same control id (a retry is recognisable), another state another
    assert encode_alert(change, header=HEADER, now_s=T0 + 99)[0] == cid


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # hl7apy validation is slow
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("|^&~\\\r\n"),
               max_size=200))
def test_free_text_cannot_break_out_of_its_field(text: str) -> None:
    change = AlertChange(alert_id="a1", patient="p0001", rule="tachycardia", severity="warning", metric="heart_rate",
                         state="raised", time_s=T0, message="x" + text, by=None)
    _cid, er7 = encode_alert(change, header=HEADER, now_s=T0)
    msg = parse(er7)
    assert len(er7.split("\r")) == len(encode_alert(
        AlertChange("a1", "p0001", "tachycardia", "warning", "heart_rate", "raised", T0, "x"), header=HEADER,
        now_s=T0)[1].split("\r"))
    sent = "x" + text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    assert unescape_text(_obx(msg)[0].obx_5.value) == sent


def test_escape_round_trip_of_every_delimiter() -> None:
    text = "a|b^c&d~e\\f \\F\\ literal"
    assert escape_text(text) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f \\E\\F\\E\\ literal"
    assert unescape_text(escape_text(text)) == text


def test_bad_input_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(Hl7EncodeError):
        VitalsReport("p 1", T0, (Observation("heart_rate", "hrs-1", T0, 70.0),))
    with pytest.raises(Hl7EncodeError):
        VitalsReport("p1", T0, ())
    with pytest.raises(Hl7EncodeError):
        Observation("heart_rate", "hrs-1", T0, float("nan"))
    with pytest.raises(Hl7EncodeError):
        Observation("heart_rate", "hrs|1", T0, 70.0)


def test_acks_are_checked_against_the_message() -> None:
    cid, text = encode_vitals(VitalsReport("p1", T0, (Observation("heart_rate", "hrs-1", T0, 70.0),)), header=HEADER,
                              now_s=T0)
    ack = parse_ack(build_ack(text, "AR", "unknown patient | p1"), control_id=cid)
    assert (ack.code, ack.control_id, ack.text) == ("AR", cid, "unknown patient | p1")
    assert parse_ack(build_ack(text, "AA"), control_id=cid).code == "AA"
    with pytest.raises(AckError, match="not 'other'"):
        parse_ack(build_ack(text, "AA"), control_id="other")
    with pytest.raises(AckError):
        parse_ack("garbage", control_id=cid)
    commit = build_ack(text, "AA").replace("MSA|AA|", "MSA|CR|")
    assert parse_ack(commit, control_id=cid).code == "AR", "enhanced-mode commit reject means the same"


def test_mllp_framing_whole_split_and_hostile() -> None:
    reader = FrameReader(max_bytes=10)
    data = frame("ABC") + frame("0123456789")
    assert [m for b in data for m in reader.feed(bytes([b]))] == ["ABC", "0123456789"], "byte by byte"
    with pytest.raises(MllpError, match="longer than 10"):
        FrameReader(max_bytes=10).feed(START + b"0123456789X")
    with pytest.raises(MllpError, match="outside an MLLP frame"):
        FrameReader().feed(b"MSH|" + END)
    with pytest.raises(MllpError):
        frame("a\x1cb")
    assert FrameReader().feed(START + "é".encode() + END) == ["é"]


# The property above leaves out control characters and long texts; so did the codec. An alert text with
# MLLP's 0x0B/0x1C failed every attempt at framing; one that escaping grows past hl7apy's 999 characters
# (400 "&" are 1,200) could not be built, and `rpm hl7 follow` stopped on it at every restart.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from("|^&~\\\r\n\x0b\x1c\x85\u2028"),
               min_size=300, max_size=1500))
def test_any_text_of_any_length_is_framed_and_stays_in_its_field(text: str) -> None:
    change = AlertChange(alert_id="a1", patient="p0001", rule="tachycardia", severity="warning", metric="heart_rate",
                         state="raised", time_s=T0, message=text, by=None)
    _cid, er7 = encode_alert(change, header=HEADER, now_s=T0)
    assert FrameReader().feed(frame(er7)) == [er7]
    value = _obx(parse(er7))[0].obx_5.value
    assert len(value) <= 999 and len(er7.split("\r")) == 7  # no value: no OBX of it


@pytest.mark.parametrize("text", ["&" * 400, "a\x1c\rMSH|^~\\&|EVIL", "x\x0by", "line\u2028OBX|9|ST", "é" * 1200])
def test_texts_that_grow_or_hold_framing_characters_are_sent(text: str) -> None:
    change = AlertChange("a1", "p0001", "tachycardia", "warning", "heart_rate", "raised", T0, text)
    _cid, er7 = encode_alert(change, header=HEADER, now_s=T0)
    frame(er7)  # MllpError before the fix
    sent = unescape_text(_obx(parse(er7))[0].obx_5.value)
    assert "\x1c" not in sent and "\x0b" not in sent and sent[0] == text[0]


@pytest.mark.parametrize("time_s", [1e20, -1e12, float("inf"), 0.0])
def test_an_alert_time_out_of_range_is_refused_as_an_encoding_error(time_s: float) -> None:
    with pytest.raises(Hl7EncodeError):
        AlertChange("a1", "p0001", "tachycardia", "warning", "heart_rate", "raised", time_s, "x")


def test_an_alert_hl7apy_refuses_is_an_encoding_error() -> None:
    change = AlertChange("a" * 1000, "p0001", "r" * 1000, "warning", "heart_rate", "raised", T0, "x")
    with pytest.raises(Hl7EncodeError, match="cannot be encoded"):
        encode_alert(change, header=HEADER, now_s=T0)


def test_a_line_break_in_a_tag_cannot_add_a_point_to_influxdb() -> None:
    """The receipts' rule and severity tags come from rpm.alerts: a rule with a line break wrote a second,
    forged point (a "delivered" receipt) into the notifications measurement; the shared escape_tag too."""
    import time

    from hl7out.receipts import attempt_line
    from hl7out.sender import AttemptRecord, Outgoing
    from rpm_core.lineprotocol import point_line

    forged = "r\nnotifications,channel=hl7,outcome=delivered,patient=p0002 attempt=1i 1764100000000\r"
    message = Outgoing("c1", "MSH|", "p0001", "alert", forged, "critical\nx", "a1")
    line = attempt_line(AttemptRecord(message, 1, "failed", "no ACK", time.time()), recipient="mllp://h:1")
    assert "\n" not in line and "\r" not in line and line.startswith("notifications,")
    point = point_line("alerts", {"rule": forged}, {"value": 1.0}, 1)
    assert "\n" not in point and "\r" not in point
