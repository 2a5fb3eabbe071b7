"""How long to wait before trying again: the one backoff of rpm, in its two shapes.

- :func:`backoff_s`, full jitter (aiomqtt's shape): a delay drawn uniformly from 0 to
  ``1.5 ** attempt`` seconds, capped. For retries of one process against a service (InfluxDB
  writes, Kafka sends, webhook and FHIR deliveries, HL7 sends): spread out, sometimes immediate.
- :func:`equal_jitter_backoff_s`: half of an exponential ceiling fixed, half random. For a fleet
  reconnecting to one broker (the edge agents after a broker restart): never in step, and never
  sooner than half the ceiling, so a recovering broker is not hammered.
"""

from __future__ import annotations

import random
from typing import Final

DEFAULT_CAP_S: Final = 10.0
_MAX_EXPONENT: Final = 10


def backoff_s(attempt: int, *, cap_s: float = DEFAULT_CAP_S, rng: random.Random | None = None) -> float:
    """Delay after failed ``attempt`` (1-based): uniform over ``[0, 1.5 ** attempt]`` s, capped at ``cap_s``."""
    uniform = rng.uniform if rng is not None else random.uniform
    return float(min(cap_s, uniform(0, 1.5 ** min(_MAX_EXPONENT, attempt))))


def equal_jitter_backoff_s(attempt: int, *, first_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry ``attempt`` (0 = the first): ceiling ``first_s * 2 ** attempt`` (capped);
    half of it fixed, half uniformly random."""
    ceiling = min(cap_s, first_s * 2 ** min(attempt, 30))
    uniform = rng.uniform if rng is not None else random.uniform
    return float(ceiling / 2 + uniform(0, ceiling / 2))
