"""Shift-and-stitch is filter dilation (thesis Sec. 3.2.2): the dilated net's dense output
equals the interlaced outputs of the original net on shifted inputs."""
import numpy as np
import pytest

import netspec
from netspec.errors import NetspecError
from netspec.prototxt import parse_net
from netspec.shift_and_stitch import dilate_net, shift_and_stitch


def fcn_text(pool2="MAX", conv2_pad=0):
    """conv/relu/pool x2 + 1x1 score: an FCN-shaped net of stride 4 (valid convolutions)."""
    return f"""
name: "tiny-fcn"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 30 dim: 26 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 4 kernel_size: 3 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param {{ num_output: 5 kernel_size: 3 pad: {conv2_pad} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param {{ pool: {pool2} kernel_size: 2 stride: 2 }} }}
layer {{ name: "score" type: "Convolution" bottom: "pool2" top: "score"
        convolution_param {{ num_output: 3 kernel_size: 1 }} }}
"""


def random_weights(net, seed=0):
    rng = np.random.default_rng(seed)
    weights = {}
    for name, blobs in net.params.items():
        weights[name] = [rng.normal(0, 0.5, b.data.shape).astype(np.float32) for b in blobs]
        for blob, value in zip(blobs, weights[name]):
            blob.data[...] = value
    return weights


def load(net, weights):
    for name, values in weights.items():
        for blob, value in zip(net.params[name], values):
            blob.data[...] = value


def dense_pair(text, at, size, seed=0):
    original = netspec.Net(parse_net(text), phase=netspec.TEST, buckets="off")
    weights = random_weights(original, seed)
    dilated = netspec.Net(dilate_net(parse_net(text), at), phase=netspec.TEST, buckets="off")
    load(dilated, weights)
    image = np.random.default_rng(seed + 1).normal(0, 1, (3,) + size).astype(np.float32)
    return original, dilated, image


@pytest.mark.parametrize("pool2", ["MAX", "AVE"])
def test_two_dilated_layers_equal_shift_and_stitch(pool2):
    # pool1 and pool2 lose their strides: f = 4, shifts of 1 pixel; each shifted run sees a
    # 30x26 crop (no pooling window hangs over a border), the dilated net the whole 33x29 image
    original, dilated, image = dense_pair(fcn_text(pool2), ["pool1", "pool2"], (33, 29))
    stitched = shift_and_stitch(original, image, 4)
    dense = dilated.forward(data=image[None])["score"][0]
    assert stitched.shape == dense.shape == (3, 24, 20)
    np.testing.assert_allclose(dense, stitched, rtol=1e-5, atol=1e-5)
    # and the dilated net's rf stride is 1 with the original rf size
    from netspec.receptive_field import receptive_fields
    before = receptive_fields(original.graph)["score"]
    after = receptive_fields(dilated.graph)["score"]
    assert [a.size for a in before] == [a.size for a in after] == [10, 10]
    assert [a.stride for a in before] == [4, 4] and [a.stride for a in after] == [1, 1]
    assert [a.offset for a in before] == [a.offset for a in after] == [4.5, 4.5]


def test_one_dilated_layer_equals_shift_and_stitch_at_its_grid():
    # only pool2 loses its stride: f = 2, and the shifts are pool1's stride (2 pixels)
    original, dilated, image = dense_pair(fcn_text(), ["pool2"], (32, 28), seed=3)
    stitched = shift_and_stitch(original, image, 2, step=2)
    dense = dilated.forward(data=image[None])["score"][0]
    assert stitched.shape == dense.shape == (3, 12, 10)
    np.testing.assert_allclose(dense, stitched, rtol=1e-5, atol=1e-5)


def test_padded_convolution_matches_in_the_interior():
    # with zero padding after a dilated layer the shifted runs pad their own grids: equal away
    # from the borders only
    original, dilated, image = dense_pair(fcn_text(conv2_pad=1), ["pool1", "pool2"], (37, 33))
    stitched = shift_and_stitch(original, image, 4)
    dense = dilated.forward(data=image[None])["score"][0]
    assert stitched.shape == dense.shape
    np.testing.assert_allclose(dense[:, 8:-8, 8:-8], stitched[:, 8:-8, 8:-8], rtol=1e-5, atol=1e-5)


def test_dilate_net_rewrites_layers():
    net = dilate_net(parse_net(fcn_text()), ["pool1", "pool2"])
    layers = {lp.name: lp for lp in net.layer}
    assert layers["pool1"].type == "Pooling" and layers["pool1"].pooling_param.stride == 1
    assert list(layers["conv2"].convolution_param.dilation) == [2]
    # pool2 (after pool1) becomes Crops at offsets 0/2 merged by an Eltwise MAX, keeping its top
    assert layers["pool2"].type == "Eltwise" and list(layers["pool2"].top) == ["pool2"]
    crops = [lp for lp in net.layer if lp.type == "Crop"]
    assert sorted(tuple(lp.crop_param.offset) for lp in crops) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert list(layers["score"].convolution_param.dilation) == [4]
    # the input is not changed
    assert parse_net(fcn_text()).layer[3].pooling_param.stride == 2


def test_dilate_net_errors():
    text = fcn_text()
    with pytest.raises(NetspecError, match="no layer \"pool9\""):
        dilate_net(parse_net(text), ["pool9"])
    with pytest.raises(NetspecError, match="pool2.*add it to --at"):
        dilate_net(parse_net(text), ["pool1"])
    with pytest.raises(NetspecError, match="ReLU; --at takes"):
        dilate_net(parse_net(text), ["relu1"])
    up = text + ('layer { name: "up" type: "Deconvolution" bottom: "score" top: "up" '
                 'convolution_param { num_output: 3 kernel_size: 4 stride: 2 } }')
    with pytest.raises(NetspecError, match="up.*Deconvolution"):
        dilate_net(parse_net(up), ["pool1", "pool2"])


def test_surgery_dilate_command(tmp_path, capsys):
    from netspec.cli import main
    text = fcn_text()
    (tmp_path / "net.prototxt").write_text(text)
    original = netspec.Net(parse_net(text), phase=netspec.TEST, buckets="off")
    weights = random_weights(original)
    original.save(str(tmp_path / "net.caffemodel"))
    out = str(tmp_path / "dense")
    assert main(["surgery", "dilate", str(tmp_path / "net.prototxt"), str(tmp_path / "net.caffemodel"),
                 "--at", "pool1,pool2", "-o", out]) == 0
    dilated = netspec.Net(out + ".prototxt", out + ".caffemodel", netspec.TEST, buckets="off")
    for name, values in weights.items():
        for blob, value in zip(dilated.params[name], values):
            np.testing.assert_array_equal(blob.data, value)
    image = np.random.default_rng(5).normal(0, 1, (3, 33, 29)).astype(np.float32)
    np.testing.assert_allclose(dilated.forward(data=image[None])["score"][0],
                               shift_and_stitch(original, image, 4), rtol=1e-5, atol=1e-5)
    # --end cuts the net first (here before the score layer)
    assert main(["surgery", "dilate", str(tmp_path / "net.prototxt"), str(tmp_path / "net.caffemodel"),
                 "--at", "pool1,pool2", "--end", "pool2", "-o", out + "2"]) == 0
    assert [lp.name for lp in parse_net(out + "2.prototxt").layer][-1] == "pool2"
    capsys.readouterr()
    assert main(["surgery", "dilate", str(tmp_path / "net.prototxt"), str(tmp_path / "net.caffemodel"),
                 "--at", "pool1", "-o", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add it to --at" in err
