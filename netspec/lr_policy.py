"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``).

Caffe keeps ``rate`` as a float but evaluates most of the formula in double
(``pow``/``exp`` of float arguments); the parts it writes as explicit ``Dtype``
arithmetic are float.  Here every policy is evaluated the same way, vectorised
over iterations: float32 where Caffe uses ``Dtype``, float64 elsewhere, and the
result cast to float32.

``schedule`` gives the same numbers inside ``jit``: it looks the rate up in a
float32 table computed on the host for iterations ``0 .. max_iter`` (Caffe never
asks for a rate at ``iter >= max_iter``; later counts reuse the last entry).
"""

import numpy as np
import jax.numpy as jnp

from netspec.errors import NetspecError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

_f32 = np.float32


def _fail(name, message):
    raise NetspecError(f"{name}: {message}")


def _check_policy(solver_param, name):
    policy = solver_param.lr_policy
    if policy not in POLICIES:
        _fail(name, f'unknown lr_policy "{policy}" (one of {", ".join(POLICIES)})')
    gamma = _f32(solver_param.gamma)
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and gamma < 0:
        _fail(name, f"lr_policy {policy} needs gamma >= 0 (got {gamma})")
    if policy in ("step", "sigmoid") and solver_param.stepsize <= 0:
        _fail(name, f"lr_policy {policy} needs stepsize > 0 (got {solver_param.stepsize})")
    if policy == "poly" and solver_param.max_iter <= 0:
        _fail(name, f"lr_policy poly needs max_iter > 0 (got {solver_param.max_iter})")
    return policy


def multistep_transitions(solver_param):
    """Iterations at which Caffe's multistep ``current_step_`` goes up by one.

    Caffe advances at most one step per iteration, so step k is entered at
    ``max(stepvalue[k], previous transition + 1)``.
    """
    transitions = []
    previous = -1
    for value in solver_param.stepvalue:
        previous = max(int(value), previous + 1)
        transitions.append(previous)
    return np.asarray(transitions, dtype=np.int64)


def multistep_current_step(solver_param, it):
    """Caffe's ``current_step_`` right after ``GetLearningRate`` at iteration ``it``."""
    return int(np.sum(multistep_transitions(solver_param) <= it))


def snapshot_current_step(solver_param, iteration):
    """The ``current_step`` Caffe writes into a snapshot taken at ``iter == iteration``.

    The snapshot follows the update, so it holds the value from iteration - 1.
    """
    last = iteration - 1
    if last < 0:
        return 0
    if solver_param.lr_policy == "step" and solver_param.stepsize > 0:
        return last // solver_param.stepsize
    if solver_param.lr_policy == "multistep":
        return multistep_current_step(solver_param, last)
    return 0


def learning_rates(solver_param, iterations, name="solver"):
    """Caffe's rate (float32 array) at each iteration in ``iterations``."""
    policy = _check_policy(solver_param, name)
    it = np.asarray(iterations, dtype=np.int64)
    base_lr = np.float64(_f32(solver_param.base_lr))
    gamma = _f32(solver_param.gamma)
    power = _f32(solver_param.power)
    if policy == "fixed":
        rate = np.full(it.shape, base_lr)
    elif policy == "step":
        current_step = it // solver_param.stepsize
        rate = base_lr * np.power(np.float64(gamma), current_step)
    elif policy == "exp":
        rate = base_lr * np.power(np.float64(gamma), it)
    elif policy == "inv":
        base = _f32(1) + gamma * it.astype(_f32)
        rate = base_lr * np.power(base.astype(np.float64), -np.float64(power))
    elif policy == "multistep":
        current_step = np.sum(it[..., None] >= multistep_transitions(solver_param), axis=-1)
        rate = base_lr * np.power(np.float64(gamma), current_step)
    elif policy == "poly":
        fraction = _f32(1) - it.astype(_f32) / _f32(solver_param.max_iter)
        rate = base_lr * np.power(fraction.astype(np.float64), np.float64(power))
    else:  # sigmoid
        exponent = -gamma * (it.astype(_f32) - _f32(solver_param.stepsize))
        rate = base_lr * (1.0 / (1.0 + np.exp(exponent.astype(np.float64))))
    return rate.astype(_f32)


def learning_rate(solver_param, it, name="solver"):
    """Caffe's learning rate at iteration ``it`` as a Python float (a float32 value)."""
    return float(learning_rates(solver_param, [it], name)[0])


def iteration_table(values):
    """``count -> values[count]`` for jit, clamping counts past the table's end."""
    table = jnp.asarray(np.asarray(values, dtype=_f32))
    last = table.shape[0] - 1

    def lookup(count):
        return table[jnp.clip(count, 0, last)]

    return lookup


def schedule(solver_param, name="solver"):
    """A jit-compatible ``count -> rate`` (float32 scalar) equal to ``learning_rate``."""
    table_length = max(int(solver_param.max_iter), 0) + 1
    return iteration_table(learning_rates(solver_param, np.arange(table_length), name))
