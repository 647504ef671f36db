"""net.forward(start=, end=) and net.backward(start=, end=): Caffe's ForwardFromTo/BackwardFromTo."""
import numpy as np
import pytest

import netspec
from netspec.errors import NetspecError

NET = """
name: "ranges"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


def _net(tmp_path, text=NET, seed=3):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return netspec.Net(str(path), netspec.TEST, seed=seed)


def _conv(x, w, b):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(h):
        for j in range(wd):
            out[:, :, i, j] = np.einsum("nckl,ockl->no", xp[:, :, i:i + 3, j:j + 3], w) + b
    return out


def _pool(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_forward_range_reads_the_blobs_as_they_are(tmp_path):
    net = _net(tmp_path)
    rs = np.random.RandomState(0)
    x = rs.randn(2, 3, 8, 8).astype(np.float32)
    net.blobs["data"].data[...] = x
    out = net.forward(end="pool1")
    w, b = net.params["conv1"][0].data, net.params["conv1"][1].data
    want = _pool(np.maximum(_conv(x, w, b), 0))
    assert list(out) == ["pool1"]
    np.testing.assert_allclose(out["pool1"], want, rtol=1e-5, atol=1e-5)
    # layers after `end` did not run
    assert np.all(net.blobs["prob"].data == 0)

    # start after the data: the range reads conv1 as the user left it
    conv = rs.randn(2, 4, 8, 8).astype(np.float32)
    net.blobs["conv1"].data[...] = conv
    out = net.forward(start="relu1")
    ipw, ipb = net.params["ip1"][0].data, net.params["ip1"][1].data
    pooled = _pool(np.maximum(conv, 0))
    np.testing.assert_allclose(net.blobs["pool1"].data, pooled, rtol=1e-6)
    np.testing.assert_allclose(out["prob"], _softmax(pooled.reshape(2, -1) @ ipw.T + ipb), rtol=1e-5, atol=1e-6)


def test_deepdream_backward_from_a_middle_layer(tmp_path):
    """forward(end=L); L.diff = L.data; backward(start=L) gives d(0.5*|L|^2)/d data."""
    net = _net(tmp_path)
    rs = np.random.RandomState(1)
    x = rs.randn(2, 3, 8, 8).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward(end="pool1")
    dst = net.blobs["pool1"]
    dst.diff[:] = dst.data
    grads = net.backward(start="pool1")
    assert list(grads) == ["data"]

    # NumPy: the gradient of 0.5 * sum(pool(relu(conv(x)))^2) with respect to x
    w, b = net.params["conv1"][0].data.astype(np.float64), net.params["conv1"][1].data.astype(np.float64)
    conv = _conv(x.astype(np.float64), w, b)
    act = np.maximum(conv, 0)
    pooled = _pool(act)
    d_act = np.zeros_like(act)
    n, c, h, wd = act.shape
    for i in range(h // 2):
        for j in range(wd // 2):
            win = act[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(n, c, 4)
            k = win.argmax(axis=2)          # first maximum, as Caffe
            for nn in range(n):
                for cc in range(c):
                    d_act[nn, cc, 2 * i + k[nn, cc] // 2, 2 * j + k[nn, cc] % 2] = pooled[nn, cc, i, j]
    d_conv = d_act * (conv > 0)
    d_xp = np.zeros((n, 3, h + 2, wd + 2))
    for i in range(h):
        for j in range(wd):
            d_xp[:, :, i:i + 3, j:j + 3] += np.einsum("no,ockl->nckl", d_conv[:, :, i, j], w)
    np.testing.assert_allclose(grads["data"], d_xp[:, :, 1:-1, 1:-1], rtol=1e-4, atol=1e-5)
    # conv1's diff is the gradient at the convolution's output (the in-place ReLU shares it)
    np.testing.assert_allclose(net.blobs["conv1"].diff, d_conv, rtol=1e-4, atol=1e-5)
    # param diffs of the layers in the range accumulate; the others are untouched
    d_w = np.zeros_like(w)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(h):
        for j in range(wd):
            d_w += np.einsum("no,nckl->ockl", d_conv[:, :, i, j], xp[:, :, i:i + 3, j:j + 3])
    np.testing.assert_allclose(net.params["conv1"][0].diff, d_w, rtol=1e-4, atol=1e-4)
    assert np.all(net.params["ip1"][0].diff == 0)


def test_backward_range_from_top_diff_keywords_and_end(tmp_path):
    net = _net(tmp_path)
    rs = np.random.RandomState(2)
    net.forward(data=rs.randn(2, 3, 8, 8).astype(np.float32))
    seed = rs.randn(2, 5).astype(np.float32)
    pool = net.blobs["pool1"].data.copy()
    grads = net.backward(start="ip1", end="ip1", ip1=seed)
    assert list(grads) == ["pool1"]
    ipw = net.params["ip1"][0].data
    np.testing.assert_allclose(grads["pool1"], (seed @ ipw).reshape(pool.shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip1"][0].diff, seed.T @ pool.reshape(2, -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip1"][1].diff, seed.sum(0), rtol=1e-5, atol=1e-6)
    assert np.all(net.params["conv1"][0].diff == 0)


def test_ranges_are_compiled_once_and_bad_names_are_one_line_errors(tmp_path):
    lines = []
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = netspec.Net(str(path), netspec.TEST, log=lines.append)
    for _ in range(3):
        net.forward(end="pool1")
        net.backward(start="pool1")
    assert [line.split(" in ")[0] for line in lines] == [
        'Compiled forward of net "ranges", layers data..pool1',
        'Compiled backward of net "ranges", layers data..pool1']
    with pytest.raises(NetspecError, match='no layer "nope"'):
        net.forward(end="nope")
    with pytest.raises(NetspecError, match="start must come before end"):
        net.forward(start="ip1", end="conv1")


def test_solver_net_blobs_hold_the_last_training_pass(tmp_path):
    """After solver.step(n) the train net's loss and outputs are the last pass's, and for
    SGD the param diffs are Caffe's after an update (the momentum history)."""
    (tmp_path / "train.prototxt").write_text("""
name: "toy"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
""")
    (tmp_path / "solver.prototxt").write_text(
        'net: "train.prototxt"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 10\n'
        'display: 0\nsnapshot: 0\nweight_decay: 0\n')
    solver = netspec.get_solver(str(tmp_path / "solver.prototxt"))
    w_before = solver.net.params["ip"][0].data.copy()
    solver.step(1)
    w_after = solver.net.params["ip"][0].data.copy()
    # the update subtracted is the diff (lr * gradient on the first step, zero history before)
    np.testing.assert_allclose(w_before - w_after, solver.net.params["ip"][0].diff, rtol=1e-5, atol=1e-7)
    losses = []
    for _ in range(3):
        w = solver.net.params["ip"][0].data.copy()
        b = solver.net.params["ip"][1].data.copy()
        solver.step(1)
        ip = solver.net.blobs["ip"].data
        loss = float(solver.net.blobs["loss"].data)
        losses.append(loss)
        # the blobs belong to the pass just run: ip is that pass's scores, loss its softmax loss
        np.testing.assert_allclose(ip, solver.net.blobs["data"].data @ w.T + b, rtol=1e-5, atol=1e-5)
        z = ip - ip.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        np.testing.assert_allclose(loss, -np.mean(np.log(p[:, 1])), rtol=1e-5)
    assert len(set(losses)) == 3


FILTER_NET = """
name: "filtered"
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 5 dim: 3 } } }
layer { name: "sel" type: "Input" top: "sel" input_param { shape { dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "filter" type: "Filter" bottom: "ip" bottom: "sel" top: "kept" }
"""


def test_filter_top_batch_follows_the_selector_fed_each_pass(tmp_path):
    """Filter's top batch is the count of nonzero selector values of that pass (Caffe
    reshapes it every pass); the net rebuilds its graph for each count."""
    net = _net(tmp_path, FILTER_NET)
    assert net.blobs["kept"].shape == (5, 2)        # Caffe's first Reshape passes every item
    rs = np.random.RandomState(4)
    x = rs.randn(5, 3).astype(np.float32)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    for sel in ([1, 0, 1, 1, 0], [0, 0, 0, 2, 0], [1, 1, 1, 1, 1]):
        sel = np.array(sel, np.float32)
        out = net.forward(x=x, sel=sel)["kept"]
        keep = np.flatnonzero(sel)
        np.testing.assert_allclose(out, (x @ w.T + b)[keep], rtol=1e-5, atol=1e-6)
        seed = rs.randn(len(keep), 2).astype(np.float32)
        grads = net.backward(kept=seed)
        want = np.zeros((5, 2), np.float32)
        want[keep] = seed
        np.testing.assert_allclose(grads["x"], want @ w, rtol=1e-5, atol=1e-6)
