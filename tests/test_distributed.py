"""Multi-process data-parallel training (``netspec train --distributed``) on localhost CPU:
2 and 4 processes (gloo collectives) give the weights of one process training on the
same global batches, write one snapshot set (process 0), log once, and a process that
is killed ends the others with a one-line error naming it.  Each process is a real
``python -m netspec.cli train`` subprocess."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from test_multidevice import DATA_MODULE as FIXED_DATA_MODULE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the seeded whole-batch Python layer of the single-process multi-device test
# (netspec keeps each process's rows), and one that makes only this process's rows
DATA_MODULE = FIXED_DATA_MODULE + '''

class Sliced(Fixed):
    """The same batches, but only this process's rows (produces_process_slice)."""

    produces_process_slice = True

    def forward(self, bottom, top):
        label = self.random.randint(0, 3, self.batch)
        data = self.random.randn(self.batch, 2, 3, 3) + label[:, None, None, None]
        k = self.batch // self.process_count
        rows = slice(self.process_index * k, (self.process_index + 1) * k)
        top[0].reshape(k, 2, 3, 3)
        top[1].reshape(k)
        top[0].data[...] = data[rows]
        top[1].data[...] = label[rows]
'''

NET = '''name: "dist"
layer { name: "data" type: "Python" top: "data" top: "label" include { phase: TRAIN }
  python_param { module: "dist_test_data" layer: "%(layer)s" param_str: "{'batch': 8, 'seed': 4}" } }
layer { name: "data" type: "Python" top: "data" top: "label" include { phase: TEST }
  python_param { module: "dist_test_data" layer: "Fixed" param_str: "{'batch': 6, 'seed': 9}" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 2 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''

SOLVER = '''net: "net.prototxt"
base_lr: 0.1
momentum: 0.9
weight_decay: 0.001
lr_policy: "step"
gamma: 0.5
stepsize: 2
max_iter: %(max_iter)d
iter_size: %(iter_size)d
test_iter: 2
test_interval: 2
display: 1
snapshot: 2
random_seed: 2
snapshot_prefix: "out/run"
'''


def _setup(path, max_iter=4, iter_size=1, layer="Fixed"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "dist_test_data.py").write_text(DATA_MODULE)
    (path / "net.prototxt").write_text(NET % {"layer": layer})
    (path / "solver.prototxt").write_text(SOLVER % {"max_iter": max_iter, "iter_size": iter_size})
    return path


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env.pop("NETSPEC_COORDINATOR", None)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cwd, count, extra=(), logs=None):
    """``count`` processes; stderr to pipes, or to files ``logs/<i>.err``."""
    port = _free_port()
    procs = []
    for i in range(count):
        cmd = [sys.executable, "-m", "netspec.cli", "train", "solver.prototxt", "--distributed",
               "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(i),
               *extra]
        err = open(os.path.join(logs, f"{i}.err"), "w") if logs else subprocess.PIPE
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL if logs else subprocess.PIPE,
                                      stderr=err, text=True))
        if logs:
            err.close()
    return procs


def _finish(procs, timeout=150):
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, err))
    return results


def _single(cwd):
    done = subprocess.run([sys.executable, "-m", "netspec.cli", "train", "solver.prototxt"], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _weights(path):
    from netspec.caffemodel import load_weights
    return {name: blobs for name, blobs in load_weights(str(path)).items() if len(blobs)}


def _messages(log, prefix):
    return [line.split("] ", 1)[1] for line in log.splitlines() if "] " in line and
            line.split("] ", 1)[1].lstrip().startswith(prefix)]


def _check_same(tmp_path, count, **kw):
    single = _single(_setup(tmp_path / "single", **kw))
    multi = _setup(tmp_path / f"p{count}", **kw)
    results = _finish(_start(multi, count))
    for i, (code, err) in enumerate(results):
        assert code == 0, f"process {i}:\n{err[-3000:]}"
    main_log = results[0][1]
    # only process 0 logs and snapshots
    assert "Snapshotting to binary proto file out/run_iter_4.caffemodel" in main_log
    for code, err in results[1:]:
        assert "Snapshotting" not in err and "Iteration" not in err, err[-2000:]
    assert sorted(os.listdir(multi / "out")) == sorted(os.listdir(tmp_path / "single" / "out")) == [
        "run_iter_2.caffemodel", "run_iter_2.solverstate", "run_iter_4.caffemodel", "run_iter_4.solverstate"]
    for it in (2, 4):
        a, b = _weights(tmp_path / "single" / "out" / f"run_iter_{it}.caffemodel"), \
            _weights(multi / "out" / f"run_iter_{it}.caffemodel")
        assert sorted(a) == sorted(b) == ["conv", "ip"]
        for name in a:
            for x, y in zip(a[name], b[name]):
                np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
    # the logged losses and test outputs are the single process's
    for prefix in ("Test net output", "Train net output"):
        want, got = _messages(single, prefix), _messages(main_log, prefix)
        assert len(want) == len(got) > 0
        for w, g in zip(want, got):
            assert w.split("=")[0] == g.split("=")[0]
            assert np.isclose(float(w.split("=")[1].split()[0]), float(g.split("=")[1].split()[0]),
                              rtol=1e-4, atol=1e-6), (w, g)
    return multi, main_log


def test_two_processes_match_one(tmp_path):
    _check_same(tmp_path, 2)


def test_four_processes_iter_size_and_resume(tmp_path):
    multi, _ = _check_same(tmp_path, 4, iter_size=2)
    # resume from the snapshot on every process: iterations 4..6 continue as one process would
    for d in (tmp_path / "single", multi):
        (d / "solver.prototxt").write_text(SOLVER % {"max_iter": 6, "iter_size": 2})
    single = subprocess.run([sys.executable, "-m", "netspec.cli", "train", "solver.prototxt", "--snapshot",
                             "out/run_iter_4.solverstate"], cwd=tmp_path / "single", env=_env(),
                            capture_output=True, text=True, timeout=150)
    assert single.returncode == 0, single.stderr[-2000:]
    results = _finish(_start(multi, 4, ["--snapshot", "latest"]))
    assert [code for code, _ in results] == [0, 0, 0, 0], results[0][1][-2000:]
    a = _weights(tmp_path / "single" / "out" / "run_iter_6.caffemodel")
    b = _weights(multi / "out" / "run_iter_6.caffemodel")
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def test_layer_producing_its_slice(tmp_path):
    """A Python data layer that makes only its own rows trains like one making the whole batch."""
    whole = _setup(tmp_path / "whole")
    sliced = _setup(tmp_path / "sliced", layer="Sliced")
    for d in (whole, sliced):
        results = _finish(_start(d, 2))
        assert [c for c, _ in results] == [0, 0], results[0][1][-2000:]
    a, b = _weights(whole / "out" / "run_iter_4.caffemodel"), _weights(sliced / "out" / "run_iter_4.caffemodel")
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)


def test_killed_process_ends_the_others(tmp_path):
    d = _setup(tmp_path / "kill", max_iter=100000)
    (d / "solver.prototxt").write_text((SOLVER % {"max_iter": 100000, "iter_size": 1})
                                       .replace("snapshot: 2", "snapshot: 0").replace("display: 1", "display: 20"))
    procs = _start(d, 2, ["--heartbeat-timeout", "3"], logs=str(d))

    def log(i):
        return (d / f"{i}.err").read_text()
    deadline = time.time() + 120
    while "Iteration 20 " not in log(0):       # training runs
        assert time.time() < deadline and procs[0].poll() is None, log(0)[-2000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    for i in (0,):
        try:
            procs[i].wait(timeout=60)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"process {i} still runs 60 s after process 1 was killed")
    elapsed = time.time() - killed
    for i in (0,):
        assert procs[i].returncode == 2, (i, procs[i].returncode, log(i)[-2000:])
        last = log(i).strip().splitlines()[-1]
        assert last.startswith(f"netspec train: error: process {i}: process 1 stopped"), last
    assert elapsed < 30, elapsed
    assert not any(n.endswith(".caffemodel") for n in os.listdir(d / "out")) if (d / "out").exists() else True


def test_unreachable_coordinator(tmp_path):
    d = _setup(tmp_path / "nocoord")
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "netspec.cli", "train", "solver.prototxt", "--distributed",
                           "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
                           "--process-id", "1", "--init-timeout", "3"], cwd=d, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("netspec train: error: --distributed: process 1 could not reach the coordinator"), last
    assert time.time() - start < 30
