"""Delivery over MLLP against a real listener (hl7apy's MLLPServer validating with hl7apy):
ACK waits, AE retried with backoff, AR dead-lettered with its reason and never retried, a dead
endpoint given up on; and ``rpm hl7 send`` end to end from InfluxDB, with receipts in InfluxDB
and dead letters on Kafka (Tansu)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from hl7out.messages import AlertChange, Header, Observation, VitalsReport, encode_alert, encode_vitals
from hl7out.sender import AttemptRecord, Endpoint, Outgoing, Policy, Sender
from rpm_app.services import Stack
from rpm_core import topics
from rpm_core.host import free_port
from tests.hl7out.listener import Script, listening
from tests.people.support import alert_row, write_lines
from tests.support.influx import rows
from tests.support.kafka import read_all
from tests.support.procs import rpm_argv, rpm_env

T0 = 1764100000.0


def _vitals(patient: str = "p1", value: float = 70.0) -> Outgoing:
    cid, text = encode_vitals(VitalsReport(patient, T0, (Observation("heart_rate", "hrs-1", T0, value),)),
                              header=Header(), now_s=T0)
    return Outgoing(cid, text, patient, "vitals")


def _alert() -> Outgoing:
    change = AlertChange("a1", "p1", "glucose_low", "critical", "glucose", "raised", T0, "Glucose low", 50.0)
    cid, text = encode_alert(change, header=Header(), now_s=T0)
    return Outgoing(cid, text, "p1", "alert", "glucose_low", "critical", "a1")


class Run:
    """A sender whose sleeps are recorded (not slept) and whose dead letters are kept."""

    def __init__(self, endpoint: Endpoint, *, retries: int = 3, timeout_s: float = 30.0) -> None:
        self.attempts: list[AttemptRecord] = []
        self.dead: list[tuple[Outgoing, str]] = []
        self.sleeps: list[float] = []
        self.sender = Sender(endpoint=endpoint, policy=Policy(timeout_s=timeout_s, retries=retries, backoff_max_s=5.0),
                             on_attempt=self.attempts.append, deadletter=self._dead, sleep=self._sleep)

    async def _dead(self, message: Outgoing, reason: str) -> None:
        self.dead.append((message, reason))

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


async def test_aa_delivers_each_message_in_order() -> None:
    script = Script()
    with listening(script) as (host, port):
        run = Run(Endpoint(host, port))
        messages = [_vitals(value=70.0 + i) for i in range(3)]
        receipts = [await run.sender.send(m) for m in messages]
        await run.sender.close()
    assert [r.outcome for r in receipts] == ["delivered"] * 3
    assert [m.msh.msh_10.value for m in script.accepted] == [m.control_id for m in messages]
    assert [a.outcome for a in run.attempts] == ["delivered"] * 3 and not run.dead and not run.sleeps


async def test_ae_is_retried_with_backoff_and_the_same_control_id() -> None:
    script = Script(errors_before_ok=2)
    with listening(script) as (host, port):
        run = Run(Endpoint(host, port), retries=3)
        receipt = await run.sender.send(_vitals())
        await run.sender.close()
    assert receipt.outcome == "delivered" and receipt.attempts == 3
    assert script.answers == ["AE", "AE", "AA"]
    assert len({r.split("\r")[0].split("|")[9] for r in script.raw}) == 1, "one control id on every retry"
    assert [a.outcome for a in run.attempts] == ["failed", "failed", "delivered"]
    assert "database busy" in run.attempts[0].detail
    assert len(run.sleeps) == 2 and all(0 <= s <= 5.0 for s in run.sleeps)


async def test_ar_is_dead_lettered_with_its_reason_and_never_retried() -> None:
    script = Script(reject={"ORU^R40^ORU_R01": "alerts are not accepted on this interface"})
    with listening(script) as (host, port):
        run = Run(Endpoint(host, port), retries=5)
        receipt = await run.sender.send(_alert())
        after = await run.sender.send(_vitals())
        await run.sender.close()
    assert receipt.outcome == "deadlettered" and receipt.attempts == 1
    assert script.answers == ["AR", "AA"], "AR once, not retried; the next message still goes"
    [(message, reason)] = run.dead
    assert message.kind == "alert" and "alerts are not accepted on this interface" in reason and "(AR)" in reason
    assert after.outcome == "delivered"


async def test_an_endpoint_that_is_down_is_given_up_on_and_dead_lettered() -> None:
    run = Run(Endpoint("127.0.0.1", free_port()), retries=2)
    receipt = await run.sender.send(_vitals())
    assert receipt.outcome == "deadlettered" and receipt.attempts == 3
    assert [a.outcome for a in run.attempts] == ["failed"] * 3 and "cannot connect" in run.attempts[0].detail
    assert run.dead and run.dead[0][1].startswith("gave up after 3 attempts")


async def test_a_listener_that_never_answers_times_out_and_the_next_attempt_reconnects() -> None:
    connections = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read()  # never answers; returns when the sender hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        run = Run(Endpoint("127.0.0.1", port), retries=1, timeout_s=0.5)
        receipt = await run.sender.send(_vitals())
        await run.sender.close()
    finally:
        server.close()
        await server.wait_closed()
    assert receipt.outcome == "deadlettered" and "no ACK within 0.5 s" in receipt.detail
    assert connections == 2, "a connection that timed out is not reused"


@pytest.mark.services
def test_rpm_hl7_send_from_influxdb_with_receipts_and_dead_letters(stack: Stack, tmp_path: Path) -> None:
    s = stack.settings
    url, db = s.influx_url or "", s.influx_db
    t0 = (int(time.time()) // 3600 - 2) * 3600  # two hours ago, on a 5-minute boundary
    lines = [f"vitals,device=hrs-ph,metric=heart_rate,patient=ph,source=ble value={60 + i % 20} {(t0 + i) * 1000}"
             for i in range(900)]  # 15 minutes at 1 Hz → three 5-minute means
    lines += [f"vitals,device=cgm-ph,metric=glucose,patient=ph,source=ble value={v} {(t0 + 60 + k * 300) * 1000}"
              for k, v in enumerate([120.0, 52.0, 49.0])]
    lines += [alert_row("ph", "glucose_low", "critical", "raised", t0 + 700, alert="g1", metric="glucose", value=49.0,
                        message="Glucose below 54 mg/dL"),
              alert_row("ph", "glucose_low", "critical", "acknowledged", t0 + 800, alert="g1", metric="glucose",
                        by="Ana Lima")]
    write_lines(url, db, lines)
    script = Script(reject={"ORU^R40^ORU_R01": "alerts go to the nurse-call gateway"}, errors_before_ok=1)
    with listening(script) as (host, port):
        done = subprocess.run(rpm_argv("hl7", "send", "--to", f"mllp://{host}:{port}", "--patient", "ph",
                                       "--since", str(t0), "--until", str(t0 + 3600), "--retries", "2",
                                       "--receiving-app", "EPIC"),
                              env=rpm_env(stack, mqtt_user=None), capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "3 of 5 messages delivered" in done.stdout and "2 dead-lettered" in done.stdout
    assert done.stderr.count("not delivered: alert") == 2
    vitals = script.accepted
    assert len(vitals) == 3 and {m.msh.msh_5.value for m in vitals} == {"EPIC"}
    obx = [[o.obx for o in m.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION[0].ORU_R01_OBSERVATION]
           for m in vitals]
    assert [[o.obx_3.value.split("^")[0] for o in group] for group in obx] == [["8867-4", "99504-3"]] * 3
    assert [float(group[0].obx_5.value) for group in obx] == [69.5] * 3, "mean of 60..79 over each 5 minutes"
    assert [group[1].obx_5.value for group in obx] == ["120", "52", "49"]
    assert [group[1].obx_8.value for group in obx] == ["", "LL", "LL"], "flags from alert_rules.yaml"

    dead = [orjson.loads(v) for v in asyncio.run(read_all(stack.settings.kafka_bootstrap(), topics.DEADLETTER))]
    assert [d["stage"] for d in dead] == ["hl7", "hl7"]
    assert all("alerts go to the nurse-call gateway" in d["reason"] for d in dead)
    assert "ORU^R40" in dead[0]["payload"] and "MDC_ATTR_EVENT_PHASE" in dead[0]["payload"]
    assert dead[0]["source"] == f"mllp://{host}:{port}"
    from rpm_core.audit import decode_entry, read_log

    (sent,) = [b for b in (decode_entry(r.value) for r in asyncio.run(read_log(s.kafka_bootstrap())))
               if b["action"] == "export.hl7"]
    assert (sent["patient"], sent["target"], sent["detail"]["delivered"]) == ("ph", f"mllp://{host}:{port}", 3)

    receipts = rows(url, db, 'SELECT * FROM "notifications" WHERE "channel" = \'hl7\'')
    by_outcome: dict[str, int] = {}
    for r in receipts:
        by_outcome[r["outcome"]] = by_outcome.get(r["outcome"], 0) + 1
    assert by_outcome == {"failed": 3, "delivered": 3, "deadlettered": 2}, "AE once per vitals message, then AA"
    assert {r["kind"] for r in receipts} == {"hl7-vitals", "hl7-alert"}


@pytest.mark.services
def test_rpm_hl7_send_sets_aside_an_alert_it_cannot_encode_and_sends_the_rest(stack: Stack) -> None:
    """One alert HL7 cannot carry (a rule name of 1,000 characters; hl7apy refuses it) aborted the whole
    export with nothing sent. Now it is reported with its reason, dead-lettered with the row as JSON,
    the rest is delivered, and the exit status and the summary say one could not be encoded."""
    s = stack.settings
    url, db = s.influx_url or "", s.influx_db
    t0 = (int(time.time()) // 3600 - 2) * 3600
    lines = [f"vitals,device=hrs-px,metric=heart_rate,patient=px,source=ble value=70 {(t0 + i) * 1000}"
             for i in range(60)]
    lines += [alert_row("px", "x" * 1000, "warning", "raised", t0 + 100, alert="bad1"),
              alert_row("px", "tachycardia", "warning", "raised", t0 + 200, alert="good1", value=130.0)]
    write_lines(url, db, lines)
    script = Script()
    with listening(script) as (host, port):
        done = subprocess.run(rpm_argv("hl7", "send", "--to", f"mllp://{host}:{port}", "--patient", "px",
                                       "--since", str(t0), "--until", str(t0 + 3600)),
                              env=rpm_env(stack, mqtt_user=None), capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "2 of 3 messages delivered" in done.stdout and "1 could not be encoded" in done.stdout, done.stdout
    assert done.stderr.count("not encodable: alert bad1 of px: cannot be encoded as HL7") == 1, done.stderr[-2000:]
    assert sorted(m.msh.msh_9.value for m in script.accepted) == ["ORU^R01^ORU_R01", "ORU^R40^ORU_R01"]
    [dead] = [orjson.loads(v) for v in asyncio.run(read_all(s.kafka_bootstrap(), topics.DEADLETTER))]
    assert dead["stage"] == "hl7" and "cannot be encoded as HL7" in dead["reason"]
    assert orjson.loads(dead["payload"])["alert_id"] == "bad1"


async def test_an_ack_of_another_message_or_junk_is_not_taken_for_ours() -> None:
    """A peer answering with an ACK for another control id (or bytes outside a frame) is out of step:
    the connection is dropped and the message retried, never counted as delivered."""
    from hl7out.messages import build_ack

    other = _vitals(value=99.0)
    answers = [("ack", build_ack(other.text, "AA")), ("junk", "")]

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\x1c\x0d")
        kind, text = answers.pop(0) if answers else ("none", "")
        writer.write(b"\x0b" + text.encode() + b"\x1c\x0d" if kind == "ack" else b"HTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        run = Run(Endpoint("127.0.0.1", port), retries=1, timeout_s=30.0)
        receipt = await run.sender.send(_vitals(value=70.0))
        await run.sender.close()
    finally:
        server.close()
        await server.wait_closed()
    assert receipt.outcome == "deadlettered"
    assert f"not '{_vitals(value=70.0).control_id}'" in run.attempts[0].detail
    assert "outside an MLLP frame" in run.attempts[1].detail
