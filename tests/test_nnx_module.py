"""``CaffeNNXModule``: a Caffe net as a Flax NNX module, fine-tuned with ``nnx.Optimizer``."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import netspec as caffe
from netspec.errors import NetspecError
from netspec.nnx_module import CaffeNNXModule
from netspec.prototxt import parse_net

jax.config.update("jax_default_matmul_precision", "highest")

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "drop1" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.25 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""

RS = np.random.RandomState(0)
X = RS.randn(4, 2, 6, 6).astype(np.float32)
LABELS = jnp.array([0, 1, 2, 1])


def trained_caffemodel(tmp_path):
    net = caffe.Net(parse_net(NET), caffe.TRAIN, seed=3)
    net.forward(data=X * 2 + 1)
    path = tmp_path / "tiny.caffemodel"
    net.save(str(path))
    return path


def test_variables_are_caffe_blobs_and_forward_matches_net(tmp_path):
    path = trained_caffemodel(tmp_path)
    model = CaffeNNXModule(parse_net(NET), str(path), outputs=("fc1", "pool1"))
    net = caffe.Net(parse_net(NET), str(path), caffe.TEST)
    assert sorted(model.params) == ["conv1", "fc1"] and sorted(model.batch_stats) == ["bn1"]
    assert all(isinstance(p, nnx.Param) for p in model.params["conv1"])
    assert all(isinstance(s, nnx.BatchStat) for s in model.batch_stats["bn1"])
    assert [p.shape for p in model.params["conv1"]] == [(4, 2, 3, 3), (4,)]
    np.testing.assert_array_equal(model.params["fc1"][0][...], net.params["fc1"][0].data)
    np.testing.assert_array_equal(model.batch_stats["bn1"][0][...], net.params["bn1"][0].data)
    out = model(X)
    expected = net.forward(data=X, blobs=["pool1"])
    np.testing.assert_allclose(out["fc1"], expected["fc1"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["pool1"], expected["pool1"], rtol=1e-5, atol=1e-5)
    # nnx.state splits params from statistics as any NNX model's
    assert len(jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))) == 4
    assert len(jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))) == 3


def test_fillers_match_net_with_the_same_seed():
    model = CaffeNNXModule(parse_net(NET), seed=5, outputs="fc1")
    net = caffe.Net(parse_net(NET), caffe.TEST, seed=5)
    for layer in ("conv1", "fc1"):
        for p, blob in zip(model.params[layer], net.params[layer]):
            np.testing.assert_array_equal(p[...], blob.data)
    np.testing.assert_allclose(model(X), net.forward(data=X)["fc1"], rtol=1e-5, atol=1e-5)


def test_fine_tuning_with_nnx_optimizer(tmp_path):
    path = trained_caffemodel(tmp_path)
    model = CaffeNNXModule(parse_net(NET), str(path), outputs="fc1")
    optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
    before = {k: [np.array(p[...]) for p in v] for k, v in model.params.items()}
    stats_before = np.array(model.batch_stats["bn1"][2][...])

    @nnx.jit
    def step(model, optimizer, x, y, key):
        def loss_fn(model):
            logits = model(x, train=True, rngs=nnx.Rngs(dropout=key))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, X, LABELS, jax.random.PRNGKey(i))) for i in range(8)]
    assert losses[-1] < losses[0] * 0.7, losses
    assert not np.allclose(model.params["conv1"][0][...], before["conv1"][0])
    # train calls update the running statistics (BatchNorm's scale factor counts passes)
    assert float(model.batch_stats["bn1"][2][0]) > float(stats_before[0])
    # the fine-tuned weights in a netspec.Net give the same TEST forward
    net = caffe.Net(parse_net(NET), caffe.TEST)
    net.set_param_tree(model.param_tree(), model.state_tree())
    np.testing.assert_allclose(model(X), net.forward(data=X)["fc1"], rtol=1e-5, atol=1e-5)
    # and it saves as a caffemodel that a fresh module loads back
    net.save(str(tmp_path / "tuned.caffemodel"))
    again = CaffeNNXModule(parse_net(NET), str(tmp_path / "tuned.caffemodel"), outputs="fc1")
    np.testing.assert_allclose(again(X), model(X), rtol=1e-6, atol=1e-6)


def test_dropout_draws_from_rngs_only_in_train_calls():
    model = CaffeNNXModule(parse_net(NET), outputs="fc1")
    np.testing.assert_array_equal(model(X), model(X))
    a = model(X, train=True, rngs=nnx.Rngs(dropout=1))
    b = model(X, train=True, rngs=nnx.Rngs(dropout=2))
    c = model(X, train=True, rngs=jax.random.PRNGKey(1))
    assert not np.allclose(a, b)
    assert c.shape == (4, 3)


def test_any_batch_size_and_errors():
    model = CaffeNNXModule(parse_net(NET), outputs="fc1")
    assert model(X[:2]).shape == (2, 3)
    with pytest.raises(NetspecError, match="parameter shapes depend on the input size"):
        model(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(NetspecError, match=r"no blob\(s\) \['nope'\]"):
        CaffeNNXModule(parse_net(NET), outputs="nope")(X)
    assert caffe.CaffeNNXModule is CaffeNNXModule
