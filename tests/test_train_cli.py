"""Acceptance tests for ``netspec train``: training from a solver prototxt, Caffe-format
logs that Caffe's log parsers read, snapshots, fine-tuning with ``--weights``,
resuming with ``--snapshot``, and exit code 2 with one line for bad input."""
import datetime
import os
import re
import textwrap

import numpy as np
import pytest

from netspec import cli
from netspec.caffemodel import load_weights, read_solverstate

# Two gaussian blobs in 4-D; the class says which blob.  A new random batch per pass.
BLOBS_MODULE = '''
import ast
import numpy as np
import netspec


class Blobs(netspec.Layer):
    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        self.batch = params["batch"]
        self.random = np.random.RandomState(params["seed"])
        self.cycle = params.get("cycle")   # if set: repeat the first `cycle` batches
        self.saved, self.count = [], 0

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 4)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        if self.cycle and len(self.saved) == self.cycle:
            x, y = self.saved[self.count % self.cycle]
        else:
            y = self.random.randint(0, 2, self.batch)
            x = self.random.randn(self.batch, 4) + (2 * y[:, None] - 1) * 1.5
            self.saved.append((x, y))
        self.count += 1
        top[0].data[...] = x
        top[1].data[...] = y
'''

NET = '''name: "toy"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "cli_test_blobs" layer: "Blobs" param_str: "{'batch': 16, 'seed': 1, 'cycle': CYCLE}" }
  include { phase: TRAIN } }
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "cli_test_blobs" layer: "Blobs" param_str: "{'batch': 32, 'seed': 2}" }
  include { phase: TEST } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
'''

SOLVER = '''
net: "net.prototxt"
test_iter: 2
test_interval: 20
base_lr: 0.1
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.5
stepsize: 20
display: 10
max_iter: 40
snapshot: 20
snapshot_prefix: "snap/toy"
random_seed: 3
'''

# The regular expressions of Caffe's tools/extra/parse_log.py.
ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_LOSS = re.compile(r"Iteration (\d+) .*, loss = ([\.\deE+-]+)|Iteration (\d+), loss = ([\.\deE+-]+)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
GLOG_PREFIX = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) +\d+ \S+\] ")


def write_files(directory, solver=SOLVER, cycle=None, **changes):
    """The data module, net and solver in ``directory``; ``changes`` replace solver fields."""
    (directory / "cli_test_blobs.py").write_text(BLOBS_MODULE)
    (directory / "net.prototxt").write_text(NET.replace("CYCLE", repr(cycle)))
    text = textwrap.dedent(solver)
    for field, value in changes.items():
        line = f"{field}: {value}"
        text, n = re.subn(rf"^{field}: .*$", line, text, flags=re.M)
        if not n:
            text += line + "\n"
    (directory / "solver.prototxt").write_text(text)
    return str(directory / "solver.prototxt")


def train(capsys, *args):
    code = cli.main(["train", *args])
    err = capsys.readouterr().err
    return code, err


def parse_log(text):
    """Rows like parse_log.py's: train (iter, loss, lr) and test (iter, {name: value})."""
    train_rows, test_rows, lrs = [], [], {}
    iteration = None
    for line in text.splitlines():
        prefix = GLOG_PREFIX.match(line)
        assert prefix, f"not a glog line: {line!r}"
        datetime.datetime.strptime(prefix.group(2), "%H:%M:%S.%f")   # parse_log.py reads the time
        found = ITERATION.search(line)
        if found:
            iteration = int(found.group(1))
        loss = TRAIN_LOSS.search(line)
        if loss:
            train_rows.append((iteration, float(loss.group(2) or loss.group(4))))
        lr = LEARNING_RATE.search(line)
        if lr:
            lrs[iteration] = float(lr.group(1))
        output = TEST_OUTPUT.search(line)
        if output:
            if int(output.group(1)) == 0:
                test_rows.append((iteration, {}))
            test_rows[-1][1][output.group(2)] = float(output.group(3))
    return train_rows, lrs, test_rows


def params_equal(a, b):
    return a.keys() == b.keys() and all(
        len(a[k]) == len(b[k]) and all(np.array_equal(x, y) for x, y in zip(a[k], b[k])) for k in a)


def test_train_end_to_end_and_fine_tune(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, log = train(capsys, "--solver", write_files(tmp_path))
    assert code == 0, log
    train_rows, lrs, test_rows = parse_log(log)

    assert [i for i, _ in train_rows] == [0, 10, 20, 30, 40]
    assert train_rows[-1][1] < 0.5 * train_rows[0][1]
    assert lrs == {0: 0.1, 10: 0.1, 20: 0.05, 30: 0.05}
    assert [i for i, _ in test_rows] == [0, 20, 40]
    assert all(set(outputs) == {"loss", "acc"} for _, outputs in test_rows)
    assert test_rows[-1][1]["acc"] >= 0.9 and test_rows[-1][1]["loss"] < test_rows[0][1]["loss"]
    train_outputs = [TRAIN_OUTPUT.search(line).groups() for line in log.splitlines() if TRAIN_OUTPUT.search(line)]
    assert len(train_outputs) == 4 and all(g[:2] == ("0", "loss") for g in train_outputs)
    assert "Optimization Done." in log.splitlines()[-1]

    assert sorted(os.listdir("snap")) == ["toy_iter_20.caffemodel", "toy_iter_20.solverstate",
                                          "toy_iter_40.caffemodel", "toy_iter_40.solverstate"]
    assert read_solverstate("snap/toy_iter_20.solverstate").iter == 20
    trained = load_weights("snap/toy_iter_40.caffemodel")
    assert set(trained) >= {"ip1", "ip2"} and trained["ip1"][0].shape == (8, 4)
    assert not params_equal(trained, load_weights("snap/toy_iter_20.caffemodel"))

    # Fine-tuning with lr 0 from the trained weights: the net starts from (and keeps) them.
    write_files(tmp_path, base_lr=0, max_iter=2, display=1, snapshot=0, snapshot_prefix='"tuned/toy"',
                test_interval=1000)
    code, log = train(capsys, "--solver", "solver.prototxt", "--weights", "snap/toy_iter_40.caffemodel")
    assert code == 0, log
    tuned_rows = parse_log(log)[0]
    assert tuned_rows[0][0] == 0 and tuned_rows[0][1] < 0.5 * train_rows[0][1]
    assert os.listdir("tuned") == ["toy_iter_2.caffemodel"] or sorted(os.listdir("tuned")) == [
        "toy_iter_2.caffemodel", "toy_iter_2.solverstate"]
    assert params_equal(load_weights("tuned/toy_iter_2.caffemodel"), trained)


def test_resume_from_snapshot_matches_training_straight(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    solver = write_files(tmp_path, cycle=2, max_iter=8, snapshot=4, test_interval=1000, stepsize=3, display=2)
    code, log = train(capsys, "--solver", solver)
    assert code == 0, log
    straight = load_weights("snap/toy_iter_8.caffemodel")
    os.remove("snap/toy_iter_8.caffemodel")

    code, log = train(capsys, "--solver", solver, "--snapshot", "snap/toy_iter_4.solverstate")
    assert code == 0, log
    assert "Restoring previous solver status from snap/toy_iter_4.solverstate" in log
    train_rows = parse_log(log)[0]
    assert train_rows[0][0] == 4            # training went on from iteration 4
    assert params_equal(load_weights("snap/toy_iter_8.caffemodel"), straight)


@pytest.mark.parametrize("solver_text, words", [
    ('net: "missing.prototxt"\nbase_lr: 0.1\n', ["missing.prototxt"]),
    ('net: "net.prototxt"\ntype: "SGDD"\nbase_lr: 0.1\n', ["SGDD", "type"]),
    ('net: "net.prototxt"\nbase_lr: 0.1\nmomentum_typo: 0.9\n', ["momentum_typo", ":3"]),
])
def test_bad_solver_exits_2_with_one_line(tmp_path, monkeypatch, capsys, solver_text, words):
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, solver=solver_text)
    code, err = train(capsys, "--solver", "solver.prototxt")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netspec train: error: ")
    assert "solver.prototxt" in lines[0] and all(w in lines[0] for w in words), lines[0]


def test_diverging_training_exits_2_and_keeps_snapshots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    solver = write_files(tmp_path, lr_policy='"multistep"', stepvalue=4, gamma=1e30, snapshot=2,
                         test_interval=1000)
    code, err = train(capsys, "--solver", solver)
    assert code == 2
    error = err.strip().splitlines()[-1]
    assert error.startswith("netspec train: error: ") and "loss = nan" in error
    assert "snap/toy_iter_4.caffemodel" in error
    weights = load_weights("snap/toy_iter_4.caffemodel")
    assert all(np.isfinite(a).all() for arrays in weights.values() for a in arrays)


@pytest.mark.parametrize("args, words", [
    (["--weights", "a.caffemodel", "--snapshot", "a.solverstate"], ["--snapshot", "--weights"]),
    (["--gpu", "7"], ["--gpu 7", "no device 7"]),
    (["--gpu", "first"], ["--gpu first", "all"]),
    (["--weights", "absent.caffemodel"], ["absent.caffemodel"]),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path)
    code, err = train(capsys, "--solver", "solver.prototxt", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netspec train: error: ")
    assert all(w in lines[0] for w in words), lines[0]
