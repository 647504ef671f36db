"""Acceptance tests for the graph builder: NetState filtering, in-place tops,
fan-out, parameter sharing, loss weights, propagate_down, lr_mult 0, and the
one-line errors for nets that do not fit together."""
import jax
import numpy as np
import pytest

import netspec as caffe
from netspec import compiler
from netspec.errors import NetspecError
from netspec.graph import build_graph
from netspec.prototxt import parse_net

jax.config.update("jax_default_matmul_precision", "highest")


def net_param(text):
    return parse_net(text)


def input_layer(name, *shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def ip_layer(name, bottom, num_output, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" {extra} '
            f'inner_product_param {{ num_output: {num_output} '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }\n')


# ---------------------------------------------------------------- NetState rules

RULES_NET = input_layer("data", 1, 3) + """
layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "data" top: "b" include { phase: TEST } }
layer { name: "level1" type: "ReLU" bottom: "data" top: "c" include { min_level: 1 } }
layer { name: "level_max0" type: "ReLU" bottom: "data" top: "d" include { max_level: 0 } }
layer { name: "stage_s" type: "ReLU" bottom: "data" top: "e" include { stage: "s" } }
layer { name: "stage_s_and_t" type: "ReLU" bottom: "data" top: "f" include { stage: "s" stage: "t" } }
layer { name: "not_stage_s" type: "ReLU" bottom: "data" top: "g" include { not_stage: "s" } }
layer { name: "excl_train" type: "ReLU" bottom: "data" top: "h" exclude { phase: TRAIN } }
layer { name: "s_or_test" type: "ReLU" bottom: "data" top: "i" include { stage: "s" } include { phase: TEST } }
"""


@pytest.mark.parametrize("phase, level, stages, expected", [
    (caffe.TRAIN, 0, (), ["train_only", "level_max0", "not_stage_s"]),
    (caffe.TEST, 0, (), ["test_only", "level_max0", "not_stage_s", "excl_train", "s_or_test"]),
    (caffe.TRAIN, 1, (), ["train_only", "level1", "not_stage_s"]),
    (caffe.TRAIN, 0, ("s",), ["train_only", "level_max0", "stage_s", "s_or_test"]),
    (caffe.TRAIN, 0, ("s", "t"), ["train_only", "level_max0", "stage_s", "stage_s_and_t", "s_or_test"]),
    (caffe.TEST, 2, ("t",), ["test_only", "level1", "not_stage_s", "excl_train", "s_or_test"]),
])
def test_include_exclude_rules(phase, level, stages, expected):
    graph = build_graph(net_param(RULES_NET), phase, level, stages)
    assert [n.name for n in graph.nodes] == ["data"] + expected


def test_include_and_exclude_together_is_an_error():
    text = input_layer("data", 1, 3) + \
        'layer { name: "both" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } exclude { phase: TEST } }'
    with pytest.raises(NetspecError, match='"both"'):
        build_graph(net_param(text), caffe.TRAIN)


# ---------------------------------------------------------------- in-place tops

def test_in_place_top_rebinds_the_blob():
    text = input_layer("data", 2, 5) + ip_layer("ip", "data", 4) + \
        'layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }\n' + \
        'layer { name: "scale" type: "Power" bottom: "ip" top: "out" power_param { scale: 3 } }\n'
    net = caffe.Net(net_param(text), caffe.TEST)
    assert list(net.blobs) == ["data", "ip", "out"]
    x = np.random.RandomState(0).randn(2, 5).astype(np.float32)
    net.forward(data=x)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    relu = np.maximum(x @ w.T + b, 0)
    np.testing.assert_allclose(net.blobs["ip"].data, relu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["out"].data, 3 * relu, rtol=1e-5, atol=1e-6)
    assert net.outputs == ["out"]


def test_in_place_top_may_not_change_shape():
    text = input_layer("data", 2, 5) + 'layer { name: "flat" type: "InnerProduct" bottom: "data" top: "data" ' \
        'inner_product_param { num_output: 3 } }'
    with pytest.raises(NetspecError, match='"flat".*(2, 5).*(2, 3)'):
        build_graph(net_param(text), caffe.TEST)


# ---------------------------------------------------------------- fan-out and sharing

def test_blob_consumed_twice_sums_gradients():
    text = "force_backward: true\n" + input_layer("data", 3, 4) + ip_layer("ip_a", "data", 2) + \
        ip_layer("ip_b", "data", 5)
    net = caffe.Net(net_param(text), caffe.TRAIN)
    rs = np.random.RandomState(1)
    x = rs.randn(3, 4).astype(np.float32)
    da, db = rs.randn(3, 2).astype(np.float32), rs.randn(3, 5).astype(np.float32)
    net.forward(data=x)
    net.backward(ip_a=da, ip_b=db)
    wa, wb = net.params["ip_a"][0].data, net.params["ip_b"][0].data
    np.testing.assert_allclose(net.blobs["data"].diff, da @ wa + db @ wb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip_a"][0].diff, da.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip_b"][1].diff, db.sum(0), rtol=1e-5, atol=1e-6)


def test_shared_params_are_one_blob_with_summed_gradients():
    shared = 'param { name: "w" } param { name: "b" }'
    text = input_layer("x1", 2, 3) + input_layer("x2", 4, 3) + ip_layer("ip1", "x1", 2, shared) + \
        ip_layer("ip2", "x2", 2, shared)
    net = caffe.Net(net_param(text), caffe.TRAIN)
    graph = net.graph
    assert graph.param_shapes == {"ip1": [(2, 3), (2,)]}
    assert graph.node("ip2").param_keys == [("ip1", 0), ("ip1", 1)]
    assert net.params["ip2"][0] is net.params["ip1"][0]
    rs = np.random.RandomState(2)
    x1, x2 = rs.randn(2, 3).astype(np.float32), rs.randn(4, 3).astype(np.float32)
    d1, d2 = rs.randn(2, 2).astype(np.float32), rs.randn(4, 2).astype(np.float32)
    net.forward(x1=x1, x2=x2)
    w, b = net.params["ip1"][0].data, net.params["ip1"][1].data
    np.testing.assert_allclose(net.blobs["ip2"].data, x2 @ w.T + b, rtol=1e-5, atol=1e-6)
    net.backward(ip1=d1, ip2=d2)
    np.testing.assert_allclose(net.params["ip1"][0].diff, d1.T @ x1 + d2.T @ x2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["ip2"][1].diff, d1.sum(0) + d2.sum(0), rtol=1e-5, atol=1e-5)


def test_shared_param_shape_mismatch_names_both_layers():
    text = input_layer("x", 2, 3) + ip_layer("ip1", "x", 2, 'param { name: "w" }') + \
        ip_layer("ip2", "x", 4, 'param { name: "w" }')
    with pytest.raises(NetspecError, match=r'"ip2".*"w".*\(4, 3\).*\(2, 3\).*"ip1"'):
        build_graph(net_param(text), caffe.TRAIN)


# ---------------------------------------------------------------- loss weights

LOSS_NET = input_layer("data", 2, 3) + input_layer("target", 2, 4) + ip_layer("ip", "data", 4) + """
layer { name: "loss_default" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "l1" }
layer { name: "loss_half" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "l2" loss_weight: 0.5 }
layer { name: "act" type: "TanH" bottom: "ip" top: "act" loss_weight: 2 }
"""


def test_loss_weights_default_and_explicit():
    graph = build_graph(net_param(LOSS_NET), caffe.TRAIN)
    assert graph.node("loss_default").loss_weights == [1.0]
    assert graph.node("loss_half").loss_weights == [0.5]
    assert graph.node("act").loss_weights == [2.0]
    assert graph.node("ip").loss_weights == [0.0]
    params, state = compiler.init_params(graph, seed=3)
    rs = np.random.RandomState(3)
    x, t = rs.randn(2, 3).astype(np.float32), rs.randn(2, 4).astype(np.float32)
    blobs, loss, _ = compiler.forward(graph, params, state, {"data": x, "target": t}, train=True)
    ip = x @ params["ip"][0].T + params["ip"][1]
    euclid = np.sum((ip - t) ** 2) / (2 * 2)
    np.testing.assert_allclose(blobs["l1"], euclid, rtol=1e-5)
    expected = 1.0 * euclid + 0.5 * euclid + 2.0 * np.tanh(ip).sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_loss_weights_scale_the_gradient():
    net = caffe.Net(net_param(LOSS_NET), caffe.TRAIN, seed=4)
    rs = np.random.RandomState(4)
    x, t = rs.randn(2, 3).astype(np.float32), rs.randn(2, 4).astype(np.float32)
    net.forward(data=x, target=t)
    net.backward()
    assert net.blob_loss_weights["l2"] == 0.5 and net.blob_loss_weights["act"] == 2.0
    ip = net.blobs["ip"].data
    d_ip = 1.5 * (ip - t) / 2 + 2.0 * (1 - np.tanh(ip) ** 2)
    np.testing.assert_allclose(net.blobs["ip"].diff, d_ip, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip"][0].diff, d_ip.T @ x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- propagate_down, lr_mult 0

def test_propagate_down_false_stops_the_gradient():
    text = input_layer("data", 2, 3) + ip_layer("ip_a", "data", 4) + ip_layer("ip_b", "data", 4) + \
        'layer { name: "loss" type: "EuclideanLoss" bottom: "ip_a" bottom: "ip_b" top: "loss" ' \
        'propagate_down: true propagate_down: false }'
    net = caffe.Net(net_param(text), caffe.TRAIN, seed=5)
    x = np.random.RandomState(5).randn(2, 3).astype(np.float32)
    net.forward(data=x)
    net.backward()
    d_a = (net.blobs["ip_a"].data - net.blobs["ip_b"].data) / 2
    np.testing.assert_allclose(net.params["ip_a"][0].diff, d_a.T @ x, rtol=1e-5, atol=1e-6)
    assert np.abs(net.params["ip_a"][0].diff).max() > 1e-3
    assert np.all(net.params["ip_b"][0].diff == 0)
    assert np.all(net.params["ip_b"][1].diff == 0)


def _lr0_net(force_backward):
    frozen = 'param { lr_mult: 0 } param { lr_mult: 0 }'
    return net_param(("force_backward: true\n" if force_backward else "") + input_layer("data", 2, 3)
                     + input_layer("target", 2, 2) + ip_layer("ip0", "data", 4)
                     + ip_layer("ip1", "ip0", 5, frozen) + ip_layer("ip2", "ip1", 2)
                     + 'layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss" }')


@pytest.mark.parametrize("force_backward", [False, True])
def test_lr_mult_zero_passes_gradient_but_keeps_param_diff_zero(force_backward):
    net = caffe.Net(_lr0_net(force_backward), caffe.TRAIN, seed=6)
    rs = np.random.RandomState(6)
    x, t = rs.randn(2, 3).astype(np.float32), rs.randn(2, 2).astype(np.float32)
    net.forward(data=x, target=t)
    net.backward()
    w1, w2 = net.params["ip1"][0].data, net.params["ip2"][0].data
    d2 = (net.blobs["ip2"].data - t) / 2
    d1 = d2 @ w2
    d0 = d1 @ w1
    np.testing.assert_allclose(net.blobs["ip0"].diff, d0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip0"][0].diff, d0.T @ x, rtol=1e-5, atol=1e-6)
    assert np.abs(net.blobs["ip0"].diff).max() > 1e-3
    if force_backward:
        np.testing.assert_allclose(net.params["ip1"][0].diff, d1.T @ net.blobs["ip0"].data,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(net.blobs["data"].diff, d0 @ net.params["ip0"][0].data,
                                   rtol=1e-5, atol=1e-6)
    else:
        assert np.all(net.params["ip1"][0].diff == 0) and np.all(net.params["ip1"][1].diff == 0)
        assert np.all(net.blobs["data"].diff == 0)


# ---------------------------------------------------------------- errors

ERR_HEAD = input_layer("data", 1, 4, 8, 8) + input_layer("small", 1, 4, 5, 5)


def _one_line_error(text):
    with pytest.raises(NetspecError) as info:
        build_graph(net_param(ERR_HEAD + text), caffe.TEST)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_error_missing_bottom():
    message = _one_line_error('layer { name: "relu" type: "ReLU" bottom: "nope" top: "r" }')
    assert '"relu"' in message and '"nope"' in message


def test_error_crop_larger_than_input():
    message = _one_line_error('layer { name: "crop" type: "Crop" bottom: "small" bottom: "data" top: "c" }')
    assert '"crop"' in message and "(1, 4, 5, 5)" in message and "(1, 4, 8, 8)" in message


def test_error_crop_offset_past_the_edge():
    message = _one_line_error('layer { name: "crop" type: "Crop" bottom: "data" bottom: "small" top: "c" '
                              'crop_param { offset: 4 } }')
    assert '"crop"' in message and "(1, 4, 8, 8)" in message and "(1, 4, 5, 5)" in message


def test_error_eltwise_shapes_differ():
    message = _one_line_error('layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "small" top: "s" }')
    assert '"sum"' in message and "(1, 4, 5, 5)" in message and "(1, 4, 8, 8)" in message


@pytest.mark.parametrize("group, num_output", [(3, 6), (2, 3)])
def test_error_group_does_not_divide(group, num_output):
    message = _one_line_error(f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "c" '
                              f'convolution_param {{ num_output: {num_output} kernel_size: 1 group: {group} }} }}')
    assert '"conv"' in message and f"group {group}" in message and "(1, 4, 8, 8)" in message


def test_error_unknown_layer_type_lists_supported_types():
    message = _one_line_error('layer { name: "frob" type: "Frobnicate" bottom: "data" top: "f" }')
    assert '"frob"' in message and '"Frobnicate"' in message
    for supported in ("Convolution", "Crop", "Deconvolution", "SoftmaxWithLoss", "Eltwise"):
        assert supported in message


def test_error_top_produced_twice():
    message = _one_line_error('layer { name: "r1" type: "ReLU" bottom: "data" top: "r" }\n'
                              'layer { name: "r2" type: "ReLU" bottom: "small" top: "r" }')
    assert '"r2"' in message and '"r"' in message
