"""Caffe's glog-style log lines, the one place netspec reports progress.

``I1122 21:03:50.123456 12345 solver.py] Iteration 20, loss = 1.2``: Caffe's own log
parsers (``parse_log.py``, ``plot_training_log.py``) read netspec's logs.
"""
import os
import sys
import time


class Log:
    """Caffe-style glog lines (``I1122 21:03:50.123456 12345 solver.py] Iteration 20, loss = 1.2``)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.pid = os.getpid()
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self._progress_shown = False

    def __call__(self, message):
        now = time.time()
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
        self._clear_progress()
        self.stream.write(f"I{stamp} {self.pid:5d} solver.py] {message}\n")
        self.stream.flush()

    def progress(self, done, total, text=""):
        """A one-line progress bar, redrawn in place, on an interactive terminal only."""
        if not self.interactive or total <= 0:
            return
        width = 30
        filled = int(width * min(done, total) / total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {text}\033[K")
        self.stream.flush()
        self._progress_shown = True

    def _clear_progress(self):
        if self._progress_shown:
            self.stream.write("\r\033[K")
            self._progress_shown = False
