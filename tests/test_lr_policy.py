"""lr policies against a scalar transcription of Caffe's GetLearningRate."""

import math

import numpy as np
import pytest
import jax

from netspec import lr_policy
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

F32 = np.float32


def solver(**fields):
    return caffe_pb2.SolverParameter(**fields)


def reference_multistep_step(stepvalues, it):
    """Caffe's loop: one GetLearningRate call per iteration from 0, at most one advance each."""
    current_step = 0
    for i in range(it + 1):
        if current_step < len(stepvalues) and i >= stepvalues[current_step]:
            current_step += 1
    return current_step


def reference_rate(sp, it):
    """Caffe's rate at iteration ``it`` written as scalar Python: double math, float casts."""
    base = float(F32(sp.base_lr))
    gamma = float(F32(sp.gamma))
    power = float(F32(sp.power))
    policy = sp.lr_policy
    if policy == "fixed":
        rate = base
    elif policy == "step":
        rate = base * math.pow(gamma, it // sp.stepsize)
    elif policy == "exp":
        rate = base * math.pow(gamma, it)
    elif policy == "inv":
        inner = F32(1) + F32(gamma) * F32(it)  # Dtype(1) + gamma * iter, in float
        rate = base * math.pow(float(inner), -power)
    elif policy == "multistep":
        rate = base * math.pow(gamma, reference_multistep_step(list(sp.stepvalue), it))
    elif policy == "poly":
        inner = F32(1) - F32(it) / F32(sp.max_iter)
        rate = base * math.pow(float(inner), power)
    elif policy == "sigmoid":
        inner = -F32(gamma) * (F32(it) - F32(sp.stepsize))
        rate = base * (1.0 / (1.0 + math.exp(float(inner))))
    else:
        raise AssertionError(policy)
    return float(F32(rate))


POLICY_SOLVERS = {
    "fixed": solver(base_lr=0.01, lr_policy="fixed", max_iter=40),
    "step": solver(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=7, max_iter=40),
    "exp": solver(base_lr=0.05, lr_policy="exp", gamma=0.93, max_iter=40),
    "inv": solver(base_lr=0.01, lr_policy="inv", gamma=0.0001 * 97, power=0.75, max_iter=40),
    "multistep": solver(base_lr=0.1, lr_policy="multistep", gamma=0.5,
                        stepvalue=[3, 3, 10, 8, 25], max_iter=40),
    "poly": solver(base_lr=0.02, lr_policy="poly", power=0.9, max_iter=40),
    "sigmoid": solver(base_lr=0.03, lr_policy="sigmoid", gamma=0.3, stepsize=20, max_iter=40),
}


@pytest.mark.parametrize("policy", sorted(POLICY_SOLVERS))
def test_policy_matches_caffe_formula(policy):
    sp = POLICY_SOLVERS[policy]
    for it in range(41):
        expected = reference_rate(sp, it)
        assert lr_policy.learning_rate(sp, it) == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.parametrize("policy", sorted(POLICY_SOLVERS))
def test_schedule_in_jit_equals_learning_rate(policy):
    sp = POLICY_SOLVERS[policy]
    rate_at = jax.jit(lr_policy.schedule(sp))
    for it in range(41):
        assert float(rate_at(np.int32(it))) == lr_policy.learning_rate(sp, it)


def test_step_policy_hand_worked():
    sp = solver(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=3, max_iter=10)
    rates = [lr_policy.learning_rate(sp, it) for it in range(7)]
    expected = [0.01] * 3 + [0.001] * 3 + [0.0001]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


def test_rate_is_a_float32_value():
    sp = POLICY_SOLVERS["inv"]
    rate = lr_policy.learning_rate(sp, 13)
    assert isinstance(rate, float)
    assert float(F32(rate)) == rate


def test_multistep_current_step_follows_caffe_loop():
    # Unsorted and repeated step values: Caffe advances at most once per iteration.
    sp = solver(base_lr=1, lr_policy="multistep", gamma=0.1, stepvalue=[4, 4, 4, 2, 20, 6])
    for it in range(30):
        expected = reference_multistep_step(list(sp.stepvalue), it)
        assert lr_policy.multistep_current_step(sp, it) == expected


def test_snapshot_current_step():
    multistep = solver(base_lr=1, lr_policy="multistep", gamma=0.1, stepvalue=[5, 9])
    step = solver(base_lr=1, lr_policy="step", gamma=0.1, stepsize=4)
    # Snapshot at iter N stores the value from the update of iteration N - 1.
    assert lr_policy.snapshot_current_step(multistep, 0) == 0
    assert lr_policy.snapshot_current_step(multistep, 5) == 0
    assert lr_policy.snapshot_current_step(multistep, 6) == 1
    assert lr_policy.snapshot_current_step(multistep, 10) == 2
    assert lr_policy.snapshot_current_step(step, 8) == 1
    assert lr_policy.snapshot_current_step(step, 9) == 2


def test_unknown_policy_is_a_netspec_error():
    sp = solver(base_lr=0.01, lr_policy="cosine")
    with pytest.raises(NetspecError, match=r'solver.prototxt: unknown lr_policy "cosine" \(one of fixed, step'):
        lr_policy.learning_rate(sp, 0, name="solver.prototxt")
    with pytest.raises(NetspecError):
        lr_policy.schedule(sp)


@pytest.mark.parametrize("fields", [
    dict(lr_policy="step", gamma=0.1, stepsize=0),
    dict(lr_policy="exp", gamma=-0.5),
    dict(lr_policy="poly", power=1.0, max_iter=0),
    dict(lr_policy="sigmoid", gamma=0.1, stepsize=0),
])
def test_invalid_policy_settings_are_netspec_errors(fields):
    with pytest.raises(NetspecError):
        lr_policy.learning_rate(solver(base_lr=0.01, **fields), 1)
