"""FCN shape inference at 500x500 (no compute): pooling sizes, upsampling sizes and
the Crop offsets that align the score map with the input, for FCN-32s/16s/8s."""
import os
from fractions import Fraction

import pytest

import netspec as caffe
from netspec.graph import build_graph
from netspec.prototxt import read_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
SIZE = 500


def fcn_graph(model, file, size=SIZE):
    """Shapes of a model-zoo net whose data comes from a Python layer (or an Input)."""
    net = read_net(os.path.join(MODELS, model, file))
    data_layer = net.layer[0]
    shapes = {"data": (1, 3, size, size), "label": (1, 1, size, size)}
    host = [data_layer.name] if data_layer.type == "Python" else []
    return net, build_graph(net, caffe.TEST, input_shapes=shapes, host_layers=host)


def spatial(graph, blob):
    shape = graph.blob_shapes[blob]
    assert shape[2] == shape[3], (blob, shape)
    return shape[2]


def caffe_conv_out(size, k, s=1, p=0):
    return (size + 2 * p - k) // s + 1


def caffe_pool_out(size, k=2, s=2):
    return -(-(size - k) // s) + 1


def caffe_deconv_out(size, k, s):
    return s * (size - 1) + k


def coordinate_offset(net, top, to="data"):
    """How far ``top``'s coordinate 0 lies before ``to``'s coordinate 0 (following bottom[0]).

    A conv/pool window of size k, stride s, pad p puts output x over input
    s*x + (k-1)/2 - p; a deconvolution inverts that; a Crop adds its offset.
    """
    producers = {t: lp for lp in net.layer for t in lp.top if t not in lp.bottom}  # skip in-place
    scale, shift, blob = Fraction(1), Fraction(0), top
    while blob != to:
        lp = producers[blob]
        if lp.type in ("Convolution", "Pooling", "Deconvolution"):
            p = lp.pooling_param if lp.type == "Pooling" else lp.convolution_param
            k = p.kernel_size if lp.type == "Pooling" else p.kernel_size[0]
            s = p.stride if lp.type == "Pooling" else (p.stride[0] if p.stride else 1)
            pad = p.pad if lp.type == "Pooling" else (p.pad[0] if p.pad else 0)
            centre = Fraction(k - 1, 2) - pad
            a, b = (Fraction(s), centre) if lp.type != "Deconvolution" else (1 / Fraction(s), -centre / s)
        elif lp.type == "Crop":
            a, b = Fraction(1), Fraction(lp.crop_param.offset[0])
        else:
            a, b = Fraction(1), Fraction(0)
        # blob coordinate x -> bottom coordinate a*x + b; compose with what we have
        scale, shift = a * scale, a * shift + b
        blob = lp.bottom[0]
    assert scale == 1, scale
    return -shift


def crop_offset(net, name):
    return list(next(lp for lp in net.layer if lp.name == name).crop_param.offset)


def test_fcn8s_at_500():
    net, graph = fcn_graph("voc-fcn8s", "deploy.prototxt")
    pools = [spatial(graph, f"pool{i}") for i in range(1, 6)]
    assert pools == [349, 175, 88, 44, 22]
    assert spatial(graph, "fc7") == 16
    assert spatial(graph, "upscore2") == 34
    assert spatial(graph, "upscore_pool4") == 70
    assert spatial(graph, "upscore8") == 568
    assert graph.blob_shapes["score"] == (1, 21, 500, 500)
    assert crop_offset(net, "score") == [31]
    assert crop_offset(net, "score_pool4c") == [5]
    assert crop_offset(net, "score_pool3c") == [9]
    assert spatial(graph, "score_pool4c") == 34 and spatial(graph, "score_pool3c") == 70
    assert coordinate_offset(net, "upscore8") == 31
    assert graph.outputs == ["score"]


def test_fcn8s_sizes_follow_caffe_formulas():
    _, graph = fcn_graph("voc-fcn8s", "deploy.prototxt")
    size = caffe_conv_out(SIZE, 3, p=100)
    assert spatial(graph, "conv1_1") == size
    for stage, convs in zip(range(1, 6), (2, 2, 3, 3, 3)):
        # every later 3x3 conv keeps the size (pad 1); then a 2x2 stride-2 ceil pool
        assert spatial(graph, f"conv{stage}_{convs}") == size
        size = caffe_pool_out(size)
        assert spatial(graph, f"pool{stage}") == size
    fc7 = caffe_conv_out(size, 7)
    assert spatial(graph, "fc7") == fc7
    assert spatial(graph, "upscore2") == caffe_deconv_out(fc7, 4, 2)
    assert spatial(graph, "upscore8") == caffe_deconv_out(caffe_deconv_out(34, 4, 2), 16, 8)


def test_fcn32s_at_500():
    net, graph = fcn_graph("voc-fcn32s", "val.prototxt")
    assert [spatial(graph, f"pool{i}") for i in range(1, 6)] == [349, 175, 88, 44, 22]
    assert spatial(graph, "upscore") == 544
    assert crop_offset(net, "score") == [19]
    assert coordinate_offset(net, "upscore") == 19
    assert graph.blob_shapes["score"] == (1, 21, 500, 500)


def test_fcn16s_at_500():
    net, graph = fcn_graph("voc-fcn16s", "val.prototxt")
    assert spatial(graph, "upscore16") == 560
    assert crop_offset(net, "score") == [27]
    assert coordinate_offset(net, "upscore16") == 27
    assert graph.blob_shapes["score"] == (1, 21, 500, 500)


@pytest.mark.parametrize("size", [1, 64, 187, 333])
def test_fcn8s_score_matches_any_input_size(size):
    _, graph = fcn_graph("voc-fcn8s", "deploy.prototxt", size)
    assert graph.blob_shapes["score"] == (1, 21, size, size)
