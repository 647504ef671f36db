"""A Caffe net's forward pass as serialized StableHLO (``jax.export``), weights beside it.

Choice: the weights are an *argument* of the exported function, not constants baked into
it.  ``OUT`` holds the bytes of ``jax.export.Exported.serialize()``; the weights go to
``weights_path(OUT)`` (``OUT`` without its extension + ``.weights.safetensors``), a
netspec safetensors file (``to_safetensors``: tensors ``"<layer>/<index>"`` in Caffe's
shapes, the deploy prototxt in its metadata).  So the program stays small whatever the
net's size (no 2 GB protobuf limit, weights replaceable after fine-tuning with the same
shapes), and the weights file is the same one ``--format safetensors`` writes.

The exported function is ``f(weights, inputs) -> outputs``: ``weights`` is the dict of
the safetensors file, ``inputs`` ``{input blob: float32 array}`` at the exported shapes
(fixed: the graph is shaped for them), outputs ``{output blob: array}`` (the net's
outputs, Caffe's axis order).  It is lowered for CPU, CUDA and TPU where possible::

    exported = jax.export.deserialize(open("net.stablehlo", "rb").read())
    weights = safetensors.numpy.load_file("net.weights.safetensors")
    outputs = exported.call(weights, {"data": x})

(``load_stablehlo(path)`` does these two loads.)
"""
import os

import numpy as np

from . import caffe_weights, max_abs_difference, reference_outputs, split_weights, trees_from_weights
from ..errors import NetspecError

PLATFORMS = ("cpu", "cuda", "tpu")


def weights_path(out_path):
    return os.path.splitext(str(out_path))[0] + ".weights.safetensors"


def forward_function(graph):
    """``f(weights, inputs) -> {output: array}`` for ``graph`` (TEST computation)."""
    from .. import compiler

    def f(weights, inputs):
        params, state = trees_from_weights(graph, split_weights(weights), "StableHLO export")
        blobs, _, _ = compiler.forward(graph, params, state, inputs, train=False, keep=tuple(graph.outputs))
        return blobs
    return f


def _export(graph, weights, inputs):
    import jax
    from jax import export as jax_export
    function = jax.jit(forward_function(graph))
    specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.float32), (weights, inputs))
    try:
        return jax_export.export(function, platforms=PLATFORMS)(*specs)
    except Exception:                       # a platform this jaxlib cannot lower for: this one only
        return jax_export.export(function)(*specs)


def write(net, out_path, input_shapes):
    from . import input_shapes_of
    from .to_safetensors import write as write_safetensors
    shapes = dict(input_shapes_of(net), **(input_shapes or {}))
    weights = caffe_weights(net)
    inputs = {name: np.zeros(shapes[name], np.float32) for name in net.inputs}
    graph = net.graph_for(shapes)
    exported = _export(graph, weights, inputs)
    data = exported.serialize()
    with open(out_path, "wb") as f:
        f.write(data)
    write_safetensors(net, weights_path(out_path), shapes)
    return (f"StableHLO of the forward pass for {', '.join(exported.platforms)} ({len(data)} bytes), "
            f"weights in {weights_path(out_path)}")


def load_stablehlo(path):
    """``(exported, weights)``: the deserialized ``jax.export.Exported`` and its weights
    dict; call ``exported.call(weights, {input blob: array})``."""
    from jax import export as jax_export
    from . import require
    numpy_io = require("safetensors.numpy", "StableHLO export")
    try:
        with open(path, "rb") as f:
            exported = jax_export.deserialize(bytearray(f.read()))
    except OSError as e:
        raise NetspecError(f"{path}: cannot read ({e.strerror})") from None
    except Exception as e:
        raise NetspecError(f"{path}: not a serialized jax.export module ({type(e).__name__})") from None
    if not os.path.isfile(weights_path(path)):
        raise NetspecError(f"{path}: its weights file {weights_path(path)} is missing")
    return exported, numpy_io.load_file(weights_path(path))


def check(net, out_path, inputs):
    expected = reference_outputs(net, inputs)
    exported, weights = load_stablehlo(out_path)
    got = exported.call(weights, {name: np.asarray(v, np.float32) for name, v in inputs.items()})
    return max_abs_difference(expected, {k: np.asarray(v) for k, v in got.items()})
