"""Schedules against their closed forms: before start, at and between pruning steps, after end."""

from __future__ import annotations

import math

import pytest

from prunekit.errors import ConfigError
from prunekit.schedules import (
    AGP,
    Geometric,
    OneShot,
    Polynomial,
    Steps,
    list_schedules,
    make_schedule,
)


def agp_closed_form(t: int, *, s_i: float, s_f: float, t0: int, dt: int, n: int) -> float:
    """Zhu & Gupta 2017, eq. 1, held constant between pruning steps."""
    if t < t0:
        return 0.0
    t_last = min(t0 + (t - t0) // dt * dt, t0 + n * dt)
    return s_f + (s_i - s_f) * (1 - (t_last - t0) / (n * dt)) ** 3


@pytest.mark.parametrize(
    ("s_i", "s_f", "t0", "dt", "n"), [(0.0, 0.9, 0, 10, 10), (0.2, 0.95, 7, 3, 5)]
)
def test_agp_equals_the_closed_form_at_every_step(s_i, s_f, t0, dt, n):
    schedule = AGP(final=s_f, initial=s_i, start=t0, end=t0 + n * dt, frequency=dt)
    for t in range(t0 + n * dt + 20):
        expected = agp_closed_form(t, s_i=s_i, s_f=s_f, t0=t0, dt=dt, n=n)
        assert schedule.sparsity_at(t) == pytest.approx(expected, abs=1e-12), t
    assert schedule(t0) == pytest.approx(s_i)
    assert schedule(t0 + n * dt) == s_f and schedule(10**6) == s_f


def test_agp_changes_only_at_multiples_of_the_frequency():
    schedule = AGP(final=0.8, start=5, end=45, frequency=10)
    values = schedule.curve(range(60))
    changes = [t for t in range(1, 60) if values[t] != values[t - 1]]
    assert changes == [15, 25, 35, 45]  # start itself keeps s_i = 0
    assert schedule.pruning_steps() == [5, 15, 25, 35, 45]
    assert values[:5] == [0.0] * 5
    assert schedule.final_step == 45


@pytest.mark.parametrize("exponent", [1, 2, 3, 0.5])
def test_polynomial_exponent(exponent):
    schedule = Polynomial(final=0.6, initial=0.1, start=0, end=8, frequency=2, exponent=exponent)
    for t in range(12):
        last = min(t // 2 * 2, 8)
        expected = 0.6 + (0.1 - 0.6) * (1 - last / 8) ** exponent
        assert schedule(t) == pytest.approx(expected, abs=1e-12)


def test_polynomial_end_not_a_multiple_of_the_frequency_ends_at_end():
    schedule = Polynomial(final=0.5, end=10, frequency=4, exponent=1)
    assert schedule.pruning_steps() == [0, 4, 8, 10]
    assert schedule.curve([3, 4, 9, 10]) == pytest.approx([0.0, 0.2, 0.4, 0.5])


def test_oneshot_and_steps_and_geometric():
    assert OneShot(final=0.9).curve([0, 1, 50]) == [0.9, 0.9, 0.9]
    assert OneShot(final=0.9, at=3).curve([2, 3]) == [0.0, 0.9]
    assert Steps(sparsities=(0.5, 0.8), start=2, frequency=2).curve(range(7)) == [
        0.0,
        0.0,
        0.5,
        0.5,
        0.8,
        0.8,
        0.8,
    ]
    geo = Geometric(final=0.9, rate=0.5, start=1)
    assert geo.rounds == math.ceil(math.log(0.1) / math.log(0.5)) == 4
    assert geo.curve(range(7)) == pytest.approx([0.0, 0.5, 0.75, 0.875, 0.9, 0.9, 0.9])
    assert geo.pruning_steps() == [1, 2, 3, 4]
    exact = Geometric(final=0.36, rate=0.2)  # 1 - 0.8**2 exactly: two rounds, not three
    assert exact.rounds == 2 and exact(1) == pytest.approx(0.36)


def test_registry_builds_by_name_and_round_trips_to_dict():
    assert list_schedules() == ["agp", "geometric", "oneshot", "polynomial", "steps"]
    schedule = make_schedule("agp", final=0.9, end=100, frequency=10)
    assert schedule == AGP(final=0.9, end=100, frequency=10)
    assert make_schedule(**schedule.to_dict()) == schedule
    steps = Steps(sparsities=[0.5, 0.9])
    assert make_schedule(**steps.to_dict()) == steps


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("agp", {"final": 0.9, "end": 10, "speed": 2}, "no option speed; valid: final, end"),
        ("agp", {"final": 0.9}, "end"),
        ("agp", {"final": 1.0, "end": 10}, r"final must be a sparsity in \[0, 1\)"),
        ("agp", {"final": 0.9, "end": 10, "exponent": 2}, "use 'polynomial'"),
        ("polynomial", {"final": 0.9, "start": 10, "end": 10}, "end .* after start"),
        ("polynomial", {"final": 0.5, "initial": 0.6, "end": 10}, "initial"),
        ("polynomial", {"final": 0.5, "end": 10, "frequency": 0}, "frequency"),
        ("geometric", {"final": 0.9, "rate": 1.0}, "rate"),
        ("steps", {"sparsities": [0.9, 0.5]}, "must not decrease"),
        ("cubic", {}, "valid schedules: agp, geometric"),
    ],
)
def test_bad_options_are_config_errors(name, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_schedule(name, **options)
