"""Behaviours where netspec once differed from BVLC Caffe (commit 9b89154).

Each test states Caffe's rule (file and function) and checks netspec against a
NumPy computation of that rule.
"""
import math
import re
import textwrap

import jax
import numpy as np
import pytest
from google.protobuf import text_format

from netspec.caffemodel import read_solverstate
from netspec.errors import NetspecError
from netspec.fillers import fill
from netspec.layers import TEST
from netspec.net import Net
from netspec.proto import caffe_pb2
from netspec.solver import Solver

jax.config.update("jax_default_matmul_precision", "highest")

FLT_MAX = float(np.finfo(np.float32).max)


def net_from_text(text):
    return text_format.Parse(textwrap.dedent(text), caffe_pb2.NetParameter())


# -- Net::Init ------------------------------------------------------------------

def test_net_outputs_are_in_std_set_order():
    # net.cpp Net::Init: the outputs are the leftover names of a std::set<string>,
    # i.e. sorted, whatever order the layers produce them in.
    net = Net(net_from_text('''
        layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "zeta" type: "InnerProduct" bottom: "data" top: "zeta"
                inner_product_param { num_output: 2 } }
        layer { name: "alpha" type: "InnerProduct" bottom: "data" top: "alpha"
                inner_product_param { num_output: 2 } }
        layer { name: "mid" type: "InnerProduct" bottom: "data" top: "Mid"
                inner_product_param { num_output: 2 } }
    '''), TEST)
    assert net.outputs == sorted(["zeta", "alpha", "Mid"])


def test_shared_param_takes_lr_mult_from_the_first_layer_that_sets_it():
    # net.cpp Net::AppendParam: a shared blob's lr_mult/decay_mult come from the
    # owner if it set them, else from the first sharing layer that does.
    text = '''
        layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
                param { name: "w" } param { name: "b" decay_mult: 0 }
                inner_product_param { num_output: 3 } }
        layer { name: "b" type: "InnerProduct" bottom: "a" top: "b"
                param { name: "w" lr_mult: 0 decay_mult: 3 } param { name: "b" lr_mult: 2 decay_mult: 0 }
                inner_product_param { num_output: 3 } }
    '''
    from netspec.graph import build_graph
    graph = build_graph(net_from_text(text), TEST)
    owner = graph.node("a")
    # w: owner set nothing -> the sharer's lr_mult 0 and decay_mult 3
    # b: owner set decay_mult 0 -> kept; lr_mult from the sharer (2)
    assert owner.lr_mults == [0.0, 2.0]
    assert owner.decay_mults == [3.0, 0.0]


def test_shared_param_with_conflicting_lr_mult_is_an_error():
    # net.cpp Net::AppendParam: CHECK_EQ on mismatched explicit lr_mult.
    text = '''
        layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
                param { name: "w" lr_mult: 1 } inner_product_param { num_output: 3 bias_term: false } }
        layer { name: "b" type: "InnerProduct" bottom: "a" top: "b"
                param { name: "w" lr_mult: 2 } inner_product_param { num_output: 3 bias_term: false } }
    '''
    from netspec.graph import build_graph
    with pytest.raises(NetspecError, match="lr_mult"):
        build_graph(net_from_text(text), TEST)


# -- fillers ----------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7, 16])
def test_bilinear_filler_is_caffes(k):
    # include/caffe/filler.hpp BilinearFiller: f = ceil(K/2), c = (K-1)/(2f),
    # w[x, y] = (1 - |x/f - c|) * (1 - |y/f - c|), float arithmetic.
    f = math.ceil(k / 2.0)
    c = np.float32((k - 1) / (2.0 * f))
    x = np.arange(k, dtype=np.float32)
    line = np.float32(1) - np.abs(x / np.float32(f) - c)
    expected = np.broadcast_to(np.outer(line, line), (2, 3, k, k))
    got = fill(caffe_pb2.FillerParameter(type="bilinear"), (2, 3, k, k), np.random.RandomState(0))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


# -- Pooling ----------------------------------------------------------------------

def caffe_pool(x, kh, kw, sh, sw, ph, pw, method, ceil_mode=True):
    """pooling_layer.cpp LayerSetUp + Forward_cpu, element by element."""
    n, c, h, w = x.shape
    rnd = math.ceil if ceil_mode else math.floor
    oh = int(rnd((h + 2 * ph - kh) / sh)) + 1
    ow = int(rnd((w + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (oh - 1) * sh >= h + ph:
            oh -= 1
        if (ow - 1) * sw >= w + pw:
            ow -= 1
    y = np.zeros((n, c, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            if method == "MAX":
                he, we = min(hs + kh, h), min(ws + kw, w)
                hs, ws = max(hs, 0), max(ws, 0)
                best = np.full((n, c), -FLT_MAX, np.float32)
                for a in range(hs, he):
                    for b in range(ws, we):
                        best = np.where(x[:, :, a, b] > best, x[:, :, a, b], best)
                y[:, :, i, j] = best
            else:
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                y[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return y


def run_pool(x, pooling_param):
    n, c, h, w = x.shape
    net = Net(net_from_text(f'''
        layer {{ name: "in" type: "Input" top: "x"
                input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}
        layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {pooling_param} }} }}
    '''), TEST)
    return net.forward(x=x)["y"]


def test_max_pool_window_past_the_image_gives_minus_flt_max():
    # pooling_layer.cpp Forward_cpu (MAX): the top starts at -FLT_MAX and only
    # in-image cells are compared, so a window wholly past the image stays -FLT_MAX.
    x = np.random.RandomState(1).randn(1, 2, 6, 6).astype(np.float32)
    expected = caffe_pool(x, 1, 1, 2, 2, 0, 0, "MAX")
    assert expected.shape == (1, 2, 4, 4) and expected[0, 0, 3, 0] == -FLT_MAX
    got = run_pool(x, "pool: MAX kernel_size: 1 stride: 2")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pool_clip_rule_applies_to_both_axes_when_any_pad(method):
    # pooling_layer.cpp Reshape: `if (pad_h_ || pad_w_)` both pooled sizes are
    # checked for a last window starting in the padding, even the unpadded axis.
    x = np.random.RandomState(2).randn(1, 1, 5, 5).astype(np.float32)
    expected = caffe_pool(x, 1, 2, 3, 3, 0, 1, method)
    assert expected.shape == (1, 1, 2, 2)
    got = run_pool(x, f"pool: {method} kernel_h: 1 kernel_w: 2 stride: 3 pad_h: 0 pad_w: 1")
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# -- Eltwise -------------------------------------------------------------------------

def test_eltwise_max_accepts_and_ignores_coeff():
    # eltwise_layer.cpp LayerSetUp: only PROD rejects coefficients; MAX ignores them.
    net = Net(net_from_text('''
        layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" top: "m"
                eltwise_param { operation: MAX coeff: 2 coeff: -1 } }
    '''), TEST)
    rs = np.random.RandomState(3)
    a, b = rs.randn(2, 3).astype(np.float32), rs.randn(2, 3).astype(np.float32)
    np.testing.assert_array_equal(net.forward(a=a, b=b)["m"], np.maximum(a, b))


def test_eltwise_prod_rejects_coeff():
    with pytest.raises(NetspecError, match="coeff"):
        Net(net_from_text('''
            layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
            layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" top: "m"
                    eltwise_param { operation: PROD coeff: 2 coeff: -1 } }
        '''), TEST)


# -- Solver -----------------------------------------------------------------------

TINY_NET = '''
layer { name: "data" type: "DummyData" top: "data" top: "target"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 }
                           data_filler { type: "constant" value: 1 }
                           data_filler { type: "constant" value: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
'''


def tiny_solver(tmp_path, extra, name="solver.prototxt", policy='lr_policy: "fixed"'):
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    path = tmp_path / name
    path.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.05\n{policy}\n'
                    f'max_iter: 100\n{extra}\n')
    return str(path)


def displayed_losses(messages):
    return [float(m.group(1)) for m in
            (re.match(r"Iteration \d+ \(.*\), loss = (\S+)$", t) for t in messages) if m]


def test_smoothed_loss_restarts_with_every_step_call(tmp_path):
    # solver.cpp Solver::Step: `losses_.clear(); smoothed_loss_ = 0;` at each call,
    # so pycaffe's solver.step(1) loop displays each iteration's own loss.
    raw_log, smoothed_log = [], []
    Solver(tiny_solver(tmp_path, "display: 1 average_loss: 1"), log=raw_log.append).step(3)
    solver = Solver(tiny_solver(tmp_path, "display: 1 average_loss: 3"), log=smoothed_log.append)
    for _ in range(3):
        solver.step(1)
    raw = displayed_losses(raw_log)
    assert len(raw) == 3 and raw[0] != raw[1]
    np.testing.assert_allclose(displayed_losses(smoothed_log), raw, rtol=1e-5)


def test_smoothed_loss_is_a_running_mean_within_one_step_call(tmp_path):
    # solver.cpp Solver::UpdateSmoothedLoss: mean of the last average_loss losses.
    raw_log, smoothed_log = [], []
    Solver(tiny_solver(tmp_path, "display: 1 average_loss: 1"), log=raw_log.append).step(4)
    Solver(tiny_solver(tmp_path, "display: 1 average_loss: 2"), log=smoothed_log.append).step(4)
    raw = displayed_losses(raw_log)
    expected = [np.mean(raw[max(0, i - 1):i + 1]) for i in range(4)]
    np.testing.assert_allclose(displayed_losses(smoothed_log), expected, rtol=1e-5)


def test_snapshot_current_step_for_step_policy(tmp_path):
    # sgd_solver.cpp GetLearningRate ("step"): current_step_ = iter_ / stepsize, and
    # SnapshotSolverStateToBinaryProto writes it; the snapshot at iter 5 follows the
    # update of iteration 4, so current_step = 4 / 2 = 2.
    prefix = tmp_path / "snap"
    solver = Solver(tiny_solver(tmp_path, f'snapshot: 5 snapshot_prefix: "{prefix}"',
                                policy='lr_policy: "step" stepsize: 2 gamma: 0.5'), log=lambda m: None)
    solver.step(5)
    state = read_solverstate(f"{prefix}_iter_5.solverstate")
    assert (state.iter, state.current_step) == (5, 4 // 2)


def test_snapshot_prefix_that_is_a_directory(tmp_path):
    # upgrade_proto.cpp UpgradeSnapshotPrefixProperty: a directory prefix becomes
    # <dir>/<solver file stem>.
    out = tmp_path / "snapshots"
    out.mkdir()
    solver = Solver(tiny_solver(tmp_path, f'snapshot: 2 snapshot_prefix: "{out}"', name="my_solver.prototxt"),
                    log=lambda m: None)
    solver.step(2)
    assert (out / "my_solver_iter_2.caffemodel").exists()
    assert (out / "my_solver_iter_2.solverstate").exists()


def test_stop_request_on_a_snapshot_iteration_still_stops(tmp_path):
    # solver.cpp Solver::Step: snapshot if due (or requested), then break on STOP.
    solver = Solver(tiny_solver(tmp_path, f'snapshot: 2 snapshot_prefix: "{tmp_path / "s"}"'),
                    log=lambda m: None)
    solver.step(1)
    solver._requested = "stop"       # what SIGINT sets, arriving during iteration 1
    solver.step(5)
    assert solver.iter == 2
    assert (tmp_path / "s_iter_2.caffemodel").exists()


def test_loss_layer_without_top_still_counts_its_loss():
    # net.cpp Net::Init (AutoTopBlobs): a loss layer with no top gets an anonymous
    # "(automatic)" top with loss weight 1 (loss_layer.cpp LayerSetUp); it is not an output.
    text = '''
        layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "l2" type: "EuclideanLoss" bottom: "a" bottom: "b" }
    '''
    from netspec.graph import build_graph
    from netspec import compiler
    graph = build_graph(net_from_text(text), TEST)
    assert graph.outputs == []
    rs = np.random.RandomState(4)
    a, b = rs.randn(2, 3).astype(np.float32), rs.randn(2, 3).astype(np.float32)
    _, loss, _ = compiler.forward(graph, {}, {}, {"a": a, "b": b})
    np.testing.assert_allclose(float(loss), np.sum((a - b) ** 2) / 2 / 2, rtol=1e-6)
