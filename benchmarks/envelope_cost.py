"""In-process cost of validating one readings message (the bridge's per-message check).

    .venv/bin/python -m benchmarks.envelope_cost          # run it at two commits to compare

Best of 5 × 50,000 calls of ``parse_readings_message`` on a 10-reading message.
"""

from __future__ import annotations

import time

import orjson

from rpm_core.wire import parse_readings_message, readings_topic

NOW = 1_780_000_100.0
CALLS = 50_000


def main() -> None:
    msg = orjson.dumps({"v": 1, "patient": "p1", "device": "hr-1", "source": "ble",
                        "samples": [["heart_rate", NOW - i, 70.0] for i in range(10)]})
    topic = readings_topic("p1")
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(CALLS):
            parse_readings_message(msg, topic=topic, now=NOW)
        best = min(best, (time.perf_counter() - start) / CALLS)
    print(f"parse_readings_message: {best * 1e6:.2f} µs per 10-reading message")


if __name__ == "__main__":
    main()
