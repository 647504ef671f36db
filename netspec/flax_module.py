"""``CaffeModule``: a Caffe-defined net as a ``flax.linen`` module.

Lets a Caffe backbone (a prototxt, optionally with a ``.caffemodel``) sit inside a
Flax model::

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            features = CaffeModule("backbone.prototxt", outputs="pool5",
                                   weights="backbone.caffemodel")(x, train=train)
            return nn.Dense(10)(features.reshape(len(x), -1))

Arrays are in Caffe's axis order (N, C, H, W).  Variables:

- ``params``: ``{layer_name: [blob, ...]}``, Caffe's learned blobs and shapes (the
  same tree as ``netspec.compiler.init_params`` and ``Net.param_tree()``); initialized
  from ``weights`` when given, else from the prototxt's fillers with NumPy seed
  ``seed`` (so ``Net(model, seed=s)`` starts from the same values; the ``params``
  PRNG key is not used).
- ``batch_stats``: ``{layer_name: [blob, ...]}`` for layers with running statistics
  (BatchNorm).  Updated in ``train=True`` calls; make the collection mutable then.
- Dropout in ``train=True`` calls draws from the ``dropout`` PRNG stream.
- Recurrent layers (LSTM/RNN without ``expose_hidden``) start every call from zero
  h/c: the values Caffe carries from one pass to the next are not kept here (use
  ``expose_hidden`` to pass states explicitly, or ``netspec.Net``, which carries them).

The net is shaped for the inputs it is called with, so a fully convolutional net
accepts any input size.  Python layers are not supported here (use ``netspec.Net``).

Any size without a compile per size (``netspec.buckets``): pad a batch of images at the
bottom/right to a bucket shape and pass their true size as ``extents=(h, w)`` (traced
values are fine, so one jitted training step serves every size in the bucket); the
outputs are exact inside their own true extents, which
``netspec.compiler.blob_extents(module.graph_for(shapes), {"data": (h, w)})`` gives.
"""
import functools
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from . import compiler
from .errors import NetspecError
from .graph import build_graph, filter_layers
from .layers import TEST


@functools.lru_cache(maxsize=32)
def _read_net(path):
    from .prototxt import read_net
    return read_net(path)


def _net_param(model):
    from .proto import caffe_pb2
    if isinstance(model, caffe_pb2.NetParameter):
        return model
    return _read_net(str(model))


def _input_names(net, phase, level, stages):
    """The tops of the Input layers the NetState keeps, in layer order."""
    from .proto import caffe_pb2
    state = caffe_pb2.NetState(phase=phase, level=level)
    state.stage.extend(stages)
    return [t for lp in filter_layers(net, state) if lp.type == "Input" for t in lp.top]


def _output_names(outputs, graph, who):
    """The blobs a module returns: ``outputs`` (a name or names), default the net's outputs."""
    names = [outputs] if isinstance(outputs, str) else list(outputs or graph.outputs)
    unknown = [n for n in names if n not in graph.blob_shapes]
    if unknown:
        raise NetspecError(f"{who}: the net has no blob(s) {unknown}; outputs must name blobs "
                           f"of the net (e.g. {', '.join(graph.outputs)})")
    return tuple(names)


def _load_weights(graph, params, state, path):
    """Copy a ``.caffemodel`` into the ``params``/``state`` trees by layer name (as ``Net.copy_from``)."""
    from .caffemodel import load_weights, match_blob_shape
    compiler.assign_layer_blobs(graph, params, state, load_weights(path), path,
                                lambda a, shape, what: np.array(match_blob_shape(a, shape, what), np.float32))


class CaffeModule(nn.Module):
    """A compiled netspec net as a Flax module.

    ``model``: prototxt path or ``NetParameter``.  ``phase``: ``netspec.TRAIN`` or
    ``netspec.TEST`` (which layers the net keeps).  ``outputs``: a blob name (the call
    returns that array) or a sequence of names (the call returns ``{name: array}``);
    empty: the net's outputs, as a dict.  ``weights``: optional ``.caffemodel`` path
    used for initialization.  ``level``/``stages``: the NetState.  ``seed``: NumPy
    seed for the fillers when there are no weights.
    """
    model: Any
    phase: int = TEST
    outputs: Union[str, Sequence[str]] = ()
    weights: Optional[str] = None
    level: int = 0
    stages: Sequence[str] = ()
    seed: int = 0

    def graph_for(self, input_shapes):
        """The checked graph for these input shapes (``{blob: shape}``)."""
        return build_graph(_net_param(self.model), self.phase, self.level, tuple(self.stages),
                           input_shapes=input_shapes)

    def _inputs_dict(self, inputs):
        if isinstance(inputs, dict):
            return {name: jnp.asarray(value, jnp.float32) for name, value in inputs.items()}
        names = _input_names(_net_param(self.model), self.phase, self.level, tuple(self.stages))
        if len(names) != 1:
            raise NetspecError(f"CaffeModule: the net has inputs {names}; pass a dict {{blob: array}}")
        return {names[0]: jnp.asarray(inputs, jnp.float32)}

    @nn.compact
    def __call__(self, inputs, train=False, extents=None):
        """Run the net on ``inputs`` (an array for a one-input net, or ``{blob: array}``).
        ``extents``: the true (h, w) of padded inputs, one pair (applied to every 4-axis
        input) or ``{blob: (h, w)}``; see the module docstring."""
        inputs = self._inputs_dict(inputs)
        if extents is not None and not isinstance(extents, dict):
            extents = {name: extents for name, x in inputs.items() if x.ndim == 4}
        graph = self.graph_for({name: tuple(x.shape) for name, x in inputs.items()})
        missing = [name for name in graph.inputs if name not in inputs]
        if missing:
            raise NetspecError(f"CaffeModule: no value given for input blob(s) {missing}")
        initial = functools.lru_cache(maxsize=1)(lambda: self._initial_values(graph))
        params = {name: self.param(name, lambda rng, name=name: initial()[0][name])
                  for name in graph.param_shapes}
        stats = {name: self.variable("batch_stats", name, lambda name=name: initial()[1][name])
                 for name in graph.state_shapes}
        rng = self.make_rng("dropout") if train and self.has_rng("dropout") else None
        wanted = _output_names(self.outputs, graph, "CaffeModule")
        blobs, _, new_state = compiler.forward(
            graph, params, {name: v.value for name, v in stats.items()}, inputs,
            train=train, rng=rng, keep=wanted, extents=extents)
        if train and not self.is_initializing():
            for name, variable in stats.items():
                variable.value = new_state[name]
        if isinstance(self.outputs, str):
            return blobs[self.outputs]
        return blobs


    def _initial_values(self, graph):
        params, state = compiler.init_params(graph, self.seed)
        if self.weights:
            _load_weights(graph, params, state, str(self.weights))
        return params, state
