"""Legacy upgrades: V0 and V1 nets, inputs, BatchNorm, solver_type, the CLI command."""

import argparse
import pathlib

import numpy as np
import pytest

from netspec import caffemodel, prototxt, upgrade
from netspec.commands import upgrade as upgrade_command
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

DATA = pathlib.Path(__file__).parent / "data" / "upgrade"


def expected_net(name):
    """A hand-written expected V2 net, parsed without upgrades."""
    return prototxt.parse_net(DATA / f"{name}.expected.prototxt", upgrade_legacy=False)


@pytest.mark.parametrize("name", ["v0_net", "v1_net", "input_shape_batchnorm"])
def test_net_upgrades_match_hand_written_v2(name):
    raw = prototxt.parse_net(DATA / f"{name}.prototxt", upgrade_legacy=False)
    assert upgrade.net_needs_upgrade(raw)
    upgraded = prototxt.read_net(DATA / f"{name}.prototxt")
    assert upgraded == expected_net(name)
    assert not upgrade.net_needs_upgrade(upgraded)
    assert upgrade.upgrade_net(upgraded) == upgraded  # idempotent


def test_upgrade_leaves_its_input_unchanged():
    raw = prototxt.parse_net(DATA / "v1_net.prototxt", upgrade_legacy=False)
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(raw)
    upgrade.upgrade_net(raw)
    assert raw == copy


def test_current_net_is_not_changed():
    net = expected_net("v1_net")
    assert not upgrade.net_needs_upgrade(net)
    assert upgrade.upgrade_net(net) == net


def test_every_v1_type_gets_its_caffe_name():
    # Caffe's V2 type names are the V1 enum names in CamelCase, with these
    # irregular ones.
    irregular = {"ABSVAL": "AbsVal", "BNLL": "BNLL", "HDF5_DATA": "HDF5Data",
                 "HDF5_OUTPUT": "HDF5Output", "IM2COL": "Im2col", "LRN": "LRN",
                 "MVN": "MVN", "RELU": "ReLU", "SOFTMAX_LOSS": "SoftmaxWithLoss",
                 "TANH": "TanH", "ARGMAX": "ArgMax", "INNER_PRODUCT": "InnerProduct",
                 "NONE": ""}
    net = caffe_pb2.NetParameter()
    names = caffe_pb2.V1LayerParameter.LayerType.keys()
    for enum_name in names:
        net.layers.add(name=enum_name.lower(), type=getattr(caffe_pb2.V1LayerParameter, enum_name))
    upgraded = upgrade.upgrade_net(net)
    for enum_name, layer in zip(names, upgraded.layer):
        camel = "".join(part.capitalize() for part in enum_name.split("_"))
        assert layer.type == irregular.get(enum_name, camel)
        assert layer.name == enum_name.lower()


def test_v1_blobs_share_modes_rules_and_params_carry_over():
    v1 = caffe_pb2.NetParameter()
    layer = v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                          bottom=["x"], top=["y"], param=["w", "b"],
                          blob_share_mode=[caffe_pb2.V1LayerParameter.PERMISSIVE],
                          weight_decay=[0.5])
    layer.blobs.add(data=[1.0, 2.0], shape=caffe_pb2.BlobShape(dim=[2]))
    layer.exclude.add(phase=caffe_pb2.TEST, stage=["deploy"])
    layer.inner_product_param.num_output = 2
    layer.threshold_param.threshold = 0.25  # any *_param is carried, used or not
    upgraded = upgrade.upgrade_net(v1).layer[0]
    assert list(upgraded.blobs[0].data) == [1.0, 2.0]
    assert [p.name for p in upgraded.param] == ["w", "b"]
    assert upgraded.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not upgraded.param[1].HasField("share_mode")
    assert upgraded.param[0].decay_mult == 0.5 and not upgraded.param[1].HasField("decay_mult")
    assert not upgraded.param[0].HasField("lr_mult")
    assert upgraded.exclude[0].phase == caffe_pb2.TEST
    assert list(upgraded.exclude[0].stage) == ["deploy"]
    assert upgraded.inner_product_param.num_output == 2
    assert upgraded.threshold_param.threshold == 0.25


def test_data_upgrade_touches_every_data_layer_like_caffe():
    v1 = caffe_pb2.NetParameter()
    first = v1.layers.add(name="a", type=caffe_pb2.V1LayerParameter.IMAGE_DATA)
    first.image_data_param.mirror = True
    first.image_data_param.source = "list.txt"
    v1.layers.add(name="b", type=caffe_pb2.V1LayerParameter.WINDOW_DATA)
    upgraded = upgrade.upgrade_net(v1)
    assert upgraded.layer[0].transform_param.mirror
    assert not upgraded.layer[0].image_data_param.HasField("mirror")
    assert upgraded.layer[0].image_data_param.source == "list.txt"
    # Caffe creates (empty) transform_param and window_data_param here too.
    assert upgraded.layer[1].HasField("transform_param")
    assert upgraded.layer[1].HasField("window_data_param")


def test_input_dim_becomes_first_input_layer():
    net = prototxt.parse_net('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 '
                             'input_dim: 4 input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8 '
                             'layer { name: "s" type: "Silence" bottom: "a" bottom: "b" }')
    assert [layer.name for layer in net.layer] == ["input", "s"]
    shapes = [list(shape.dim) for shape in net.layer[0].input_param.shape]
    assert shapes == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert list(net.layer[0].top) == ["a", "b"]
    assert not net.input and not net.input_dim and not net.input_shape


def test_inputs_without_shapes_are_dropped():
    # As in Caffe: an old caffemodel lists inputs without shapes; nothing to build.
    net = upgrade.upgrade_net(caffe_pb2.NetParameter(input=["data"]))
    assert not net.input and not net.layer


def test_too_few_input_dims_is_an_error():
    with pytest.raises(NetspecError, match=r"^deploy\.prototxt: 1 inputs need 4 input_dim "
                                           r"values \(N, C, H, W each\), found 3$"):
        prototxt.parse_net('input: "a" input_dim: 1 input_dim: 3 input_dim: 5',
                           path="deploy.prototxt")


def test_mixed_layer_and_layers_is_an_error(tmp_path):
    path = tmp_path / "mixed.prototxt"
    path.write_text('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')
    with pytest.raises(NetspecError) as info:
        prototxt.read_net(path)
    assert str(info.value) == (f"{path}: uses both 'layer' and 'layers' (V1); "
                               "write all layers in one form")


def test_v0_unknown_bottom_and_type_are_errors():
    with pytest.raises(NetspecError, match='layer "c": unknown bottom blob "nowhere"'):
        prototxt.parse_net('layers { layer { name: "c" type: "relu" } bottom: "nowhere" }')
    with pytest.raises(NetspecError, match='unknown V0 layer type "warp"'):
        prototxt.parse_net('layers { layer { name: "w" type: "warp" } }')


def test_v0_field_on_wrong_type_is_dropped_with_warning(caplog):
    net = prototxt.parse_net('layers { layer { name: "r" type: "relu" num_output: 3 } }')
    assert net.layer[0].type == "ReLU"
    assert not net.layer[0].HasField("inner_product_param")
    assert 'V0 field "num_output" does not apply to type "relu"' in caplog.text


def test_solver_type_upgrade():
    raw = prototxt.parse_solver(DATA / "solver_type.prototxt", upgrade_legacy=False)
    assert upgrade.solver_needs_upgrade(raw)
    solver = prototxt.read_solver(DATA / "solver_type.prototxt")
    expected = prototxt.parse_solver(DATA / "solver_type.expected.prototxt",
                                     upgrade_legacy=False)
    assert solver == expected
    assert prototxt.format_solver(solver) == (DATA / "solver_type.expected.prototxt").read_text()
    assert not upgrade.solver_needs_upgrade(solver)


@pytest.mark.parametrize("enum_name,type_name", [
    ("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
    ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_each_solver_type(enum_name, type_name):
    solver = prototxt.parse_solver(f"solver_type: {enum_name}")
    assert solver.type == type_name and not solver.HasField("solver_type")
    # The same solver named both ways is accepted.
    both = prototxt.parse_solver(f'solver_type: {enum_name} type: "{type_name}"')
    assert both.type == type_name and not both.HasField("solver_type")


def test_inconsistent_solver_type_is_an_error():
    with pytest.raises(NetspecError, match=r'^s\.prototxt: solver_type: ADAM and type: '
                                           r'"SGD" disagree'):
        prototxt.parse_solver('solver_type: ADAM type: "SGD"', path="s.prototxt")


# ---------------------------------------------------------------- the command


def run_command(*argv):
    parser = argparse.ArgumentParser()
    upgrade_command.add_arguments(parser)
    return upgrade_command.run(parser.parse_args([str(a) for a in argv]))


def test_command_upgrades_text_net_and_solver(tmp_path, capsys):
    out = tmp_path / "net.prototxt"
    assert run_command(DATA / "v1_net.prototxt", out) == 0
    assert prototxt.parse_net(out, upgrade_legacy=False) == expected_net("v1_net")
    assert "upgraded net" in capsys.readouterr().out
    solver_out = tmp_path / "solver.prototxt"
    assert run_command(DATA / "solver_type.prototxt", solver_out) == 0
    assert solver_out.read_text() == (DATA / "solver_type.expected.prototxt").read_text()
    # A current file is copied in canonical form.
    again = tmp_path / "again.prototxt"
    assert run_command(out, again) == 0
    assert again.read_text() == out.read_text()
    assert "already current" in capsys.readouterr().out


def test_command_detects_kind_and_reports_parse_errors(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('base_lr: 0.1\nmax_iter: 10\nlr_polcy: "fixed"\n')
    with pytest.raises(NetspecError, match=r':3:1: SolverParameter has no field "lr_polcy"'):
        upgrade_command.detect_kind(bad)
    with pytest.raises(NetspecError, match="no such file"):
        upgrade_command.detect_kind(tmp_path / "missing.prototxt")


def v0_caffemodel_bytes(weight, bias):
    """A V0 binary model built directly with protobuf: blobs inside V0 layers."""
    net = caffe_pb2.NetParameter(name="old", input=["data"], input_dim=[1, 2, 3, 3])
    conv = net.layers.add(bottom=["data"], top=["conv"])
    conv.layer.name = "conv"
    conv.layer.type = "conv"
    conv.layer.num_output = 2
    conv.layer.kernelsize = 3
    for array in (weight, bias):
        blob = conv.layer.blobs.add(num=1, channels=1, height=1, width=array.size)
        blob.data.extend(array.ravel().tolist())
    relu = net.layers.add(bottom=["conv"], top=["conv"])
    relu.layer.name = "relu"
    relu.layer.type = "relu"
    return net.SerializeToString()


def test_command_upgrades_v0_caffemodel(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(2 * 2 * 3 * 3).astype(np.float32)
    bias = np.array([0.5, -1.5], np.float32)
    source = tmp_path / "old.caffemodel"
    source.write_bytes(v0_caffemodel_bytes(weight, bias))
    assert upgrade_command.detect_kind(source) == "caffemodel"
    out = tmp_path / "new.caffemodel"
    assert run_command(source, out) == 0

    stored = caffe_pb2.NetParameter.FromString(out.read_bytes())  # stock parser
    assert not stored.layers and not stored.input
    assert [(layer.name, layer.type) for layer in stored.layer] == [
        ("input", "Input"), ("conv", "Convolution"), ("relu", "ReLU")]
    assert list(stored.layer[0].input_param.shape[0].dim) == [1, 2, 3, 3]
    assert stored.layer[1].convolution_param.num_output == 2
    np.testing.assert_array_equal(np.array(stored.layer[1].blobs[0].data, np.float32), weight)
    np.testing.assert_array_equal(np.array(stored.layer[1].blobs[1].data, np.float32), bias)


def test_command_upgrades_v1_caffemodel(tmp_path):
    net = caffe_pb2.NetParameter(name="v1")
    fc = net.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                        bottom=["x"], top=["y"], blobs_lr=[1, 2], weight_decay=[1, 0])
    fc.inner_product_param.num_output = 3
    weight = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    blob = fc.blobs.add(num=1, channels=1, height=3, width=4)
    blob.data.extend(weight.ravel().tolist())
    source = tmp_path / "v1.caffemodel"
    source.write_bytes(net.SerializeToString())
    out = tmp_path / "v2.caffemodel"
    assert run_command(source, out) == 0
    structure, weights = caffemodel.read_caffemodel(out)
    assert [layer.type for layer in structure.layer] == ["InnerProduct"]
    assert [(p.lr_mult, p.decay_mult) for p in structure.layer[0].param] == [(1, 1), (2, 0)]
    np.testing.assert_array_equal(np.asarray(weights["fc"][0]).ravel(), weight.ravel())


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    from netspec import cli
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layers { name: "a" type: RELU }\nlayer { name: "b" }\n')
    assert cli.main(["upgrade", str(bad), str(tmp_path / "out.prototxt")]) == 2
    err = capsys.readouterr().err
    assert err == (f"netspec upgrade: error: {bad}: uses both 'layer' and 'layers' (V1); "
                   "write all layers in one form\n")
    assert not (tmp_path / "out.prototxt").exists()
