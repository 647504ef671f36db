"""Ctrl-C and SIGHUP during training (Caffe's defaults: snapshot+stop, snapshot+go on), and the progress bar."""
import glob
import io
import os
import signal
import textwrap

import pytest

from netspec.caffemodel import read_solverstate
from netspec.solver import Log, Solver

DATA_LAYER = textwrap.dedent('''
    import ast, os, signal
    import numpy as np
    import netspec

    class Points(netspec.Layer):
        """Two classes of 4-D points; sends the signal named in param_str at the given pass."""
        def setup(self, bottom, top):
            p = ast.literal_eval(self.param_str)
            self.signal, self.at, self.calls = p["signal"], p["at"], 0
            self.rs = np.random.RandomState(0)
        def reshape(self, bottom, top):
            top[0].reshape(8, 4)
            top[1].reshape(8)
        def forward(self, bottom, top):
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), getattr(signal, self.signal))
            y = self.rs.randint(0, 2, 8)
            top[0].data[...] = self.rs.randn(8, 4) + 2 * y[:, None]
            top[1].data[...] = y
''')

NET = '''
layer {{ name: "data" type: "Python" top: "data" top: "label"
  python_param {{ module: "points" layer: "Points" param_str: "{{'signal': '{signal}', 'at': {at}}}" }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 2 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
'''

SOLVER = '''
net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 12
display: 0
snapshot_prefix: "snap/pts"
snapshot_after_train: {after_train}
'''


def _solver(tmp_path, monkeypatch, sig, at, stream=None, after_train=False):
    (tmp_path / "points.py").write_text(DATA_LAYER)
    (tmp_path / "net.prototxt").write_text(NET.format(signal=sig, at=at))
    (tmp_path / "solver.prototxt").write_text(SOLVER.format(after_train=str(after_train).lower()))
    monkeypatch.chdir(tmp_path)
    return Solver(str(tmp_path / "solver.prototxt"), log=Log(stream or io.StringIO()))


def _snapshots(tmp_path):
    return sorted(int(p.rsplit("_", 1)[1].split(".")[0]) for p in glob.glob(str(tmp_path / "snap" / "*.solverstate")))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_snapshots_and_training_goes_on(tmp_path, monkeypatch):
    solver = _solver(tmp_path, monkeypatch, "SIGHUP", at=5)
    solver.solve()
    assert solver.iter == 12
    taken = _snapshots(tmp_path)
    assert len(taken) == 1 and 1 <= taken[0] < 12
    assert read_solverstate(str(tmp_path / "snap" / f"pts_iter_{taken[0]}.solverstate")).iter == taken[0]
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL     # handlers are put back


def test_sigint_snapshots_and_stops(tmp_path, monkeypatch):
    # as in Caffe, "stop" ends the loop and the snapshot is snapshot_after_train's (default true)
    stream = io.StringIO()
    solver = _solver(tmp_path, monkeypatch, "SIGINT", at=5, stream=stream, after_train=True)
    solver.solve()
    assert 1 <= solver.iter < 12
    assert _snapshots(tmp_path) == [solver.iter]
    assert "Optimization stopped early." in stream.getvalue()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    terminal = _Terminal()
    _solver(tmp_path, monkeypatch, "SIGUSR1", at=10**6, stream=terminal).solve()
    shown = terminal.getvalue()
    assert "\r[" in shown and "12/12" in shown and "loss" in shown
    plain = io.StringIO()
    _solver(tmp_path, monkeypatch, "SIGUSR1", at=10**6, stream=plain).solve()
    assert "\r" not in plain.getvalue()
