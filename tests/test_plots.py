"""Training logs (BVLC Caffe's and netspec's) parsed into tables, and the pictures drawn
from them, from prediction rows and from score histograms, checked headlessly with Pillow.

``tests/data/caffe_train.log`` is written by :func:`caffe_log_text` (``python
tests/test_plots.py`` rewrites it): glog lines as BVLC Caffe prints them around a run
of 1000 iterations of a LeNet-like net with two test nets, with the numbers of
:func:`fixture_numbers`.
"""
import io
import math
import os
import textwrap

import numpy as np
import pytest
from PIL import Image

from netspec.cli import main
from netspec.errors import NetspecError
from netspec.training_log import LogTee, parse_lines, parse_log

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "caffe_train.log")
MAX_ITER, DISPLAY, TEST_INTERVAL = 1000, 25, 200


def _g(x):
    return f"{x:.6g}"


def fixture_numbers():
    """What the fixture log says, as Caffe prints it (6 significant digits)."""
    rs = np.random.RandomState(3)
    iters = list(range(0, MAX_ITER, DISPLAY))
    raw = [2.3 * math.exp(-i / 150) + 0.01 + 0.05 * rs.rand() for i in iters]
    smoothed = [float(np.mean(raw[max(0, j - 3):j + 1])) for j in range(len(raw))]
    lr = [0.01 * 0.1 ** (i // 400) for i in iters]
    tests = {}
    for k in (0, 1):
        tests[k] = [(i, 1 - 0.9 * math.exp(-i / (200 + 100 * k)) - 0.01 * k,
                     2.3 * math.exp(-i / (180 + 50 * k)) + 0.02) for i in range(0, MAX_ITER + 1, TEST_INTERVAL)]
    final = 0.0123456789
    fmt = lambda v: float(_g(v))   # noqa: E731
    return {"train": [(i, fmt(r), fmt(s), fmt(l)) for i, r, s, l in zip(iters, raw, smoothed, lr)],
            "tests": {k: [(i, fmt(a), fmt(l)) for i, a, l in v] for k, v in tests.items()},
            "final": (MAX_ITER, fmt(final))}


def messages(numbers, *, speed=True):
    """The solver's messages for ``numbers``, in Caffe's order; (source file, text) pairs."""
    out = []
    tests = {k: dict((i, (a, l)) for i, a, l in v) for k, v in numbers["tests"].items()}

    def test_at(i):
        for k in sorted(tests):
            if i in tests[k]:
                a, loss = tests[k][i]
                out.append(("solver.cpp:330", f"Iteration {i}, Testing net (#{k})"))
                out.append(("solver.cpp:397", f"    Test net output #0: accuracy = {_g(a)}"))
                out.append(("solver.cpp:397", f"    Test net output #1: loss = {_g(loss)} (* 1 = {_g(loss)} loss)"))

    for i, raw, smoothed, lr in numbers["train"]:
        test_at(i)
        head = f"Iteration {i} (3.{i % 7} iter/s, {7.9 + (i % 3) / 10:.3g}s/{DISPLAY} iters)" if speed else \
            f"Iteration {i}"
        out.append(("solver.cpp:218", f"{head}, loss = {_g(smoothed)}"))
        out.append(("solver.cpp:237", f"    Train net output #0: loss = {_g(raw)} (* 1 = {_g(raw)} loss)"))
        out.append(("sgd_solver.cpp:105", f"Iteration {i}, lr = {_g(lr)}"))
    out.append(("solver.cpp:454", f"Snapshotting to binary proto file lenet_iter_{MAX_ITER}.caffemodel"))
    i, final = numbers["final"]
    out.append(("solver.cpp:310", f"Iteration {i}, loss = {_g(final)}"))
    test_at(i)
    out.append(("solver.cpp:315", "Optimization Done."))
    return out


PREAMBLE = [
    ("caffe.cpp:211", "Using GPUs 0"),
    ("caffe.cpp:216", "GPU 0: GeForce GTX 1080"),
    ("solver.cpp:44", "Initializing solver from parameters: \ntest_iter: 100\ntest_interval: 200\n"
                      "base_lr: 0.01\ndisplay: 25\nmax_iter: 1000\nlr_policy: \"step\"\ngamma: 0.1\n"
                      "momentum: 0.9\nweight_decay: 0.0005\nstepsize: 400\nsnapshot: 5000\n"
                      "snapshot_prefix: \"examples/mnist/lenet\"\nsolver_mode: GPU\naverage_loss: 4\n"
                      "net: \"examples/mnist/lenet_train_test.prototxt\""),
    ("solver.cpp:87", "Creating training net from net file: examples/mnist/lenet_train_test.prototxt"),
    ("net.cpp:51", "Initializing net from parameters: \nname: \"LeNet\"\nstate {\n  phase: TRAIN\n}\n"
                   "layer {\n  name: \"mnist\"\n  type: \"Data\"\n  top: \"data\"\n  top: \"label\"\n}"),
    ("layer_factory.hpp:77", "Creating layer mnist"),
    ("net.cpp:84", "Creating Layer mnist"),
    ("net.cpp:380", "mnist -> data"),
    ("data_layer.cpp:45", "output data size: 64,1,28,28"),
    ("net.cpp:122", "Setting up mnist"),
    ("net.cpp:129", "Top shape: 64 1 28 28 (50176)"),
    ("net.cpp:137", "Memory required for data: 200960"),
    ("net.cpp:198", "loss needs backward computation."),
    ("net.cpp:255", "Network initialization done."),
    ("solver.cpp:172", "Creating test net (#0) specified by net file: examples/mnist/lenet_train_test.prototxt"),
    ("solver.cpp:172", "Creating test net (#1) specified by test_net_param"),
    ("solver.cpp:56", "Solver scaffolding done."),
    ("caffe.cpp:248", "Starting Optimization"),
    ("solver.cpp:272", "Solving LeNet"),
    ("solver.cpp:273", "Learning Rate Policy: step"),
]


def caffe_log_text(numbers=None):
    """BVLC Caffe's glog output for ``numbers``: the clock crosses New Year's midnight."""
    numbers = numbers or fixture_numbers()
    lines, t = [], 23 * 3600 + 59 * 60                 # 31 Dec 23:59:00
    pid = 2729
    warning = ("data_reader.cpp:88", "Restarting data prefetching from start.")
    for j, (where, text) in enumerate(PREAMBLE + [warning] + messages(numbers)):
        t += 0.3 + (j % 5) * 0.05
        day = ("12", "31") if t < 86400 else ("01", "01")
        s = t % 86400
        stamp = f"{day[0]}{day[1]} {int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{s % 60:09.6f}"
        lines.append(f"{'W' if (where, text) == warning else 'I'}{stamp} {pid:5d} {where}] {text}")
    return "\n".join(lines) + "\n"


def netspec_log_text(numbers=None, segmentation=()):
    """The same numbers as netspec's own Log writes them (plus optional segmentation lines)."""
    from netspec.log import Log
    numbers = numbers or fixture_numbers()
    stream = io.StringIO()
    log, last = Log(stream), ""
    for where, text in messages(numbers):
        log(text)
        if "Test net output #1" in text:
            for k, i, values in segmentation:
                if f"Testing net (#{k})" in last and last.startswith(f"Iteration {i},"):
                    log(f"Test net #{k} segmentation: pixel accuracy = {_g(values[0])}, mean accuracy = "
                        f"{_g(values[1])}, mean IU = {_g(values[2])}, f.w. IU = {_g(values[3])}")
        if "Testing net" in text:
            last = text
    return stream.getvalue()


def without(rows, *keys):
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


def same(a, b):
    """Tables equal, NaN == NaN."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert (math.isnan(x[k]) and math.isnan(y[k])) or x[k] == y[k], (k, x, y)


# ------------------------------------------------------------------ parsing

def test_fixture_is_what_the_generator_writes():
    assert open(FIXTURE).read() == caffe_log_text()
    assert os.path.getsize(FIXTURE) < 30_000


def test_parses_bvlc_caffe_glog_output():
    numbers = fixture_numbers()
    log = parse_log(FIXTURE)
    train = [r for r in log.train if r["iteration"] < MAX_ITER]
    assert [(r["iteration"], r["loss"], r["smoothed_loss"], r["lr"]) for r in train] == numbers["train"]
    final = log.train[-1]
    assert (final["iteration"], final["smoothed_loss"]) == numbers["final"]
    assert math.isnan(final["loss"]) and math.isnan(final["lr"])
    assert [r["loss"] for r in log.train_outputs] == [n[1] for n in numbers["train"]]
    assert log.train_loss_names == ["loss"]
    assert log.test_nets == [0, 1]
    for k in (0, 1):
        assert [(r["iteration"], r["loss"]) for r in log.test[k]] == [(i, l) for i, _, l in numbers["tests"][k]]
        assert [(r["iteration"], r["accuracy"], r["loss"]) for r in log.test_outputs[k]] == numbers["tests"][k]
        assert log.test_loss_names[k] == ["loss"]
    seconds = [r["seconds"] for r in log.train]
    assert seconds[0] > 0 and all(b > a for a, b in zip(seconds, seconds[1:]))   # across New Year's midnight
    assert 60 < seconds[-1] < 600


def test_old_caffe_lines_and_test_loss_lines():
    log = parse_lines(["I0101 00:00:01.0 1 solver.cpp:209] Iteration 100, loss = 0.31",
                       "I0101 00:00:01.0 1 solver.cpp:225]     Train net output #0: loss = 0.3 (* 0.5 = 0.15 loss)",
                       "I0101 00:00:01.0 1 solver.cpp:225]     Train net output #1: aux = 0.2 (* 0.5 = 0.1 loss)",
                       "I0101 00:00:01.0 1 solver.cpp:225]     Train net output #2: prob = 0.25",
                       "I0101 00:00:01.0 1 solver.cpp:225]     Train net output #3: prob = 0.75",
                       "I0101 00:00:01.0 1 solver.cpp:486] Iteration 100, lr = 1e-05",
                       "garbage line ] Iteration",
                       "\r[#####.....] 3/10 loss 1.2\r\x1b[KI0101 00:00:02.0 1 solver.py] Iteration 200, loss = -nan",
                       "Iteration 300, Testing net (#0)",
                       "Test loss: 0.5",
                       "    Test net output #0: loss = 0.7 (* 1 = 0.7 loss)"], "x.log")
    assert [r["iteration"] for r in log.train] == [100, 200]
    assert log.train[0]["loss"] == pytest.approx(0.25) and log.train[0]["lr"] == 1e-5
    assert log.train_outputs[0] == {"iteration": 100, "loss": 0.3, "aux": 0.2, "prob": 0.25, "prob[1]": 0.75}
    assert math.isnan(log.train[1]["smoothed_loss"])
    assert log.test[0] == [{"iteration": 300, "seconds": 1.0, "loss": 0.5}]     # "Test loss:" wins
    assert log.train[1]["seconds"] == 1.0


@pytest.mark.parametrize("content", ["", "hello\nworld\n", "\x00\x01\x02\xff" * 50])
def test_garbled_logs_are_one_line_errors(tmp_path, content):
    path = tmp_path / "garbled.log"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(NetspecError) as e:
        parse_log(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(NetspecError, match="missing.log"):
        parse_log(str(tmp_path / "missing.log"))


def test_the_same_numbers_in_both_formats_give_the_same_tables(tmp_path):
    seg = [(0, 400, (0.91, 0.8, 0.65, 0.84)), (1, 1000, (0.95, 0.9, 0.75, 0.9))]
    (tmp_path / "netspec.log").write_text(netspec_log_text(segmentation=seg))
    caffe, ours = parse_log(FIXTURE), parse_log(str(tmp_path / "netspec.log"))
    same(without(caffe.train, "seconds"), without(ours.train, "seconds"))
    same(caffe.train_outputs, ours.train_outputs)
    assert caffe.test_nets == ours.test_nets == [0, 1]
    for k in (0, 1):
        same(without(caffe.test[k], "seconds"), without(ours.test[k], "seconds"))
        same(caffe.test_outputs[k], ours.test_outputs[k])
    assert caffe.segmentation == {}
    assert ours.segmentation == {k: [dict(zip(("iteration", "pixel_acc", "mean_acc", "mean_iu", "fwavacc"),
                                              (i,) + v))] for k, i, v in seg}


TINY_NET = '''
name: "tiny"
layer { name: "data" type: "Python" top: "data" top: "label" python_param { module: "plots_tiny_data" layer: "Blobs" } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "total" type: "Reduction" bottom: "ip" top: "total" reduction_param { operation: SUM } }
'''

TINY_DATA = '''
import numpy as np
import netspec

class Blobs(netspec.Layer):
    def setup(self, bottom, top):
        self.rs = np.random.RandomState(0)
    def reshape(self, bottom, top):
        top[0].reshape(4, 3)
        top[1].reshape(4, 2)
    def forward(self, bottom, top):
        top[0].data[...] = self.rs.randn(4, 3)
        top[1].data[...] = self.rs.randn(4, 2)
'''


def tiny_solver(tmp_path):
    (tmp_path / "plots_tiny_data.py").write_text(TINY_DATA)
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    (tmp_path / "solver.prototxt").write_text(textwrap.dedent("""
        train_net: "net.prototxt"
        test_net: "net.prototxt"
        test_net: "net.prototxt"
        test_iter: 1
        test_iter: 1
        test_interval: 4
        base_lr: 0.1
        lr_policy: "step"
        gamma: 0.01
        stepsize: 4
        momentum: 0.9
        max_iter: 8
        display: 2
        average_loss: 2
        random_seed: 1
        snapshot_after_train: false
        """))
    return str(tmp_path / "solver.prototxt")


def test_a_tiny_netspec_training_log_parses_to_what_the_solver_wrote(tmp_path, monkeypatch):
    from netspec.log import Log
    from netspec.solver import Solver
    monkeypatch.chdir(tmp_path)
    said = []

    class Recording(Log):
        def __call__(self, message):
            said.append(message)
            super().__call__(message)

    tee = LogTee(io.StringIO())
    solver = Solver(tiny_solver(tmp_path), log=Recording(tee))
    solver.solve()
    (tmp_path / "train.log").write_text("\n".join(tee.lines) + "\n")
    log = parse_log(str(tmp_path / "train.log"))

    def numbers(prefix, after):
        return [float(m.split(after)[1].split()[0]) for m in said if m.startswith(prefix) and after in m]

    assert [r["iteration"] for r in log.train] == [0, 2, 4, 6, 8]
    assert [r["smoothed_loss"] for r in log.train[:4]] == numbers("Iteration", "iters), loss = ")
    assert log.train[-1]["smoothed_loss"] == float(_g(solver.smoothed_loss))
    assert [r["lr"] for r in log.train[:4]] == [0.1, 0.1, 0.001, 0.001]
    assert [r["loss"] for r in log.train[:4]] == numbers("    Train net output #0", "loss = ")
    assert [r["total"] for r in log.train_outputs] == numbers("    Train net output #", "total = ")
    assert log.train_loss_names == ["loss"]
    assert log.test_nets == [0, 1]
    for k in (0, 1):
        assert [r["iteration"] for r in log.test[k]] == [0, 4, 8]
    test_losses, totals = numbers("    Test net output #", "loss = "), numbers("    Test net output #", "total = ")
    assert len(test_losses) == len(totals) == 6
    assert [r["loss"] for k in (0, 1) for r in log.test[k]] == [test_losses[i] for i in (0, 2, 4, 1, 3, 5)]
    assert [r["total"] for k in (0, 1) for r in log.test_outputs[k]] == [totals[i] for i in (0, 2, 4, 1, 3, 5)]
    assert log.test_loss_names == {0: ["loss"], 1: ["loss"]}


# ------------------------------------------------------------------ pictures

def picture(path):
    image = Image.open(path)
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def colours_of(a):
    packed = np.unique((a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2])
    return {(int(v >> 16), int(v >> 8 & 255), int(v & 255)) for v in packed}


def not_blank(a, min_colours=50, min_ink=0.02):
    ink = (a < 235).any(axis=2).mean()
    assert len(colours_of(a)) >= min_colours and ink >= min_ink, (len(colours_of(a)), ink)


def test_training_curve_of_the_caffe_log(tmp_path):
    from netspec.plots import training_curve
    out = training_curve(parse_log(FIXTURE), str(tmp_path / "curve.png"))
    a = picture(out)
    assert a.shape == (1000, 1600, 3)
    not_blank(a)
    # the raw train loss, the test nets' lines and the lr line in their colours
    for colour in ((0x1f, 0x77, 0xb4), (0xd6, 0x27, 0x28), (0x2c, 0xa0, 0x2c), (0x44, 0x44, 0x44)):
        assert colour in colours_of(a), colour


def test_training_curve_without_smoothing_or_tests(tmp_path):
    from netspec.plots import training_curve
    lines = [f"Iteration {i}, loss = {3 * 0.5 ** (i / 10) + 0.001}" for i in range(0, 200, 5)]
    out = training_curve(parse_lines(lines, "old.log"), str(tmp_path / "old.png"), size=(8, 5))
    a = picture(out)
    assert a.shape == (500, 800, 3)
    not_blank(a)


def segmentation_rows(n=3, size=24, classes=(0, 3, 7, 15)):
    rs = np.random.RandomState(0)
    rows = []
    for r in range(n):
        label = np.zeros((size, size), np.int64)
        for c in classes[1:]:
            y, x = rs.randint(0, size - 8, 2)
            label[y:y + 8, x:x + 8] = c
        label[0, :] = 255
        pred = label.copy()
        pred[pred == 255] = 0
        pred[size // 2:, :4] = classes[1]
        image = (rs.rand(size, size, 3) * 255).astype(np.uint8)
        rows.append((image, label if r != 1 else None, pred))
    return rows


def test_prediction_panels_show_the_classes_and_their_legend(tmp_path):
    from netspec.plots import VOC_CLASSES, palette_array, prediction_panels
    rows = segmentation_rows()
    out = prediction_panels(rows, None, None, str(tmp_path / "panels.png"))
    a = picture(out)
    factor = round(256 / 24)                                  # 24 px upscaled (nearest) to 264 px
    assert a.shape[0] > 3 * 24 * factor and a.shape[1] > 4 * 24 * factor
    not_blank(a)
    legend = a[:, -230:]                                      # the legend column
    pal = palette_array()
    for c in (3, 7, 15, 255):
        assert tuple(pal[c]) in colours_of(legend), (c, VOC_CLASSES[c] if c < 21 else "void")
    assert tuple(pal[9]) not in colours_of(a)                 # a class that is not there
    prediction = a[12 + 30:12 + 30 + 24 * factor, 12 + 2 * (24 * factor + 10):][:, :24 * factor]
    assert colours_of(prediction) <= {tuple(pal[c]) for c in (0, 3, 7, 15)}   # exact palette colours


def test_prediction_panels_with_own_names_and_palette(tmp_path):
    from netspec.plots import prediction_panels
    palette = [(0, 0, 0), (250, 10, 10), (10, 250, 10), (10, 10, 250)]
    rows = [(np.full((40, 60, 3), 128, np.uint8), np.arange(60)[None].repeat(40, 0) % 4)]
    out = prediction_panels(rows, ["bg", "red", "green", "blue"], palette, str(tmp_path / "p.png"))
    a = picture(out)
    for colour in palette[1:]:
        assert colour in colours_of(a[:, -230:])
    with pytest.raises(NetspecError):
        prediction_panels([(np.zeros((4, 4, 3)), np.zeros((5, 5), int))], path=str(tmp_path / "bad.png"))


def test_score_figures(tmp_path):
    from netspec.plots import palette_array, score_figures
    from netspec.score import fast_hist
    rs = np.random.RandomState(0)
    label = rs.randint(0, 5, 5000)
    pred = np.where(rs.rand(5000) < 0.7, label, rs.randint(0, 5, 5000))
    hist = fast_hist(label, pred, 6)                          # class 5 absent: n/a
    names = ["background", "disc", "square", "triangle", "ring", "bar"]
    confusion, iu = score_figures(hist, names, str(tmp_path / "figs"))
    for path in (confusion, iu):
        not_blank(picture(path), min_colours=20)
    pal = palette_array()
    for c in range(1, 5):
        assert tuple(pal[c]) in colours_of(picture(iu)), c       # the bars in the class colours


# ------------------------------------------------------------------ commands

def test_netspec_plot_command(tmp_path, capsys):
    log = tmp_path / "run.log"
    log.write_text(open(FIXTURE).read())
    assert main(["plot", str(log)]) == 0
    assert picture(tmp_path / "run.png").shape == (1000, 1600, 3)
    assert main(["plot", str(log), "-o", str(tmp_path / "c.png"), "--csv", str(tmp_path / "t")]) == 0
    assert picture(tmp_path / "c.png").shape == (1000, 1600, 3)
    assert (tmp_path / "t.train.csv").read_text().startswith("iteration,seconds,loss,smoothed_loss,lr")
    capsys.readouterr()
    (tmp_path / "bad.log").write_text("nothing to see\n")
    assert main(["plot", str(tmp_path / "bad.log")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.log" in err
    assert not (tmp_path / "bad.png").exists()


def test_netspec_train_log_and_curve(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_solver(tmp_path)
    assert main(["train", "solver.prototxt", "--log", "train.log", "--no-compile-cache"]) == 0
    assert "Iteration 8, Testing net (#1)" in (tmp_path / "train.log").read_text()
    a = picture(tmp_path / "train.png")
    assert a.shape == (1000, 1600, 3)
    not_blank(a)


if __name__ == "__main__":
    with open(FIXTURE, "w") as f:
        f.write(caffe_log_text())
    print(FIXTURE, os.path.getsize(FIXTURE), "bytes")


def test_netspec_infer_panels_with_ground_truth(tmp_path):
    from netspec.caffemodel import write_caffemodel
    from netspec.plots import palette_array
    net_file = tmp_path / "deploy.prototxt"
    net_file.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 '
                        'dim: 5 dim: 5 } } }\nlayer { name: "score" type: "Convolution" bottom: "data" '
                        'top: "score" convolution_param { num_output: 3 kernel_size: 1 } }\n')
    rs = np.random.RandomState(1)
    write_caffemodel(str(tmp_path / "w.caffemodel"), None,
                     {"score": [rs.randn(3, 3, 1, 1).astype(np.float32), rs.randn(3).astype(np.float32)]})
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rs.randint(0, 256, (12, 16, 3)).astype(np.uint8)).save(tmp_path / f"{name}.png")
    Image.fromarray(np.full((12, 16), 2, np.uint8), "L").save(tmp_path / "labels" / "a.png")
    (tmp_path / "names.txt").write_text("bg\none\ntwo\n")
    assert main(["infer", "--model", str(net_file), "--weights", str(tmp_path / "w.caffemodel"),
                 "--out", str(tmp_path / "out"), "--panels", str(tmp_path / "panels.png"),
                 "--labels", str(tmp_path / "labels"), "--class-names", str(tmp_path / "names.txt"),
                 str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 0
    a = picture(tmp_path / "panels.png")
    assert a.shape[0] > 2 * 12 * 16                              # 16x12 upscaled 16x, two rows
    assert tuple(palette_array()[2]) in colours_of(a[:, -230:])     # the ground truth's class in the legend


SEG_DATA = '''
import numpy as np
import netspec

class Tiles(netspec.Layer):
    def setup(self, bottom, top):
        self.rs = np.random.RandomState(5)
    def reshape(self, bottom, top):
        top[0].reshape(1, 2, 6, 7)
        top[1].reshape(1, 1, 6, 7)
    def forward(self, bottom, top):
        top[0].data[...] = self.rs.randn(1, 2, 6, 7)
        top[1].data[...] = self.rs.randint(0, 3, (1, 1, 6, 7))
'''


def test_netspec_score_figures(tmp_path, monkeypatch, capsys):
    from netspec.caffemodel import write_caffemodel
    (tmp_path / "plots_tiles.py").write_text(SEG_DATA)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Python" top: "data" top: "label" '
        'python_param { module: "plots_tiles" layer: "Tiles" } }\n'
        'layer { name: "score" type: "Convolution" bottom: "data" top: "score" '
        'convolution_param { num_output: 3 kernel_size: 1 } }\n')
    rs = np.random.RandomState(0)
    write_caffemodel(str(tmp_path / "w.caffemodel"), None,
                     {"score": [rs.randn(3, 2, 1, 1).astype(np.float32), rs.randn(3).astype(np.float32)]})
    (tmp_path / "names.txt").write_text("bg\nleft\nright\n")
    monkeypatch.chdir(tmp_path)
    assert main(["score", "--model", "net.prototxt", "--weights", "w.caffemodel", "--classes", "3",
                 "--iterations", "2", "--figures", "figs", "--class-names", "names.txt"]) == 0
    printed = capsys.readouterr().out
    assert "IU left" in printed and "figs/per_class_iu.png" in printed
    for name in ("confusion_matrix.png", "per_class_iu.png"):
        not_blank(picture(tmp_path / "figs" / name), min_colours=20)


RGB_DATA = '''
import numpy as np
import netspec

class Pictures(netspec.Layer):
    """3-channel images (BGR, mean 10,20,30 subtracted) and labels 0..2."""
    def setup(self, bottom, top):
        self.rs = np.random.RandomState(5)
    def reshape(self, bottom, top):
        top[0].reshape(1, 3, 16, 12)
        top[1].reshape(1, 1, 16, 12)
    def forward(self, bottom, top):
        top[0].data[...] = self.rs.uniform(0, 200, (1, 3, 16, 12)) - np.array([10, 20, 30]).reshape(1, 3, 1, 1)
        top[1].data[...] = self.rs.randint(0, 3, (1, 1, 16, 12))
'''


def test_netspec_score_panels(tmp_path, monkeypatch, capsys):
    """score --panels: the first images' rows, with the VOC palette colours of the classes
    predicted and labelled; the mean comes from the data layer's param_str."""
    from netspec.caffemodel import write_caffemodel
    from netspec.commands.score import data_layer_mean
    from netspec.plots import palette_array
    from netspec.prototxt import read_net
    (tmp_path / "plots_pictures.py").write_text(RGB_DATA)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Python" top: "data" top: "label" '
        "python_param { module: 'plots_pictures' layer: 'Pictures' param_str: \"{'mean': (10, 20, 30)}\" } }\n"
        'layer { name: "score" type: "Convolution" bottom: "data" top: "score" '
        'convolution_param { num_output: 3 kernel_size: 1 } }\n')
    assert data_layer_mean(read_net(str(tmp_path / "net.prototxt"))) == [10.0, 20.0, 30.0]
    rs = np.random.RandomState(0)
    write_caffemodel(str(tmp_path / "w.caffemodel"), None,
                     {"score": [rs.randn(3, 3, 1, 1).astype(np.float32), rs.randn(3).astype(np.float32)]})
    monkeypatch.chdir(tmp_path)
    assert main(["score", "--model", "net.prototxt", "--weights", "w.caffemodel", "--classes", "3",
                 "--iterations", "3", "--panels", "panels.png", "--panels-rows", "2"]) == 0
    assert "panels -> panels.png" in capsys.readouterr().out
    a = picture(tmp_path / "panels.png")
    not_blank(a)
    colours = colours_of(a)
    for k in range(3):
        assert tuple(int(v) for v in palette_array(None)[k]) in colours
