"""Acceptance tests for ``netspec.Net``: weights in and out, live parameter edits,
reshaping, sharing, Python layers in the middle of a net, and TRAIN-phase state."""
import textwrap

import jax
import numpy as np
import pytest

import netspec as caffe
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from netspec.prototxt import parse_net

jax.config.update("jax_default_matmul_precision", "highest")
TOL = dict(rtol=1e-5, atol=1e-6)


def input_layer(name, *shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def ip_layer(name, bottom, num_output, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
            f'inner_product_param {{ num_output: {num_output} {extra} '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }\n')


def mlp(hidden=4, extra=""):
    return parse_net(input_layer("data", 2, 3) + ip_layer("ip1", "data", hidden, extra)
                     + 'layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }\n'
                     + ip_layer("ip2", "ip1", 2))


def mlp_reference(net, x):
    (w1, b1), (w2, b2) = [[b.data for b in net.params[k]] for k in ("ip1", "ip2")]
    return np.maximum(x @ w1.T + b1, 0) @ w2.T + b2


X = np.random.RandomState(0).randn(2, 3).astype(np.float32)


# ---------------------------------------------------------------- weights files

def test_save_copy_from_round_trip(tmp_path):
    source = caffe.Net(mlp(), caffe.TEST, seed=1)
    path = tmp_path / "mlp.caffemodel"
    source.save(str(path))
    target = caffe.Net(mlp(), caffe.TEST, seed=2)
    assert not np.allclose(target.params["ip1"][0].data, source.params["ip1"][0].data)
    target.copy_from(str(path))
    for name in ("ip1", "ip2"):
        for mine, theirs in zip(target.params[name], source.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)
    out = target.forward(data=X)["ip2"]
    np.testing.assert_allclose(out, mlp_reference(source, X), **TOL)
    # the constructor's weights argument loads the same file
    loaded = caffe.Net(mlp(), str(path), caffe.TEST)
    np.testing.assert_array_equal(loaded.params["ip2"][1].data, source.params["ip2"][1].data)


@pytest.mark.parametrize("other, what", [(mlp(hidden=5), "shape"), (mlp(extra="bias_term: false"), "count")])
def test_copy_from_mismatch_names_file_and_layer(tmp_path, other, what):
    path = tmp_path / f"other_{what}.caffemodel"
    caffe.Net(other, caffe.TEST).save(str(path))
    net = caffe.Net(mlp(), caffe.TEST)
    with pytest.raises(NetspecError) as info:
        net.copy_from(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and '"ip1"' in message
    if what == "shape":
        assert "(5, 3)" in message and "(4, 3)" in message


def test_v1_caffemodel_with_4d_inner_product_weights(tmp_path):
    rs = np.random.RandomState(3)
    weight, bias = rs.randn(4, 3).astype(np.float32), rs.randn(4).astype(np.float32)
    model = caffe_pb2.NetParameter(name="legacy")
    layer = model.layers.add(name="ip1", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.bottom.append("data")
    layer.top.append("ip1")
    for array in (weight.reshape(1, 1, 4, 3), bias.reshape(1, 1, 1, 4)):
        blob = layer.blobs.add(num=array.shape[0], channels=array.shape[1],
                               height=array.shape[2], width=array.shape[3])
        blob.data.extend(array.ravel().tolist())
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(model.SerializeToString())

    net = caffe.Net(mlp(), str(path), caffe.TEST)
    np.testing.assert_array_equal(net.params["ip1"][0].data, weight)
    np.testing.assert_array_equal(net.params["ip1"][1].data, bias)
    net.forward(data=X)
    np.testing.assert_allclose(net.blobs["ip1"].data, np.maximum(X @ weight.T + bias, 0), **TOL)


# ---------------------------------------------------------------- live edits, reshape, sharing

def test_param_edits_take_effect_on_next_forward():
    net = caffe.Net(mlp(), caffe.TEST)
    before = net.forward(data=X)["ip2"].copy()
    net.params["ip2"][1].data[...] += 10.0
    net.params["ip1"][0].data[0, :] = 0.0
    after = net.forward(data=X)["ip2"]
    np.testing.assert_allclose(after, mlp_reference(net, X), **TOL)
    assert not np.allclose(after, before)
    assert net.params["ip1"][0].data[0].sum() == 0


def test_reshape_to_another_input_size():
    text = input_layer("data", 1, 2, 6, 6) + """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
    """
    net = caffe.Net(parse_net(text), caffe.TEST)
    assert net.blobs["pool"].shape == (1, 3, 3, 3)
    w = net.params["conv"][0].data.reshape(3, 2)
    b = net.params["conv"][1].data
    for n, h, wd in ((1, 10, 8), (2, 4, 12)):
        x = np.random.RandomState(h).randn(n, 2, h, wd).astype(np.float32)
        net.blobs["data"].reshape(n, 2, h, wd)
        net.reshape()
        assert net.blobs["conv"].shape == (n, 3, h, wd)
        assert net.blobs["pool"].shape == (n, 3, h // 2, wd // 2)
        net.blobs["data"].data[...] = x
        out = net.forward()["pool"]
        conv = np.einsum("nchw,oc->nohw", x, w) + b[None, :, None, None]
        pooled = conv.reshape(n, 3, h // 2, 2, wd // 2, 2).mean(axis=(3, 5))
        np.testing.assert_allclose(out, pooled, rtol=1e-5, atol=1e-5)


def test_share_with_uses_the_other_nets_blobs():
    trained = caffe.Net(mlp(), caffe.TRAIN, seed=7)
    tester = caffe.Net(mlp(), caffe.TEST, seed=8)
    tester.share_with(trained)
    assert tester.params["ip1"][0] is trained.params["ip1"][0]
    trained.params["ip2"][0].data[...] *= -2
    np.testing.assert_allclose(tester.forward(data=X)["ip2"], mlp_reference(trained, X), **TOL)


# ---------------------------------------------------------------- Python layer in the middle

PY_LAYER = """
import numpy as np
import netspec as caffe


class ScaledSquare(caffe.Layer):
    def setup(self, bottom, top):
        self.scale = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.scale * bottom[0].data ** 2

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * self.scale * bottom[0].data * top[0].diff
"""


def test_python_layer_in_the_middle(tmp_path):
    (tmp_path / "square_layer_for_test.py").write_text(textwrap.dedent(PY_LAYER))
    text = input_layer("data", 2, 3) + input_layer("target", 2, 4) + ip_layer("ip1", "data", 4) + """
    layer { name: "square" type: "Python" bottom: "ip1" top: "sq"
            python_param { module: "square_layer_for_test" layer: "ScaledSquare" param_str: "1.5" } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "sq" bottom: "target" top: "loss" }
    """
    net = caffe.Net(parse_net(text), caffe.TRAIN, python_path=[str(tmp_path)])
    t = np.random.RandomState(9).randn(2, 4).astype(np.float32)
    out = net.forward(data=X, target=t)
    w, b = net.params["ip1"][0].data, net.params["ip1"][1].data
    ip = X @ w.T + b
    sq = 1.5 * ip ** 2
    np.testing.assert_allclose(net.blobs["sq"].data, sq, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["loss"], np.sum((sq - t) ** 2) / 4, rtol=1e-5)
    net.backward()
    d_ip = 2 * 1.5 * ip * (sq - t) / 2
    np.testing.assert_allclose(net.blobs["ip1"].diff, d_ip, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["ip1"][0].diff, d_ip.T @ X, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- TRAIN-phase behaviour

DROPOUT_NET = input_layer("data", 4, 50) + \
    'layer { name: "drop" type: "Dropout" bottom: "data" top: "out" dropout_param { dropout_ratio: 0.5 } }'


def test_dropout_train_differs_between_passes_and_test_is_identity():
    x = np.random.RandomState(10).rand(4, 50).astype(np.float32) + 0.5
    train = caffe.Net(parse_net(DROPOUT_NET), caffe.TRAIN)
    first = train.forward(data=x)["out"].copy()
    second = train.forward(data=x)["out"].copy()
    assert not np.array_equal(first, second)
    for out in (first, second):
        kept = out != 0
        np.testing.assert_allclose(out[kept], 2 * x[kept], rtol=1e-6)
        assert 0.3 < kept.mean() < 0.7
    test = caffe.Net(parse_net(DROPOUT_NET), caffe.TEST)
    np.testing.assert_array_equal(test.forward(data=x)["out"], x)


BN_NET = input_layer("data", 5, 3, 2, 2) + 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "out" }'


def test_batchnorm_statistics_update_in_train_forward():
    rs = np.random.RandomState(11)
    batches = [rs.randn(5, 3, 2, 2).astype(np.float32) * 2 + 1 for _ in range(2)]
    net = caffe.Net(parse_net(BN_NET), caffe.TRAIN)
    assert [b.shape for b in net.params["bn"]] == [(3,), (3,), (1,)]
    maf, eps, m = 0.999, 1e-5, 5 * 2 * 2
    mean_sum, var_sum, factor = np.zeros(3), np.zeros(3), 0.0
    for x in batches:
        out = net.forward(data=x)["out"]
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        normalized = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
        np.testing.assert_allclose(out, normalized, rtol=1e-4, atol=1e-4)
        factor = factor * maf + 1
        mean_sum = mean_sum * maf + mean
        var_sum = var_sum * maf + var * m / (m - 1)
        np.testing.assert_allclose(net.params["bn"][2].data, [factor], rtol=1e-6)
        np.testing.assert_allclose(net.params["bn"][0].data, mean_sum, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(net.params["bn"][1].data, var_sum, rtol=1e-5, atol=1e-6)

    # a TEST net sharing these blobs normalizes with the stored statistics
    test = caffe.Net(parse_net(BN_NET), caffe.TEST)
    test.share_with(net)
    x = batches[0]
    mean, var = mean_sum / factor, var_sum / factor
    expected = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    np.testing.assert_allclose(test.forward(data=x)["out"], expected, rtol=1e-4, atol=1e-4)


def test_dropout_backward_uses_the_forward_mask():
    x = np.random.RandomState(12).rand(4, 50).astype(np.float32) + 0.5
    net = caffe.Net(parse_net("force_backward: true\n" + DROPOUT_NET), caffe.TRAIN)
    out = net.forward(data=x)["out"].copy()
    seed = np.random.RandomState(13).randn(4, 50).astype(np.float32)
    net.backward(out=seed)
    np.testing.assert_allclose(net.blobs["data"].diff, np.where(out != 0, 2 * seed, 0), rtol=1e-6)


def test_a_layer_sharing_its_weight_but_owning_its_bias_runs_and_reshapes(tmp_path):
    """param { name: "w" } on the weight only: the layer's blobs are [shared, owned]."""
    import numpy as np
    import netspec
    (tmp_path / "net.prototxt").write_text('''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "fc_a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "fc_b" type: "InnerProduct" bottom: "data" top: "b" param { name: "w" }
        inner_product_param { num_output: 3 bias_filler { type: "constant" value: 0.5 } } }
''')
    net = netspec.Net(str(tmp_path / "net.prototxt"), netspec.TEST)
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    out = net.forward(data=x)        # a new batch size: the graph is rebuilt and checked
    w = net.params["fc_a"][0].data
    assert net.params["fc_b"][0] is net.params["fc_a"][0]
    np.testing.assert_allclose(out["b"], x @ w.T + 0.5, rtol=1e-5)
    np.testing.assert_allclose(out["a"], x @ w.T, rtol=1e-5)


def test_a_layer_in_place_on_an_input_leaves_its_result_in_the_blob(tmp_path):
    """Caffe: net.blobs["data"] after forward holds what an in-place layer wrote there."""
    import numpy as np
    import netspec
    (tmp_path / "net.prototxt").write_text('''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "scale" type: "Power" bottom: "data" top: "data" power_param { scale: 2 shift: 1 } }
layer { name: "sc" type: "Scale" bottom: "data" top: "out"
        scale_param { axis: 0 num_axes: 0 filler { type: "constant" value: 3 } } }
''')
    net = netspec.Net(str(tmp_path / "net.prototxt"), netspec.TEST)
    assert net.params["sc"][0].shape == ()          # a scalar learned blob (num_axes 0)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = net.forward(data=x)
    np.testing.assert_allclose(net.blobs["data"].data, 2 * x + 1)
    np.testing.assert_allclose(out["out"], 3 * (2 * x + 1))
