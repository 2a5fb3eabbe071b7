"""Stage capacities: how fast the bridge and the worker each drain a backlog, and their CPU per reading.

Each stage is measured alone, on a backlog prepared in front of it, so nothing else competes
for the two cores while it runs:

1. ``bridge``: N MQTT messages (10 readings each) wait in Mosquitto for the bridge's persistent
   session (the bridge subscribed once, then stopped); the bridge is started and drains them to
   Kafka ``rpm.readings``. Rate = readings / (first to last message forwarded).
2. ``worker``: the same readings now wait in Kafka; a worker is started and drains them into
   InfluxDB. Rate = readings / (first to last point written).

CPU per reading is the process's user+system CPU time over the drain divided by the readings;
it is what a stage costs regardless of how the cores are shared. With ``--profile`` py-spy samples each
stage while it drains and writes its collapsed stacks (``<stage>.collapsed.txt``, the input of any
flame-graph tool) next to the results.

    python -m benchmarks.stages [--messages 30000] [--profile] [--out benchmarks/results/stages.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.e2e import machine_info
from rpm_app.services import Stack, http_ok, influx_query, start_stack, wait_until
from rpm_core.host import free_port
from rpm_core.mqtt_client import mqtt_client
from rpm_core.mqtt_users import BRIDGE_USER, SIMULATOR_USER
from rpm_core.settings import MqttSettings, Settings
from rpm_core.wire import encode_readings, readings_topic

SAMPLES_PER_MESSAGE = 10


def messages(n: int, patients: int) -> list[tuple[str, bytes]]:
    """``n`` messages of 10 readings (5 heart rates, 5 RR intervals), round robin over patients."""
    per_patient = -(-n // patients)
    t0 = float(int(time.time()) - per_patient * 5 - 60)
    out = []
    for j in range(per_patient):
        for i in range(patients):
            if len(out) == n:
                return out
            pid = f"b{i:05d}"
            base = t0 + j * 5
            samples = [["heart_rate", base + s, 70.0 + (i + s) % 7] for s in range(5)]
            samples += [["rr_interval", base + s + 0.5, 0.8 + 0.01 * s] for s in range(5)]
            out.append((readings_topic(pid), encode_readings(patient=pid, device=f"hrs-{pid}", source="sim",
                                                             samples=samples)))
    return out


def publish_all(url: str, batch: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait for every PUBACK; fail on any reason code but success."""
    s = MqttSettings.from_url(url)
    client = mqtt_client(s, "stages", reconnect=False, max_inflight=1000)
    client.max_queued_messages_set(0)
    done = threading.Semaphore(0)
    bad: list[int] = []

    def on_publish(_c: Any, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        if int(getattr(rc, "value", 0)) != 0:
            bad.append(int(rc.value))
        done.release()

    client.on_publish = on_publish
    client.connect(s.host, s.port)
    client.loop_start()
    for topic, payload in batch:
        client.publish(topic, payload, qos=1)
    for _ in batch:
        if not done.acquire(timeout=120):
            raise TimeoutError("PUBACKs missing")
    client.disconnect()
    client.loop_stop()
    if bad:
        raise RuntimeError(f"{len(bad)} publishes not routed (reason codes {sorted(set(bad))})")


def rpm_env(stack: Stack, **extra: str) -> dict[str, str]:
    s = stack.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update({"RPM_SIGNING_KEYS_FILE": s.signing_keys_file or "",
                "RPM_KAFKA_URL": s.kafka_url or "", "RPM_INFLUX_URL": s.influx_url or "",
                "RPM_INFLUX_DB": s.influx_db, "RPM_RULES": s.rules_path, "PYTHONUNBUFFERED": "1",
                "RPM_MQTT_URL": stack.mqtt_url(BRIDGE_USER)})
    env.update(extra)
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "rpm_app.cli", *args]
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def profiler(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling ``pid`` into a flame graph at ``out`` until SIGINT (None: no profile)."""
    if out is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--format", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def vitals_count(stack: Stack) -> int:
    import urllib.error

    assert stack.settings.influx_url
    try:
        res: Any = influx_query(stack.settings.influx_url, "SELECT count(value) FROM vitals",
                                db=stack.settings.influx_db)
    except urllib.error.HTTPError:  # the database does not exist yet
        return 0
    try:
        return int(res["results"][0]["series"][0]["values"][0][1])
    except (KeyError, IndexError):
        return 0


def drain(progress: Any, total: int, timeout: float, proc: psutil.Process) -> tuple[float, float]:
    """Poll ``progress()`` until it reaches ``total``: (readings/s, CPU µs per reading) between the
    first and the last poll that saw progress (so start-up is not counted)."""
    first = 0.0
    n0 = 0
    cpu0 = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            n = int(progress())
        except OSError:  # not serving yet
            n = 0
        now = time.monotonic()
        if n > 0 and not first:
            first, n0, cpu0 = now, n, cpu_s(proc)
        if n >= total:
            done = n - n0
            if done < total // 2:
                raise RuntimeError(f"the stage moved {n0} of {total} before the first poll: use more messages")
            return done / (now - first), (cpu_s(proc) - cpu0) / done * 1e6
        time.sleep(0.02)
    raise TimeoutError(f"stage did not finish: {progress()} of {total}")


def run(n_messages: int, patients: int, workdir: Path, profile_dir: Path | None) -> dict[str, Any]:
    stack = start_stack(Settings.from_env({}), workdir)
    logs = workdir / "logs"
    logs.mkdir()
    children: list[subprocess.Popen[bytes]] = []

    def spawned(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        children.append(proc)
        return proc

    results: dict[str, Any] = {"messages": n_messages, "readings": n_messages * SAMPLES_PER_MESSAGE,
                               "patients": patients}
    try:
        port = free_port()
        env = rpm_env(stack, RPM_BRIDGE_CLIENT_ID="rpm-bridge-bench")
        bridge_args = ["bridge", "--health-port", str(port), "--client-id", "rpm-bridge-bench"]
        # 1. subscribe once (persistent session), stop: Mosquitto now queues for the bridge
        first = spawned(spawn(bridge_args, env, logs / "bridge.log"))
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=60, what="bridge subscribed")
        stop(first)
        batch = messages(n_messages, patients)
        publish_all(stack.mqtt_url(SIMULATOR_USER), batch)
        readings = n_messages * SAMPLES_PER_MESSAGE
        # 2. bridge drains the MQTT backlog into Kafka
        bridge = spawned(spawn(bridge_args, env, logs / "bridge.log"))
        proc = psutil.Process(bridge.pid)
        spy = profiler(bridge.pid, profile_dir / "bridge.collapsed.txt" if profile_dir else None)
        murl = f"http://127.0.0.1:{port}/metrics"
        rate, cpu = drain(lambda: metric(murl, "rpm_bridge_readings_out_total"), readings, 600, proc)
        finish_profile(spy)
        results["bridge"] = {"readings_per_s": rate, "cpu_us_per_reading": cpu,
                             "records_out": metric(murl, "rpm_bridge_records_out_total")}
        stop(bridge)
        # 3. worker drains Kafka into InfluxDB
        wport = free_port()
        worker = spawned(spawn(["worker", "--data-dir", str(workdir / "worker"), "--web-port", str(wport)],
                       rpm_env(stack), logs / "worker.log"))
        proc = psutil.Process(worker.pid)
        spy = profiler(worker.pid, profile_dir / "worker.collapsed.txt" if profile_dir else None)
        rate, cpu = drain(lambda: vitals_count(stack), readings, 600, proc)
        finish_profile(spy)
        results["worker"] = {"readings_per_s": rate, "cpu_us_per_reading": cpu}
        time.sleep(0.5)
        results["worker"]["written"] = vitals_count(stack)
        stop(worker)
    finally:
        for proc in children:  # also when a stage failed: no orphans
            stop(proc)
        stack.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--patients", type=int, default=1_000)
    ap.add_argument("--profile", action="store_true", help="record py-spy flame graphs of each stage")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/stages.json"))
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rpm-stages-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - Mosquitto runs as its own user and must reach its workdir
        res = run(args.messages, args.patients, Path(tmp), args.out.parent if args.profile else None)
    res["machine"] = machine_info()
    res["command"] = "python -m benchmarks.stages " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
