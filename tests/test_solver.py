"""Acceptance tests for ``netspec.solver.Solver``: Caffe's update on tiny nets checked
against NumPy, weight sharing with test nets, BatchNorm statistics, bit-identical
resume, atomic snapshots, and one-line errors for bad solver files."""
import errno
import glob
import os
import re
import textwrap

import jax
import numpy as np
import pytest

from netspec.caffemodel import load_weights, read_solverstate
from netspec.errors import NetspecError
from netspec.solver import Solver

jax.config.update("jax_default_matmul_precision", "highest")

# A Python data layer cycling through batches saved by the test in an .npz file,
# so the test knows exactly which data each iteration sees.
DATA_MODULE = '''
import ast
import numpy as np
import netspec


class Cycle(netspec.Layer):
    """Serve batch 0, 1, ..., K-1, 0, ... of the arrays in param_str's npz file."""

    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        with np.load(params["file"]) as f:
            self.data, self.label = f["data"], f["label"]
        self.count = 0

        self.sizes = params.get("sizes")   # optional: batch k keeps only its first sizes[k] items

    def batch(self):
        k = self.count % len(self.data)
        n = self.sizes[k] if self.sizes else len(self.data[k])
        return self.data[k][:n], self.label[k][:n]

    def reshape(self, bottom, top):
        data, label = self.batch()
        top[0].reshape(*data.shape)
        top[1].reshape(*label.shape)

    def forward(self, bottom, top):
        data, label = self.batch()
        self.count += 1
        top[0].data[...] = data
        top[1].data[...] = label
'''


def data_layer(npz, phase=None, sizes=None):
    include = f" include {{ phase: {phase} }}" if phase else ""
    return (f'layer {{ name: "data" type: "Python" top: "data" top: "label"\n'
            f'  python_param {{ module: "solver_test_data" layer: "Cycle" '
            f'param_str: "{{\'file\': \'{npz}\', \'sizes\': {sizes}}}" }}{include} }}\n')


def ip_layer(name, bottom, num_output, params="", std=0.5):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" {params}\n'
            f'  inner_product_param {{ num_output: {num_output} weight_filler {{ type: "gaussian" std: {std} }}\n'
            f'    bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }} }}\n')


def write_case(tmp_path, net_text, solver_text, batches):
    """Write the data module, the batches, the net and the solver; return the solver path."""
    (tmp_path / "solver_test_data.py").write_text(DATA_MODULE)
    np.savez(tmp_path / "batches.npz", data=batches[0], label=batches[1])
    (tmp_path / "net.prototxt").write_text(net_text.replace("NPZ", str(tmp_path / "batches.npz")))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(textwrap.dedent(solver_text))
    return str(solver)


def params_of(net):
    return {name: [np.array(b.data) for b in blobs] for name, blobs in net.params.items()}


# ---------------------------------------------------------------- NumPy references

def linear_grads(w, b, x, t):
    """Gradients of Caffe's EuclideanLoss sum((x w^T + b - t)^2) / (2N) for one batch."""
    r = x @ w.T + b - t
    n = x.shape[0]
    return r.T @ x / n, r.sum(0) / n, float((r ** 2).sum() / (2 * n))


def regression_batches(k=2, n=4, dim=3, out=2, seed=0):
    rs = np.random.RandomState(seed)
    return (rs.randn(k, n, dim).astype(np.float32), rs.randn(k, n, out).astype(np.float32))


LINEAR_NET = ('name: "linear"\n' + data_layer("NPZ")
              + ip_layer("ip", "data", 2, 'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }')
              + 'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }\n')


def linear_solver(extra=""):
    return f"""
        net: "net.prototxt"
        base_lr: 0.1
        momentum: 0.9
        weight_decay: 0.01
        lr_policy: "fixed"
        max_iter: 10
        random_seed: 5
        {extra}
        """


def test_sgd_with_momentum_matches_caffe_update(tmp_path):
    batches = regression_batches()
    solver = Solver(write_case(tmp_path, LINEAR_NET, linear_solver(), batches))
    w, b = (np.array(a, np.float64) for a in params_of(solver.net)["ip"])
    hw, hb = np.zeros_like(w), np.zeros_like(b)
    for it in range(3):
        gw, gb, loss = linear_grads(w, b, batches[0][it % 2], batches[1][it % 2])
        hw = 0.9 * hw + 0.1 * 1 * (gw + 0.01 * 1 * w)
        hb = 0.9 * hb + 0.1 * 2 * (gb + 0.01 * 0 * b)
        w, b = w - hw, b - hb
        solver.step(1)
        got_w, got_b = params_of(solver.net)["ip"]
        np.testing.assert_allclose(got_w, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_b, b, rtol=1e-5, atol=1e-6)
        assert solver.smoothed_loss == pytest.approx(loss, rel=1e-5)
    assert solver.iter == 3


def test_average_loss_display_and_test_interval(tmp_path):
    batches = regression_batches()
    path = write_case(tmp_path, LINEAR_NET, linear_solver(
        "average_loss: 2\ndisplay: 1\ntest_iter: 1\ntest_interval: 2\ntest_initialization: false"), batches)
    messages = []
    solver = Solver(path, log=messages.append)
    w, b = (np.array(a, np.float64) for a in params_of(solver.net)["ip"])
    hw, hb, losses = np.zeros_like(w), np.zeros_like(b), []
    for it in range(4):
        gw, gb, loss = linear_grads(w, b, batches[0][it % 2], batches[1][it % 2])
        losses.append(loss)
        hw, hb = 0.9 * hw + 0.1 * (gw + 0.01 * w), 0.9 * hb + 0.2 * gb
        w, b = w - hw, b - hb
    solver.step(4)
    shown = [(int(m.group(1)), float(m.group(2))) for m in
             (re.match(r"Iteration (\d+) \(.*\), loss = (\S+)$", text) for text in messages) if m]
    assert [i for i, _ in shown] == [0, 1, 2, 3]
    smoothed = [np.mean(losses[max(0, i - 1):i + 1]) for i in range(4)]   # mean of the last two
    np.testing.assert_allclose([v for _, v in shown], smoothed, rtol=1e-5)
    assert [text for text in messages if "Testing net" in text] == ["Iteration 2, Testing net (#0)"]
    assert [text for text in messages if "lr = " in text] == [f"Iteration {i}, lr = 0.1" for i in range(4)]


def test_iter_size_averages_the_gradients_of_its_batches(tmp_path):
    batches = regression_batches()
    solver = Solver(write_case(tmp_path, LINEAR_NET, linear_solver("iter_size: 2"), batches))
    w, b = (np.array(a, np.float64) for a in params_of(solver.net)["ip"])
    gw0, gb0, loss0 = linear_grads(w, b, batches[0][0], batches[1][0])
    gw1, gb1, loss1 = linear_grads(w, b, batches[0][1], batches[1][1])
    assert not np.allclose(gw0, gw1)   # the two passes really see different data
    solver.step(1)
    got_w, got_b = params_of(solver.net)["ip"]
    np.testing.assert_allclose(got_w, w - 0.1 * ((gw0 + gw1) / 2 + 0.01 * w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, b - 0.2 * (gb0 + gb1) / 2, rtol=1e-5, atol=1e-6)
    assert solver.smoothed_loss == pytest.approx((loss0 + loss1) / 2, rel=1e-5)
    assert solver.iter == 1


def test_iter_size_with_batches_of_different_sizes(tmp_path):
    batches = regression_batches()
    net = LINEAR_NET.replace(data_layer("NPZ"), data_layer("NPZ", sizes=[4, 2]))
    solver = Solver(write_case(tmp_path, net, linear_solver("iter_size: 2"), batches))
    w, b = (np.array(a, np.float64) for a in params_of(solver.net)["ip"])
    gw0, gb0, loss0 = linear_grads(w, b, batches[0][0], batches[1][0])
    gw1, gb1, loss1 = linear_grads(w, b, batches[0][1][:2], batches[1][1][:2])
    solver.step(1)
    got_w, got_b = params_of(solver.net)["ip"]
    np.testing.assert_allclose(got_w, w - 0.1 * ((gw0 + gw1) / 2 + 0.01 * w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, b - 0.2 * (gb0 + gb1) / 2, rtol=1e-5, atol=1e-6)
    assert solver.smoothed_loss == pytest.approx((loss0 + loss1) / 2, rel=1e-5)


def test_lr_mult_zero_freezes_a_layer(tmp_path):
    net = ('name: "two"\n' + data_layer("NPZ")
           + ip_layer("ip1", "data", 4, 'param { lr_mult: 0 } param { lr_mult: 0 }')
           + ip_layer("ip2", "ip1", 2)
           + 'layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "label" top: "loss" }\n')
    solver = Solver(write_case(tmp_path, net, linear_solver(), regression_batches()))
    before = params_of(solver.net)
    solver.step(3)
    after = params_of(solver.net)
    for a, b in zip(before["ip1"], after["ip1"]):
        assert np.array_equal(a, b)      # frozen, despite weight decay and momentum
    for a, b in zip(before["ip2"], after["ip2"]):
        assert not np.allclose(a, b)     # the other layer learns


def test_batchnorm_statistics_are_updated_in_train(tmp_path):
    rs = np.random.RandomState(1)
    data = (rs.randn(2, 4, 2, 3, 3) * [[[[[1.0]], [[3.0]]]]] + 2.0).astype(np.float32)
    label = rs.randn(2, 4, 1).astype(np.float32)
    net = ('name: "bn"\n' + data_layer("NPZ")
           + 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
             'batch_norm_param { moving_average_fraction: 0.9 } }\n'
           + ip_layer("ip", "bn", 1)
           + 'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    solver = Solver(write_case(tmp_path, net, linear_solver("test_iter: 1\ntest_interval: 1000"),
                               (data, label)))
    solver.step(2)
    m = 4 * 3 * 3
    mean = data.astype(np.float64).mean(axis=(1, 3, 4))       # per batch, per channel
    var = data.astype(np.float64).var(axis=(1, 3, 4)) * m / (m - 1)
    mean_sum, var_sum, factor = (np.array(b.data) for b in solver.net.params["bn"])
    np.testing.assert_allclose(factor, [0.9 * 1 + 1], rtol=1e-6)
    np.testing.assert_allclose(mean_sum, 0.9 * mean[0] + mean[1], rtol=1e-5)
    np.testing.assert_allclose(var_sum, 0.9 * var[0] + var[1], rtol=1e-5)
    # the test net reads the same statistics
    for mine, theirs in zip(solver.net.params["bn"], solver.test_nets[0].params["bn"]):
        assert np.array_equal(mine.data, theirs.data)


CLASSIFIER_NET = ('name: "classifier"\n' + data_layer("NPZ", "TRAIN") + data_layer("NPZ", "TEST")
                  + ip_layer("ip1", "data", 8) + 'layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }\n'
                  + ip_layer("ip2", "ip1", 3)
                  + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }\n'
                  + 'layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" '
                    'include { phase: TEST } }\n')


def classifier_batches(k=2, n=6, dim=4, seed=0):
    rs = np.random.RandomState(seed)
    label = rs.randint(0, 3, (k, n))
    data = rs.randn(k, n, dim) + 1.5 * np.eye(dim)[label]
    return data.astype(np.float32), label.astype(np.float32)


def numpy_classifier(params, x, label):
    """Softmax loss and accuracy of the classifier net, in float64."""
    (w1, b1), (w2, b2) = ([np.float64(a) for a in params[k]] for k in ("ip1", "ip2"))
    scores = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    scores -= scores.max(1, keepdims=True)
    logp = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    rows = np.arange(len(x))
    return -logp[rows, label.astype(int)].mean(), (scores.argmax(1) == label).mean()


def test_test_nets_share_the_train_weights(tmp_path):
    batches = classifier_batches()
    solver = Solver(write_case(tmp_path, CLASSIFIER_NET, linear_solver("test_iter: 2\ntest_interval: 1000"),
                               batches))
    solver.step(3)
    train = params_of(solver.net)
    test = params_of(solver.test_nets[0])
    assert train.keys() == test.keys() == {"ip1", "ip2"}
    for name in train:
        for a, b in zip(train[name], test[name]):
            assert np.array_equal(a, b)
    means = solver.test_all()[0]
    expected = [numpy_classifier(train, batches[0][k], batches[1][k]) for k in range(2)]
    assert means["loss"] == pytest.approx(np.mean([e[0] for e in expected]), rel=1e-5)
    assert means["acc"] == pytest.approx(np.mean([e[1] for e in expected]), abs=1e-6)


# ---------------------------------------------------------------- resume

def resume_solver(kind, seed):
    policy = ('lr_policy: "step"\ngamma: 0.5\nstepsize: 3\nmomentum: 0.9' if kind == "SGD"
              else 'lr_policy: "fixed"\nmomentum: 0.9\nmomentum2: 0.999\ndelta: 1e-8')
    return f"""
        net: "net.prototxt"
        type: "{kind}"
        base_lr: 0.05
        weight_decay: 0.001
        {policy}
        max_iter: 100
        random_seed: {seed}
        snapshot_prefix: "{{prefix}}"
        """


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_resume_is_bit_identical_to_training_straight(tmp_path, kind):
    solver_path = write_case(tmp_path, CLASSIFIER_NET, resume_solver(kind, 7), classifier_batches())
    text = open(solver_path).read()
    open(solver_path, "w").write(text.replace("{prefix}", str(tmp_path / "snap" / "run")))
    straight = Solver(solver_path)
    straight.step(8)

    first = Solver(solver_path)
    first.step(4)
    model, state = first.snapshot()
    assert os.path.basename(model) == "run_iter_4.caffemodel"
    assert read_solverstate(state).iter == 4

    # a different seed gives different initial weights: they must all come from the snapshot
    other_seed = tmp_path / "resume.prototxt"
    other_seed.write_text(open(solver_path).read().replace("random_seed: 7", "random_seed: 8"))
    resumed = Solver(str(other_seed))
    assert not np.array_equal(params_of(resumed.net)["ip1"][0], params_of(straight.net)["ip1"][0])
    resumed.restore(state)
    assert resumed.iter == 4
    resumed.step(4)
    assert resumed.iter == straight.iter == 8
    want, got = params_of(straight.net), params_of(resumed.net)
    for name in want:
        for a, b in zip(want[name], got[name]):
            assert np.array_equal(a, b), name


# ---------------------------------------------------------------- atomic snapshots

class FailingFile:
    """A file whose writes fail with ENOSPC once ``budget`` bytes have been written."""

    def __init__(self, real, budget):
        self.real, self.budget = real, budget

    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self.budget:
            self.real.write(data[:self.budget])
            self.budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)


def test_failed_snapshot_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    solver_path = write_case(tmp_path, CLASSIFIER_NET, resume_solver("SGD", 7), classifier_batches())
    text = open(solver_path).read().replace("{prefix}", str(tmp_path / "snap" / "run"))
    open(solver_path, "w").write(text + "snapshot: 2\n")
    solver = Solver(solver_path)
    solver.step(2)
    good_model = tmp_path / "snap" / "run_iter_2.caffemodel"
    good_state = tmp_path / "snap" / "run_iter_2.solverstate"
    saved = params_of(solver.net)
    model_bytes, state_bytes = good_model.read_bytes(), good_state.read_bytes()

    import netspec.caffemodel as caffemodel
    real_fdopen = os.fdopen
    sizes = []

    def failing_fdopen(fd, *args, **kwargs):
        sizes.append(len(model_bytes) // 2)   # fail halfway through the file
        return FailingFile(real_fdopen(fd, *args, **kwargs), sizes[-1])
    monkeypatch.setattr(caffemodel.os, "fdopen", failing_fdopen)
    with pytest.raises(NetspecError, match="run_iter_4.caffemodel: cannot write"):
        solver.step(2)
    monkeypatch.undo()
    assert sizes, "the snapshot never reached the file write"

    assert sorted(os.listdir(tmp_path / "snap")) == ["run_iter_2.caffemodel", "run_iter_2.solverstate"]
    assert good_model.read_bytes() == model_bytes and good_state.read_bytes() == state_bytes
    weights = load_weights(str(good_model))
    for name in saved:
        for a, b in zip(saved[name], weights[name]):
            assert np.array_equal(a, b)
    assert read_solverstate(str(good_state)).iter == 2


# ---------------------------------------------------------------- bad solver files

def one_line_error(solver_text, tmp_path, net=LINEAR_NET):
    path = write_case(tmp_path, net, solver_text, regression_batches())
    with pytest.raises(NetspecError) as info:
        Solver(path)
    message = str(info.value)
    assert "\n" not in message and path in message
    return message


def test_unknown_solver_type(tmp_path):
    message = one_line_error(linear_solver('type: "Sgd"'), tmp_path)
    assert "type" in message and '"Sgd"' in message


def test_missing_net_file(tmp_path):
    message = one_line_error('net: "nowhere.prototxt"\nbase_lr: 0.1\n', tmp_path)
    assert "net" in message and "nowhere.prototxt" in message


def test_test_iter_without_a_test_net(tmp_path):
    message = one_line_error('train_net: "net.prototxt"\ntest_iter: 3\ntest_interval: 10\nbase_lr: 0.1\n', tmp_path)
    assert "test_iter" in message and "test net" in message


def test_both_net_and_train_net(tmp_path):
    message = one_line_error('net: "net.prototxt"\ntrain_net: "net.prototxt"\nbase_lr: 0.1\n', tmp_path)
    assert "net" in message and "train_net" in message


def test_nan_loss_stops_training_and_keeps_the_last_good_snapshot(tmp_path):
    solver_path = write_case(tmp_path, CLASSIFIER_NET, """
        net: "net.prototxt"
        base_lr: 0.05
        lr_policy: "multistep"
        gamma: 1e30
        stepvalue: 4
        max_iter: 20
        snapshot: 2
        snapshot_prefix: "PREFIX"
        """, classifier_batches())
    text = open(solver_path).read()
    open(solver_path, "w").write(text.replace("PREFIX", str(tmp_path / "snap" / "run")))
    solver = Solver(solver_path)
    with pytest.raises(NetspecError) as info:
        solver.step(20)
    message = str(info.value)
    assert "\n" not in message and solver_path in message and "loss = " in message
    assert "run_iter_4.caffemodel" in message
    assert 4 <= solver.iter < 8
    snapshots = sorted(glob.glob(str(tmp_path / "snap" / "*")))
    assert [os.path.basename(p) for p in snapshots][-2:] == ["run_iter_4.caffemodel", "run_iter_4.solverstate"]
    weights = load_weights(str(tmp_path / "snap" / "run_iter_4.caffemodel"))
    assert all(np.isfinite(a).all() for arrays in weights.values() for a in arrays)
    assert read_solverstate(str(tmp_path / "snap" / "run_iter_4.solverstate")).iter == 4
