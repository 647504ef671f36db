"""Finite-difference gradient check, as tests/layer_harness.check_layer_grads.

Local copy because the harness version calls the PyTreeDef returned by
``tree_flatten`` (TypeError); remove once the harness is fixed.
"""
import jax
import jax.numpy as jnp
import numpy as np

from tests.layer_harness import run_layer


def check_layer_grads(layer, bottoms, params=(), wrt_bottoms=None, train=False, rng=None,
                      eps=1e-4, rtol=1e-4, atol=1e-6, seed=1):
    """Central differences in float64 of sum(w * tops) vs JAX's gradient."""
    wrt_bottoms = list(range(len(bottoms))) if wrt_bottoms is None else list(wrt_bottoms)
    with jax.enable_x64(True):
        bottoms64 = [np.asarray(b, np.float64) for b in bottoms]
        params64 = [np.asarray(p, np.float64) for p in params]
        shapes = [t.shape for t in run_layer(layer, bottoms64, params64, train, rng)]
        rs = np.random.RandomState(seed)
        weights = [rs.randn(*s) for s in shapes]

        def objective(diff_bottoms, diff_params):
            full = list(bottoms64)
            for i, b in zip(wrt_bottoms, diff_bottoms):
                full[i] = b
            tops = run_layer(layer, full, diff_params, train, rng)
            return sum(jnp.sum(w * t) for w, t in zip(weights, tops))

        objective = jax.jit(objective)
        args = ([bottoms64[i] for i in wrt_bottoms], params64)
        analytic = jax.grad(objective, argnums=(0, 1))(*args)
        flat_args, treedef = jax.tree_util.tree_flatten(args)
        flat_analytic = jax.tree_util.tree_leaves(analytic)
        for k, (x, g) in enumerate(zip(flat_args, flat_analytic)):
            numeric = np.zeros_like(x)
            for idx in np.ndindex(x.shape):
                plus = [a.copy() for a in flat_args]
                minus = [a.copy() for a in flat_args]
                plus[k][idx] += eps
                minus[k][idx] -= eps
                f_plus = float(objective(*jax.tree_util.tree_unflatten(treedef, plus)))
                f_minus = float(objective(*jax.tree_util.tree_unflatten(treedef, minus)))
                numeric[idx] = (f_plus - f_minus) / (2 * eps)
            np.testing.assert_allclose(np.asarray(g), numeric, rtol=rtol, atol=atol,
                                       err_msg=f"gradient of argument {k}")
