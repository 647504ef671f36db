"""Caffe solver updates against a naive NumPy float32 transcription of ApplyUpdate."""

import math

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import optax

from netspec import optim
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from test_lr_policy import reference_rate

F32 = np.float32
SOLVER_TYPES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]

# Caffe order of the learnable params, deliberately not sorted by name.
ORDER = [("conv2", 0), ("conv2", 1), ("bias_only", 0), ("conv1", 0), ("conv1", 1)]
SHAPES = {("conv2", 0): (3, 2), ("conv2", 1): (3,), ("bias_only", 0): (4,),
          ("conv1", 0): (2, 2, 2), ("conv1", 1): (2,)}


def tree_from_list(values):
    tree = {}
    for (layer, index), value in zip(ORDER, values):
        blobs = tree.setdefault(layer, [])
        assert len(blobs) == index
        blobs.append(value)
    return tree


def list_from_tree(tree):
    return [np.asarray(tree[layer][index]) for layer, index in ORDER]


def make_solver(kind, policy="step", **extra):
    fields = dict(type=kind, base_lr=0.05, max_iter=30, lr_policy=policy)
    policy_fields = {
        "fixed": {},
        "step": dict(gamma=0.5, stepsize=2),
        "exp": dict(gamma=0.8),
        "inv": dict(gamma=0.3, power=0.75),
        "multistep": dict(gamma=0.3, stepvalue=[1, 3, 4]),
        "poly": dict(power=2.0),
        "sigmoid": dict(gamma=0.7, stepsize=3),
    }[policy]
    fields.update(policy_fields)
    if kind in ("SGD", "Nesterov"):
        fields["momentum"] = 0.9
    if kind == "AdaDelta":
        fields.update(momentum=0.95, delta=1e-6, base_lr=1.0)
    if kind == "Adam":
        fields.update(momentum=0.9, momentum2=0.999, delta=1e-8)
    if kind == "RMSProp":
        fields.update(rms_decay=0.95, delta=1e-7)
    if kind == "AdaGrad":
        fields.update(delta=1e-7)
    fields.update(extra)
    return caffe_pb2.SolverParameter(**fields)


# ----------------------------------------------------------------------------
# Naive reference: element loops over float32 scalars, in Caffe's order
# ----------------------------------------------------------------------------

def reference_update_value(kind, sp, diff, histories, i, local_rate, it):
    """ComputeUpdateValue for blob ``i``; edits ``diff`` and ``histories`` in place."""
    n_params = len(histories) // (2 if kind in ("AdaDelta", "Adam") else 1)
    h = histories[i]
    momentum = F32(sp.momentum)
    delta = F32(sp.delta)
    if kind == "Adam":
        beta1, beta2 = F32(sp.momentum), F32(sp.momentum2)
        t = it + 1
        correction = F32(math.sqrt(1.0 - math.pow(float(beta2), t))
                         / (1.0 - math.pow(float(beta1), t)))
        v = histories[n_params + i]
    if kind == "AdaDelta":
        update_history = histories[n_params + i]
    for k in range(diff.size):
        g = diff.flat[k]
        if kind == "SGD":
            h.flat[k] = local_rate * g + momentum * h.flat[k]
            diff.flat[k] = h.flat[k]
        elif kind == "Nesterov":
            previous = h.flat[k]
            h.flat[k] = local_rate * g + momentum * previous
            diff.flat[k] = (F32(1) + momentum) * h.flat[k] + (-momentum) * previous
        elif kind == "AdaGrad":
            h.flat[k] = g * g + h.flat[k]
            diff.flat[k] = local_rate * (g / (F32(np.sqrt(h.flat[k])) + delta))
        elif kind == "RMSProp":
            decay = F32(sp.rms_decay)
            h.flat[k] = (F32(1) - decay) * (g * g) + decay * h.flat[k]
            diff.flat[k] = local_rate * (g / (F32(np.sqrt(h.flat[k])) + delta))
        elif kind == "AdaDelta":
            h.flat[k] = (F32(1) - momentum) * (g * g) + momentum * h.flat[k]
            ratio = (delta + update_history.flat[k]) / (delta + h.flat[k])
            g = g * F32(np.sqrt(ratio))
            update_history.flat[k] = ((F32(1) - momentum) * (g * g)
                                      + momentum * update_history.flat[k])
            diff.flat[k] = local_rate * g
        elif kind == "Adam":
            h.flat[k] = (F32(1) - beta1) * g + beta1 * h.flat[k]
            v.flat[k] = (F32(1) - beta2) * (g * g) + beta2 * v.flat[k]
            scaled = h.flat[k] / (F32(np.sqrt(v.flat[k])) + delta)
            diff.flat[k] = (local_rate * correction) * scaled
        else:
            raise AssertionError(kind)


def reference_run(sp, weights, lr_mults, decay_mults, grads_per_iter, start_iter=0,
                  histories=None):
    """Caffe's Step loop over the given summed gradients; returns weights, histories, clipped."""
    kind = sp.type
    weights = [w.astype(F32).copy() for w in weights]
    sets = 2 if kind in ("AdaDelta", "Adam") else 1
    if histories is None:
        histories = [np.zeros_like(w) for _ in range(sets) for w in weights]
    histories = [h.copy() for h in histories]
    clipped_any = False
    for step, grads in enumerate(grads_per_iter):
        it = start_iter + step
        rate = F32(reference_rate(sp, it))
        # Caffe computes no diff for lr_mult 0 params.
        diffs = [np.zeros_like(w) if lr == 0 else g.astype(F32).copy()
                 for w, g, lr in zip(weights, grads, lr_mults)]
        # ClipGradients
        if sp.clip_gradients >= 0:
            sumsq = F32(0)
            for d in diffs:
                for x in d.flat:
                    sumsq = sumsq + x * x
            norm = F32(np.sqrt(sumsq))
            if norm > F32(sp.clip_gradients):
                clipped_any = True
                factor = F32(sp.clip_gradients) / norm
                for d in diffs:
                    d *= factor
        for i, (w, d) in enumerate(zip(weights, diffs)):
            # Normalize
            if sp.iter_size != 1:
                d *= F32(1) / F32(sp.iter_size)
            # Regularize
            local_decay = F32(sp.weight_decay) * F32(decay_mults[i])
            if local_decay != 0:
                for k in range(d.size):
                    x = w.flat[k]
                    if sp.regularization_type == "L1":
                        x = F32(int(x > 0) - int(x < 0))
                    d.flat[k] = local_decay * x + d.flat[k]
            local_rate = rate * F32(lr_mults[i])
            reference_update_value(kind, sp, d, histories, i, local_rate, it)
            w -= d
    return weights, histories, clipped_any


# ----------------------------------------------------------------------------
# Helpers for running the optimizer under test
# ----------------------------------------------------------------------------

def random_setup(seed, iterations, grad_scale=1.0):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=SHAPES[key]).astype(F32) for key in ORDER]
    weights[1][0] = 0.0  # sign(0) = 0 for L1
    grads = [[(grad_scale * rng.normal(size=SHAPES[key])).astype(F32) for key in ORDER]
             for _ in range(iterations)]
    return weights, grads


def run_optimizer(opt, weights, grads_per_iter, state=None):
    params = tree_from_list([jnp.asarray(w) for w in weights])
    if state is None:
        state = opt.init(params)
    step = jax.jit(opt.update)
    for grads in grads_per_iter:
        updates, state = step(tree_from_list([jnp.asarray(g) for g in grads]), state, params)
        params = optax.apply_updates(params, updates)
    return list_from_tree(params), state


def assert_lists_close(actual, expected, rtol=1e-6):
    """rtol per element, plus rtol of each blob's largest value: XLA fuses a*b + c into
    one FMA (one rounding fewer than the reference), which shows up as an ulp of the
    blob's scale where values cancel towards zero."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale)


ALL_ONES = [1.0] * len(ORDER)


@pytest.fixture(autouse=True)
def highest_precision():
    jax.config.update("jax_default_matmul_precision", "highest")


# ----------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"])
@pytest.mark.parametrize("kind", SOLVER_TYPES)
def test_rule_matches_reference(kind, policy):
    sp = make_solver(kind, policy)
    weights, grads = random_setup(seed=SOLVER_TYPES.index(kind), iterations=6)
    opt = optim.caffe_optimizer(sp, tree_from_list(ALL_ONES), tree_from_list(ALL_ONES))
    actual, state = run_optimizer(opt, weights, grads)
    expected, expected_history, _ = reference_run(sp, weights, ALL_ONES, ALL_ONES, grads)
    assert_lists_close(actual, expected)
    assert_lists_close(optim.history_to_caffe(state, ORDER), expected_history)
    assert optim.iteration(state) == 6
    # The weights moved: the comparison is not between two no-ops.
    assert not np.allclose(actual[0], weights[0])


@pytest.mark.parametrize("regularization", ["L1", "L2"])
@pytest.mark.parametrize("kind", SOLVER_TYPES)
def test_combined_iter_size_clip_mults_and_decay(kind, regularization):
    lr_mults = [1.0, 2.0, 0.0, 0.5, 1.0]
    decay_mults = [1.0, 0.0, 1.0, 2.0, 1.0]
    sp = make_solver(kind, "multistep", iter_size=3, clip_gradients=2.5, weight_decay=0.01,
                     regularization_type=regularization)
    weights, grads = random_setup(seed=10 + SOLVER_TYPES.index(kind), iterations=5, grad_scale=2.0)
    grads[2] = [0.05 * g for g in grads[2]]  # one iteration under the clip threshold
    opt = optim.caffe_optimizer(sp, tree_from_list(lr_mults), tree_from_list(decay_mults))
    actual, state = run_optimizer(opt, weights, grads)
    expected, expected_history, clipped_any = reference_run(
        sp, weights, lr_mults, decay_mults, grads)
    assert clipped_any
    assert_lists_close(actual, expected)
    assert_lists_close(optim.history_to_caffe(state, ORDER), expected_history)
    # lr_mult 0: the weights never move.
    np.testing.assert_array_equal(actual[2], weights[2])


def test_frozen_param_gradient_is_ignored_unless_force_backward():
    sp = make_solver("SGD", "fixed", clip_gradients=1.0)
    lr_mults = [1.0, 1.0, 0.0, 1.0, 1.0]
    weights, grads = random_setup(seed=3, iterations=3)
    big = [[g if i != 2 else 100 * g for i, g in enumerate(step)] for step in grads]
    opt = optim.caffe_optimizer(sp, tree_from_list(lr_mults), tree_from_list(ALL_ONES))
    actual, _ = run_optimizer(opt, weights, big)
    expected, _, _ = reference_run(sp, weights, lr_mults, ALL_ONES, grads)
    assert_lists_close(actual, expected)  # the huge frozen gradient took no part in clipping

    forced = optim.caffe_optimizer(sp, tree_from_list(lr_mults), tree_from_list(ALL_ONES),
                                   force_backward=True)
    actual_forced, _ = run_optimizer(forced, weights, big)
    assert not np.allclose(actual_forced[0], expected[0])
    np.testing.assert_array_equal(actual_forced[2], weights[2])


def test_sgd_rate_inside_momentum_differs_from_optax_sgd():
    # Caffe's h = lr*g + m*h: a rate change scales only new gradients.
    sp = make_solver("SGD", "step")
    weights, grads = random_setup(seed=4, iterations=4)
    opt = optim.caffe_optimizer(sp, tree_from_list(ALL_ONES), tree_from_list(ALL_ONES))
    actual, _ = run_optimizer(opt, weights, grads)
    w, h = weights[0].copy(), np.zeros_like(weights[0])
    for it, g in enumerate(grads):
        rate = 0.05 * 0.5 ** (it // 2)
        h = rate * g[0] + 0.9 * h
        w = w - h
    np.testing.assert_allclose(actual[0], w, rtol=1e-5)


def test_history_round_trip_and_order():
    sp = make_solver("Adam", "fixed")
    weights, grads = random_setup(seed=5, iterations=2)
    opt = optim.caffe_optimizer(sp, tree_from_list(ALL_ONES), tree_from_list(ALL_ONES))
    _, state = run_optimizer(opt, weights, grads)
    blobs = optim.history_to_caffe(state, ORDER)
    assert len(blobs) == 2 * len(ORDER)
    inner = optim.solver_state(state)
    for k, (layer, index) in enumerate(ORDER):
        np.testing.assert_array_equal(blobs[k], inner.history[0][layer][index])
        np.testing.assert_array_equal(blobs[len(ORDER) + k], inner.history[1][layer][index])

    fresh = opt.init(tree_from_list([jnp.asarray(w) for w in weights]))
    restored = optim.history_from_caffe(fresh, ORDER, [b.reshape(-1) for b in blobs])
    for a, b in zip(optim.history_to_caffe(restored, ORDER), blobs):
        np.testing.assert_array_equal(a, b)
    assert optim.iteration(restored) == 0
    assert optim.iteration(optim.set_iteration(restored, 7)) == 7


def test_history_from_caffe_rejects_wrong_blobs():
    sp = make_solver("SGD", "fixed")
    weights, _ = random_setup(seed=6, iterations=0)
    opt = optim.caffe_optimizer(sp, tree_from_list(ALL_ONES), tree_from_list(ALL_ONES))
    state = opt.init(tree_from_list([jnp.asarray(w) for w in weights]))
    with pytest.raises(NetspecError, match="has 10 history blobs, this solver and net need 5"):
        optim.history_from_caffe(state, ORDER, [np.zeros(SHAPES[k]) for k in ORDER] * 2)
    wrong = [np.zeros(SHAPES[k]) for k in ORDER]
    wrong[3] = np.zeros(5)
    with pytest.raises(NetspecError, match=r"conv1\[0\]"):
        optim.history_from_caffe(state, ORDER, wrong)


@pytest.mark.parametrize("kind", SOLVER_TYPES)
def test_resumed_run_is_bit_identical(kind):
    sp = make_solver(kind, "multistep", weight_decay=0.001)
    weights, grads = random_setup(seed=20 + SOLVER_TYPES.index(kind), iterations=8)
    opt = optim.caffe_optimizer(sp, tree_from_list(ALL_ONES), tree_from_list(ALL_ONES))
    straight, straight_state = run_optimizer(opt, weights, grads)

    halfway, half_state = run_optimizer(opt, weights, grads[:4])
    blobs = optim.history_to_caffe(half_state, ORDER)
    fresh = opt.init(tree_from_list([jnp.asarray(w) for w in halfway]))
    resumed_state = optim.set_iteration(optim.history_from_caffe(fresh, ORDER, blobs), 4)
    resumed, resumed_state = run_optimizer(opt, halfway, grads[4:], state=resumed_state)

    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(optim.history_to_caffe(resumed_state, ORDER),
                    optim.history_to_caffe(straight_state, ORDER)):
        np.testing.assert_array_equal(a, b)


def test_unknown_solver_type_is_a_netspec_error():
    sp = make_solver("SGD", "fixed")
    sp.type = "LBFGS"
    with pytest.raises(NetspecError, match=r'unknown solver type "LBFGS" \(one of SGD, Nesterov'):
        optim.caffe_optimizer(sp, tree_from_list(ALL_ONES), tree_from_list(ALL_ONES))


def test_legacy_solver_type_enum():
    sp = caffe_pb2.SolverParameter(solver_type=caffe_pb2.SolverParameter.ADAM)
    assert optim.solver_type(sp) == "Adam"
    assert optim.solver_type(caffe_pb2.SolverParameter()) == "SGD"


@pytest.mark.parametrize("kind,fields", [
    ("AdaGrad", dict(momentum=0.9)),
    ("RMSProp", dict(momentum=0.9)),
    ("RMSProp", dict(rms_decay=1.5)),
    ("SGD", dict(regularization_type="L3")),
    ("SGD", dict(iter_size=0)),
])
def test_invalid_solver_settings_are_netspec_errors(kind, fields):
    sp = make_solver(kind, "fixed", **fields)
    with pytest.raises(NetspecError):
        optim.caffe_optimizer(sp, tree_from_list(ALL_ONES), tree_from_list(ALL_ONES))
