"""Read a Caffe-format training log into plain per-iteration tables.

Works on netspec's own logs (``netspec train``, quickstart's ``train.log``) and on
BVLC Caffe's glog output, old and new::

    I1130 05:19:19.356385  2729 solver.cpp:218] Iteration 100 (3.1 iter/s, 32.2s/100 iters), loss = 0.31
    I1130 05:19:19.356385  2729 solver.cpp:237]     Train net output #0: loss = 0.31 (* 1 = 0.31 loss)
    I1130 05:19:19.356385  2729 sgd_solver.cpp:105] Iteration 100, lr = 0.01
    I1130 05:19:29.113219  2729 solver.cpp:330] Iteration 500, Testing net (#0)
    I1130 05:19:30.524311  2729 solver.cpp:397]     Test net output #0: accuracy = 0.98
    I1130 05:19:30.524311  2729 solver.cpp:397]     Test net output #1: loss = 0.05 (* 1 = 0.05 loss)
    I1130 05:19:30.524311  2729 solver.py] Test net #0 segmentation: pixel accuracy = 0.9, ..., mean IU = 0.7, ...

(older Caffe prints ``Iteration 100, loss = 0.31`` without the speed).  The parser
is tolerant: lines it does not know are ignored, the glog prefix is optional, and
progress-bar debris (carriage returns, terminal escapes) is stripped.

The tables are lists of flat dicts, one row per logged iteration, in log order:

``train``            ``iteration``, ``seconds``, ``loss`` (the raw loss of that iteration: the
                     sum of the weighted ``Train net output`` losses; NaN when the log shows
                     none), ``smoothed_loss`` (the ``Iteration N, loss = X`` value, Caffe's
                     ``average_loss`` running mean, as displayed), ``lr``
``train_outputs``    ``iteration`` and one column per ``Train net output`` name
``test[k]``          test net ``k``: ``iteration``, ``seconds``, ``loss`` (the weighted sum of its
                     loss outputs, or the ``Test loss:`` line; NaN if neither)
``test_outputs[k]``  ``iteration`` and one column per ``Test net output`` name
``segmentation[k]``  ``iteration``, ``pixel_acc``, ``mean_acc``, ``mean_iu``, ``fwavacc``
                     (``netspec train --score-classes``)

``seconds`` counts from the first glog time stamp (NaN without stamps).  An output
printed with several values (``#2: prob = ...`` repeated) gets columns ``prob``,
``prob[1]``, ...  ``train_loss_names`` / ``test_loss_names[k]`` hold the outputs
printed with a loss weight (``(* w = v loss)``).
"""
import math
import os
import re

from .errors import NetspecError

_NUM = r"[-+]?(?:nan|inf|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_GLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d(?:\.\d+)?)\s+\d+\s+[^\]\s]+\]\s?(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_DISPLAY = re.compile(rf"^Iteration (\d+)(?: \([^)]*\))?, loss = ({_NUM})\s*$", re.I)
_LR = re.compile(rf"^Iteration (\d+), lr = ({_NUM})\s*$", re.I)
_TESTING = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)", re.I)
_OUTPUT = re.compile(rf"^\s*(Train|Test) net output #(\d+): (\S+) = ({_NUM})"
                     rf"(?: \(\* ({_NUM}) = ({_NUM}) loss\))?", re.I)
_TEST_LOSS = re.compile(rf"^\s*Test loss: ({_NUM})\s*$", re.I)
_SEGMENTATION = re.compile(rf"^Test net #(\d+) segmentation: pixel accuracy = ({_NUM}), "
                           rf"mean accuracy = ({_NUM}), mean IU = ({_NUM}), f\.w\. IU = ({_NUM})", re.I)
SEGMENTATION_METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fwavacc")
NAN = float("nan")


def _float(text):
    text = text.lower()
    return float(text.replace("-nan", "nan"))


class TrainingLog:
    """The tables of one log (see the module docstring)."""

    def __init__(self, path):
        self.path = path
        self.train = []
        self.train_outputs = []
        self.train_loss_names = []
        self.test = {}
        self.test_outputs = {}
        self.test_loss_names = {}
        self.segmentation = {}

    @property
    def test_nets(self):
        """The test net indices that appear in the log, sorted."""
        return sorted(set(self.test) | set(self.test_outputs) | set(self.segmentation))

    def empty(self):
        return not (self.train or self.train_outputs or any(self.test.values())
                    or any(self.segmentation.values()))

    @staticmethod
    def column(table, name):
        """``(iterations, values)`` of the rows of ``table`` that have a finite-or-NaN ``name``."""
        rows = [r for r in table if name in r]
        return [r["iteration"] for r in rows], [r[name] for r in rows]

    def __repr__(self):
        return (f"TrainingLog({self.path!r}: {len(self.train)} train rows, "
                f"test nets {self.test_nets})")


class _Parser:
    def __init__(self, path):
        self.log = TrainingLog(path)
        self.t0 = None
        self.last_stamp = None
        self.year_offset = 0.0
        self.seconds = NAN
        self.train_row = None          # the row of the last display (or lr) line
        self.train_out = None
        self.test_row = None           # (net index, row, outputs row) of the last "Testing net" line
        self.iteration = 0

    def stamp(self, month, day, hh, mm, ss):
        # seconds within a (leap-agnostic) year; a stamp earlier than the last one wraps to the next year
        t = ((_MONTH_START[month - 1] + day - 1) * 24 + hh) * 3600 + mm * 60 + ss if 1 <= month <= 12 else None
        if t is None:
            return
        if self.last_stamp is not None and t + self.year_offset < self.last_stamp - 86400 * 180:
            self.year_offset += 365 * 86400      # the table below counts a 365-day year
        t += self.year_offset
        self.last_stamp = t
        if self.t0 is None:
            self.t0 = t
        self.seconds = t - self.t0

    def new_train_row(self, iteration):
        row = {"iteration": iteration, "seconds": self.seconds, "loss": NAN, "smoothed_loss": NAN, "lr": NAN}
        self.log.train.append(row)
        self.train_row, self.train_out = row, None
        return row

    def line(self, text):
        text = _ANSI.sub("", text.rsplit("\r", 1)[-1]).rstrip("\n")
        m = _GLOG.match(text)
        if m:
            month, day, hh, mm, ss, text = m.groups()
            self.stamp(int(month), int(day), int(hh), int(mm), float(ss))
        text = text.strip()
        if not text:
            return
        m = _DISPLAY.match(text)
        if m:
            self.iteration = int(m.group(1))
            self.new_train_row(self.iteration)["smoothed_loss"] = _float(m.group(2))
            return
        m = _LR.match(text)
        if m:
            self.iteration = int(m.group(1))
            row = self.train_row
            if row is None or row["iteration"] != self.iteration or not math.isnan(row["lr"]):
                row = self.new_train_row(self.iteration)
            row["lr"] = _float(m.group(2))
            return
        m = _TESTING.match(text)
        if m:
            self.iteration, index = int(m.group(1)), int(m.group(2))
            self.start_test(index, self.iteration)
            return
        m = _OUTPUT.match(text)
        if m:
            which, _, name, value, weight, weighted = m.groups()
            if which.lower() == "train":
                self.train_output(name, _float(value), weighted)
            else:
                self.test_output(name, _float(value), weighted)
            return
        m = _TEST_LOSS.match(text)
        if m:
            if self.test_row is None:
                self.start_test(0, self.iteration)
            self.test_row[1]["loss"] = _float(m.group(1))
            self.test_row[1]["_from_test_loss"] = True
            return
        m = _SEGMENTATION.match(text)
        if m:
            index = int(m.group(1))
            iteration = self.test_row[1]["iteration"] if self.test_row and self.test_row[0] == index \
                else self.iteration
            row = {"iteration": iteration}
            row.update(zip(SEGMENTATION_METRICS, (_float(v) for v in m.groups()[1:])))
            self.log.segmentation.setdefault(index, []).append(row)
            return
        m = re.match(r"^Iteration (\d+)\b", text)
        if m:
            self.iteration = int(m.group(1))

    def train_output(self, name, value, weighted):
        row = self.train_row
        if row is None:
            row = self.new_train_row(self.iteration)
        if self.train_out is None:
            self.train_out = {"iteration": row["iteration"]}
            self.log.train_outputs.append(self.train_out)
        _put(self.train_out, name, value)
        if weighted is not None:
            if name not in self.log.train_loss_names:
                self.log.train_loss_names.append(name)
            row["loss"] = (0.0 if math.isnan(row["loss"]) else row["loss"]) + _float(weighted)

    def start_test(self, index, iteration):
        row = {"iteration": iteration, "seconds": self.seconds, "loss": NAN}
        outputs = {"iteration": iteration}
        self.log.test.setdefault(index, []).append(row)
        self.log.test_outputs.setdefault(index, []).append(outputs)
        self.test_row = (index, row, outputs)

    def test_output(self, name, value, weighted):
        if self.test_row is None:
            self.start_test(0, self.iteration)
        index, row, outputs = self.test_row
        _put(outputs, name, value)
        if weighted is not None:
            names = self.log.test_loss_names.setdefault(index, [])
            if name not in names:
                names.append(name)
            if not row.get("_from_test_loss"):
                row["loss"] = (0.0 if math.isnan(row["loss"]) else row["loss"]) + _float(weighted)

    def finish(self):
        for rows in self.log.test.values():
            for row in rows:
                row.pop("_from_test_loss", None)
        for index in list(self.log.test_outputs):      # a "Testing net" line whose outputs never came
            self.log.test_outputs[index] = [r for r in self.log.test_outputs[index] if len(r) > 1]
        return self.log


_MONTH_START = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334]


def _put(row, name, value):
    key, k = name, 1
    while key in row:
        key, k = f"{name}[{k}]", k + 1
    row[key] = value


def parse_lines(lines, path="<log>"):
    """Parse an iterable of log lines; never raises on content."""
    parser = _Parser(path)
    for line in lines:
        parser.line(line)
    return parser.finish()


def parse_log(path):
    """Parse the log file ``path`` into a :class:`TrainingLog`.

    A missing, unreadable or empty file, or one without a single training or test
    line, is a one-line :class:`NetspecError` naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            log = parse_lines(f, path)
    except (OSError, UnicodeError) as e:
        raise NetspecError(f"{path}: cannot read the log ({e.strerror or e})") from None
    if log.empty():
        raise NetspecError(f"{path}: no training log lines found (expected Caffe's \"Iteration N, loss = X\" "
                           "or \"Test net output #0: name = X\"); is this a netspec/Caffe training log?")
    return log


class LogTee:
    """A stream for :class:`netspec.log.Log` that also keeps the log's lines.

    Everything goes to ``stream`` (default stderr); complete lines also go to every file
    in ``files`` and to ``lines``, the in-place progress bar (``\r...``) does not.  The Log
    draws that bar only when ``stream`` is a terminal.
    """

    def __init__(self, stream=None, files=()):
        import sys
        self.stream = stream or sys.stderr
        self.files = list(files)
        self.lines = []
        self._partial = ""

    def isatty(self):
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def write(self, s):
        self.stream.write(s)
        if s.startswith("\r"):                   # Log's progress bar and its erasure: the terminal's only
            return len(s)
        text = self._partial + s
        if "\n" in text:
            complete, self._partial = text.rsplit("\n", 1)
            complete += "\n"
            for f in self.files:
                f.write(complete)
            self.lines.extend(complete.splitlines())
        else:
            self._partial = text
        return len(s)

    def flush(self):
        self.stream.flush()
        for f in self.files:
            f.flush()
