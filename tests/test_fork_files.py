"""Files from Caffe's forks: fork params in text prototxts, fork caffemodels whose layers
hold params at the forks' (colliding) field numbers, and what netspec writes back."""
import numpy as np
import pytest

import netspec
from netspec import caffemodel, prototxt, wire
from netspec.proto import caffe_pb2

PRIVATE = range(3500, 3600)


def varint_field(number, value):
    return wire.encode_key(number, wire.VARINT) + wire.encode_varint(value)


def bytes_field(number, payload):
    return wire.length_header(number, len(payload)) + payload


def string_field(number, text):
    return bytes_field(number, text.encode())


def blob(array):
    return bytes_field(7, b"".join(bytes(p) for p in wire.blob_pieces(np.asarray(array, np.float32))))


def layer(name, type_, *fields, bottoms=(), tops=()):
    body = string_field(1, name) + string_field(2, type_)
    body += b"".join(string_field(3, b) for b in bottoms) + b"".join(string_field(4, t) for t in tops)
    return bytes_field(100, body + b"".join(fields))


W = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3) / 100
B = np.array([0.5, -1, 2, 0], np.float32)
SCALE = np.array([20, 10, 5, 1], np.float32)

# PSPNet's InterpParameter {zoom_factor: 8, height: 65} at 143 (BVLC: input_param),
# SegNet's UpsampleParameter {scale: 2, upsample_h: 30} at 137 (BVLC: embed_param),
# SSD's NormalizeParameter {across_spatial: false, channel_shared: false} at 206,
# SegNet's BNParameter {bn_mode: INFERENCE} at 45, and a Convolution whose
# convolution_param bytes are not a valid message at all (a truncated varint).
FORK_MODEL = b"".join([
    string_field(1, "fork_net"),
    layer("data", "Input", tops=["data"]),
    layer("conv", "Convolution", bytes_field(106, varint_field(1, 4) + varint_field(4, 3)), blob(W), blob(B),
          bottoms=["data"], tops=["conv"]),
    layer("norm", "Normalize", bytes_field(206, varint_field(1, 0) + varint_field(3, 0)), blob(SCALE),
          bottoms=["conv"], tops=["norm"]),
    layer("interp", "Interp", bytes_field(143, varint_field(3, 8) + varint_field(1, 65)),
          bottoms=["norm"], tops=["interp"]),
    layer("up", "Upsample", bytes_field(137, varint_field(1, 2) + varint_field(6, 30)),
          bottoms=["interp"], tops=["up"]),
    layer("bn", "BN", bytes_field(45, varint_field(3, 1)), blob(np.ones((1, 4, 1, 1))), blob(np.zeros((1, 4, 1, 1))),
          bottoms=["up"], tops=["bn"]),
    layer("broken", "Convolution", bytes_field(106, b"\x08\xff"), blob(B)),
])

DEPLOY = """
name: "fork_net"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "norm" type: "Normalize" bottom: "conv" top: "norm"
  norm_param { across_spatial: false channel_shared: false } }
layer { name: "perm" type: "Permute" bottom: "norm" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
"""


def test_fork_caffemodel_reads_name_type_and_blobs(tmp_path):
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(FORK_MODEL)
    net, weights = caffemodel.read_caffemodel(str(path))
    assert [(lay.name, lay.type) for lay in net.layer] == [
        ("data", "Input"), ("conv", "Convolution"), ("norm", "Normalize"), ("interp", "Interp"),
        ("up", "Upsample"), ("bn", "BN"), ("broken", "Convolution")]
    by_name = {lay.name: lay for lay in net.layer}
    # BVLC types parse whole, as before; fork types keep only the general fields.
    assert by_name["conv"].convolution_param.num_output == 4
    assert list(by_name["interp"].bottom) == ["norm"] and list(by_name["interp"].top) == ["interp"]
    for name in ("norm", "interp", "up", "bn"):
        assert [f.name for f, _ in by_name[name].ListFields()] == ["name", "type", "bottom", "top"]
    assert not by_name["interp"].HasField("input_param")
    assert not by_name["up"].HasField("embed_param")
    # The unparseable layer falls back to name and type, and keeps its blob.
    assert [f.name for f, _ in by_name["broken"].ListFields()] == ["name", "type"]
    np.testing.assert_array_equal(weights["conv"][0], W)
    np.testing.assert_array_equal(weights["conv"][1], B)
    np.testing.assert_array_equal(weights["norm"][0], SCALE)
    assert [a.shape for a in weights["bn"]] == [(1, 4, 1, 1)] * 2
    assert weights["interp"] == [] and weights["up"] == []
    np.testing.assert_array_equal(weights["broken"][0], B)


def test_fork_caffemodel_loads_against_its_prototxt(tmp_path):
    (tmp_path / "fork.caffemodel").write_bytes(FORK_MODEL)
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = netspec.Net(str(tmp_path / "deploy.prototxt"), str(tmp_path / "fork.caffemodel"), netspec.TEST)
    np.testing.assert_array_equal(net.params["conv"][0].data, W)
    np.testing.assert_array_equal(net.params["norm"][0].data, SCALE)
    x = np.random.RandomState(0).randn(1, 3, 8, 8).astype(np.float32)
    out = net.forward(data=x)["perm"]
    assert out.shape == (1, 6, 6, 4)


def test_v1_caffemodel_still_reads(tmp_path):
    v1 = bytes_field(2, string_field(4, "ip") + varint_field(5, 14) + string_field(2, "data")
                     + string_field(3, "ip") + bytes_field(6, bytes(blob(B))[2:]))
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(string_field(1, "v1") + v1)
    net, weights = caffemodel.read_caffemodel(str(path))
    assert net.layers[0].name == "ip" and net.layers[0].type == caffe_pb2.V1LayerParameter.INNER_PRODUCT
    np.testing.assert_array_equal(weights["ip"][0], B)


FORK_PROTOTXT = """
layer { name: "interp" type: "Interp" bottom: "x" top: "y"
  interp_param { zoom_factor: 8 shrink_factor: 1 height: 65 width: 65 pad_beg: 0 pad_end: 0 } }
layer { name: "bn_psp" type: "BN" bottom: "y" top: "y"
  bn_param { slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0 }
             momentum: 0.95 eps: 1e-5 frozen: true engine: CAFFE } }
layer { name: "bn_segnet" type: "BN" bottom: "y" top: "y"
  bn_param { bn_mode: INFERENCE scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" } } }
layer { name: "unpool" type: "Upsample" bottom: "y" bottom: "mask" top: "u"
  upsample_param { scale: 2 upsample_h: 30 upsample_w: 40 pad_out_h: true } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "u" top: "s" shuffle_channel_param { group: 3 } }
layer { name: "roi" type: "ROIPooling" bottom: "s" bottom: "rois" top: "r"
  roi_pooling_param { pooled_w: 7 pooled_h: 7 spatial_scale: 0.0625 } }
layer { name: "sl1" type: "SmoothL1Loss" bottom: "r" bottom: "t" top: "l" smooth_l1_loss_param { sigma: 3 } }
layer { name: "psroi" type: "PSROIPooling" bottom: "s" bottom: "rois" top: "p"
  psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }
layer { name: "reorg" type: "Reorg" bottom: "s" top: "o" reorg_param { stride: 2 reverse: false } }
layer { name: "norm" type: "Normalize" bottom: "s" top: "n"
  norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } channel_shared: false eps: 1e-10 } }
layer { name: "pb" type: "PriorBox" bottom: "n" bottom: "x" top: "pb"
  prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 img_h: 300 img_w: 300 step_h: 8 step_w: 8 offset: 0.5 } }
layer { name: "det" type: "DetectionOutput" bottom: "a" bottom: "b" bottom: "pb" top: "det"
  detection_output_param { num_classes: 21 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 eta: 1 }
    save_output_param { output_directory: "out" output_name_prefix: "comp4_det_test_" output_format: "VOC"
      label_map_file: "labelmap_voc.prototxt" name_size_file: "test_name_size.txt" num_test_image: 4952
      resize_param { prob: 1 resize_mode: WARP height: 300 width: 300 interp_mode: LINEAR } }
    code_type: CENTER_SIZE variance_encoded_in_target: false keep_top_k: 200 confidence_threshold: 0.01
    visualize: false } }
"""


def test_fork_prototxt_parses_by_field_name():
    net = prototxt.parse_net(FORK_PROTOTXT)
    by_name = {lay.name: lay for lay in net.layer}
    assert by_name["interp"].interp_param.zoom_factor == 8
    assert by_name["bn_psp"].bn_param.frozen and by_name["bn_psp"].bn_param.engine == caffe_pb2.BNParameter.CAFFE
    assert by_name["bn_segnet"].bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE
    assert by_name["unpool"].upsample_param.upsample_w == 40
    assert by_name["shuffle"].shuffle_channel_param.group == 3
    assert by_name["roi"].roi_pooling_param.pooled_h == 7
    assert by_name["sl1"].smooth_l1_loss_param.sigma == 3
    assert by_name["psroi"].psroi_pooling_param.output_dim == 21
    assert by_name["reorg"].reorg_param.stride == 2
    assert by_name["pb"].prior_box_param.step_w == 8
    det = by_name["det"].detection_output_param
    assert det.code_type == caffe_pb2.PriorBoxParameter.CENTER_SIZE and det.nms_param.top_k == 400
    # Every fork param sits at a private number.
    for lay in net.layer:
        numbers = [f.number for f, _ in lay.ListFields() if f.name.endswith("_param")]
        assert numbers and all(n in PRIVATE for n in numbers), (lay.name, numbers)


def _layer_field_numbers(data):
    """Field numbers of each V2 layer of a serialized NetParameter, at the wire level."""
    out = []
    for field in wire.iter_fields(data, 0, len(data)):
        if field.number == 100:
            start, end = field.value
            out.append({f.number for f in wire.iter_fields(data, start, end)})
    return out


def test_save_writes_fork_params_only_at_private_numbers(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = netspec.Net(str(tmp_path / "deploy.prototxt"), netspec.TEST)
    for lp in net.to_proto().layer:
        assert all(f.number < 100 or f.number in PRIVATE or f.name in ("convolution_param", "input_param")
                   for f, _ in lp.ListFields()), lp.name
    net.save(str(tmp_path / "out.caffemodel"))
    data = (tmp_path / "out.caffemodel").read_bytes()
    stock = caffe_pb2.NetParameter.FromString(data)          # stock protobuf reads it
    names = [lay.name for lay in stock.layer]
    assert names[-3:] == ["conv", "norm", "perm"]
    fork_numbers = {206, 202, 203, 204, 143, 137, 138, 45, 152, 149, 150, 164, 8266711, 8266712, 10001, 159}
    numbers = _layer_field_numbers(data)
    # (the Input layer's 143 is BVLC's own input_param)
    assert all(not (n & fork_numbers) for name, n in zip(names, numbers) if name != "input")
    assert all(not (n & (fork_numbers - {143})) for n in numbers)
    assert 3500 in numbers[names.index("norm")] and 3501 in numbers[names.index("perm")]
    norm = stock.layer[names.index("norm")]
    assert not norm.HasField("input_param") and not norm.HasField("embed_param")


def test_write_drops_unknown_fork_fields_read_from_a_file(tmp_path):
    # A BVLC-typed layer carrying a fork field (SSD's 206) that netspec keeps as unknown.
    path = tmp_path / "in.caffemodel"
    path.write_bytes(layer("conv", "Convolution", bytes_field(206, varint_field(1, 0)),
                           bytes_field(106, varint_field(1, 4)), blob(B)))
    net, weights = caffemodel.read_caffemodel(str(path))
    caffemodel.write_caffemodel(str(tmp_path / "out.caffemodel"), net, weights)
    data = (tmp_path / "out.caffemodel").read_bytes()
    assert _layer_field_numbers(data) == [{1, 2, 7, 106}]


@pytest.mark.parametrize("number", [143, 137])
def test_colliding_number_on_a_bvlc_type_still_reads_as_bvlc(tmp_path, number):
    # BVLC behaviour is kept: an Input layer's 143 is its input_param.
    shape = bytes_field(1, bytes_field(1, b"\x01\x03"))
    path = tmp_path / "in.caffemodel"
    path.write_bytes(layer("data", "Input", bytes_field(143, shape)))
    net, _ = caffemodel.read_caffemodel(str(path))
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3]
