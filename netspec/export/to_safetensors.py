"""A Caffe net and its weights as one ``.safetensors`` file.

Tensors: every blob of every layer, as a ``.caffemodel`` holds them (learned blobs, then
BatchNorm statistics), named ``"<layer>/<index>"`` in Caffe's shapes, float32.  Metadata:
``{"format": "netspec-caffe", "prototxt": <the deploy net's text>}`` (the TEST phase's
layers, Input layers declaring the exported shapes), so the file alone rebuilds the net::

    net_param, weights = load_safetensors("model.safetensors")
    net = netspec.Net(net_param, phase=netspec.TEST)
    for layer, arrays in weights.items():
        for blob, array in zip(net.params[layer], arrays):
            blob.data[...] = array
"""
from . import (caffe_weights, deploy_net_param, max_abs_difference, reference_outputs, require,
               split_weights)
from ..errors import NetspecError

FORMAT = "netspec-caffe"


def write(net, out_path, input_shapes):
    from ..prototxt import format_net
    numpy_io = require("safetensors.numpy", "safetensors export")
    tensors = caffe_weights(net)
    metadata = {"format": FORMAT, "prototxt": format_net(deploy_net_param(net, input_shapes))}
    numpy_io.save_file(tensors, out_path, metadata=metadata)
    count = sum(int(a.size) for a in tensors.values())
    return f"{len(tensors)} tensors ({count} values) and the net's prototxt in the metadata"


def read_metadata(path):
    """The file's metadata dict (``{}`` when it has none)."""
    safetensors = require("safetensors", "reading safetensors")
    try:
        with safetensors.safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except (OSError, safetensors.SafetensorError) as e:
        raise NetspecError(f"{path}: not a readable safetensors file ({e})") from None


def load_safetensors(path):
    """``(NetParameter, {layer: [float32 array, ...]})`` from a file written by ``write``."""
    from ..prototxt import parse_net
    numpy_io = require("safetensors.numpy", "reading safetensors")
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT or "prototxt" not in metadata:
        raise NetspecError(f"{path}: no netspec net in the metadata (format {metadata.get('format')!r}); "
                           "it was not written by netspec export")
    net_param = parse_net(metadata["prototxt"], path=f"{path}:prototxt")
    return net_param, split_weights(numpy_io.load_file(str(path)))


def net_from_safetensors(path, **net_options):
    """A TEST-phase ``netspec.Net`` rebuilt from the file: net and weights."""
    from .. import Net, TEST
    from ..caffemodel import match_blob_shape
    net_param, weights = load_safetensors(path)
    net = Net(net_param, phase=TEST, **net_options)
    for layer, arrays in weights.items():
        blobs = net.params.get(layer)
        if blobs is None:
            raise NetspecError(f'{path}: layer "{layer}" is not in the net')
        if len(blobs) != len(arrays):
            raise NetspecError(f'{path}: layer "{layer}" has {len(arrays)} tensors, the net {len(blobs)} blobs')
        for i, (blob, array) in enumerate(zip(blobs, arrays)):
            blob.set_host(match_blob_shape(array, blob.shape, f'{path}: layer "{layer}" blob {i}'))
    return net


def check(net, out_path, inputs):
    expected = reference_outputs(net, inputs)
    rebuilt = net_from_safetensors(out_path, buckets="off")
    return max_abs_difference(expected, reference_outputs(rebuilt, inputs))
