"""``netspec export`` and ``netspec.export``: safetensors, Orbax and StableHLO round trips
(each loaded back with its own library and run against netspec), and the command's errors."""
import os
import sys

import jax
import numpy as np
import pytest

import netspec as caffe
from netspec import export
from netspec.cli import main
from netspec.errors import NetspecError
from netspec.prototxt import parse_net

pytest.importorskip("safetensors")
pytest.importorskip("orbax.checkpoint")

jax.config.update("jax_default_matmul_precision", "highest")

# conv/relu/pool/InnerProduct/softmax, with two InnerProducts sharing their blobs
PLAIN = """
name: "plain"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc_a" type: "InnerProduct" bottom: "pool1" top: "fc_a" param { name: "shared_w" } param { name: "shared_b" }
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
layer { name: "fc_b" type: "InnerProduct" bottom: "pool1" top: "fc_b" param { name: "shared_w" } param { name: "shared_b" }
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
layer { name: "sum" type: "Eltwise" bottom: "fc_a" bottom: "fc_b" top: "fc" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

BATCHNORM = """
name: "bn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true
        filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "constant" value: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3
        weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
NETS = {"plain": PLAIN, "bn": BATCHNORM}
OWN_FORMATS = ("safetensors", "orbax", "stablehlo")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (prototxt path, caffemodel path)}; the BatchNorm net's statistics come from a TRAIN pass."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, text in NETS.items():
        prototxt = root / f"{name}.prototxt"
        prototxt.write_text(text)
        net = caffe.Net(str(prototxt), caffe.TRAIN, seed=7)
        shape = net.blobs["data"].shape
        net.forward(data=np.random.RandomState(1).randn(*shape).astype(np.float32) * 2 + 0.5)
        net.save(str(root / f"{name}.caffemodel"))
        out[name] = (prototxt, root / f"{name}.caffemodel")
    return out


@pytest.mark.parametrize("fmt", OWN_FORMATS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_round_trip_matches_netspec(models, tmp_path, name, fmt):
    prototxt, weights = models[name]
    net = export.build_net(str(prototxt), str(weights))
    out = tmp_path / f"model.{fmt}"
    description = export.export(net, fmt, out)
    assert isinstance(description, str) and description
    inputs = export.random_inputs(net, seed=3)
    assert export.verify(net, fmt, out, inputs) <= 1e-5
    expected = export.reference_outputs(net, inputs)
    assert sorted(expected) == ["prob"]
    if name == "bn":
        assert np.abs(net.params["bn1"][0].data).min() > 0.01     # real statistics are in play
        assert np.abs(net.params["bn1"][1].data - 1).max() > 0.01
    globals()[f"_check_{fmt}"](net, out, inputs, expected)


def _check_safetensors(net, out, inputs, expected):
    from safetensors import safe_open
    from safetensors.numpy import load_file
    from netspec.export.to_safetensors import load_safetensors
    tensors = load_file(str(out))
    assert sorted(tensors) == sorted(f"{layer}/{i}" for layer, blobs in net.params.items()
                                     for i in range(len(blobs)))
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            assert tensors[f"{layer}/{i}"].dtype == np.float32
            np.testing.assert_array_equal(tensors[f"{layer}/{i}"], blob.data)   # Caffe's shapes
    with safe_open(str(out), framework="np") as f:
        metadata = f.metadata()
    assert metadata["format"] == "netspec-caffe"
    net_param, weights = load_safetensors(out)
    assert net_param == parse_net(metadata["prototxt"])
    assert [lp.name for lp in net_param.layer] == net._layer_names
    assert list(net_param.layer[0].input_param.shape[0].dim) == list(net.blobs["data"].shape)
    rebuilt = caffe.Net(net_param, caffe.TEST)
    for layer, arrays in weights.items():
        for blob, array in zip(rebuilt.params[layer], arrays):
            blob.data[...] = array
    np.testing.assert_allclose(rebuilt.forward(**inputs)["prob"], expected["prob"], atol=1e-6)


def _check_orbax(net, out, inputs, expected):
    from netspec.export.to_orbax import load_orbax
    from netspec.flax_module import CaffeModule
    assert sorted(os.listdir(out)) == ["net.prototxt", "variables"]
    module, variables = load_orbax(out)
    assert isinstance(module, CaffeModule)
    # exactly the variables CaffeModule.init gives, with the net's values
    fresh = CaffeModule(parse_net((out / "net.prototxt").read_text())).init(
        jax.random.PRNGKey(0), inputs["data"])
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(variables)
    assert jax.tree_util.tree_map(np.shape, fresh) == jax.tree_util.tree_map(np.shape, variables)
    for layer, blobs in variables["params"].items():
        for value, blob in zip(blobs, net.params[layer]):
            np.testing.assert_array_equal(value, blob.data)
    for layer, blobs in variables.get("batch_stats", {}).items():
        for value, blob in zip(blobs, net.params[layer]):
            np.testing.assert_array_equal(value, blob.data)
    np.testing.assert_allclose(module.apply(variables, inputs)["prob"], expected["prob"], atol=1e-5)


def _check_stablehlo(net, out, inputs, expected):
    from safetensors.numpy import load_file
    from netspec.export.to_stablehlo import weights_path
    assert os.path.basename(weights_path(out)) == "model.weights.safetensors"
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    assert "cpu" in exported.platforms
    weights = load_file(weights_path(out))
    got = exported.call(weights, inputs)
    np.testing.assert_allclose(np.asarray(got["prob"]), expected["prob"], atol=1e-5)
    # the weights are an argument: other values give other outputs
    doubled = {k: v * 2 for k, v in weights.items()}
    assert np.abs(np.asarray(exported.call(doubled, inputs)["prob"]) - expected["prob"]).max() > 1e-3


@pytest.mark.parametrize("fmt", OWN_FORMATS)
def test_export_command(models, tmp_path, capsys, fmt):
    prototxt, weights = models["bn"]
    out = tmp_path / f"out.{fmt}"
    assert main(["export", str(prototxt), str(weights), "-o", str(out), "--format", fmt,
                 "--input-shape", "data=3,2,6,6"]) == 0
    stdout = capsys.readouterr().out
    assert "max abs difference" in stdout
    difference = float(stdout.split("max abs difference")[1].split()[0])
    assert difference <= 1e-5
    assert os.path.exists(out)


def test_input_shapes_are_parsed_in_order_or_by_name():
    assert export.parse_input_shapes(["1,3,4,4"], ["data"]) == {"data": (1, 3, 4, 4)}
    assert export.parse_input_shapes(["b=2,5", "1,3,4,4"], ["a", "b"]) == {"a": (1, 3, 4, 4), "b": (2, 5)}
    with pytest.raises(NetspecError, match='no input blob "x"'):
        export.parse_input_shapes(["x=1,2"], ["data"])
    with pytest.raises(NetspecError, match="positive sizes"):
        export.parse_input_shapes(["1,0,2"], ["data"])
    with pytest.raises(NetspecError, match="2 unnamed shapes"):
        export.parse_input_shapes(["1,2", "3,4"], ["data"])


def one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_command_errors_are_one_line(models, tmp_path, capsys, monkeypatch):
    prototxt, weights = models["plain"]
    out = str(tmp_path / "out")
    assert main(["export", str(prototxt), str(weights), "-o", out, "--format", "tflite"]) == 2
    assert 'export format "tflite": use one of safetensors, orbax, onnx, stablehlo' in one_line_error(capsys)
    assert main(["export", str(prototxt), str(tmp_path / "none.caffemodel"), "-o", out,
                 "--format", "safetensors"]) == 2
    assert "none.caffemodel: no such weights file" in one_line_error(capsys)
    assert main(["export", str(prototxt), str(weights), "-o", out, "--format", "safetensors",
                 "--input-shape", "2,3,16,16"]) == 2       # InnerProduct weights fix the size
    assert "depend on the input size" in one_line_error(capsys)
    # a format whose module is absent
    monkeypatch.setitem(export.FORMATS, "onnx", "netspec.export.to_nothing_here")
    assert main(["export", str(prototxt), str(weights), "-o", out, "--format", "onnx"]) == 2
    assert 'export format "onnx" is not available' in one_line_error(capsys)


def test_missing_library_says_how_to_install(models, tmp_path, capsys, monkeypatch):
    prototxt, weights = models["plain"]
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    assert main(["export", str(prototxt), str(weights), "-o", str(tmp_path / "m.safetensors"),
                 "--format", "safetensors"]) == 2
    assert "pip install 'netspec[export]'" in one_line_error(capsys)


def test_a_failed_check_is_an_error(models, tmp_path, capsys, monkeypatch):
    from netspec.export import to_safetensors
    prototxt, weights = models["plain"]
    monkeypatch.setattr(to_safetensors, "check", lambda net, out_path, inputs: 0.5)
    assert main(["export", str(prototxt), str(weights), "-o", str(tmp_path / "m.safetensors"),
                 "--format", "safetensors"]) == 2
    assert "differ from netspec's by 0.5" in one_line_error(capsys)
    assert main(["export", str(prototxt), str(weights), "-o", str(tmp_path / "n.safetensors"),
                 "--format", "safetensors", "--no-check"]) == 0


def test_data_layer_nets_are_refused(tmp_path):
    text = PLAIN.replace('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 '
                         'dim: 8 dim: 8 } } }',
                         'layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 2 '
                         'dim: 3 dim: 8 dim: 8 } } }')
    assert text != PLAIN
    with pytest.raises(NetspecError, match="Input layers"):
        export.build_net(parse_net(text))
