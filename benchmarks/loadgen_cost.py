"""CPU cost of the end-to-end benchmark's load generator per reading, against real Mosquitto (issue 20).

    .venv/bin/python -m benchmarks.loadgen_cost [--rates 25000,40000] [--duration 20] [--rounds 2]
                                                [--baseline REV] [--out FILE]

Starts Mosquitto as ``benchmarks.e2e`` does (``rpm_app.services``: authentication, ACLs, the client
id plugin, persistence), with one subscriber to every patient's readings (``mosquitto_sub``, QoS 1,
as the bridge user; without a subscriber Mosquitto answers every PUBLISH with reason code 16 and the
generator re-publishes), then runs :func:`benchmarks.loadgen.run_load` at each of ``--rates``
readings/s for ``--duration`` seconds, ``--rounds`` times. With ``--baseline REV`` the ``benchmarks/loadgen.py`` of
git revision ``REV`` is loaded beside the current one and the two run alternately in the same
session (baseline first in each round), at the same offered loads.

Per run, two CPU figures of the generator processes (the parent, which only collects, is left out):

- ``steady``: CPU time of the generator processes (``psutil``, user + system, all threads) between
  the first progress report at least 2 s into the load and the last one, per reading published in
  that window — what ``benchmarks.e2e`` reports as ``loadgen`` minus start-up and drain;
- ``whole``: every generator process's CPU from spawn to exit (``RUSAGE_CHILDREN``: start-up,
  imports, connecting, the load and the drain) per reading published.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from benchmarks import loadgen
from benchmarks.e2e import machine_info
from rpm_app.services import MqttCredentials, start_mosquitto
from rpm_core.mqtt_users import BRIDGE_USER, SIMULATOR_USER
from rpm_core.settings import bound_client_id
from rpm_core.wire import readings_topic

WARMUP_S = 2.0


def load_revision(rev: str, tmp: Path) -> ModuleType:
    """``benchmarks/loadgen.py`` of git revision ``rev`` as module ``_loadgen_baseline`` (importable by
    the generator's spawned processes: ``tmp`` goes on ``sys.path``, which spawn hands to children)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(root), "show", f"{rev}:benchmarks/loadgen.py"], check=True,
                            capture_output=True).stdout
    (tmp / "_loadgen_baseline.py").write_bytes(source)
    if str(tmp) not in sys.path:
        sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location("_loadgen_baseline", tmp / "_loadgen_baseline.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_loadgen_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _generator_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            text = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing" in text and "resource_tracker" not in text:
            out.append(p)
    return out


@dataclass
class _Probe:
    """Samples the generator processes' CPU at every progress report."""

    procs: dict[int, psutil.Process] = field(default_factory=dict)
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # (time, published, cpu s)

    def __call__(self, t: float, published: int, _acked: int, _backlog: int) -> None:
        for p in _generator_processes():
            self.procs.setdefault(p.pid, p)
        cpu = 0.0
        for p in self.procs.values():
            try:
                times = p.cpu_times()
            except psutil.Error:
                return  # a process ended: the window stops at the previous sample
            cpu += times.user + times.system
        self.samples.append((time.time(), published, cpu))


def run_once(module: ModuleType, mqtt_url: str, rate: float, duration: float) -> dict[str, Any]:
    """One load through ``module``'s generator; its CPU per reading."""
    probe = _Probe()
    started: list[float] = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    spec = module.LoadSpec(mqtt_url=mqtt_url, rate=rate, duration_s=duration, prefix="lg", probe_every=50)
    res = module.run_load(spec, on_progress=probe, on_start=started.append)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    whole = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    t0 = started[0] if started else 0.0
    window = [s for s in probe.samples if s[0] >= t0 + WARMUP_S]
    steady = None
    if len(window) >= 2 and window[-1][1] > window[0][1]:
        (ta, pa, ca), (tb, pb, cb) = window[0], window[-1]
        steady = {"seconds": round(tb - ta, 2), "readings": pb - pa, "rate": round((pb - pa) / (tb - ta)),
                  "cpu_s": round(cb - ca, 3), "us_per_reading": round(1e6 * (cb - ca) / (pb - pa), 2),
                  "cores": round((cb - ca) / (tb - ta), 3)}
    return {"offered": res.offered, "published": res.published, "acked": res.acked_total,
            "messages": res.messages, "rejected": res.rejected_messages, "failed": res.failed_messages,
            "kept_up": res.kept_up, "max_lag_s": round(res.max_lag_s, 3), "max_backlog": res.max_backlog,
            "publish_rate": round(res.publish_rate), "errors": res.errors, "processes": res.processes,
            "whole_cpu_s": round(whole, 3),
            "whole_us_per_reading": round(1e6 * whole / res.published, 2) if res.published else None,
            "steady": steady, "load_average_before": load_before, "load_average_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="25000,40000", help="offered readings/s, comma-separated")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", help="git revision whose loadgen.py runs alternately with this one")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    sub_bin = shutil.which("mosquitto_sub")
    if sub_bin is None:
        print("mosquitto_sub not found (apt-get install mosquitto-clients)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rpm-loadgen-cost-") as tmp:
        subjects: list[tuple[str, ModuleType]] = []
        if args.baseline:
            subjects.append((f"baseline {args.baseline}", load_revision(args.baseline, Path(tmp))))
        subjects.append(("current", loadgen))
        creds = MqttCredentials.generate([BRIDGE_USER, SIMULATOR_USER])
        svc = start_mosquitto(Path(tmp) / "mosquitto", creds=creds)
        sink = subprocess.Popen(
            [sub_bin, "-h", svc.host, "-p", str(svc.port), "-V", "mqttv5", "-q", "1",
             "-u", BRIDGE_USER, "-P", creds.passwords[BRIDGE_USER].get(),
             "-i", bound_client_id(BRIDGE_USER, "loadgen-cost-sink"), "-t", readings_topic("+")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = creds.url(SIMULATOR_USER, svc.host, svc.port)
        report: dict[str, Any] = {
            "command": " ".join(["python", "-m", "benchmarks.loadgen_cost", *(argv or sys.argv[1:])]),
            "machine": machine_info(), "runs": []}
        print(f"{report['machine']['cpu']}, {report['machine']['cores']} cores, load average {os.getloadavg()}",
              flush=True)
        try:
            loadgen.wait_for_subscriber(url, patient="lg-ready")
            for rnd, rate, (name, module) in itertools.product(range(args.rounds), rates, subjects):
                run = run_once(module, url, rate, args.duration) | {"subject": name, "round": rnd, "rate": rate}
                report["runs"].append(run)
                st = run["steady"] or {}
                print(f"round {rnd} {rate:>7,.0f}/s {name:<16} steady {st.get('us_per_reading')} µs/reading "
                      f"({st.get('cores')} cores at {st.get('rate')}/s), whole {run['whole_us_per_reading']} "
                      f"µs/reading; published {run['published']:,} acked {run['acked']:,} kept up "
                      f"{run['kept_up']} lag {run['max_lag_s']} s; load {run['load_average_before']:.2f}"
                      f"{' ERRORS ' + str(run['errors']) if run['errors'] else ''}", flush=True)
        finally:
            sink.terminate()
            sink.wait(10)
            svc.stop()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
