"""Run a single layer outside any net, for the layer tests.

Bottoms go in and tops come out in Caffe's axis order whatever layout the layer
computes in, so tests compare against plain NumPy references written in NCHW.
"""
import jax
import jax.numpy as jnp
import numpy as np
from google.protobuf import text_format

from netspec.layers import TEST, LayerContext, layer_class
from netspec.proto import caffe_pb2


def make_layer(text, bottom_shapes, phase=TEST, num_tops=None):
    """Build the layer described by LayerParameter text (``type: "ReLU" relu_param {...}``)."""
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not lp.name:
        lp.name = "under_test"
    if not lp.bottom:
        lp.bottom.extend(f"b{i}" for i in range(len(bottom_shapes)))
    if not lp.top:
        lp.top.extend(f"t{i}" for i in range(num_tops or 1))
    return layer_class(lp.type, lp.name)(lp, bottom_shapes, phase)


def _to_storage(layer, x):
    return jnp.moveaxis(x, 1, -1) if layer.channels_last and x.ndim >= 3 else x


def _from_storage(layer, x):
    return jnp.moveaxis(x, -1, 1) if layer.channels_last and x.ndim >= 3 else x


def run_layer(layer, bottoms, params=(), train=False, rng=None, state=(), return_state=False):
    """Forward ``layer`` on NCHW ``bottoms``; returns NCHW tops (differentiable in JAX)."""
    ctx = LayerContext(train, rng, state)
    tops = layer.forward(ctx, [jnp.asarray(p) for p in params],
                         [_to_storage(layer, jnp.asarray(b)) for b in bottoms])
    tops = [_from_storage(layer, t) for t in tops]
    return (tops, ctx.new_state) if return_state else tops


def random_params(layer, seed=0, scale=1.0):
    """Gaussian values for every learned blob of ``layer`` (tests want non-trivial weights)."""
    rs = np.random.RandomState(seed)
    return [scale * rs.randn(*s).astype(np.float32) for s in layer.param_shapes()]


def check_layer_grads(layer, bottoms, params=(), wrt_bottoms=None, train=False, rng=None,
                      eps=1e-4, rtol=1e-4, atol=1e-6, seed=1):
    """Finite-difference check (in float64) of d(sum(w * tops))/d(bottoms, params).

    ``wrt_bottoms``: indices of the bottoms to differentiate (default all).
    Uses random top weights so every output element matters.
    """
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

        def unflatten(leaves):
            return jax.tree_util.tree_unflatten(treedef, leaves)
        flat_analytic = jax.tree_util.tree_leaves(analytic)
        for k, (x, g) in enumerate(zip(flat_args, flat_analytic)):
            numeric = np.zeros_like(x)
            it = np.nditer(x, flags=["multi_index"])
            for _ in it:
                idx = it.multi_index
                plus = [a.copy() for a in flat_args]
                minus = [a.copy() for a in flat_args]
                plus[k][idx] += eps
                minus[k][idx] -= eps
                numeric[idx] = (float(objective(*unflatten(plus))) -
                                float(objective(*unflatten(minus)))) / (2 * eps)
            np.testing.assert_allclose(np.asarray(g), numeric, rtol=rtol, atol=atol,
                                       err_msg=f"gradient of argument {k}")
