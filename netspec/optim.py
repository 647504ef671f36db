"""Caffe's solvers (``SGDSolver::ApplyUpdate`` and its subclasses) as Optax transformations.

Params, gradients, ``lr_mults`` and ``decay_mults`` are pytrees shaped
``{layer_name: [blob, ...]}``.  Each iteration Caffe takes the gradient summed
over ``iter_size`` passes and does, in float32 and in this order:

1. clip: if the global L2 norm exceeds ``clip_gradients``, scale every diff
   by ``clip_gradients / norm``;
2. normalize: ``diff *= 1 / iter_size``;
3. regularize: ``diff += weight_decay * decay_mult * w`` (L2) or ``* sign(w)`` (L1);
4. the solver type's rule with ``local_rate = rate * lr_mult``, leaving the step in diff;
5. ``w -= diff``.

``caffe_optimizer`` chains these; its ``update`` returns ``-diff`` (to be added
with ``optax.apply_updates``) and needs ``params``.  The last link's state,
``CaffeSolverState``, holds Caffe's ``iter_`` and the history blobs.
"""

from typing import NamedTuple

import numpy as np
import jax
import jax.numpy as jnp
import optax

from netspec.errors import NetspecError
from netspec.lr_policy import iteration_table, schedule

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")

# Legacy ``solver_type`` enum values (SolverParameter.SolverType), in order.
_LEGACY_SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")

# Number of history sets Caffe keeps per learnable param.
_HISTORY_SETS = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}

_f32 = np.float32


class CaffeSolverState(NamedTuple):
    """Caffe's ``iter_`` (int32) and history: a tuple of params-shaped pytrees."""

    count: jax.Array
    history: tuple


def solver_type(solver_param, name="solver"):
    """The solver type string, honouring the deprecated ``solver_type`` enum."""
    has_field = getattr(solver_param, "HasField", None)
    if has_field is not None and has_field("solver_type"):
        return _LEGACY_SOLVER_TYPES[solver_param.solver_type]
    kind = solver_param.type
    if kind not in SOLVER_TYPES:
        raise NetspecError(f'{name}: unknown solver type "{kind}" (one of {", ".join(SOLVER_TYPES)})')
    return kind


# ----------------------------------------------------------------------------
# Steps before the type-specific rule
# ----------------------------------------------------------------------------

def zero_frozen_gradients(lr_mults):
    """Zero the gradients of ``lr_mult == 0`` params: Caffe never computes them."""

    def update_fn(updates, state, params=None):
        del params
        zeroed = jax.tree.map(
            lambda g, lr_mult: jnp.zeros_like(g) if lr_mult == 0 else g, updates, lr_mults)
        return zeroed, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_gradients(clip_threshold):
    """Caffe's ``ClipGradients``: rescale all diffs when their global L2 norm > threshold."""
    threshold = _f32(clip_threshold)
    if threshold < 0:
        return optax.identity()

    def update_fn(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        sumsq = sum((jnp.sum(g * g) for g in leaves), jnp.zeros((), jnp.float32))
        norm = jnp.sqrt(sumsq)
        factor = jnp.where(norm > threshold, threshold / norm, _f32(1))
        clipped = jax.tree.map(lambda g: jnp.where(norm > threshold, g * factor, g), updates)
        return clipped, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def normalize(iter_size):
    """Caffe's ``Normalize``: ``diff *= 1 / iter_size`` (skipped when iter_size is 1)."""
    if iter_size == 1:
        return optax.identity()
    return optax.scale(_f32(1) / _f32(iter_size))


def regularize(weight_decay, regularization_type, decay_mults, name="solver"):
    """Caffe's ``Regularize``: add ``local_decay * w`` (L2) or ``local_decay * sign(w)`` (L1)."""
    if regularization_type not in ("L1", "L2"):
        raise NetspecError(
            f'{name}: unknown regularization_type "{regularization_type}" (use L1 or L2)')

    def add_decay(g, w, decay_mult):
        local_decay = _f32(weight_decay) * _f32(decay_mult)
        if local_decay == 0:
            return g
        penalty = w if regularization_type == "L2" else jnp.sign(w)
        return local_decay * penalty + g

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("regularize needs params: call update(grads, state, params)")
        return jax.tree.map(add_decay, updates, params, decay_mults), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ----------------------------------------------------------------------------
# Type-specific rules (ComputeUpdateValue), one blob at a time
# ----------------------------------------------------------------------------

def _sgd_step(settings):
    momentum = _f32(settings.momentum)

    def step(diff, history, local_rate, count):
        (h,) = history
        h = local_rate * diff + momentum * h
        return h, (h,)

    return step


def _nesterov_step(settings):
    momentum = _f32(settings.momentum)
    over_step = _f32(1) + momentum

    def step(diff, history, local_rate, count):
        (h_previous,) = history
        h = local_rate * diff + momentum * h_previous
        return over_step * h + (-momentum) * h_previous, (h,)

    return step


def _adagrad_step(settings):
    delta = _f32(settings.delta)

    def step(diff, history, local_rate, count):
        (h,) = history
        h = diff * diff + h
        return local_rate * (diff / (jnp.sqrt(h) + delta)), (h,)

    return step


def _rmsprop_step(settings):
    delta = _f32(settings.delta)
    rms_decay = _f32(settings.rms_decay)
    keep = _f32(1) - rms_decay

    def step(diff, history, local_rate, count):
        (h,) = history
        h = keep * (diff * diff) + rms_decay * h
        return local_rate * (diff / (jnp.sqrt(h) + delta)), (h,)

    return step


def _adadelta_step(settings):
    delta = _f32(settings.delta)
    momentum = _f32(settings.momentum)
    keep = _f32(1) - momentum

    def step(diff, history, local_rate, count):
        grad_history, update_history = history
        grad_history = keep * (diff * diff) + momentum * grad_history
        ratio = (delta + update_history) / (delta + grad_history)
        diff = diff * jnp.sqrt(ratio)
        update_history = keep * (diff * diff) + momentum * update_history
        return local_rate * diff, (grad_history, update_history)

    return step


def adam_corrections(beta1, beta2, iterations):
    """``sqrt(1 - beta2^t) / (1 - beta1^t)`` with ``t = iter + 1``, in double, cast to float."""
    t = np.asarray(iterations, dtype=np.int64) + 1
    b1 = np.float64(_f32(beta1))
    b2 = np.float64(_f32(beta2))
    return (np.sqrt(1.0 - np.power(b2, t)) / (1.0 - np.power(b1, t))).astype(_f32)


def _adam_step(settings):
    beta1 = _f32(settings.momentum)
    beta2 = _f32(settings.momentum2)
    eps_hat = _f32(settings.delta)
    table_length = max(int(settings.max_iter), 0) + 1
    correction_at = iteration_table(adam_corrections(beta1, beta2, np.arange(table_length)))

    def step(diff, history, local_rate, count):
        m, v = history
        m = (_f32(1) - beta1) * diff + beta1 * m
        v = (_f32(1) - beta2) * (diff * diff) + beta2 * v
        scaled = m / (jnp.sqrt(v) + eps_hat)
        return (local_rate * correction_at(count)) * scaled, (m, v)

    return step


_STEP_BUILDERS = {
    "SGD": _sgd_step,
    "Nesterov": _nesterov_step,
    "AdaGrad": _adagrad_step,
    "RMSProp": _rmsprop_step,
    "AdaDelta": _adadelta_step,
    "Adam": _adam_step,
}


def _check_settings(kind, settings, name):
    """Caffe's constructor checks for the adaptive solvers."""
    if kind in ("AdaGrad", "RMSProp") and settings.momentum != 0:
        raise NetspecError(f"{name}: momentum cannot be used with {kind} (set momentum: 0)")
    if kind == "RMSProp" and not 0 <= settings.rms_decay <= 1:
        raise NetspecError(f"{name}: rms_decay must be in [0, 1] (got {settings.rms_decay})")


def caffe_rule(solver_param, lr_mults, name="solver"):
    """The type-specific update (``ComputeUpdateValue``) with the policy's rate at ``iter_``.

    Returns ``-diff``; the state is a ``CaffeSolverState`` whose count goes up by one
    per update, as Caffe's ``iter_`` does.
    """
    kind = solver_type(solver_param, name)
    _check_settings(kind, solver_param, name)
    rate_at = schedule(solver_param, name)
    step = _STEP_BUILDERS[kind](solver_param)
    history_sets = _HISTORY_SETS[kind]

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return CaffeSolverState(
            count=jnp.zeros((), jnp.int32), history=tuple(zeros for _ in range(history_sets)))

    def update_fn(updates, state, params=None):
        del params
        rate = rate_at(state.count)
        diffs, treedef = jax.tree.flatten(updates)
        mults = treedef.flatten_up_to(lr_mults)
        histories = [treedef.flatten_up_to(h) for h in state.history]
        new_updates = []
        new_histories = [[] for _ in range(history_sets)]
        for index, (diff, lr_mult) in enumerate(zip(diffs, mults)):
            local_rate = rate * _f32(lr_mult)
            history = tuple(h[index] for h in histories)
            diff, history = step(diff, history, local_rate, state.count)
            new_updates.append(-diff)
            for kept, h in zip(new_histories, history):
                kept.append(h)
        new_state = CaffeSolverState(
            count=state.count + 1,
            history=tuple(treedef.unflatten(h) for h in new_histories))
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def caffe_optimizer(solver_param, lr_mults, decay_mults, force_backward=False, name="solver"):
    """Caffe's whole ``ApplyUpdate`` as one Optax transformation.

    ``update(grads, state, params)`` takes the gradient SUMMED over ``iter_size``
    passes and returns the updates to add.  Unless ``force_backward`` (the net's
    flag), gradients of ``lr_mult == 0`` params are taken as zero, as in Caffe.
    """
    iter_size = int(solver_param.iter_size)
    if iter_size < 1:
        raise NetspecError(f"{name}: iter_size must be >= 1 (got {iter_size})")
    steps = []
    if not force_backward:
        steps.append(zero_frozen_gradients(lr_mults))
    steps += [
        clip_gradients(solver_param.clip_gradients),
        normalize(iter_size),
        regularize(solver_param.weight_decay, solver_param.regularization_type, decay_mults, name),
        caffe_rule(solver_param, lr_mults, name),
    ]
    return optax.chain(*steps)


# ----------------------------------------------------------------------------
# State access: iteration count and Caffe's history blobs
# ----------------------------------------------------------------------------

def _replace_solver_state(state, replace):
    """Rebuild a (possibly chained) optimizer state, applying ``replace`` to the CaffeSolverState."""
    if isinstance(state, CaffeSolverState):
        return replace(state)
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(_replace_solver_state(s, replace) for s in state)
    return state


def solver_state(state):
    """The ``CaffeSolverState`` inside an optimizer state."""
    found = []

    def keep(s):
        found.append(s)
        return s

    _replace_solver_state(state, keep)
    if len(found) != 1:
        raise ValueError("optimizer state holds no single CaffeSolverState")
    return found[0]


def iteration(state):
    """Caffe's ``iter_`` stored in the optimizer state."""
    return int(solver_state(state).count)


def set_iteration(state, it):
    """The same state with Caffe's ``iter_`` set to ``it`` (e.g. on resume)."""
    return _replace_solver_state(
        state, lambda s: s._replace(count=jnp.asarray(it, dtype=jnp.int32)))


def history_to_caffe(state, order):
    """History blobs in solverstate order: every set over ``order``, first set first."""
    blobs = []
    for history in solver_state(state).history:
        for layer_name, blob_index in order:
            blobs.append(np.asarray(history[layer_name][blob_index]))
    return blobs


def history_from_caffe(state, order, blobs, name="solverstate"):
    """``state`` with its history replaced by Caffe's ``blobs`` (arrays, solverstate order)."""
    current = solver_state(state)
    blobs = list(blobs)
    expected = len(current.history) * len(order)
    if len(blobs) != expected:
        raise NetspecError(
            f"{name}: has {len(blobs)} history blobs, this solver and net need {expected} "
            "(was it saved with another solver type or net?)")

    def filled(history, offset):
        copied = jax.tree.map(lambda x: x, history)  # new containers, same leaves
        for position, (layer_name, blob_index) in enumerate(order):
            target = history[layer_name][blob_index]
            blob = np.asarray(blobs[offset + position], dtype=np.float32)
            if blob.size != target.size:
                raise NetspecError(
                    f"{name}: history blob {offset + position} for {layer_name}[{blob_index}] "
                    f"has {blob.size} values, the param has shape {tuple(target.shape)}")
            copied[layer_name][blob_index] = jnp.asarray(blob.reshape(target.shape))
        return copied

    new_history = tuple(
        filled(history, k * len(order)) for k, history in enumerate(current.history))
    return _replace_solver_state(state, lambda s: s._replace(history=new_history))
