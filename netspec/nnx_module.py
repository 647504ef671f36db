"""``CaffeNNXModule``: a Caffe-defined net as a ``flax.nnx`` module.

The NNX counterpart of ``netspec.flax_module.CaffeModule``: the module owns its
variables, built eagerly from a prototxt (or ``NetParameter``) and an optional
``.caffemodel``::

    from flax import nnx
    import optax

    model = CaffeNNXModule("net.prototxt", "net.caffemodel", outputs="fc8")
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x, train=True, rngs=nnx.Rngs(dropout=0))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

Arrays are in Caffe's axis order (N, C, H, W).  Variables:

- ``model.params``: ``{layer_name: [nnx.Param, ...]}``, Caffe's learned blobs in Caffe's
  shapes (the tree of ``netspec.compiler.init_params`` and ``Net.param_tree()``: shared
  blobs appear once, under the layer that owns them); from ``weights`` when given, else
  from the prototxt's fillers with NumPy seed ``seed`` (as ``Net(model, seed=seed)``).
- ``model.batch_stats``: ``{layer_name: [nnx.BatchStat, ...]}`` for layers with running
  statistics (BatchNorm), updated by ``train=True`` calls.

``model.param_tree()`` / ``model.state_tree()`` give them as plain ``{layer: [array]}``
pytrees (``Net.set_param_tree`` takes them back).  The net is shaped for the inputs each
call gets (the learned blobs' shapes must not depend on it), so a fully convolutional net
accepts any input size.  Recurrent layers start every call from zero h/c, and Python
layers are not supported (use ``netspec.Net`` for both).
"""
import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import compiler
from .errors import NetspecError
from .flax_module import _input_names, _load_weights, _net_param, _output_names
from .graph import build_graph
from .layers import TEST

_GRAPHS = {}        # (net text key, phase, level, stages, shapes) -> Graph; small nets, few shapes
_MAX_GRAPHS = 64


class CaffeNNXModule(nnx.Module):
    """A compiled netspec net as a Flax NNX module.

    ``model``: prototxt path or ``NetParameter``.  ``weights``: optional ``.caffemodel``
    path.  ``phase``: ``netspec.TRAIN`` or ``netspec.TEST`` (which layers the net keeps).
    ``outputs``: a blob name (calls return that array) or a sequence of names (calls
    return ``{name: array}``); empty: the net's outputs, as a dict.  ``level``/``stages``:
    the NetState.  ``seed``: NumPy seed of the fillers.  ``input_shapes``: ``{blob:
    shape}`` used to shape the variables when the Input layers do not declare shapes.
    """

    def __init__(self, model, weights: Optional[str] = None, *, phase: int = TEST,
                 outputs: Union[str, Sequence[str]] = (), level: int = 0, stages: Sequence[str] = (),
                 seed: int = 0, input_shapes=None):
        net_param = _net_param(model)
        # static attributes are hashable (nnx.jit keys its cache on them): the net as bytes
        self.net_bytes = net_param.SerializeToString(deterministic=True)
        self.phase, self.level, self.stages = int(phase), int(level), tuple(stages)
        self.outputs = outputs if isinstance(outputs, str) else tuple(outputs)
        self._key = (self.net_bytes, self.phase, self.level, self.stages)
        self.input_names = tuple(_input_names(net_param, self.phase, self.level, self.stages))
        graph = self.graph_for(dict(input_shapes or {}))
        params, state = compiler.init_params(graph, seed)
        if weights:
            _load_weights(graph, params, state, str(weights))
        self.params = nnx.data({name: [nnx.Param(jnp.asarray(a, jnp.float32)) for a in arrays]
                                for name, arrays in params.items()})
        self.batch_stats = nnx.data({name: [nnx.BatchStat(jnp.asarray(a, jnp.float32)) for a in arrays]
                                     for name, arrays in state.items()})

    def graph_for(self, input_shapes):
        """The checked graph for these input shapes (``{blob: shape}``; missing ones: the
        shapes the Input layers declare)."""
        key = self._key + (tuple(sorted((k, tuple(int(d) for d in v)) for k, v in input_shapes.items())),)
        graph = _GRAPHS.get(key)
        if graph is None:
            graph = build_graph(self.net_param, self.phase, self.level, self.stages,
                                input_shapes=input_shapes)
            if len(_GRAPHS) >= _MAX_GRAPHS:
                _GRAPHS.pop(next(iter(_GRAPHS)))
            _GRAPHS[key] = graph
        return graph

    @property
    def net_param(self):
        """The net as a ``caffe_pb2.NetParameter``."""
        return _parse_bytes(self.net_bytes)

    def param_tree(self):
        """The learned blobs as ``{layer: [array, ...]}``."""
        return {name: [p[...] for p in blobs] for name, blobs in self.params.items()}

    def state_tree(self):
        """The running statistics as ``{layer: [array, ...]}``."""
        return {name: [s[...] for s in blobs] for name, blobs in self.batch_stats.items()}

    def _inputs_dict(self, inputs):
        if isinstance(inputs, dict):
            return {name: jnp.asarray(value, jnp.float32) for name, value in inputs.items()}
        if len(self.input_names) != 1:
            raise NetspecError(f"CaffeNNXModule: the net has inputs {list(self.input_names)}; "
                               "pass a dict {blob: array}")
        return {self.input_names[0]: jnp.asarray(inputs, jnp.float32)}

    def __call__(self, inputs, *, train=False, rngs=None, extents=None):
        """Run the net on ``inputs`` (an array for a one-input net, or ``{blob: array}``).
        ``train``: TRAIN computation (BatchNorm batch statistics, which also updates
        ``batch_stats``; Dropout).  ``rngs``: ``nnx.Rngs`` (its ``dropout`` stream, else its
        default) or a PRNG key, for Dropout in ``train`` calls.  ``extents``: as
        ``CaffeModule``'s (the true (h, w) of inputs padded to a bucket)."""
        inputs = self._inputs_dict(inputs)
        if extents is not None and not isinstance(extents, dict):
            extents = {name: extents for name, x in inputs.items() if x.ndim == 4}
        graph = self.graph_for({name: tuple(x.shape) for name, x in inputs.items()})
        missing = [name for name in graph.inputs if name not in inputs]
        if missing:
            raise NetspecError(f"CaffeNNXModule: no value given for input blob(s) {missing}")
        for name, shapes in graph.param_shapes.items():
            have = [tuple(p.shape) for p in self.params.get(name, ())]
            if have != [tuple(s) for s in shapes]:
                raise NetspecError(f'CaffeNNXModule: layer "{name}" needs blob shapes {shapes} for these '
                                   f"inputs but holds {have}; its parameter shapes depend on the input size")
        wanted = _output_names(self.outputs, graph, "CaffeNNXModule")
        rng = _dropout_key(rngs) if train else None
        params = {name: [self.params[name][i][...] for i in range(len(shapes))]
                  for name, shapes in graph.param_shapes.items()}
        state = {name: [s[...] for s in self.batch_stats[name]] for name in graph.state_shapes}
        blobs, _, new_state = compiler.forward(graph, params, state, inputs, train=train, rng=rng,
                                               keep=wanted, extents=extents)
        if train:
            for name in graph.state_shapes:
                for variable, value in zip(self.batch_stats[name], new_state[name]):
                    variable[...] = jax.lax.stop_gradient(value)
        if isinstance(self.outputs, str):
            return blobs[self.outputs]
        return blobs


@functools.lru_cache(maxsize=16)
def _parse_bytes(data):
    from .proto import caffe_pb2
    return caffe_pb2.NetParameter.FromString(data)


def _dropout_key(rngs):
    if rngs is None:
        return None
    if isinstance(rngs, nnx.Rngs):
        return rngs.dropout() if "dropout" in rngs else rngs()
    if isinstance(rngs, (int, np.integer)):
        return jax.random.PRNGKey(int(rngs))
    return rngs
