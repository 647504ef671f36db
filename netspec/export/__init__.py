"""Caffe nets and weights in today's formats (``netspec export``).

Each format is a module named in ``FORMATS`` with

- ``write(net, out_path, input_shapes) -> str``: write the format; returns a short
  description of what was written.  ``net`` is a ``netspec.Net`` in the TEST phase
  with its weights loaded and shaped for ``input_shapes`` (``{input blob: shape}``);
- ``check(net, out_path, inputs) -> float``: load what was written with the format's own
  library, run it on ``inputs`` (``{input blob: array}``) and return the largest
  absolute difference from ``net``'s outputs (``reference_outputs``).

The helpers here build that net (``build_net``), parse ``--input-shape`` values
(``parse_input_shapes``), draw the random inputs (``random_inputs``), and import a
format's library with a one-line error when the ``export`` extra is missing
(``require``).
"""
import importlib

import numpy as np

from ..errors import NetspecError

FORMATS = {
    "safetensors": "netspec.export.to_safetensors",
    "orbax": "netspec.export.to_orbax",
    "onnx": "netspec.export.to_onnx",
    "stablehlo": "netspec.export.to_stablehlo",
}

INSTALL_HINT = "pip install 'netspec[export]'"


def require(module, what=None):
    """Import ``module`` (a format's library); a one-line ``NetspecError`` when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise NetspecError(f"{what or module} needs the Python package {module.split('.')[0]!r} "
                           f"({e}); install it with {INSTALL_HINT}") from None


def format_module(name):
    """The module writing format ``name``."""
    if name not in FORMATS:
        raise NetspecError(f'export format "{name}": use one of {", ".join(FORMATS)}')
    try:
        return importlib.import_module(FORMATS[name])
    except ModuleNotFoundError as e:
        if e.name == FORMATS[name]:
            raise NetspecError(f'export format "{name}" is not available in this netspec '
                               f'(no module {FORMATS[name]})') from None
        if e.name and e.name.split(".")[0] != "netspec":
            raise NetspecError(f'export format "{name}" needs the Python package {e.name.split(".")[0]!r}; '
                               f"install it with {INSTALL_HINT}") from None
        raise


def parse_input_shapes(values, input_names):
    """``--input-shape`` values -> ``{input blob: shape}``.

    Each value is ``N,C,H,W`` (the inputs in order: the first value for the first input
    blob, ...) or ``name=N,C,H,W``."""
    shapes, positional = {}, []
    for value in values or ():
        name, _, dims = value.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise NetspecError(f"--input-shape {value}: give positive sizes, e.g. 1,3,224,224 or data=1,3,224,224")
        if name:
            if name not in input_names:
                raise NetspecError(f'--input-shape {value}: the net has no input blob "{name}" '
                                   f"(inputs: {', '.join(input_names) or 'none'})")
            shapes[name] = shape
        else:
            positional.append(shape)
    free = [n for n in input_names if n not in shapes]
    if len(positional) > len(free):
        raise NetspecError(f"--input-shape: {len(positional)} unnamed shapes for the input blob(s) "
                           f"{', '.join(free) or 'none'}; name them (blob=N,C,H,W)")
    shapes.update(zip(free, positional))
    return shapes


def build_net(model, weights=None, input_shapes=None, phase=None):
    """A ``netspec.Net`` for export: TEST phase (unless ``phase``), ``weights`` loaded,
    its input blobs reshaped to ``input_shapes`` (``{blob: shape}``; default: the
    shapes the Input layers declare)."""
    from .. import Net, TEST
    net = Net(model, weights=weights, phase=TEST if phase is None else phase, buckets="off")
    if not net.inputs:
        raise NetspecError(f'net "{net.name}": export needs a deploy net whose inputs are Input layers '
                           "(data layers read databases, which exported models cannot)")
    hosted = [name for name in net.graph.inputs if name not in net.inputs]
    if hosted:
        raise NetspecError(f'net "{net.name}": the blob(s) {", ".join(hosted)} come from data layers; '
                           "export a deploy net whose inputs are Input layers")
    if input_shapes:
        for name, shape in input_shapes.items():
            if name not in net.inputs:
                raise NetspecError(f'net "{net.name}" has no input blob "{name}" (inputs: {", ".join(net.inputs)})')
            net.blobs[name].reshape(*shape)
        net.reshape()
    return net


def input_shapes_of(net):
    """``{input blob: shape}`` of a net as it is shaped now."""
    return {name: tuple(net.blobs[name].shape) for name in net.inputs}


def random_inputs(net, seed=0):
    """Standard-normal float32 values for every input blob of ``net``, reproducible."""
    rs = np.random.RandomState(seed)
    return {name: rs.randn(*shape).astype(np.float32) for name, shape in input_shapes_of(net).items()}


def reference_outputs(net, inputs):
    """``net``'s outputs on ``inputs``: ``{output blob: array}``, host copies."""
    out = net.forward(**inputs)
    return {name: np.array(value, np.float32) for name, value in out.items()}


def max_abs_difference(expected, actual):
    """The largest absolute difference over the blobs of ``expected`` (each must be in ``actual``)."""
    worst = 0.0
    for name, value in expected.items():
        if name not in actual:
            raise NetspecError(f'the exported model has no output "{name}" (it has {", ".join(actual)})')
        got = np.asarray(actual[name], np.float32)
        if got.shape != value.shape:
            raise NetspecError(f'output "{name}": shape {got.shape} in the exported model, {value.shape} in netspec')
        if value.size:
            worst = max(worst, float(np.max(np.abs(got - value))))
    return worst


def deploy_net_param(net, input_shapes=None):
    """The kept layers of ``net`` as a deploy ``NetParameter``: Input layers declare
    ``input_shapes`` (default: the net's current input shapes); no phase marks."""
    shapes = dict(input_shapes_of(net))
    shapes.update(input_shapes or {})
    param = net.to_proto()
    for layer in param.layer:
        layer.ClearField("phase")
        layer.ClearField("include")
        layer.ClearField("exclude")
        if layer.type == "Input":
            layer.input_param.ClearField("shape")
            for top in layer.top:
                layer.input_param.shape.add().dim.extend(int(d) for d in shapes[top])
    return param


def caffe_weights(net):
    """``{"<layer>/<index>": float32 array}``: every layer's blobs (learned, then
    statistics), in Caffe's shapes, as a ``.caffemodel`` holds them."""
    return {f"{layer}/{i}": np.ascontiguousarray(a, np.float32)
            for layer, arrays in net.weights().items() for i, a in enumerate(arrays)}


def split_weights(flat):
    """``{"<layer>/<index>": array}`` -> ``{layer: [array, ...]}`` (indices in order)."""
    layers = {}
    for key, value in flat.items():
        layer, sep, index = key.rpartition("/")
        if not sep or not index.isdigit():
            raise NetspecError(f'tensor "{key}": names must be "<layer>/<blob index>"')
        layers.setdefault(layer, {})[int(index)] = value
    out = {}
    for layer, blobs in layers.items():
        if sorted(blobs) != list(range(len(blobs))):
            raise NetspecError(f'layer "{layer}": blob indices {sorted(blobs)} are not 0..{len(blobs) - 1}')
        out[layer] = [blobs[i] for i in range(len(blobs))]
    return out


def trees_from_weights(graph, weights, where="weights"):
    """``(params, state)`` pytrees of ``netspec.compiler`` for ``graph`` from Caffe's
    per-layer blobs ``{layer: [array, ...]}`` (``compiler.assign_layer_blobs``).  The arrays
    are used as they are (NumPy or traced); every blob must be given."""
    from .. import compiler
    params = {name: [None] * len(shapes) for name, shapes in graph.param_shapes.items()}
    state = {name: [None] * len(shapes) for name, shapes in graph.state_shapes.items()}
    compiler.assign_layer_blobs(graph, params, state, weights, where)
    for tree in (params, state):
        for name, arrays in tree.items():
            for i, array in enumerate(arrays):
                if array is None:
                    raise NetspecError(f'{where}: no values for layer "{name}" blob {i}')
    return params, state


def export(net, fmt, out_path, input_shapes=None):
    """Write ``net`` in format ``fmt``; returns the format module's description."""
    return format_module(fmt).write(net, str(out_path), input_shapes or input_shapes_of(net))


def verify(net, fmt, out_path, inputs=None):
    """Load ``out_path`` back with the format's library; the max abs difference from ``net``."""
    inputs = random_inputs(net) if inputs is None else inputs
    return float(format_module(fmt).check(net, str(out_path), inputs))
