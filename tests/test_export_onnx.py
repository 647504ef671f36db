"""ONNX export (netspec.export.to_onnx): every exported layer type against net.forward.

Each case builds a small TEST net from prototxt text, gives its blobs random values,
writes the ONNX model and runs it in onnxruntime; the outputs must match netspec's
within 1e-5 (relative to the outputs' magnitude when that exceeds 1).
"""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import netspec  # noqa: E402
from netspec.errors import NetspecError  # noqa: E402
from netspec.export import to_onnx  # noqa: E402
from netspec.prototxt import parse_net  # noqa: E402

FLT_MAX = float(np.finfo(np.float32).max)


def _input_layers(inputs):
    text = ""
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += (f'layer {{ name: "{name}" type: "Input" top: "{name}" '
                 f'input_param {{ shape {{ {dims} }} }} }}\n')
    return text


def make_net(inputs, layers, seed=0, scale=1.0):
    """A TEST net: Input layers for ``inputs`` ({name: shape}) then ``layers`` (prototxt
    text); every learned blob gets Gaussian values (``scale`` times, or He-scaled when
    ``scale`` is "he")."""
    net = netspec.Net(parse_net(_input_layers(inputs) + layers), netspec.TEST)
    rs = np.random.RandomState(seed)
    for layer, blobs in net.params.items():
        for blob in blobs:
            shape = blob.data.shape
            if scale == "he":
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                if net.layer_dict[layer].type == "Deconvolution":
                    fan_in = int(np.prod(shape[2:])) * shape[0] // max(1, shape[1])
                std = np.sqrt(2.0 / fan_in) if len(shape) > 1 else 0.1
            else:
                std = scale
            blob.data[...] = std * rs.randn(*shape)
    return net


def random_inputs(net, seed=1, scale=1.0):
    rs = np.random.RandomState(seed)
    return {name: (scale * rs.randn(*net.blobs[name].shape)).astype(np.float32)
            for name in net.graph.inputs}


def export_and_check(tmp_path, net, inputs=None, tol=1e-5, input_shapes=None, load=True):
    """Write, run in onnxruntime, compare; returns the loaded ONNX model (``load``)."""
    inputs = random_inputs(net) if inputs is None else inputs
    path = tmp_path / "net.onnx"
    description = to_onnx.write(net, path, input_shapes)
    assert "ONNX opset" in description
    diff = to_onnx.check(net, path, inputs)
    outputs = [np.asarray(net.blobs[o].data) for o in net.outputs]
    finite = [np.abs(o[np.abs(o) < FLT_MAX / 2]) for o in outputs]
    magnitude = max([1.0] + [float(f.max()) for f in finite if f.size])
    assert diff <= tol * magnitude, (diff, magnitude)
    return onnx.load(str(path)) if load else description


def run(tmp_path, inputs, layers, **kwargs):
    seed = kwargs.pop("seed", 0)
    scale = kwargs.pop("scale", 1.0)
    net = make_net(inputs, layers, seed=seed, scale=scale)
    feed = kwargs.pop("feed", None)
    return export_and_check(tmp_path, net, feed, **kwargs)


# -- convolution --------------------------------------------------------------

def test_convolution_groups_dilation_per_axis(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1
                          pad_h: 1 pad_w: 2 dilation: 2 } }
    layer { name: "nobias" type: "Convolution" bottom: "conv" top: "nobias"
      convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }
    """
    model = run(tmp_path, {"data": (2, 4, 9, 11)}, layers)
    assert {i.name for i in model.graph.initializer} >= {"conv/0", "conv/1", "nobias/0"}
    assert [o.name for o in model.graph.output] == ["nobias"]


def test_convolution_two_bottoms_share_weights(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "a" bottom: "b" top: "ca" top: "cb"
      convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
    """
    run(tmp_path, {"a": (1, 2, 5, 5), "b": (1, 2, 5, 5)}, layers)


def test_deconvolution_groups_fcn_upsampling(tmp_path):
    # FCN's upscore: per-channel (group = channels) stride-2 upsampling, no bias;
    # then a grouped, dilated, padded deconvolution with bias
    layers = """
    layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
      convolution_param { num_output: 4 group: 4 kernel_size: 4 stride: 2 bias_term: false } }
    layer { name: "up2" type: "Deconvolution" bottom: "up" top: "up2"
      convolution_param { num_output: 6 group: 2 kernel_size: 5 stride: 3 pad: 1 dilation: 2 } }
    """
    model = run(tmp_path, {"data": (2, 4, 5, 6)}, layers)
    out = model.graph.output[0]
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    # up: 2*(5-1)+4 = 12, 2*(6-1)+4 = 14; up2: 3*(12-1)+2*4+1-2 = 40, 3*13+9-2 = 46
    assert dims == [2, 6, 40, 46]


# -- pooling -------------------------------------------------------------------

# (input H=W, kernel, stride, pad, round_mode): Caffe's output sizes, incl. the rule
# that drops a last window starting in the padding
POOL_CASES = [
    (8, 3, 2, 0, "CEIL"),    # ceil adds a window overhanging the image (AVE divisor 2)
    (7, 3, 2, 1, "CEIL"),    # ceil, padded, last window ends exactly at H + pad
    (6, 3, 2, 1, "CEIL"),    # padded window overhanging beyond H + pad (AVE divisor 2)
    (5, 3, 3, 1, "CEIL"),    # ceil gives 3 windows, the last starts at H + pad: dropped
    (6, 4, 4, 2, "CEIL"),    # dropped again, with a larger pad
    (12, 3, 3, 1, "FLOOR"),  # floor mode: the last window ends before H (no end padding)
    (9, 3, 2, 1, "FLOOR"),
    (4, 3, 2, 2, "CEIL"),    # pad 2 at both ends: the ceil window starting at H is dropped
    (5, 1, 3, 0, "CEIL"),    # no pad, stride > kernel: a window wholly past the image
                             # (MAX: -FLT_MAX, AVE: divisor -1, as Caffe; explicit Pad)
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad,mode", POOL_CASES)
def test_pooling_caffe_rounding(tmp_path, method, size, kernel, stride, pad, mode):
    layers = f"""
    layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
      pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad}
                       round_mode: {mode} }} }}
    """
    net = make_net({"data": (2, 3, size, size)}, layers)
    model = export_and_check(tmp_path, net)
    expected = net.graph.blob_shapes["pool"]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert tuple(dims) == tuple(expected)


def test_pooling_drop_rule_sizes():
    # the sizes the cases above rely on (Caffe's formula with the drop rule)
    net = make_net({"data": (1, 1, 5, 5)}, """
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
      pooling_param { pool: MAX kernel_size: 3 stride: 3 pad: 1 } }""")
    assert net.graph.blob_shapes["pool"] == (1, 1, 2, 2)   # ceil alone would give 3


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_rectangular(tmp_path, method):
    layers = f"""
    layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
      pooling_param {{ pool: {method} kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3
                       pad_h: 1 pad_w: 0 }} }}
    """
    run(tmp_path, {"data": (1, 2, 10, 11)}, layers)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(tmp_path, method):
    layers = f"""
    layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
      pooling_param {{ pool: {method} global_pooling: true }} }}
    """
    run(tmp_path, {"data": (2, 3, 5, 7)}, layers)


def test_pooling_mask_top_is_refused(tmp_path):
    net = make_net({"data": (1, 1, 4, 4)}, """
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
      pooling_param { pool: MAX kernel_size: 2 stride: 2 } }""")
    with pytest.raises(NetspecError, match='"pool" \\(Pooling\\).*mask'):
        to_onnx.write(net, tmp_path / "m.onnx")


# -- LRN -----------------------------------------------------------------------

@pytest.mark.parametrize("region,size", [("ACROSS_CHANNELS", 5), ("ACROSS_CHANNELS", 3),
                                         ("WITHIN_CHANNEL", 3), ("WITHIN_CHANNEL", 5)])
def test_lrn(tmp_path, region, size):
    layers = f"""
    layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm"
      lrn_param {{ local_size: {size} alpha: 0.9 beta: 0.75 k: 2 norm_region: {region} }} }}
    """
    x = 2 * np.random.RandomState(3).randn(2, 7, 6, 5).astype(np.float32)
    run(tmp_path, {"data": (2, 7, 6, 5)}, layers, feed={"data": x})


# -- InnerProduct --------------------------------------------------------------

@pytest.mark.parametrize("param", ["num_output: 5",
                                   "num_output: 4 axis: 2 transpose: true",
                                   "num_output: 3 bias_term: false axis: 0"])
def test_inner_product(tmp_path, param):
    layers = f"""
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param {{ {param} }} }}
    """
    run(tmp_path, {"data": (2, 3, 4, 2)}, layers)


# -- neurons -------------------------------------------------------------------

NEURONS = [
    'type: "ReLU"',
    'type: "ReLU" relu_param { negative_slope: 0.1 }',
    'type: "ELU" elu_param { alpha: 0.7 }',
    'type: "Sigmoid"',
    'type: "TanH"',
    'type: "AbsVal"',
    'type: "BNLL"',
    'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
    'type: "Power" power_param { power: 3 scale: -1.5 }',
    'type: "Power" power_param { power: 0.5 scale: 1 shift: 6 }',
    'type: "Power" power_param { power: -1.5 scale: 2 shift: 7 }',
    'type: "Power" power_param { power: 0 scale: 2 shift: 3 }',
    'type: "Power" power_param { power: 2 scale: 0 shift: 3 }',
    'type: "Power" power_param { shift: 0.25 }',
    'type: "Exp"',
    'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
    'type: "Log" log_param { shift: 6 }',
    'type: "Log" log_param { base: 10 scale: 2 shift: 11 }',
    'type: "Threshold" threshold_param { threshold: 0.3 }',
    'type: "Clip" clip_param { min: -0.5 max: 0.7 }',
    'type: "Swish"',
    'type: "Swish" swish_param { beta: 1.5 }',
    'type: "Dropout" dropout_param { dropout_ratio: 0.3 }',
]


@pytest.mark.parametrize("layer", NEURONS)
def test_neuron(tmp_path, layer):
    feed = {"data": (2 * np.random.RandomState(5).randn(2, 3, 4, 5)).astype(np.float32)}
    if "BNLL" in layer or "Sigmoid" in layer or "ELU" in layer:
        feed["data"] *= 20      # the saturated ranges too
    run(tmp_path, {"data": (2, 3, 4, 5)},
        f'layer {{ name: "n" {layer} bottom: "data" top: "n" }}', feed=feed)


def test_in_place_neurons_and_names(tmp_path):
    # conv -> ReLU in place -> Dropout in place: the final value has the plain name
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 3 kernel_size: 3 } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" }
    """
    model = run(tmp_path, {"data": (1, 2, 6, 6)}, layers)
    produced = [name for node in model.graph.node for name in node.output]
    assert "conv@conv" in produced and "conv@relu" in produced and "conv" in produced
    assert len(produced) == len(set(produced))
    assert [o.name for o in model.graph.output] == ["conv"]


@pytest.mark.parametrize("shared", ["false", "true"])
def test_prelu(tmp_path, shared):
    layers = f"""
    layer {{ name: "prelu" type: "PReLU" bottom: "data" top: "prelu"
      prelu_param {{ channel_shared: {shared} }} }}
    """
    run(tmp_path, {"data": (2, 3, 4, 5)}, layers)


# -- BatchNorm, Scale, Bias ----------------------------------------------------

@pytest.mark.parametrize("factor", [2.5, 0.0])
def test_batch_norm_global_stats(tmp_path, factor):
    net = make_net({"data": (2, 3, 4, 5)}, """
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn"
      batch_norm_param { eps: 0.001 } }""")
    rs = np.random.RandomState(2)
    blobs = net.params["bn"]
    blobs[0].data[...] = rs.randn(3) * factor
    blobs[1].data[...] = (rs.rand(3) + 0.5) * factor
    blobs[2].data[...] = factor
    model = export_and_check(tmp_path, net)
    assert {i.name for i in model.graph.initializer} >= {"bn/0", "bn/1", "bn/2"}


def test_batch_norm_batch_statistics_in_test(tmp_path):
    run(tmp_path, {"data": (3, 2, 4, 4)}, """
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn"
      batch_norm_param { use_global_stats: false } }""")


@pytest.mark.parametrize("layers", [
    """layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { bias_term: true } }""",
    """layer { name: "s" type: "Scale" bottom: "data" top: "s"
         scale_param { axis: 1 num_axes: 2 } }""",
    """layer { name: "b" type: "Bias" bottom: "data" top: "b" bias_param { axis: 2 num_axes: 2 } }""",
    """layer { name: "b" type: "Bias" bottom: "data" top: "b" }""",
])
def test_scale_bias_learned(tmp_path, layers):
    run(tmp_path, {"data": (2, 3, 4, 5)}, layers)


def test_scale_bias_second_bottom(tmp_path):
    layers = """
    layer { name: "s" type: "Scale" bottom: "data" bottom: "w" top: "s"
      scale_param { axis: 1 bias_term: true } }
    layer { name: "b" type: "Bias" bottom: "s" bottom: "w" top: "b" }
    """
    run(tmp_path, {"data": (2, 3, 4, 5), "w": (3, 4)}, layers)


# -- arithmetic and plumbing ---------------------------------------------------

@pytest.mark.parametrize("param", ["operation: SUM coeff: 1 coeff: -0.5 coeff: 2",
                                   "operation: SUM", "operation: PROD", "operation: MAX"])
def test_eltwise(tmp_path, param):
    layers = f"""
    layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "e"
      eltwise_param {{ {param} }} }}
    """
    run(tmp_path, {"a": (2, 3, 4), "b": (2, 3, 4), "c": (2, 3, 4)}, layers)


def test_plumbing(tmp_path):
    layers = """
    layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
    layer { name: "cat2" type: "Concat" bottom: "a" bottom: "a" top: "cat2" concat_param { axis: 2 } }
    layer { name: "slice" type: "Slice" bottom: "cat" top: "s1" top: "s2" top: "s3"
      slice_param { axis: 1 slice_point: 1 slice_point: 4 } }
    layer { name: "split" type: "Split" bottom: "s2" top: "p1" top: "p2" }
    layer { name: "flat" type: "Flatten" bottom: "p1" top: "flat" }
    layer { name: "flat2" type: "Flatten" bottom: "s3" top: "flat2"
      flatten_param { axis: 2 end_axis: -1 } }
    layer { name: "resh" type: "Reshape" bottom: "p2" top: "resh"
      reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
    layer { name: "resh2" type: "Reshape" bottom: "cat2" top: "resh2"
      reshape_param { axis: 1 num_axes: 2 shape { dim: 0 dim: 2 dim: -1 } } }
    layer { name: "tile" type: "Tile" bottom: "s1" top: "tile" tile_param { axis: 1 tiles: 3 } }
    layer { name: "silence" type: "Silence" bottom: "b" }
    """
    model = run(tmp_path, {"a": (2, 2, 4, 6), "b": (2, 3, 4, 6)}, layers)
    assert sorted(o.name for o in model.graph.output) == \
        ["flat", "flat2", "resh", "resh2", "tile"]


@pytest.mark.parametrize("param", ["axis: 2 offset: 1 offset: 2", "axis: 1 offset: 1",
                                   "axis: 3 offset: 3", "axis: 2"])
def test_crop(tmp_path, param):
    layers = f"""
    layer {{ name: "crop" type: "Crop" bottom: "big" bottom: "ref" top: "crop"
      crop_param {{ {param} }} }}
    layer {{ name: "sil" type: "Silence" bottom: "ref" }}
    """
    net = make_net({"big": (2, 5, 9, 10), "ref": (2, 3, 5, 6)}, layers)
    export_and_check(tmp_path, net)


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax(tmp_path, axis):
    x = 10 * np.random.RandomState(0).randn(2, 4, 3, 5).astype(np.float32)
    run(tmp_path, {"data": (2, 4, 3, 5)}, f"""
    layer {{ name: "prob" type: "Softmax" bottom: "data" top: "prob"
      softmax_param {{ axis: {axis} }} }}""", feed={"data": x})


@pytest.mark.parametrize("param", ["", "out_max_val: true", "axis: 1", "axis: 1 out_max_val: true",
                                   "top_k: 3", "top_k: 2 out_max_val: true", "axis: 2 top_k: 2"])
def test_argmax_ties_to_larger_index(tmp_path, param):
    # small integers: plenty of ties, which Caffe ranks larger index first
    feed = {"data": np.random.RandomState(4).randint(0, 3, (2, 4, 3, 2)).astype(np.float32)}
    run(tmp_path, {"data": (2, 4, 3, 2)}, f"""
    layer {{ name: "am" type: "ArgMax" bottom: "data" top: "am" argmax_param {{ {param} }} }}""",
        feed=feed)


@pytest.mark.parametrize("param", ["operation: SUM axis: 1", "operation: ASUM axis: 2",
                                   "operation: SUMSQ axis: -1 coeff: 0.5",
                                   "operation: MEAN coeff: 2", "operation: MEAN axis: 0"])
def test_reduction(tmp_path, param):
    run(tmp_path, {"data": (2, 3, 4, 5)}, f"""
    layer {{ name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param {{ {param} }} }}""")


def test_embed(tmp_path):
    # integer-valued indices, some outside [0, input_dim): clamped as netspec does
    feed = {"idx": np.array([[0, 3, 9], [12, -2, 5.7]], np.float32)}
    run(tmp_path, {"idx": (2, 3)}, """
    layer { name: "emb" type: "Embed" bottom: "idx" top: "emb"
      embed_param { input_dim: 10 num_output: 4 } }
    layer { name: "emb2" type: "Embed" bottom: "idx" top: "emb2"
      embed_param { input_dim: 10 num_output: 2 bias_term: false } }""", feed=feed)


@pytest.mark.parametrize("param", ["", "normalize_variance: false", "across_channels: true"])
def test_mvn(tmp_path, param):
    run(tmp_path, {"data": (2, 3, 4, 5)}, f"""
    layer {{ name: "mvn" type: "MVN" bottom: "data" top: "mvn" mvn_param {{ {param} }} }}""")


# -- errors --------------------------------------------------------------------

def test_unsupported_layer_is_named(tmp_path):
    net = make_net({"data": (1, 2, 6, 6)}, """
    layer { name: "spp" type: "SPP" bottom: "data" top: "spp" spp_param { pyramid_height: 2 } }""")
    with pytest.raises(NetspecError) as info:
        to_onnx.write(net, tmp_path / "x.onnx")
    message = str(info.value)
    assert '"spp" (SPP)' in message and "supported types:" in message and "Convolution" in message
    assert "\n" not in message


def test_loss_layer_is_refused(tmp_path):
    net = make_net({"data": (2, 3), "label": (2,)}, """
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }""")
    with pytest.raises(NetspecError, match='"loss" \\(SoftmaxWithLoss\\).*deploy'):
        to_onnx.write(net, tmp_path / "x.onnx")


def test_train_phase_is_refused(tmp_path):
    net = netspec.Net(parse_net(_input_layers({"data": (1, 2)})), netspec.TRAIN)
    with pytest.raises(NetspecError, match="TEST"):
        to_onnx.write(net, tmp_path / "x.onnx")


def test_unknown_input_shape_is_refused(tmp_path):
    net = make_net({"data": (1, 2)}, "")
    with pytest.raises(NetspecError, match='"image" is not an input'):
        to_onnx.write(net, tmp_path / "x.onnx", {"image": (1, 2)})


def test_default_shapes_are_the_input_blobs_current_ones(tmp_path):
    net = make_net({"data": (1, 2, 8, 8)}, """
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
      pooling_param { pool: AVE kernel_size: 3 stride: 2 } }""")
    net.blobs["data"].reshape(2, 2, 7, 9)
    description = to_onnx.write(net, tmp_path / "x.onnx")
    assert "data (2, 2, 7, 9)" in description
    x = np.random.RandomState(0).randn(2, 2, 7, 9).astype(np.float32)
    assert to_onnx.check(net, tmp_path / "x.onnx", {"data": x}) < 1e-5


def test_missing_onnx_says_how_to_install(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    net = make_net({"data": (1, 2)}, "")
    with pytest.raises(NetspecError, match="pip install 'netspec\\[export\\]'"):
        to_onnx.write(net, tmp_path / "x.onnx")


# -- whole nets ----------------------------------------------------------------

CAFFENET_SMALL = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3"
  convolution_param { num_output: 24 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 24 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 16 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  inner_product_param { num_output: 64 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: 64 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


def test_caffenet_like_classifier(tmp_path):
    # 99x99: conv1 23, pool1 11 (ceil), pool2 5, pool5 2 (ceil rounding matters)
    net = make_net({"data": (2, 3, 99, 99)}, CAFFENET_SMALL, scale="he")
    inputs = random_inputs(net, scale=50.0)
    model = export_and_check(tmp_path, net, inputs)
    assert [o.name for o in model.graph.output] == ["prob"]
    assert {n.op_type for n in model.graph.node} >= {"Conv", "LRN", "MaxPool", "Gemm", "Softmax"}
    # the intermediate blobs are there under their Caffe names, with Caffe's shapes
    infos = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
             for v in model.graph.value_info}
    assert infos["pool1"] == list(net.graph.blob_shapes["pool1"])


def test_fcn8s_zoo_deploy(tmp_path):
    net = netspec.Net("models/voc-fcn8s/deploy.prototxt", netspec.TEST)
    rs = np.random.RandomState(0)
    rng = np.random.default_rng(0)     # float32 draws: 134M weights in a second
    for name, blobs in net.params.items():
        weight = blobs[0]
        shape = weight.data.shape
        if net.layer_dict[name].type == "Deconvolution":
            fan_in = shape[2] * shape[3] // 4
        else:
            fan_in = int(np.prod(shape[1:]))
        weight.data[...] = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        for bias in blobs[1:]:
            bias.data[...] = 0.1 * rs.randn(*bias.data.shape)
    x = (50 * rs.randn(1, 3, 40, 40)).astype(np.float32)
    # export at 40x40 (the prototxt declares 500x500): Caffe's crops follow the input size
    description = export_and_check(tmp_path, net, {"data": x}, tol=1e-4,
                                   input_shapes={"data": (1, 3, 40, 40)}, load=False)
    assert "inputs data (1, 3, 40, 40); outputs score" in description
    # the structure, without reading the 540 MB of weights back
    model = onnx.load(str(tmp_path / "net.onnx"), load_external_data=False)
    assert [o.name for o in model.graph.output] == ["score"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvTranspose") == 3 and ops.count("Slice") == 3
    assert {"upscore2/0", "fc6/0", "fc6/1"} <= {i.name for i in model.graph.initializer}
