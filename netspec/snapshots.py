"""Finding the snapshots a training run left behind: ``netspec train --snapshot latest``.

``Solver.snapshot()`` writes ``<prefix>_iter_N.caffemodel`` and then
``<prefix>_iter_N.solverstate``, each to a temporary file in the same directory
(``.<name>.<pid>-<random>.tmp``, see ``netspec.caffemodel._write_atomically``) that is
fsynced and then renamed into place (the directory is fsynced after each rename).
So a file under its final name is always complete, and a ``.solverstate`` only ever
names a ``.caffemodel`` that is complete on disk.  A run killed mid-snapshot leaves at
most a temporary file (never picked; removed by the next run that snapshots with the
same prefix, once its writer is gone) and perhaps a ``.caffemodel`` whose
``.solverstate`` was never written (not a pair, so never picked).

``latest(prefix)`` is the newest pair that is complete: the ``.solverstate`` with the
highest N that parses, whose ``learned_net`` exists and parses as a ``.caffemodel``.
"""
import os
import re
import time
from typing import NamedTuple

from .errors import NetspecError

# ``.<final name>.<pid>-<hex>.tmp`` (and the older ``.<final name>.<hex>.tmp``)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[0-9a-f]+\.tmp$")
# a temporary file without a writer's pid is taken as stale once it is this old
_STALE_SECONDS = 3600


class Snapshot(NamedTuple):
    """A complete snapshot pair."""
    iter: int
    solverstate: str
    caffemodel: str


def learned_net_path(state_path, learned_net):
    """Where the ``.caffemodel`` a ``.solverstate`` names is: the path as written (relative
    to the working directory, as Caffe does), else the same file name beside the
    ``.solverstate`` (a run directory that was moved or resumed from elsewhere)."""
    if not learned_net or os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(state_path), os.path.basename(learned_net))
    return beside if os.path.exists(beside) else learned_net


def candidates(prefix):
    """``[(N, <prefix>_iter_N.solverstate)]`` present on disk, newest first (temporary files excluded)."""
    directory, stem = os.path.split(prefix)
    pattern = re.compile(re.escape(stem) + r"_iter_(\d+)\.solverstate$")
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    found = [(int(m.group(1)), os.path.join(directory, name)) for name in names
             for m in [pattern.match(name)] if m]
    return sorted(found, reverse=True)


def check_pair(state_path):
    """The ``Snapshot`` of ``state_path`` if it and the ``.caffemodel`` it names are both
    complete; else raise ``NetspecError`` saying what is wrong."""
    from .caffemodel import read_caffemodel, read_solverstate
    saved = read_solverstate(state_path)
    if not saved.learned_net:
        raise NetspecError(f"{state_path}: names no .caffemodel (learned_net is empty)")
    model = learned_net_path(state_path, saved.learned_net)
    if not os.path.exists(model):
        raise NetspecError(f"{state_path}: the .caffemodel it names, {saved.learned_net}, does not exist")
    read_caffemodel(model)
    return Snapshot(int(saved.iter), state_path, model)


def latest(prefix, log=None):
    """The newest complete ``Snapshot`` of ``<prefix>_iter_N``, or None.  Pairs that are
    not complete are skipped (with a log line each when ``log`` is given)."""
    for _, path in candidates(prefix):
        try:
            return check_pair(path)
        except NetspecError as e:
            if log is not None:
                log(f"Skipping snapshot {path}: {e}")
    return None


def remove_stale_temp_files(prefix):
    """Remove the temporary files that writers of ``<prefix>_iter_N.*`` snapshots left
    when they were killed: those whose writer process no longer exists (or, without a
    pid in the name, older than an hour).  Returns the paths removed."""
    directory, stem = os.path.split(prefix)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    removed = []
    for name in names:
        m = _TEMP.match(name)
        if not m or not re.match(re.escape(stem) + r"_iter_\d+\.(caffemodel|solverstate)$", m.group("name")):
            continue
        path = os.path.join(directory, name)
        if m.group("pid") is not None:
            stale = not _alive(int(m.group("pid")))
        else:
            try:
                stale = time.time() - os.path.getmtime(path) > _STALE_SECONDS
            except OSError:
                continue
        if stale:
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def is_temp_file(name):
    """Whether a file name is one of ``_write_atomically``'s temporary files."""
    return bool(_TEMP.match(os.path.basename(name)))


def _alive(pid):
    """Whether process ``pid`` still runs on this host (a zombie, killed and not yet
    reaped, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # e.g. EPERM: someone else's live process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
