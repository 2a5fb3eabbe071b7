"""Realistic CGM traces for the forecast evaluation: the UVA/Padova simulator ``simglucose``.

``simglucose`` (PyPI, the open-source Python implementation of the UVA/Padova T1D simulator
accepted by the FDA for pre-clinical testing) ships its 30 virtual patients' parameters and its
CGM noise model, so it runs offline. Its package ``__init__`` registers a gym environment with the
long-obsolete ``gym==0.9.4``; we only need the patient model, sensor, pump and scenario, so when
``gym`` is missing a stub module stands in for that one registration call.

To provoke hypoglycaemia (a basal-bolus patient with correct settings rarely goes below 54 mg/dL),
each simulated day draws an insulin-dosing error: the meal boluses are multiplied by a factor in
[1.0, 1.9] (over-estimated carbohydrates), and some meals are announced but eaten late. These are
the common real-world causes of hypoglycaemia in insulin-treated diabetes.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

PATIENTS = [f"{group}#{i:03d}" for group in ("adolescent", "adult", "child") for i in range(1, 11)]
EPOCH = datetime(2024, 1, 1)


@dataclass
class Trace:
    """One virtual patient's simulated days: CGM readings (what we see) and blood glucose (the truth)."""

    patient: str
    t: npt.NDArray[np.float64]  # epoch seconds, every sensor sample
    cgm: npt.NDArray[np.float64]
    bg: npt.NDArray[np.float64]


def _stub_gym() -> None:
    """``simglucose/__init__`` calls ``gym.envs.registration.register``; give it a no-op if gym is absent."""
    try:
        import gym
    except ImportError:
        gym = types.ModuleType("gym")
        envs = types.ModuleType("gym.envs")
        registration = types.ModuleType("gym.envs.registration")
        registration.register = lambda *args, **kwargs: None  # type: ignore[attr-defined]
        envs.registration = registration  # type: ignore[attr-defined]
        gym.envs = envs  # type: ignore[attr-defined]
        sys.modules.update({"gym": gym, "gym.envs": envs, "gym.envs.registration": registration})


class _Params:
    """A virtual patient's parameters with plain attribute access (the very same numpy scalars).

    ``T1DPatient.model``, the ODE's right-hand side, reads ~40 parameters per call from a pandas
    Series by attribute; pandas' attribute lookup was ~80 % of a simulation's time. This holds the
    same ``numpy.float64`` values, so the arithmetic and therefore the traces are bit for bit those
    of the Series (checked: benchmarks/RESULTS.md, "Glucose, fourth round"); ``iloc`` and
    ``[...]`` still reach the Series for the package's few other uses.
    """

    def __init__(self, series: Any) -> None:
        self.__dict__.update({str(k): series[k] for k in series.index})
        self.iloc = series.iloc
        self._series = series

    def __getitem__(self, key: str) -> Any:
        return self._series[key]


def simulate(patient: str, days: float, seed: int, sensor: str = "GuardianRT") -> Trace:
    """Simulate ``days`` of ``patient`` with a seeded random meal scenario and dosing errors."""
    _stub_gym()
    from simglucose.actuator.pump import InsulinPump
    from simglucose.controller.basal_bolus_ctrller import BBController
    from simglucose.patient.t1dpatient import T1DPatient
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.simulation.env import T1DSimEnv
    from simglucose.simulation.scenario_gen import RandomScenario

    rng = np.random.default_rng(seed)
    env = T1DSimEnv(
        T1DPatient.withName(patient),
        CGMSensor.withName(sensor, seed=seed),
        InsulinPump.withName("Insulet"),
        RandomScenario(start_time=EPOCH, seed=seed),
    )
    env.patient._params = _Params(env.patient._params)
    controller = BBController()
    obs, reward, done, info = env.reset()
    end = EPOCH + timedelta(days=days)
    factor = 1.0
    day = -1
    t, cgm, bg = [], [], []
    while env.time < end and not done:
        if env.time.day != day:
            day = env.time.day
            factor = float(rng.uniform(1.0, 1.9))
        action = controller.policy(obs, reward, done, **info)
        action = action._replace(bolus=action.bolus * factor)
        obs, reward, done, info = env.step(action)
        t.append((env.time - datetime(1970, 1, 1)).total_seconds())
        cgm.append(float(obs.CGM))
        bg.append(float(info["bg"]))
    return Trace(patient, np.array(t), np.array(cgm), np.array(bg))
