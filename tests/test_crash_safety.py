"""Crash-safe training (issue 15): ``netspec train`` killed with SIGKILL at random moments,
also inside snapshot writes, never loses its newest complete snapshot pair, never
leaves a half-written file under a snapshot's name, and ``--snapshot latest`` resumes
bit-exactly; a full disk stops training keeping the previous snapshot; a failing data
layer, a NaN loss and non-finite weights stop training with the last good snapshot
kept and named; ``--max-memory`` refuses a net that will not fit."""
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_solver import FailingFile   # a file whose writes fail with ENOSPC

from netspec import cli, snapshots
from netspec.caffemodel import (load_weights, read_caffemodel, read_solverstate, write_caffemodel,
                                write_solverstate)
from netspec.errors import NetspecError
from netspec.log import Log
from netspec.solver import Solver

# One fixed batch: every iteration of every run sees the same data, so a resumed run
# must retrace the uninterrupted one exactly (Caffe's sequential data layers restart
# from their first item on resume; a constant batch makes that moot).  FAIL_AT "n"
# makes the layer's n-th batch fail, as a bad shard would ("test:n": only in the TEST net).
DATA_MODULE = '''
import errno
import numpy as np
import netspec


class Constant(netspec.Layer):
    def setup(self, bottom, top):
        rs = np.random.RandomState(0)
        self.label = rs.randint(0, 3, 8).astype(np.float32)
        self.data = (rs.randn(8, 16) + 2 * np.eye(3, 16)[self.label.astype(int)]).astype(np.float32)
        phase, _, n = (self.param_str or "0").rpartition(":")
        self.fail_at = int(n) if phase in ("", "test" if self.phase == 1 else "train") else 0
        self.calls = 0

    def reshape(self, bottom, top):
        top[0].reshape(*self.data.shape)
        top[1].reshape(*self.label.shape)

    def forward(self, bottom, top):
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(errno.EIO, "Input/output error", "shard-00003.bin")
        top[0].data[...] = self.data
        top[1].data[...] = self.label
'''

NET = '''name: "crashnet"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "crash_data" layer: "Constant" param_str: "FAIL_AT" } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: WIDTH weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
'''

SOLVER = '''net: "net.prototxt"
base_lr: 0.02
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.7
stepsize: 50
max_iter: MAX_ITER
snapshot: 2
snapshot_prefix: "snap/run"
display: 0
random_seed: 11
'''


def write_run(directory, max_iter=20, width=32, fail_at=0, **changes):
    """The data module, net and solver in ``directory``; ``changes`` replace or add solver fields."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "crash_data.py").write_text(DATA_MODULE)
    (directory / "net.prototxt").write_text(NET.replace("WIDTH", str(width)).replace("FAIL_AT", str(fail_at)))
    lines = [line for line in SOLVER.replace("MAX_ITER", str(max_iter)).splitlines()
             if line.split(":")[0] not in changes]
    lines += [f"{field}: {value}" for field, value in changes.items()]
    (directory / "solver.prototxt").write_text("\n".join(lines) + "\n")
    return str(directory / "solver.prototxt")


def train(capsys, *args):
    code = cli.main(["train", *args])
    return code, capsys.readouterr().err


def one_line_error(err):
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("netspec train: error: "), err[-2000:]
    return lines[-1]


def pairs_on_disk(directory):
    return sorted(int(name[len("run_iter_"):-len(".solverstate")]) for name in os.listdir(directory)
                  if name.endswith(".solverstate") and not snapshots.is_temp_file(name))


def temp_files(directory):
    return sorted(name for name in os.listdir(directory) if snapshots.is_temp_file(name))


def all_finite(weights):
    return all(np.isfinite(a).all() for arrays in weights.values() for a in arrays)


# ---------------------------------------------------------------- SIGKILL at random moments

# `python -m netspec.cli` with an optional self-inflicted SIGKILL at one exact point of
# one snapshot write (CRASH_AT=kind:point:n, the n-th write of a .kind file in this run):
# start: before the write begins; mid: with part of the data in the temporary file;
# before_rename: the temporary file complete and fsynced; after_rename: the file in
# place, its directory not yet fsynced.  DIGESTS=file: the uninterrupted run, which
# writes the sha256 of every snapshot file it wrote to that file (as JSON) and removes
# all but the last pair, to spare the disk.  The compile cache also keeps the tiny
# net's executables (below netspec's 0.5 s threshold), so each restart costs less.
RUNNER = r'''
import os, signal, sys
import jax
import netspec
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
if os.environ.get("DIGESTS"):
    import atexit, hashlib, json
    from netspec.solver import Solver
    real_snapshot, digests = Solver.snapshot, {}

    def snapshot(solver):
        written = real_snapshot(solver)
        for path in written:
            digests[os.path.basename(path)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
            if solver.iter < solver.param.max_iter:
                os.unlink(path)
        return written
    Solver.snapshot = snapshot
    atexit.register(lambda: json.dump(digests, open(os.environ["DIGESTS"], "w")))
spec = os.environ.get("CRASH_AT")
if spec:
    import netspec.caffemodel as cm
    kind, point, nth = spec.split(":")
    nth, seen = int(nth), [0]
    real_write = cm._write_atomically

    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    def cut(pieces):
        written = 0
        for piece in pieces:
            if written > 4096:
                die()
            written += memoryview(piece).nbytes
            yield piece

    def write(path, pieces):
        if str(path).endswith("." + kind):
            seen[0] += 1
            if seen[0] == nth:
                if point == "start":
                    die()
                elif point == "mid":
                    pieces = cut(pieces)
                elif point == "before_rename":
                    cm.os.replace = die
                elif point == "after_rename":
                    cm._fsync_directory = die
        return real_write(path, pieces)
    cm._write_atomically = write
import runpy
runpy.run_module("netspec.cli", run_name="__main__", alter_sys=True)
'''

HOOK_POINTS = [(kind, point) for kind in ("caffemodel", "solverstate")
               for point in ("start", "mid", "before_rename", "after_rename")]
KILLS = 24
MAX_ITER = 300
WIDTH = 4096        # ip1: 16x4096 weights, a 256 KiB .caffemodel and .solverstate


class CrashRun:
    """``netspec train solver.prototxt --snapshot latest`` started again and again in one
    directory, each run checked against the files of an uninterrupted run."""

    def __init__(self, directory, reference, env):
        self.dir, self.snap, self.env = directory, directory / "snap", env
        self.reference = reference              # file name -> sha256 of the uninterrupted run's file
        self.known = {}                         # (name, size, mtime_ns) checked already
        self.resumed_from = 0
        self.rounds = 0

    def start(self, crash_at=None, **env):
        self.rounds += 1
        self.log_path = self.dir / f"round{self.rounds}.log"
        env = dict(self.env, CRASH_AT=crash_at or "", **env)
        with open(self.log_path, "w") as log:
            return subprocess.Popen([sys.executable, "-c", RUNNER, "train", "solver.prototxt",
                                     "--snapshot", "latest"], cwd=self.dir, env=env,
                                    stdout=subprocess.DEVNULL, stderr=log)

    def prune(self, latest):
        """Remove the complete pairs older than the newest (as users prune old snapshots)."""
        for n in pairs_on_disk(self.snap) if self.snap.exists() else []:
            if n < latest:
                for ext in ("caffemodel", "solverstate"):
                    os.unlink(self.snap / f"run_iter_{n}.{ext}")

    def log(self):
        return self.log_path.read_text()[-3000:]

    def names(self):
        return set(os.listdir(self.snap)) if self.snap.exists() else set()

    def check(self):
        """The invariants after any end of a run; returns the newest complete pair's iteration."""
        names = self.names()
        for name in sorted(names):
            if snapshots.is_temp_file(name):
                continue
            path = self.snap / name
            stat = path.stat()
            key = (name, stat.st_size, stat.st_mtime_ns)
            if key in self.known:
                continue
            # complete, and byte for byte the uninterrupted run's file of that name
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == self.reference.get(name), f"{name} differs from the uninterrupted run's\n{self.log()}"
            self.known[key] = True
        states = pairs_on_disk(self.snap) if names else []
        for n in states:        # a .solverstate only ever names a .caffemodel complete on disk
            assert f"run_iter_{n}.caffemodel" in names, (n, self.log())
        found = snapshots.latest(str(self.snap / "run"))
        if not states:
            assert found is None
            return 0
        assert found is not None and found.iter == max(states)
        assert found.solverstate == str(self.snap / f"run_iter_{found.iter}.solverstate")
        read_caffemodel(found.caffemodel)       # both load completely
        assert read_solverstate(found.solverstate).iter == found.iter
        assert found.iter >= self.resumed_from  # a run never loses the snapshot it resumed from
        return found.iter


def kill_when(proc, ready, delay, enough=lambda: False, timeout=60):
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds, or earlier once
    ``enough()`` holds (which bounds a run's progress on a fast machine); False if it
    ended first."""
    end = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.time() < end, "the run never got there"
        time.sleep(0.001)
    end = time.time() + delay
    while time.time() < end and not enough():
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    return True


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_sigkill_at_random_moments_never_loses_a_snapshot_and_resumes_bit_exactly(tmp_path):
    started = time.time()
    env = dict(os.environ, NETSPEC_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")   # bit-exact on CPU
    env.pop("NETSPEC_NO_COMPILE_CACHE", None)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)

    # the uninterrupted run: the bytes of every snapshot file
    reference = tmp_path / "reference"
    write_run(reference, max_iter=MAX_ITER, width=WIDTH)
    straight = CrashRun(reference, {}, env)
    proc = straight.start(DIGESTS=str(tmp_path / "digests.json"))
    assert proc.wait(timeout=120) == 0, straight.log()
    digests = json.loads((tmp_path / "digests.json").read_text())
    assert len(digests) == MAX_ITER   # a pair every 2 iterations
    final = load_weights(str(reference / "snap" / f"run_iter_{MAX_ITER}.caffemodel"))
    reference_seconds = time.time() - started

    crashing = tmp_path / "crashing"
    write_run(crashing, max_iter=MAX_ITER, width=WIDTH)
    run = CrashRun(crashing, digests, env)
    rng = random.Random(int(os.environ.get("NETSPEC_CRASH_SEED", "20240515")))
    plan = HOOK_POINTS + [("temp", None)] * 6 + [("running", None)] * 6 + [("startup", None)] * 4
    rng.shuffle(plan)
    assert len(plan) == KILLS
    kills, in_writes, latest, history = 0, 0, 0, []
    for mode, point in plan:
        before = run.names()
        stale = set(temp_files(run.snap)) if run.snap.exists() else set()
        run.resumed_from = latest
        if mode in ("caffemodel", "solverstate"):
            nth = rng.randint(1, 3)
            proc = run.start(f"{mode}:{point}:{nth}")
            proc.wait(timeout=120)
            assert proc.returncode == -signal.SIGKILL, run.log()
            killed = True
        else:
            proc = run.start()
            if mode == "temp":          # as soon as a snapshot file is being written
                killed = kill_when(proc, lambda: set(temp_files(run.snap)) - stale if run.snap.exists() else False,
                                   0)
            elif mode == "running":     # at a random moment of training (data, step, snapshots)
                cap = rng.randint(4, 24)
                killed = kill_when(proc, lambda: run.names() - before, rng.uniform(0, 0.08),
                                   lambda: len(run.names() - before) >= cap)
            else:                       # at a random moment from the start: import, set-up, compile, ...
                killed = kill_when(proc, lambda: True, rng.uniform(0.05, 1.2), lambda: run.names() - before)
            proc.wait(timeout=120)
            assert proc.returncode == (-signal.SIGKILL if killed else 0), run.log()
        kills += killed
        new_latest = run.check()
        new = run.names() - before
        left = set(temp_files(run.snap)) - stale if run.snap.exists() else set()
        in_writes += bool(left)
        if mode in ("caffemodel", "solverstate"):
            # exactly where the kill landed: the pair protocol's state at that point
            n = latest + 2 * nth
            model, state = f"run_iter_{n}.caffemodel", f"run_iter_{n}.solverstate"
            names = run.names()
            model_done = mode == "solverstate" or point == "after_rename"
            if model not in before:     # (else a killed run's lone .caffemodel, the same bytes)
                assert (model in names) == model_done, (mode, point, n, sorted(names))
            assert (state in names) == (mode == "solverstate" and point == "after_rename"), (mode, point, n)
            assert bool(left) == (point in ("mid", "before_rename")), (mode, point, left)
            assert new_latest == (n if state in names else n - 2)
            assert not stale & run.names(), "a killed writer's temporary files outlived the next snapshot"
        elif new - {name for name in new if snapshots.is_temp_file(name)}:
            assert not stale & run.names(), "a killed writer's temporary files outlived the next snapshot"
        latest = new_latest
        run.prune(latest)
        history.append(f"{mode}{':' + point if point else ''}->{latest}{'' if killed else ' (ended)'}")
    assert kills >= 20 and in_writes >= 4, (kills, in_writes)

    # the last run goes on to the end: the weights of the uninterrupted run, bit for bit
    run.resumed_from = latest
    proc = run.start()
    proc.wait(timeout=120)
    assert proc.returncode == 0, run.log()
    assert "Restoring previous solver status from snap/run_iter_" in run.log_path.read_text()
    assert run.check() == MAX_ITER
    assert not temp_files(run.snap)
    resumed = load_weights(str(crashing / "snap" / f"run_iter_{MAX_ITER}.caffemodel"))
    assert resumed.keys() == final.keys()
    assert all(np.array_equal(a, b) for k in final for a, b in zip(final[k], resumed[k]))
    print(f"{kills} kills, {in_writes} inside snapshot writes, {run.rounds} runs; reference "
          f"{reference_seconds:.1f} s, all {time.time() - started:.1f} s; {', '.join(history)}", file=sys.__stderr__)


# ---------------------------------------------------------------- finding the latest pair

def test_latest_is_the_newest_complete_pair(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    weights = {"ip": [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)]}

    def pair(n, model=True, state=True):
        path = str(snap / f"run_iter_{n}")
        if model:
            write_caffemodel(path + ".caffemodel", None, weights)
        if state:
            write_solverstate(path + ".solverstate", n, 0, path + ".caffemodel", [np.zeros((2, 3), np.float32)])
        return path
    prefix = str(snap / "run")
    assert snapshots.latest(prefix) is None
    pair(2)
    pair(4)
    assert snapshots.latest(prefix) == (4, pair(4) + ".solverstate", pair(4) + ".caffemodel")
    pair(6, state=False)                                        # killed between the two files
    (snap / ".run_iter_6.solverstate.999999999-0a1b2c.tmp").write_bytes(b"\x08")   # and its temp file
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()                                                 # a writer that is gone
    (snap / f".run_iter_8.caffemodel.{dead.pid}-0a1b2c.tmp").write_bytes(b"")
    assert snapshots.latest(prefix).iter == 4
    # hand-made damage is skipped too: a truncated .caffemodel, a .solverstate naming a missing one
    path = pair(10)
    data = open(path + ".caffemodel", "rb").read()
    open(path + ".caffemodel", "wb").write(data[:len(data) // 2])
    write_solverstate(str(snap / "run_iter_12.solverstate"), 12, 0, str(snap / "gone.caffemodel"), [])
    open(snap / "run_iter_14.solverstate", "wb").write(b"\x08\x0e\x1a")       # cut short
    skipped = []
    assert snapshots.latest(prefix, log=skipped.append).iter == 4
    assert len(skipped) == 3 and all("Skipping snapshot" in s for s in skipped)
    assert "does not exist" in skipped[1]
    # a run directory moved elsewhere: learned_net is found beside the .solverstate
    moved = tmp_path / "moved"
    os.rename(snap, moved)
    found = snapshots.latest(str(moved / "run"))
    assert found.iter == 4 and found.caffemodel == str(moved / "run_iter_4.caffemodel")
    # stale temp files: removed when their writer is gone, never another run's live one
    live = moved / f".run_iter_16.caffemodel.{os.getpid()}-00ff.tmp"
    live.write_bytes(b"")
    other = moved / ".other_iter_2.caffemodel.999999999-00ff.tmp"
    other.write_bytes(b"")
    removed = snapshots.remove_stale_temp_files(str(moved / "run"))
    assert sorted(os.path.basename(p) for p in removed) == [".run_iter_6.solverstate.999999999-0a1b2c.tmp",
                                                            f".run_iter_8.caffemodel.{dead.pid}-0a1b2c.tmp"]
    assert live.exists() and other.exists()
    assert snapshots.latest(str(moved / "run")).iter == 4


def test_temp_file_names_carry_the_writer_pid(tmp_path, monkeypatch):
    import netspec.caffemodel as caffemodel
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)
    monkeypatch.setattr(caffemodel.os, "replace", replace)
    write_caffemodel(str(tmp_path / "a.caffemodel"), None, {"ip": [np.ones(3, np.float32)]})
    assert len(seen) == 1 and seen[0].startswith(f".a.caffemodel.{os.getpid()}-") and snapshots.is_temp_file(seen[0])


# ---------------------------------------------------------------- disk full

def _disk_full_after(budget, which):
    """An ``os.fdopen`` whose files with ``which`` in their name (the temporary files of
    ``_write_atomically``) fail with ENOSPC once ``budget`` bytes are written."""
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FailingFile(f, budget) if which in os.readlink(f"/proc/self/fd/{fd}") else f
    return fdopen


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the file of a descriptor in /proc")
@pytest.mark.parametrize("which", ["caffemodel", "solverstate"])
def test_disk_full_keeps_the_previous_pair_and_stops_with_one_line(tmp_path, monkeypatch, which):
    import netspec.caffemodel as caffemodel
    solver_path = write_run(tmp_path, max_iter=8)
    monkeypatch.chdir(tmp_path)
    solver = Solver(solver_path, log=Log(open(os.devnull, "w")))
    solver.step(2)
    kept = {name: (tmp_path / "snap" / name).read_bytes() for name in os.listdir(tmp_path / "snap")}
    assert sorted(kept) == ["run_iter_2.caffemodel", "run_iter_2.solverstate"]
    with monkeypatch.context() as patch, pytest.raises(NetspecError) as info:
        patch.setattr(caffemodel.os, "fdopen", _disk_full_after(100, f".run_iter_4.{which}."))
        solver.step(4)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{solver_path}: iteration 4: snapshot failed: ")
    assert f"snap/run_iter_4.{which}: cannot write (No space left on device)" in message
    assert "the last snapshot is snap/run_iter_2.caffemodel; --snapshot snap/run_iter_2.solverstate resumes" in message
    assert solver.iter == 4          # it stopped at the failed snapshot
    # the previous pair as it was; nothing of the failed one (no temp file, no lone .caffemodel)
    assert {name: (tmp_path / "snap" / name).read_bytes() for name in os.listdir(tmp_path / "snap")} == kept
    assert snapshots.latest("snap/run").iter == 2


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the file of a descriptor in /proc")
def test_disk_full_through_the_cli_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    import netspec.caffemodel as caffemodel
    write_run(tmp_path, max_iter=8)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:      # the 2nd snapshot's .caffemodel hits a full disk
        patch.setattr(caffemodel.os, "fdopen", _disk_full_after(10, ".run_iter_4.caffemodel."))
        code, err = train(capsys, "solver.prototxt")
    assert code == 2
    line = one_line_error(err)
    assert "iteration 4: snapshot failed: snap/run_iter_4.caffemodel: cannot write (No space left on device)" in line
    assert "snap/run_iter_2.caffemodel" in line
    assert sorted(os.listdir("snap")) == ["run_iter_2.caffemodel", "run_iter_2.solverstate"]


# ---------------------------------------------------------------- long-run guards

def test_data_layer_error_names_the_iteration_and_file_and_leaves_a_snapshot(tmp_path, monkeypatch, capsys):
    # the 8th batch fails: iterations 0..6 ran, so the snapshot is _iter_7 (Caffe's name for 7 done)
    write_run(tmp_path, max_iter=20, fail_at=8, snapshot=5)
    monkeypatch.chdir(tmp_path)
    code, err = train(capsys, "solver.prototxt")
    assert code == 2
    line = one_line_error(err)
    assert "solver.prototxt: iteration 7: " in line
    assert "shard-00003.bin" in line and "crash_data.py" in line and "Input/output error" in line
    assert "the last snapshot is snap/run_iter_7.caffemodel; --snapshot snap/run_iter_7.solverstate resumes" in line
    assert pairs_on_disk(tmp_path / "snap") == [5, 7]
    assert read_solverstate("snap/run_iter_7.solverstate").iter == 7
    assert all_finite(load_weights("snap/run_iter_7.caffemodel"))

    # the shard fixed (here: no failure), --snapshot latest goes on from iteration 7
    write_run(tmp_path, max_iter=10, snapshot=5)
    code, err = train(capsys, "solver.prototxt", "--snapshot", "latest")
    assert code == 0, err
    assert "Restoring previous solver status from snap/run_iter_7.solverstate" in err
    assert pairs_on_disk(tmp_path / "snap") == [5, 7, 10]


def test_test_net_data_error_names_the_iteration_and_leaves_a_snapshot(tmp_path, monkeypatch, capsys):
    # the test net's 3rd batch fails: tests run at iterations 0, 5 and 10
    write_run(tmp_path, max_iter=20, fail_at="test:3", snapshot=4, test_iter=1, test_interval=5)
    monkeypatch.chdir(tmp_path)
    code, err = train(capsys, "solver.prototxt")
    assert code == 2
    line = one_line_error(err)
    assert "solver.prototxt: iteration 10: testing: data layer \"data\"" in line and "shard-00003.bin" in line
    assert "the last snapshot is snap/run_iter_10.caffemodel" in line
    assert pairs_on_disk(tmp_path / "snap") == [4, 8, 10]


def test_missing_image_names_the_list_line_and_leaves_a_snapshot(tmp_path, monkeypatch, capsys):
    cv2 = pytest.importorskip("cv2")
    monkeypatch.chdir(tmp_path)
    rs = np.random.RandomState(0)
    lines = []
    for i in range(12):
        if i != 7:
            cv2.imwrite(str(tmp_path / f"im{i}.png"), rs.randint(0, 255, (4, 4, 3)).astype(np.uint8))
        lines.append(f"im{i}.png {i % 2}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "net.prototxt").write_text('''
layer { name: "data" type: "ImageData" top: "data" top: "label"
  image_data_param { source: "list.txt" batch_size: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
''')
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                                              'max_iter: 20\nsnapshot: 4\nsnapshot_prefix: "snap/img"\n')
    code, err = train(capsys, "solver.prototxt")
    assert code == 2
    line = one_line_error(err)
    assert "iteration 7: " in line and 'list.txt:8: cannot read image "im7.png"' in line
    assert "snap/img_iter_7.caffemodel" in line
    assert sorted(os.listdir("snap")) == ["img_iter_4.caffemodel", "img_iter_4.solverstate",
                                          "img_iter_7.caffemodel", "img_iter_7.solverstate"]


def test_nan_loss_stops_through_the_cli_keeping_the_last_good_snapshot(tmp_path, monkeypatch, capsys):
    # from iteration 6 on the learning rate is 1e30 x base_lr: the loss blows up
    write_run(tmp_path, max_iter=40, lr_policy='"multistep"', stepvalue=6, gamma=1e30)
    monkeypatch.chdir(tmp_path)
    code, err = train(capsys, "solver.prototxt")
    assert code == 2
    line = one_line_error(err)
    assert "loss = nan" in line or "loss = inf" in line
    assert "training stopped (the last snapshot is snap/run_iter_" in line
    kept = pairs_on_disk(tmp_path / "snap")
    assert kept and f"snap/run_iter_{kept[-1]}.caffemodel; --snapshot snap/run_iter_{kept[-1]}.solverstate" in line
    assert not temp_files(tmp_path / "snap")
    for n in kept:                       # no snapshot of diverged weights was written
        assert all_finite(load_weights(f"snap/run_iter_{n}.caffemodel"))
        assert all(np.isfinite(h).all() for h in read_solverstate(f"snap/run_iter_{n}.solverstate").history)
    assert snapshots.latest("snap/run").iter == kept[-1]


def test_infinite_weights_stop_before_they_are_snapshotted(tmp_path, monkeypatch, capsys):
    # iteration 6's step uses lr = 1e45 x base_lr, infinite in float32: its loss (of the
    # weights before the step) is finite, the weights after it are not
    write_run(tmp_path, max_iter=40, lr_policy='"multistep"', stepvalue=6, gamma=1e45, snapshot=1)
    monkeypatch.chdir(tmp_path)
    code, err = train(capsys, "solver.prototxt")
    assert code == 2
    line = one_line_error(err)
    assert "iteration 7: the weights are not finite" in line
    assert "the last snapshot is snap/run_iter_6.caffemodel" in line
    assert pairs_on_disk(tmp_path / "snap") == [1, 2, 3, 4, 5, 6]
    assert all_finite(load_weights("snap/run_iter_6.caffemodel"))


def test_max_memory_refuses_a_net_that_does_not_fit(tmp_path, monkeypatch, capsys):
    write_run(tmp_path, max_iter=2, width=4096)
    monkeypatch.chdir(tmp_path)
    # parameters: ip1 4096x16 + 4096, ip2 3x4096 + 3 = 81923 floats, x4 bytes x(weights,
    # gradients, 1 SGD history set) = 0.94 MiB; blobs: data 8x16, label 8, ip1 8x4096,
    # ip2 8x3, loss = 32929 floats, x4 bytes x2 (and their gradients) = 0.25 MiB
    code, err = train(capsys, "solver.prototxt", "--max-memory", "1M")
    assert code == 2
    line = one_line_error(err)
    assert "solver.prototxt: training needs about 1.19 MiB per device (activations and their " \
           "gradients 257 KiB, parameters, gradients and solver history 960 KiB), more than 1 MiB " \
           "(--max-memory 1M); lower the batch size or the input size" in line
    assert not os.path.exists("snap")            # refused before training
    code, err = train(capsys, "solver.prototxt", "--max-memory", "auto")
    assert code == 0, err
    assert "Planned memory: 1.19 MiB per device, within " in err


def test_max_memory_auto_is_the_accelerator_limit_else_the_physical_memory(monkeypatch):
    import jax
    from netspec.commands import train as train_command

    class Accelerator:
        id, device_kind = 0, "NVIDIA H200"

        def memory_stats(self):
            return {"bytes_limit": 130 * 2 ** 30, "bytes_in_use": 0}
    monkeypatch.setattr(jax, "local_devices", lambda: [Accelerator()])
    assert train_command.parse_memory_limit("auto") == (130 * 2 ** 30, "the memory of device 0, NVIDIA H200")
    monkeypatch.setattr(Accelerator, "memory_stats", lambda self: None)      # what a CPU says
    limit, source = train_command.parse_memory_limit("auto")
    assert source == "this machine's physical memory" and limit == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert train_command.parse_memory_limit("1.5G") == (3 * 2 ** 29, "--max-memory 1.5G")
    assert train_command.parse_memory_limit("512MiB")[0] == train_command.parse_memory_limit("512m")[0] == 2 ** 29
    assert train_command.parse_memory_limit("1000")[0] == 1000


@pytest.mark.parametrize("text", ["lots", "12Q", "-1G"])
def test_max_memory_bad_value(tmp_path, monkeypatch, capsys, text):
    write_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = train(capsys, "solver.prototxt", f"--max-memory={text}")
    assert code == 2 and f"--max-memory {text}: give a size like" in one_line_error(err)


def test_snapshot_latest_without_snapshots_starts_afresh(tmp_path, monkeypatch, capsys):
    write_run(tmp_path, max_iter=4)
    monkeypatch.chdir(tmp_path)
    code, err = train(capsys, "solver.prototxt", "--snapshot", "latest")
    assert code == 0, err
    assert "--snapshot latest: no complete snapshot snap/run_iter_N.solverstate; starting from iteration 0" in err
    assert pairs_on_disk(tmp_path / "snap") == [2, 4]
