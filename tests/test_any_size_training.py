"""`netspec train` on whole images of many sizes: a few executables, one per size bucket,
and the same weights as training at exact shapes (issue: any-size execution)."""
import os
import re

import numpy as np
import pytest

import netspec
from netspec import cli
from netspec.caffemodel import load_weights
from netspec.data.synthetic import make_dataset, voc_like_sizes
from netspec.prototxt import read_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# An FCN in miniature: padded first convolution, two ceil-rounded poolings, a score
# layer, a learned stride-4 Deconvolution and the Crop back to the image; no Dropout.
NET = '''name: "mini-fcn"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "voc_layers" layer: "VOCSegDataLayer" param_str: "PARAMS" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 6 kernel_size: 3 pad: 20
    weight_filler { type: "msra" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 pad: 1
    weight_filler { type: "msra" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "score" type: "Convolution" bottom: "pool2" top: "score_lr"
  convolution_param { num_output: 5 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "up" type: "Deconvolution" bottom: "score_lr" top: "up"
  convolution_param { num_output: 5 kernel_size: 8 stride: 4 bias_term: false weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "score" crop_param { offset: 18 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
'''

SOLVER = '''train_net: "train.prototxt"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: 50
display: 10
snapshot: 50
snapshot_prefix: "SNAP"
random_seed: 3
'''


@pytest.fixture(scope="module")
def voc_like_stream(tmp_path_factory):
    """200 training images, longer side 100, shorter side 50..100, either orientation."""
    root = tmp_path_factory.mktemp("voc_like")
    sizes = voc_like_sizes(200, longer=100, shorter=(50, 100), seed=4)
    make_dataset(str(root), n_train=200, n_val=0, num_classes=5, sizes=sizes, seed=4)
    return str(root), sizes


def train(tmp_path, data_dir, buckets, capfd, solver_extra="", iterations=50):
    work = tmp_path / buckets
    work.mkdir()
    params = str(dict(voc_dir=data_dir, split="train", seed=7)).replace('"', '\\"')
    (work / "train.prototxt").write_text(NET.replace("PARAMS", params))
    solver = SOLVER.replace("SNAP", str(work / "snap")).replace("max_iter: 50", f"max_iter: {iterations}")
    (work / "solver.prototxt").write_text(solver.replace("snapshot: 50", f"snapshot: {iterations}") + solver_extra)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert cli.main(["train", "solver.prototxt", "--buckets", buckets, "--no-compile-cache"]) == 0
    finally:
        os.chdir(cwd)
    log = capfd.readouterr().err
    return load_weights(str(work / f"snap_iter_{iterations}.caffemodel")), log


def assert_same_weights(padded, exact):
    assert padded.keys() == exact.keys()
    for layer in exact:
        for w_padded, w_exact in zip(padded[layer], exact[layer]):
            scale = np.abs(w_exact).max()
            assert np.abs(w_padded - w_exact).max() <= 1e-4 * scale, layer


def test_padded_training_compiles_per_bucket_and_matches_exact_shapes(tmp_path, voc_like_stream, capfd):
    data_dir, sizes = voc_like_stream
    assert len(set(sizes)) > 60          # a VOC-like spread of sizes
    padded, padded_log = train(tmp_path, data_dir, "auto", capfd)
    exact, exact_log = train(tmp_path, data_dir, "off", capfd)

    steps = re.findall(r"Compiled train step of net \"mini-fcn\", bucket (\S+)", padded_log)
    # auto: the first image's size runs exact, every later size in its bucket
    assert steps[0] == "exact" and "exact" not in steps[1:]
    steps = steps[1:]
    assert 1 <= len(steps) <= 16 and len(set(steps)) == len(steps)
    assert set(steps) <= {"128x64", "128x96", "128x128", "64x128", "96x128"}
    exact_steps = re.findall(r"Compiled train step of net \"mini-fcn\", bucket exact (\S+)", exact_log)
    assert len(exact_steps) > len(steps)      # one per distinct size drawn
    assert re.search(r"Compiled \d+ executables in [\d.]+ s", padded_log)

    assert_same_weights(padded, exact)
    # training moved the weights: the comparison is not between two initial states
    initial = netspec.Net(str(tmp_path / "off" / "train.prototxt"), phase=netspec.TRAIN, seed=3)
    assert np.abs(initial.params["conv1"][0].data - exact["conv1"][0]).max() > 1e-3


def test_iter_size_passes_of_different_sizes_accumulate_as_at_exact_shapes(tmp_path, voc_like_stream, capfd):
    data_dir, _ = voc_like_stream
    padded, log = train(tmp_path, data_dir, "auto", capfd, "iter_size: 3\n", iterations=6)
    exact, _ = train(tmp_path, data_dir, "off", capfd, "iter_size: 3\n", iterations=6)
    assert_same_weights(padded, exact)
    passes = re.findall(r"Compiled forward/backward pass of net \"mini-fcn\", bucket (\S+)", log)
    assert len(passes) == len(set(passes)) >= 2      # passes of one iteration in different buckets
    assert log.count('Compiled update of net "mini-fcn"') == 1


def test_netspec_test_gives_the_same_means_in_buckets_and_at_exact_shapes(tmp_path, voc_like_stream, capfd):
    data_dir, _ = voc_like_stream
    params = str(dict(voc_dir=data_dir, split="train", randomize=False)).replace('"', '\\"')
    (tmp_path / "net.prototxt").write_text(NET.replace("PARAMS", params))
    means = {}
    for buckets in ("auto", "off"):
        assert cli.main(["test", "--model", str(tmp_path / "net.prototxt"), "--iterations", "8",
                         "--buckets", buckets, "--no-compile-cache"]) == 0
        log = capfd.readouterr().err
        means[buckets] = float(re.search(r"\] loss = ([\d.e+-]+)", log).group(1))
        compiles = log.count("Compiled forward")
        assert compiles <= (5 if buckets == "auto" else 8)
    assert means["auto"] == pytest.approx(means["off"], rel=1e-5)


def test_voc_fcn8s_train_net_with_active_dropout_runs_padded():
    net_param = read_net(os.path.join(ROOT, "models", "voc-fcn8s", "train.prototxt"))
    data = net_param.layer[0]
    data.type = "Input"
    data.ClearField("python_param")
    data.input_param.shape.add().dim.extend([1, 3, 375, 500])
    data.input_param.shape.add().dim.extend([1, 1, 375, 500])
    net = netspec.Net(net_param, phase=netspec.TRAIN, buckets=32)
    assert [n.type for n in net.graph.nodes].count("Dropout") == 2
    plan = net.plan()
    assert plan.padded
    assert plan.bucket == {"data": (1, 3, 384, 512), "label": (1, 1, 384, 512)}
    assert plan.graph.blob_shapes["score"] == (1, 21, 384, 512)
    assert plan.exact.blob_shapes["score"] == (1, 21, 375, 500)
