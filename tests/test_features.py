"""Dense features with receptive-field centres (netspec.features, `netspec features`)."""
import numpy as np
import pytest
from PIL import Image

import netspec
from netspec import cli
from netspec.errors import NetspecError
from netspec.features import dense_features, truncated_net
from netspec.prototxt import parse_net

# a small classifier: conv (pad 1) / pool / conv / pool, then an InnerProduct that fixes the size
TEXT = """
name: "tiny-classifier"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "tiny.caffemodel"
    netspec.Net(parse_net(TEXT), phase=netspec.TEST, seed=1).save(str(path))
    return str(path)


def test_truncated_net_keeps_the_layers_up_to_the_deepest_one_and_its_relu():
    net = truncated_net(parse_net(TEXT), ["conv1", "conv2"])
    assert [lp.name for lp in net.layer] == ["data", "conv1", "relu1", "pool1", "conv2", "relu2"]
    with pytest.raises(NetspecError, match='no layer "conv9"'):
        truncated_net(parse_net(TEXT), ["conv9"])


def test_dense_features_and_centres(weights):
    net = netspec.Net(truncated_net(parse_net(TEXT), ["conv2", "pool2"]), weights=weights,
                      phase=netspec.TEST, buckets="off")
    image = np.random.default_rng(0).normal(0, 1, (3, 37, 29)).astype(np.float32)
    out = dense_features(net, image, ["conv2", "pool2"])
    features, ys, xs = out["conv2"]
    # conv1 3/pad 1 -> pool1 3/2 (ceil) -> conv2 3: 37 -> 37 -> 18 -> 16; 29 -> 29 -> 14 -> 12
    assert features.shape == (6, 16, 12)
    # rf: conv1 3 (centre 0), pool1 5 at stride 2 (centre 1), conv2 9 at stride 2 (centre 3)
    np.testing.assert_array_equal(ys, 3 + 2 * np.arange(16))
    np.testing.assert_array_equal(xs, 3 + 2 * np.arange(12))
    features, ys, xs = out["pool2"]
    assert features.shape == (6, 8, 6)
    np.testing.assert_array_equal(ys, 4 + 4 * np.arange(8))       # rf 11 at stride 4, pixels -1..9
    # the features are the net's blobs (after the in-place ReLU), at this image's size
    ref = netspec.Net(truncated_net(parse_net(TEXT), ["conv2"]), weights=weights, phase=netspec.TEST,
                      buckets="off")
    ref.blobs["data"].reshape(1, 3, 37, 29)
    np.testing.assert_allclose(out["conv2"][0], ref.forward(data=image[None])["conv2"][0], rtol=1e-6)
    assert out["conv2"][0].min() >= 0
    with pytest.raises(NetspecError, match='no layer "fc8"'):
        dense_features(net, image, ["fc8"])


def run_cli(argv, monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "features", "dense features")
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_features_command_writes_npz(tmp_path, weights, monkeypatch, capsys):
    (tmp_path / "net.prototxt").write_text(TEXT)
    rng = np.random.default_rng(2)
    paths = []
    for name, size in (("cat", (20, 24)), ("dog", (33, 17))):
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(path)
        paths.append(str(path))
    out = str(tmp_path / "feats.npz")
    code, stdout, err = run_cli(["features", str(tmp_path / "net.prototxt"), weights, "--layers",
                                 "conv1,conv2", *paths, "-o", out, "--mean", "100,110,120"],
                                monkeypatch, capsys)
    assert code == 0, err
    data = np.load(out)
    assert sorted(data.files) == sorted(f"{stem}/{layer}{suffix}" for stem in ("cat", "dog")
                                        for layer in ("conv1", "conv2")
                                        for suffix in ("", "/centres_y", "/centres_x"))
    assert data["cat/conv1"].shape == (4, 20, 24) and data["dog/conv2"].shape == (6, 14, 6)
    np.testing.assert_array_equal(data["cat/conv1/centres_x"], np.arange(24))
    np.testing.assert_array_equal(data["dog/conv2/centres_y"], 3 + 2 * np.arange(14))
    code, stdout, err = run_cli(["features", str(tmp_path / "net.prototxt"), weights, "--layers",
                                 "conv1,conv7", *paths, "-o", out], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and 'no layer "conv7"' in err
