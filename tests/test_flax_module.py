"""``CaffeModule``: a Caffe backbone inside a Flax model."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import netspec as caffe
from netspec.errors import NetspecError
from netspec.flax_module import CaffeModule
from netspec.prototxt import parse_net

jax.config.update("jax_default_matmul_precision", "highest")

BACKBONE = """
name: "backbone"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "drop1" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.25 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1"
        inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
"""

RS = np.random.RandomState(0)
X = RS.randn(4, 2, 6, 6).astype(np.float32)
LABELS = np.array([0, 1, 2, 1])


def backbone_param():
    return parse_net(BACKBONE)


def trained_net(tmp_path):
    """A netspec.Net whose BatchNorm has statistics, saved as a caffemodel."""
    train = caffe.Net(backbone_param(), caffe.TRAIN, seed=3)
    train.forward(data=X * 2 + 1)
    path = tmp_path / "backbone.caffemodel"
    train.save(str(path))
    return path


def test_module_matches_net_forward_and_keys_are_layer_names(tmp_path):
    path = trained_net(tmp_path)
    net = caffe.Net(backbone_param(), str(path), caffe.TEST)
    expected = net.forward(data=X)
    module = CaffeModule(backbone_param(), outputs=("fc1", "pool1"), weights=str(path))
    variables = module.init(jax.random.PRNGKey(0), X)
    assert sorted(variables) == ["batch_stats", "params"]
    assert sorted(variables["params"]) == ["conv1", "fc1"]
    assert sorted(variables["batch_stats"]) == ["bn1"]
    assert [a.shape for a in variables["params"]["conv1"]] == [(4, 2, 3, 3), (4,)]
    np.testing.assert_array_equal(variables["params"]["fc1"][0], net.params["fc1"][0].data)
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"][0], net.params["bn1"][0].data)
    out = jax.jit(module.apply)(variables, X)
    np.testing.assert_allclose(out["fc1"], expected["fc1"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["pool1"], net.blobs["pool1"].data, rtol=1e-5, atol=1e-5)
    # the stored statistics are really used (scale factor 1 after one TRAIN pass)
    assert float(variables["batch_stats"]["bn1"][2][0]) == pytest.approx(1.0)


def test_fillers_match_net_with_the_same_seed(tmp_path):
    (tmp_path / "backbone.prototxt").write_text(BACKBONE)
    module = CaffeModule(str(tmp_path / "backbone.prototxt"), outputs="fc1", seed=5)
    variables = module.init(jax.random.PRNGKey(0), X)
    net = caffe.Net(backbone_param(), caffe.TEST, seed=5)
    for layer in ("conv1", "fc1"):
        for mine, theirs in zip(variables["params"][layer], net.params[layer]):
            np.testing.assert_array_equal(mine, theirs.data)
    out = module.apply(variables, {"data": X})
    np.testing.assert_allclose(out, net.forward(data=X)["fc1"], rtol=1e-5, atol=1e-5)


class Classifier(nn.Module):
    model: object

    @nn.compact
    def __call__(self, x, train=False):
        features = CaffeModule(self.model, outputs="fc1", seed=1, name="backbone")(x, train=train)
        return nn.Dense(3, name="head")(nn.relu(features))


def test_flax_model_with_caffe_backbone_trains():
    model = Classifier(backbone_param())
    variables = model.init({"params": jax.random.PRNGKey(0)}, X)
    assert sorted(variables["params"]["backbone"]) == ["conv1", "fc1"]
    params, stats = variables["params"], variables["batch_stats"]
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params, stats, rng):
        logits, updates = model.apply({"params": params, "batch_stats": stats}, X, train=True,
                                      rngs={"dropout": rng}, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()
        return loss, updates["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, rng):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss, grads

    losses = []
    for i in range(12):
        params, stats, opt_state, loss, grads = step(params, stats, opt_state, jax.random.PRNGKey(i))
        losses.append(float(loss))
        if i == 0:
            assert float(jnp.abs(grads["backbone"]["conv1"][0]).max()) > 0
    assert losses[-1] < 0.7 * losses[0], losses
    # BatchNorm statistics were updated once per step: factor = sum of 0.999**k
    factor = sum(0.999 ** k for k in range(12))
    np.testing.assert_allclose(stats["backbone"]["bn1"][2], [factor], rtol=1e-5)
    # eval mode is deterministic; train mode with different dropout keys is not
    variables = {"params": params, "batch_stats": stats}
    np.testing.assert_array_equal(model.apply(variables, X), model.apply(variables, X))
    a = model.apply(variables, X, train=True, rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"])[0]
    b = model.apply(variables, X, train=True, rngs={"dropout": jax.random.PRNGKey(2)}, mutable=["batch_stats"])[0]
    assert not np.allclose(a, b)


def test_unknown_output_is_a_one_line_error():
    with pytest.raises(NetspecError, match='no blob.*"?fc9'):
        CaffeModule(backbone_param(), outputs="fc9").init(jax.random.PRNGKey(0), X)


FULLY_CONVOLUTIONAL = """
name: "fcn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 20 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 4
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "score"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def test_padded_batch_with_traced_extents_matches_exact_sizes():
    """One jitted function serves every image size in a 32x32 bucket: pad the batch and pass
    the true size as (traced) extents; the output inside its true extent is exact."""
    from netspec.compiler import blob_extents
    module = CaffeModule(parse_net(FULLY_CONVOLUTIONAL), outputs="score", seed=1)
    bucket = np.zeros((2, 2, 32, 32), np.float32)
    variables = module.init(jax.random.PRNGKey(0), bucket)
    padded_apply = jax.jit(lambda v, x, hw: module.apply(v, x, extents=(hw[0], hw[1])))
    graph = module.graph_for({"data": bucket.shape})
    for h, w in [(20, 20), (17, 31), (32, 9)]:
        x = RS.randn(2, 2, h, w).astype(np.float32)
        exact = module.apply(variables, x)
        padded = bucket.copy()
        padded[:, :, :h, :w] = x
        out = padded_apply(variables, padded, np.array([h, w], np.int32))
        oh, ow = (int(v) for v in blob_extents(graph, {"data": (h, w)})["score"])
        assert (oh, ow) == exact.shape[2:]
        np.testing.assert_allclose(out[:, :, :oh, :ow], exact, rtol=1e-5, atol=1e-5)
    assert padded_apply._cache_size() == 1
