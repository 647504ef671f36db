"""--precision bf16: bfloat16 compute, float32 master weights, solver history and loss;
gradients agree with float32 within bfloat16's error, and training still learns."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import netspec
from netspec import compiler
from netspec.prototxt import parse_net

NET = '''name: "mixed"
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 24 dim: 20 } shape { dim: 2 dim: 1 dim: 24 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "msra" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "score" type: "Convolution" bottom: "conv2" top: "score_lr"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "up" type: "Deconvolution" bottom: "score_lr" top: "score"
  convolution_param { num_output: 4 kernel_size: 2 stride: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
'''


def gradients(precision):
    net = netspec.Net(parse_net(NET), phase=netspec.TRAIN, seed=1)
    graph = net.graph
    params = {k: [jnp.asarray(a) for a in v] for k, v in net.param_tree().items()}
    rs = np.random.RandomState(2)
    inputs = {"data": (rs.randn(2, 3, 24, 20) * 30).astype(np.float32),
              "label": rs.randint(0, 4, (2, 1, 24, 20)).astype(np.float32)}
    inputs["label"][:, :, :3] = 255
    options = compiler.precision_options(precision)

    def loss(p):
        blobs, value, _ = compiler.forward(graph, p, net.state_tree(), inputs, train=True, keep=("score",),
                                           **options)
        return value, blobs["score"]
    (value, score), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, score, grads


def test_bf16_gradients_agree_with_fp32_within_bfloat16_error():
    loss32, score32, grads32 = gradients("fp32")
    loss16, score16, grads16 = gradients("bf16")
    assert loss16.dtype == jnp.float32 and score16.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (relative spacing 2^-8 = 0.4%); a few layers deep
    # the error stays within a few percent of the values, and it is really there
    assert abs(float(loss16) - float(loss32)) <= 0.02 * abs(float(loss32))
    assert 0 < np.abs(score16 - score32).max() <= 0.05 * np.abs(score32).max()
    for layer in grads32:
        for g32, g16 in zip(grads32[layer], grads16[layer]):
            assert g16.dtype == jnp.float32            # master weights get float32 gradients
            g32, g16 = np.asarray(g32).ravel(), np.asarray(g16).ravel()
            relative = np.linalg.norm(g16 - g32) / np.linalg.norm(g32)
            assert 0 < relative < 0.05, (layer, relative)


def test_bf16_training_keeps_float32_weights_and_history(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        'train_net: "net.prototxt"\nbase_lr: 0.02\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 30\n'
        'display: 0\nrandom_seed: 1\n')
    losses = {}
    for precision in ("fp32", "bf16"):
        solver = netspec.get_solver(str(tmp_path / "solver.prototxt"), precision=precision)
        rs = np.random.RandomState(0)
        label = rs.randint(0, 4, (2, 1, 24, 20))
        data = (label - 1.5 + rs.randn(2, 3, 24, 20) * 0.3).astype(np.float32)  # learnable
        solver.net.blobs["data"].data[...] = data
        solver.net.blobs["label"].data[...] = label
        curve = []
        for _ in range(30):
            solver.step(1)
            curve.append(solver.smoothed_loss)
        losses[precision] = curve
        assert all(b.data.dtype == np.float32 for blobs in solver.net.params.values() for b in blobs)
        history = jax.tree.leaves(solver._opt_state)
        assert all(h.dtype in (jnp.float32, jnp.int32) for h in history)
    fp32, bf16 = np.array(losses["fp32"]), np.array(losses["bf16"])
    assert bf16[-1] < 0.75 * bf16[0]                  # it learns
    assert np.abs(bf16 - fp32).max() < 0.02 * fp32[0]  # along the float32 run's curve
    assert np.abs(bf16 - fp32).max() > 0              # computed in bfloat16 indeed


@pytest.mark.slow
def test_quickstart_in_bf16_scores_within_two_points_of_fp32(tmp_path, capsys):
    """The quick start's mean IU in bf16 reaches fp32's within 2 points, averaged over
    three seeds.

    One seed is not a measurement: the quick start trains from scratch, and a change of
    float32 summation order alone moved seed 0's mean IU between 63.4 and 67.7 (the losses
    agree to 4-5 digits for 60 iterations, then diverge).  Across seeds 0, 1, 2 fp32 gave
    67.7, 66.2, 72.4 and bf16 62.8, 66.5, 75.1 before the 2026-11-30 convolution-gradient
    changes, fp32 63.8, 61.9, 64.7 and bf16 68.6, 65.4, 71.4 after them (seeds 3-5, fp32:
    51.4, 69.2, 54.8 before, 56.0, 69.5, 58.6 after).  So the check is the one the issue
    asks for, one-sided: bf16 may not lose more than 2 points, and may score higher."""
    from netspec.cli import main
    ious = {"fp32": [], "bf16": []}
    for precision in ious:
        for seed in (0, 1, 2):
            out_dir = tmp_path / f"{precision}_{seed}"
            assert main(["quickstart", "--out", str(out_dir), "--precision", precision,
                         "--seed", str(seed)]) == 0
            out = capsys.readouterr().out
            ious[precision].append(float(re.search(r"mean IU ([\d.]+) on", out).group(1)))
    assert np.mean(ious["bf16"]) >= np.mean(ious["fp32"]) - 2.0, ious
