"""A checked :class:`~netspec.graph.Graph` as pure JAX functions.

``init_params(graph, seed)`` fills the learned blobs with Caffe's fillers and
``forward(graph, params, state, inputs, ...)`` computes every blob, the weighted loss
and the updated layer state.  Both are pure: params and state are pytrees keyed like
Caffe (``{layer_name: [blob0, blob1, ...]}``, Caffe's blob shapes), so importing and
exporting ``.caffemodel`` files is a plain mapping.  Callers wrap ``forward`` in
``jax.jit`` (the graph is static: one executable per graph, i.e. per input shape).

Layout: layers that declare ``channels_last`` get their >=3-axis bottoms with the
channel axis last, everything else gets Caffe's order; each blob is converted at
most once per layout it is read in, and blobs handed back are in Caffe's order.
"""
import numpy as np
import jax
import jax.numpy as jnp

from .fillers import fill
from .layers import LayerContext


def init_params(graph, seed=0):
    """Learned blobs from the layers' fillers, and zeroed layer state, as NumPy pytrees."""
    rs = np.random.RandomState(seed)
    params = {name: [fill(f, s, rs) for f, s in zip(graph.param_fillers[name], shapes)]
              for name, shapes in graph.param_shapes.items()}
    state = {name: [np.zeros(s, np.float32) for s in shapes]
             for name, shapes in graph.state_shapes.items()}
    return params, state


def _to_channels_last(x):
    return jnp.moveaxis(x, 1, -1)


def _to_caffe_order(x):
    return jnp.moveaxis(x, -1, 1)


class _Blobs:
    """Blob values during one traced pass, each stored in one layout, converted on demand."""

    def __init__(self):
        self.values = {}        # name -> (array, channels_last)
        self.converted = {}     # name -> array in the other layout

    def set(self, name, array, channels_last):
        self.values[name] = (array, channels_last and array.ndim >= 3)
        self.converted.pop(name, None)

    def get(self, name, channels_last):
        array, stored_cl = self.values[name]
        if array.ndim < 3 or stored_cl == channels_last:
            return array
        if name not in self.converted:
            self.converted[name] = _to_channels_last(array) if channels_last else _to_caffe_order(array)
        return self.converted[name]

    def layout(self, name):
        return self.values[name][1]


def forward(graph, params, state, inputs, *, train=False, rng=None, probes=None, keep=None,
            precision="highest"):
    """Run the net.  Returns ``(blobs, loss, new_state)``.

    ``inputs``: ``{blob: array}`` for ``graph.inputs`` (Caffe axis order).
    ``train``: TRAIN-phase computation (Dropout, BatchNorm batch statistics).
    ``rng``: a PRNG key for stochastic layers.  ``probes``: ``{blob: zeros}`` added
    to a blob where it is first produced, so that the gradient with respect to a probe
    is Caffe's blob ``diff``.  ``keep``: names of blobs to return (default all).
    ``loss`` is ``sum(loss_weight * top)`` over every weighted top.  ``precision``:
    matmul/convolution precision inside the pass; "highest" (full float32, as Caffe
    computes; GPUs would otherwise use TF32) unless a caller trades accuracy for speed.
    """
    with jax.default_matmul_precision(precision):
        return _forward(graph, params, state, inputs, train, rng, probes, keep)


def _forward(graph, params, state, inputs, train, rng, probes, keep):
    probes = probes or {}
    blobs = _Blobs()
    loss = jnp.zeros((), jnp.float32)
    new_state = dict(state)
    for index, node in enumerate(graph.nodes):
        if node.is_input:
            tops = [jnp.asarray(inputs[t]) for t in node.tops]
            channels_last = False
        else:
            impl = node.impl
            if impl.elementwise and node.bottoms:
                channels_last = blobs.layout(node.bottoms[0])
            else:
                channels_last = impl.channels_last
            bottoms = [blobs.get(b, channels_last) for b in node.bottoms]
            bottoms = [b if down else jax.lax.stop_gradient(b)
                       for b, down in zip(bottoms, node.propagate_down)]
            layer_params = [params[owner][i] for owner, i in node.param_keys]
            layer_rng = None if rng is None else jax.random.fold_in(rng, index)
            ctx = LayerContext(train, layer_rng, state.get(node.name, ()))
            tops = impl.forward(ctx, layer_params, bottoms)
            if len(tops) != len(node.tops):
                raise AssertionError(f"{node.type} returned {len(tops)} tops, expected {len(node.tops)}")
            if ctx.new_state is not None:
                new_state[node.name] = ctx.new_state
        for name, top, weight in zip(node.tops, tops, node.loss_weights):
            if name in probes and name not in node.bottoms:
                probe = probes[name]
                top = top + (_to_channels_last(probe) if channels_last and probe.ndim >= 3 else probe)
            if weight:
                loss = loss + weight * jnp.sum(top).astype(jnp.float32)
            blobs.set(name, top, channels_last)
    names = graph.blob_shapes if keep is None else keep
    return {name: blobs.get(name, False) for name in names}, loss, new_state
