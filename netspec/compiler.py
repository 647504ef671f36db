"""A checked :class:`~netspec.graph.Graph` as pure JAX functions.

``init_params(graph, seed)`` fills the learned blobs with Caffe's fillers and
``forward(graph, params, state, inputs, ...)`` computes every blob, the weighted loss
and the updated layer state.  Both are pure: params and state are pytrees keyed like
Caffe (``{layer_name: [blob0, blob1, ...]}``, Caffe's blob shapes), so importing and
exporting ``.caffemodel`` files is a plain mapping.

State has two parts per layer (``netspec.layers.base``): the blobs Caffe stores
(``graph.state_shapes``: BatchNorm statistics; what ``init_params`` gives and
caffemodels hold), then the values carried from one pass to the next and never saved
(``graph.carried_shapes``: LSTM/RNN's final h, c; ``init_carried`` gives the zeros of
a first pass, ``join_state``/``split_state`` put the parts together and apart).  A
caller that threads ``new_state`` into the next pass gets Caffe's recurrent carry; a
layer whose carried values are absent from ``state`` starts from zeros.

Callers wrap ``forward`` in ``jax.jit`` (the graph is static: one executable per graph,
i.e. per input shape).

Layout: layers that declare ``channels_last`` get their >=3-axis bottoms with the
channel axis last, everything else gets Caffe's order; each blob is converted at
most once per layout it is read in, and blobs handed back are in Caffe's order.

Padded execution: with ``extents`` (``{input blob: (h, w)}``, runtime int32) the graph
is a bucket-shaped one whose inputs hold each image at the top left; every spatial
blob then carries its true extent, propagated with Caffe's size formulas
(``Layer.top_extents``), and the cells outside it are overwritten before any layer
that would read them (``Layer.spatial_fill``), so that everything inside equals the
exact-shape computation.  See ``netspec.buckets``.
"""
import numpy as np
import jax
import jax.numpy as jnp

from .fillers import fill
from .errors import NetspecError
from .layers import LayerContext
from .layers.extents import fill_outside


def init_params(graph, seed=0):
    """Learned blobs from the layers' fillers, and zeroed layer state, as NumPy pytrees."""
    rs = np.random.RandomState(seed)
    params = {name: [fill(f, s, rs) for f, s in zip(graph.param_fillers[name], shapes)]
              for name, shapes in graph.param_shapes.items()}
    state = {name: [np.zeros(s, np.float32) for s in shapes]
             for name, shapes in graph.state_shapes.items()}
    return params, state


def assign_layer_blobs(graph, params, state, layer_blobs, where, convert=None):
    """Write Caffe's per-layer blobs (``{layer: [array, ...]}``, as a caffemodel holds them:
    the learned blobs a layer uses, in its ``param_keys`` order, then its statistics) into
    the ``params``/``state`` trees (lists per layer, modified in place).  ``convert(array,
    shape, what)`` may adapt each array to the blob's shape (default: use it as it is, and
    require that shape); ``where`` names the source in errors."""
    def as_is(array, shape, what):
        if tuple(np.shape(array)) != tuple(shape):
            raise NetspecError(f"{what} has shape {tuple(np.shape(array))}, the net's is {tuple(shape)}")
        return array
    convert = convert or as_is
    for node in graph.nodes:
        arrays = layer_blobs.get(node.name)
        if not arrays:
            continue
        targets = [(params, graph.param_shapes, owner, i) for owner, i in node.param_keys]
        targets += [(state, graph.state_shapes, node.name, i)
                    for i in range(len(graph.state_shapes.get(node.name, ())))]
        if len(arrays) != len(targets):
            raise NetspecError(f'{where}: layer "{node.name}" has {len(arrays)} blobs there but {len(targets)} '
                               'in the net; the weights do not fit this net')
        for index, ((tree, shapes, key, i), array) in enumerate(zip(targets, arrays)):
            tree[key][i] = convert(array, shapes[key][i], f'{where}: layer "{node.name}" blob {index}')


def init_carried(graph):
    """Zeros for every carried value (``graph.carried_shapes``): a first pass's start."""
    return {name: [np.zeros(s, np.float32) for s in shapes]
            for name, shapes in graph.carried_shapes.items()}


def join_state(graph, stored, carried):
    """The ``state`` pytree of ``forward``: per layer, its stored blobs (``stored``, shaped
    like ``graph.state_shapes``) followed by its carried values.  A carried entry that is
    missing or whose shapes differ from ``graph.carried_shapes`` (the batch size changed)
    becomes zeros, as Caffe's recurrent layers restart after such a reshape."""
    state = {name: list(arrays) for name, arrays in stored.items()}
    for name, shapes in graph.carried_shapes.items():
        values = list((carried or {}).get(name, ()))
        if [tuple(np.shape(v)) for v in values] != [tuple(s) for s in shapes]:
            values = [np.zeros(s, np.float32) for s in shapes]
        state[name] = state.get(name, []) + values
    return state


def split_state(graph, state):
    """``(stored, carried)``: a ``state`` pytree split into the blobs Caffe stores
    (``graph.state_shapes``) and the carried values (``graph.carried_shapes``)."""
    stored, carried = {}, {}
    for name, arrays in state.items():
        n = len(graph.state_shapes.get(name, ()))
        if name in graph.carried_shapes:
            carried[name] = list(arrays[n:])
            if n:
                stored[name] = list(arrays[:n])
        else:
            stored[name] = list(arrays)
    return stored, carried


def _to_channels_last(x):
    return jnp.moveaxis(x, 1, -1)


def _to_caffe_order(x):
    return jnp.moveaxis(x, -1, 1)


class _Blobs:
    """Blob values during one traced pass, each stored in one layout, converted on demand."""

    def __init__(self):
        self.values = {}        # name -> (array, channels_last)
        self.converted = {}     # name -> array in the other layout
        self.extents = {}       # name -> true (h, w) in a padded pass
        self.filled = {}        # (name, channels_last, fill) -> array filled outside its extent

    def set(self, name, array, channels_last, extent=None):
        self.values[name] = (array, channels_last and array.ndim >= 3)
        self.converted.pop(name, None)
        self.filled = {k: v for k, v in self.filled.items() if k[0] != name}
        if extent is None:
            self.extents.pop(name, None)
        else:
            self.extents[name] = extent

    def get_filled(self, name, channels_last, fill):
        """The blob with the cells outside its true extent set to ``fill`` (once per fill)."""
        array = self.get(name, channels_last)
        if fill is None or name not in self.extents or array.ndim != 4:
            return array
        key = (name, channels_last, float(fill))
        if key not in self.filled:
            h_axis = 1 if channels_last else 2
            self.filled[key] = fill_outside(array, self.extents[name], h_axis, fill)
        return self.filled[key]

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
            precision="highest", extents=None, compute_dtype=None):
    """Run the net.  Returns ``(blobs, loss, new_state)``.

    ``state``: per layer, its stored blobs then its carried values (see the module
    docstring); ``new_state`` is ``state`` with the layers' updates (stored blobs in
    TRAIN passes, carried values in every pass).  No gradient flows into carried values.
    ``inputs``: ``{blob: array}`` for ``graph.inputs`` (Caffe axis order).
    ``train``: TRAIN-phase computation (Dropout, BatchNorm batch statistics).
    ``rng``: a PRNG key for stochastic layers.  ``probes``: ``{blob: zeros}`` added
    to a blob where it is first produced, so that the gradient with respect to a probe
    is Caffe's blob ``diff``.  ``keep``: names of blobs to return (default all).
    ``loss`` is ``sum(loss_weight * top)`` over every weighted top.  ``precision``:
    matmul/convolution precision inside the pass; "highest" (full float32, as Caffe
    computes; GPUs would otherwise use TF32) unless a caller trades accuracy for speed.
    ``extents``: ``{input blob: (h, w)}`` for a padded pass (see the module docstring),
    optionally with the extents of other padded blobs too (``netspec.buckets.Plan`` gives
    them all, computed on the host); blobs are returned at the graph's (bucket) shapes,
    exact inside their extents.
    ``compute_dtype``: e.g. ``jnp.bfloat16`` for mixed precision: each layer gets its
    float bottoms in that type, except layers marked ``float32_compute`` (losses,
    softmax, BatchNorm, LRN); params stay float32 masters that layers cast at use (so
    convolution weight gradients accumulate in float32); the loss sums in float32 and
    blobs are returned in float32.
    """
    extents = {name: (e[0], e[1]) for name, e in (extents or {}).items()}
    with jax.default_matmul_precision(precision):
        return _forward(graph, params, state, inputs, train, rng, probes, keep, extents, compute_dtype)


#: What users choose (``--precision``): float32 with full-precision matmuls (Caffe's
#: arithmetic), float32 with TF32 tensor-core matmuls (GPUs), or bfloat16 compute with
#: float32 master weights, loss and statistics.
PRECISIONS = {
    "fp32": {"precision": "highest", "compute_dtype": None},
    "tf32": {"precision": "tensorfloat32", "compute_dtype": None},
    "bf16": {"precision": "default", "compute_dtype": jnp.bfloat16},
}


def precision_options(name):
    """``forward``'s keyword arguments for a precision name (fp32, tf32, bf16)."""
    try:
        return dict(PRECISIONS[name or "fp32"])
    except KeyError:
        raise NetspecError(f'precision "{name}": use one of {", ".join(PRECISIONS)}') from None


def _cast(x, dtype):
    if dtype is None or not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
        return x
    return x.astype(dtype)


def blob_extents(graph, input_extents):
    """The true extent of every padded blob, ``{name: (h, w)}``, from the inputs' (Python
    ints or traced scalars): the propagation ``forward`` does, without the compute."""
    known = dict(input_extents)
    for node in graph.nodes:
        if node.is_input:
            continue
        bottom = [known.get(b) for b in node.bottoms]
        if any(e is not None for e in bottom):
            for t, e in zip(node.tops, node.impl.top_extents(bottom)):
                if e is not None:
                    known[t] = e
    return known


def _forward(graph, params, state, inputs, train, rng, probes, keep, extents, compute_dtype):
    probes = probes or {}
    blobs = _Blobs()
    loss = jnp.zeros((), jnp.float32)
    new_state = dict(state)
    for index, node in enumerate(graph.nodes):
        if node.is_input:
            tops = [jnp.asarray(inputs[t]) for t in node.tops]
            channels_last = False
            top_extents = [extents.get(t) for t in node.tops]
        else:
            impl = node.impl
            if impl.elementwise and node.bottoms:
                channels_last = blobs.layout(node.bottoms[0])
            else:
                channels_last = impl.channels_last
            bottom_extents = [blobs.extents.get(b) for b in node.bottoms]
            padded = any(e is not None for e in bottom_extents)
            if padded and not impl.spatially_local:
                raise NetspecError(f'layer "{node.name}" ({node.type}) is not local in H and W; '
                                   'the net cannot run padded (use exact shapes: buckets off)')
            bottoms = [blobs.get_filled(b, channels_last, impl.spatial_fill(i)) if padded
                       else blobs.get(b, channels_last) for i, b in enumerate(node.bottoms)]
            bottoms = [b if down else jax.lax.stop_gradient(b)
                       for b, down in zip(bottoms, node.propagate_down)]
            layer_params = [params[owner][i] for owner, i in node.param_keys]
            if compute_dtype is not None:   # params stay float32: layers cast them at use
                dtype = jnp.float32 if impl.float32_compute else compute_dtype
                bottoms = [_cast(b, dtype) for b in bottoms]
            layer_rng = None if rng is None else jax.random.fold_in(rng, index)
            layer_state = list(state.get(node.name, ()))
            n_stored = len(graph.state_shapes.get(node.name, ()))
            carried = [jax.lax.stop_gradient(jnp.asarray(v)) for v in layer_state[n_stored:]]
            ctx = LayerContext(train, layer_rng, layer_state[:n_stored],
                               bottom_extents if padded else None, carried)
            tops = impl.forward(ctx, layer_params, bottoms)
            if len(tops) != len(node.tops):
                raise AssertionError(f"{node.type} returned {len(tops)} tops, expected {len(node.tops)}")
            if ctx.new_state is not None or ctx.new_carried is not None:
                stored = ctx.new_state if ctx.new_state is not None else layer_state[:n_stored]
                kept = ctx.new_carried if ctx.new_carried is not None else layer_state[n_stored:]
                new_state[node.name] = list(stored) + [
                    jax.lax.stop_gradient(v).astype(jnp.float32) for v in kept]
            if not padded:
                top_extents = [None] * len(tops)
            elif any(t in extents for t in node.tops):      # given: no size formulas traced
                top_extents = [extents.get(t) for t in node.tops]
            else:
                top_extents = impl.top_extents(bottom_extents)
        for name, top, weight, extent in zip(node.tops, tops, node.loss_weights, top_extents):
            if name in probes and name not in node.bottoms:
                probe = _cast(probes[name], top.dtype)
                top = top + (_to_channels_last(probe) if channels_last and probe.ndim >= 3 else probe)
            if weight:
                counted = top if extent is None or top.ndim != 4 else \
                    fill_outside(top, extent, 1 if channels_last else 2, 0)
                loss = loss + weight * jnp.sum(counted).astype(jnp.float32)
            blobs.set(name, top, channels_last, extent)
    names = graph.blob_shapes if keep is None else keep
    returned = {name: blobs.get(name, False) for name in names}
    if compute_dtype is not None:
        returned = {name: _cast(value, jnp.float32) for name, value in returned.items()}
    return returned, loss, new_state
