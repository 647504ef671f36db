"""Dense convnet features of whole images, each with the image position it describes.

Long's thesis (ch. 2) computes a layer's features over a whole image and treats each
feature vector as a descriptor of the pixel at the centre of its receptive field.
:func:`dense_features` does that: it runs the net on one image at its own size and
returns, per layer, the ``(C, h, w)`` feature array and the image coordinates
(row ``centres_y``, column ``centres_x``) of every feature's rf centre, computed
exactly from the layer graph by :mod:`netspec.receptive_field` (``offset + stride *
index`` for convolution/pooling stacks; pixel ``(0, 0)`` is the centre of the first
image pixel, so a centre may lie outside the image when the net pads).

A layer's features are its first top as the net leaves it after the forward pass
(as pycaffe's ``net.blobs[...]``: after any in-place ReLU that follows the layer).
:func:`truncated_net` cuts a classification net after the deepest requested layer,
so nets whose fully connected layers fix the input size (AlexNet) run on images of
any size.
"""
import numpy as np

from .errors import NetspecError


def check_layers(net_param_or_graph_names, layers, what="features"):
    names = list(net_param_or_graph_names)
    for layer in layers:
        if layer not in names:
            raise NetspecError(f'{what}: the net has no layer "{layer}" (layers: {", ".join(names)})')


def truncated_net(net_param, layers, phase=None):
    """The layers of ``net_param`` (for ``phase``) up to the last of ``layers`` and the
    in-place layers right after it; the rest (fully connected layers, losses) is dropped."""
    from .graph import filter_layers
    from .layers.base import TEST
    from .proto import caffe_pb2
    kept = filter_layers(net_param, caffe_pb2.NetState(phase=TEST if phase is None else phase))
    names = [lp.name for lp in kept]
    check_layers(names, layers)
    last = max(names.index(layer) for layer in layers)
    end = last + 1
    tops = set(kept[last].top)
    while end < len(kept) and kept[end].bottom and set(kept[end].top) == set(kept[end].bottom) \
            and set(kept[end].top) <= tops:
        end += 1
    out = caffe_pb2.NetParameter(name=net_param.name)
    for lp in kept[:end]:
        out.layer.add().CopyFrom(lp)
    return out


def dense_features(net, image, layers, input_blob=None):
    """``{layer: (features (C, h, w), centres_y (h,), centres_x (w,))}`` for one image.

    ``net``: a :class:`netspec.Net` (TEST phase, weights loaded); ``image``: a
    ``(C, H, W)`` array already preprocessed for the net (e.g. BGR minus the mean);
    ``layers``: layer names (or blob names).  The net is reshaped to the image's size.
    """
    from .receptive_field import analyze
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise NetspecError(f"dense_features: the image must be (C, H, W), got shape {image.shape}")
    input_blob = input_blob or (net.inputs[0] if net.inputs else None)
    if input_blob is None or input_blob not in net.inputs:
        raise NetspecError(f'dense_features: the net has no input blob "{input_blob}" '
                           f'(inputs: {", ".join(net.inputs) or "none"})')
    graph = net.graph
    layer_names = [n.name for n in graph.nodes]
    for layer in layers:            # layer names, or blob names (the blob as the net leaves it)
        if layer not in layer_names and layer not in graph.blob_shapes:
            check_layers(layer_names, [layer], "dense_features")
    net.forward(**{input_blob: image[None]})
    graph = net.graph
    rows = analyze(graph, warn=lambda m: None)
    by_layer = {row.name: (row.tops[0], row.rfs[0]) for row in rows if row.tops}
    by_blob = {}
    for row in rows:
        for top, rf in zip(row.tops, row.rfs):
            by_blob[top] = (top, rf)
    out = {}
    for layer in layers:
        top, rf = by_layer[layer] if layer in by_layer else by_blob[layer]
        data = np.array(net.blobs[top].data[0], np.float32)
        if data.ndim != 3 or rf is None or len(rf) != 2:
            raise NetspecError(f'dense_features: layer "{layer}" has no spatial receptive field '
                               f"(its top {top} has shape {tuple(net.blobs[top].shape)})")
        out[layer] = (data, rf[0].centres(data.shape[1]), rf[1].centres(data.shape[2]))
    return out


def load_image(path, mean_bgr=None):
    """An image file as the ``(3, H, W)`` float32 BGR array Caffe nets take, minus ``mean_bgr``."""
    from PIL import Image
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    except (OSError, ValueError) as e:
        raise NetspecError(f"{path}: cannot read image ({e})") from None
    bgr = rgb[:, :, ::-1]
    if mean_bgr is not None:
        bgr = bgr - np.asarray(mean_bgr, np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))
