"""The pycaffe facade at the core's speed: ``forward(); backward()`` traces the net once
(the backward uses the forward's VJP), blobs reach host memory only when read, and
pycaffe's semantics hold (edits to .data take effect, diffs accumulate, held arrays see
new values)."""
import jax
import numpy as np
import pytest

import netspec
from netspec import compiler, passes
from netspec.prototxt import parse_net

NET = '''name: "facade"
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 12 dim: 10 } shape { dim: 2 dim: 1 dim: 12 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
'''


def make_net(buckets="off"):
    net = netspec.Net(parse_net(NET), phase=netspec.TRAIN, buckets=buckets)
    rs = np.random.RandomState(0)
    net.blobs["data"].data[...] = rs.randn(2, 3, 12, 10)
    net.blobs["label"].data[...] = rs.randint(0, 3, (2, 1, 12, 10))
    return net


def reference_gradients(net):
    """jax.grad of the pure core on the net's last pass: the same rng (Dropout is active)
    and, with buckets, the same padded shapes (Dropout masks are drawn at that shape)."""
    plan = net.plan()
    params = {k: [np.asarray(a) for a in v] for k, v in net.param_tree().items()}
    inputs = plan.pad_inputs({"data": net.blobs["data"].data.copy(), "label": net.blobs["label"].data.copy()})

    def loss(p):
        return compiler.forward(plan.graph, p, {}, inputs, train=True, rng=net._last_rng,
                                extents=plan.unpack_extents(plan.extents))[1]
    return jax.grad(loss)(params)


@pytest.fixture
def traced(monkeypatch):
    """Counts the traces of the net's forward pass (compiler.forward as the passes call it)."""
    count = [0]
    real = compiler.forward

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(passes.compiler, "forward", counting)
    return count


@pytest.mark.parametrize("buckets", ["off", 32])
def test_forward_then_backward_traces_the_net_once(traced, buckets):
    net = make_net(buckets)
    net.forward()
    net.backward()
    assert traced[0] == 1
    # a second pass reuses the compiled executables: no new trace
    net.clear_param_diffs()
    net.forward()
    net.backward()
    assert traced[0] == 1
    expected = reference_gradients(net)
    for layer in ("conv1", "conv2"):
        for i in range(2):
            np.testing.assert_allclose(net.params[layer][i].diff, expected[layer][i], rtol=1e-5, atol=1e-6)


def test_untouched_blobs_are_not_copied_to_the_host():
    net = make_net()
    net.forward()
    for name in ("conv1", "score"):
        assert not net.blobs[name].on_host
    assert net.forward()["loss"].shape == ()         # the output is read: copied
    assert net.blobs["loss"].on_host and not net.blobs["score"].on_host
    score = net.blobs["score"].data                  # reading one blob copies that blob only
    assert net.blobs["score"].on_host and not net.blobs["conv1"].on_host
    assert score.shape == (2, 3, 12, 10)
    net.backward()
    assert not net.blobs["conv1"].diff_on_host
    assert not any(b.diff_on_host for b in net.params["conv1"])
    assert net.params["conv1"][0].diff.shape == (4, 3, 3, 3)
    assert net.params["conv1"][0].diff_on_host and not net.params["conv2"][0].diff_on_host


def test_param_diffs_accumulate_until_cleared():
    net = make_net()
    net.forward()
    net.backward()
    once = net.params["conv2"][0].diff.copy()
    net.backward()                                   # same pass again: twice the gradient
    np.testing.assert_allclose(net.params["conv2"][0].diff, 2 * once, rtol=1e-6)
    held = net.params["conv2"][0].diff
    net.clear_param_diffs()
    assert not held.any()
    net.backward()
    np.testing.assert_allclose(held, once, rtol=1e-6)   # the held array is the blob's diff


def test_edits_to_data_take_effect_and_held_arrays_see_new_values():
    net = make_net()
    net.forward()
    first = net.blobs["score"].data.copy()
    weight = net.params["conv2"][0].data              # held, as pycaffe scripts do
    weight[...] *= 2                                  # edit in place
    net.params["conv2"][1].data[...] = 0
    net.blobs["data"].data[...] *= 1                  # inputs are read every pass
    net.forward()
    conv1 = net.blobs["conv1"].data
    expected = jax.lax.conv_general_dilated(conv1, weight, (1, 1), [(1, 1), (1, 1)])
    np.testing.assert_allclose(net.blobs["score"].data, np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert not np.allclose(first, net.blobs["score"].data)


def test_backward_after_new_inputs_recomputes_the_forward(traced):
    net = make_net()
    net.forward()
    net.blobs["data"].reshape(2, 3, 8, 8)
    net.blobs["label"].reshape(2, 1, 8, 8)
    net.blobs["data"].data[...] = 1.0
    net.reshape()
    net.backward()                                    # no forward at this size: recomputed
    assert net.params["conv1"][0].diff.shape == (4, 3, 3, 3)
    assert traced[0] == 2


def test_solver_updates_reach_arrays_users_hold(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        'train_net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 10\n')
    solver = netspec.get_solver(str(tmp_path / "solver.prototxt"))
    held = solver.net.params["conv2"][0].data
    before = held.copy()
    solver.net.blobs["label"].data[...] = 1
    solver.step(2)
    assert not np.allclose(held, before)
    np.testing.assert_array_equal(held, solver.net.params["conv2"][0].data)
