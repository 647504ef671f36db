"""The compiled passes behind the pycaffe facade (``netspec.Net``), as pure functions to jit.

- ``forward``: every blob, the loss and the new layer state; with ``vjp=True`` also
  the VJP of the pass (its residuals stay on the device), so that ``backward`` after
  ``forward`` costs one backward pass instead of a forward and a backward.
- ``backward_from_vjp``: param gradients, blob diffs and input diffs from a kept VJP.
- ``backward``: the same, recomputing the forward pass (when no VJP was kept: a
  backward without a forward, or after the inputs changed).

Blob diffs are Caffe's: the gradient of the loss (plus ``sum(seed * blob)`` for top
diffs given to ``backward``) with respect to each blob where it is produced, which is
the gradient with respect to a zero "probe" added there (``compiler.forward(probes=)``).
"""
import jax
import jax.numpy as jnp

from . import compiler


def _probe_names(graph):
    return [n for n in graph.blob_shapes if n not in graph.inputs]


def _zero_probes(graph):
    return {n: jnp.zeros(graph.blob_shapes[n], jnp.float32) for n in _probe_names(graph)}


def forward(plan, train, vjp=False, options=None):
    """``run(params, state, inputs, extents, rng) -> (blobs, loss, new_state, vjp or None)``
    for a ``netspec.buckets.Plan`` (``extents``: its packed extents).  ``options``: more
    keyword arguments of ``compiler.forward`` (precision)."""
    options = options or {}
    graph = plan.graph

    def run(params, state, inputs, extents, rng):
        extents = plan.unpack_extents(extents)
        if not vjp:
            blobs, loss, new_state = compiler.forward(graph, params, state, inputs, train=train, rng=rng,
                                                      extents=extents, **options)
            return blobs, loss, new_state, None

        def pass_(params, probes, inputs):
            blobs, loss, new_state = compiler.forward(graph, params, state, inputs, train=train, rng=rng,
                                                      probes=probes, extents=extents, **options)
            return (blobs, loss), new_state

        (blobs, loss), pullback, new_state = jax.vjp(pass_, params, _zero_probes(graph), inputs, has_aux=True)
        return blobs, loss, new_state, pullback
    return run


def backward_from_vjp(graph, seeded):
    """``run(pullback, seeds) -> (param grads, blob diffs, input diffs)``; ``seeds``:
    ``{blob: top diff}`` for the names in ``seeded``."""
    def run(pullback, seeds):
        cotangents = {n: seeds[n] if n in seeded else jnp.zeros(s, jnp.float32)
                      for n, s in graph.blob_shapes.items()}
        return pullback((cotangents, jnp.ones((), jnp.float32)))
    return run


def backward(plan, train, seeded, options=None):
    """``run(params, state, inputs, extents, seeds, rng) -> (param grads, blob diffs, input
    diffs)``, recomputing the forward pass."""
    options = options or {}
    graph = plan.graph

    def objective(params, probes, state, inputs, extents, seeds, rng):
        blobs, loss, _ = compiler.forward(graph, params, state, inputs, train=train, rng=rng, probes=probes,
                                          keep=seeded, extents=plan.unpack_extents(extents), **options)
        return loss + sum(jnp.sum(seeds[n] * blobs[n]) for n in seeded)

    grad = jax.grad(objective, argnums=(0, 1, 3))

    def run(params, state, inputs, extents, seeds, rng):
        return grad(params, _zero_probes(graph), state, inputs, extents, seeds, rng)
    return run
