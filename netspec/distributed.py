"""Multi-process (multi-host) data-parallel training on JAX's multi-controller runtime.

``netspec train --distributed`` runs one process per host (or per accelerator); the
processes form a group through ``jax.distributed.initialize`` (``initialize`` below):
from the cluster environment JAX detects (SLURM, Open MPI, TPU pods, ...) or from
``--coordinator HOST:PORT --num-processes N --process-id I`` (or
``NETSPEC_COORDINATOR``/``NETSPEC_NUM_PROCESSES``/``NETSPEC_PROCESS_ID``).  On CPU the
processes talk through JAX's gloo collectives, so several processes on one machine
work (that is how the tests run it).

Semantics (README, "Training on several machines"):

- one global mesh over every process's devices (``jax.devices()``); params and solver
  state are replicated on it, each train batch is sharded along N;
- the prototxt's batch size is the *global* batch: process ``i`` of ``P`` feeds rows
  ``[i*N/P, (i+1)*N/P)`` of what one process's data layers would produce for that
  pass (``data_slice``, ``netspec.prefetch``); the jitted step all-reduces the
  gradients (XLA SPMD), so the result equals one device training on the whole batch;
- test nets run their whole batch on every process (replicated), so test outputs
  and ``--score-classes`` equal the single-process ones on every process;
- only process 0 logs, plots and writes snapshots; every process reads
  ``--snapshot`` (a shared filesystem is assumed);
- a process that dies, or a coordinator that cannot be reached, ends every process
  within a bounded time (``Watchdog``: about ``heartbeat_timeout`` seconds) with one
  line on stderr naming the process, exit status 2.
"""
import os
import sys
import threading
import time

import numpy as np

from .errors import NetspecError

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "NETSPEC_COORDINATOR", "NETSPEC_NUM_PROCESSES", "NETSPEC_PROCESS_ID")
DEFAULT_HEARTBEAT_TIMEOUT = 10      # seconds without a peer's beat before it counts as dead
DEFAULT_INIT_TIMEOUT = 60           # seconds to reach the coordinator and the other processes
_KEY = "netspec/beat/"


# ------------------------------------------------------------------ process group

def _jax_state():
    try:
        from jax._src import distributed
    except ImportError:                 # pragma: no cover
        return None
    state = distributed.global_state
    return state if state.client is not None else None


def process_index():
    """This process's index in the group (0 when not distributed)."""
    state = _jax_state()
    return int(state.process_id) if state else 0


def process_count():
    """The number of processes in the group (1 when not distributed)."""
    state = _jax_state()
    return int(state.num_processes) if state and state.num_processes else 1


def active():
    return process_count() > 1


def is_main():
    """Whether this process logs, plots and writes snapshots (process 0)."""
    return process_index() == 0


def data_slice(phase):
    """``(index, count)``: which slice of each batch a data layer of ``phase`` produces.
    TRAIN nets are split over the processes; TEST nets run whole on every process."""
    return (process_index(), process_count()) if int(phase) == 0 else (0, 1)


def slice_rows(n, index, count, who="a data layer"):
    """``(lo, hi)``: the rows of an ``n``-item batch that process ``index`` of ``count`` feeds."""
    if count <= 1:
        return 0, n
    if n % count:
        raise NetspecError(f"{who}: batch size {n} does not split evenly over {count} processes "
                           "(the batch size is the global batch; make it a multiple of the process count)")
    k = n // count
    return index * k, (index + 1) * k


def initialize(coordinator=None, num_processes=None, process_id=None, *,
               heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT, init_timeout=DEFAULT_INIT_TIMEOUT):
    """Join the process group (``jax.distributed.initialize``); arguments override the
    ``NETSPEC_*`` variables; what is still unset JAX detects from the cluster."""
    import jax
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _int(num_processes if num_processes is not None else os.environ.get(ENV_NUM_PROCESSES),
                         "--num-processes")
    process_id = _int(process_id if process_id is not None else os.environ.get(ENV_PROCESS_ID), "--process-id")
    if num_processes is not None and num_processes < 1:
        raise NetspecError(f"--num-processes {num_processes}: give a positive number")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise NetspecError(f"--process-id {process_id}: give 0..{num_processes - 1} "
                           f"(--num-processes {num_processes})")
    try:        # CPU: cross-process collectives through gloo (the default in recent JAX)
        if not jax.config.jax_cpu_collectives_implementation:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):    # pragma: no cover - older/newer JAX
        pass
    explicit = any(v is not None for v in (coordinator, num_processes, process_id))
    who = f"process {process_id}" if process_id is not None else "this process"
    if coordinator and process_id not in (None, 0):
        _wait_for_coordinator(coordinator, float(init_timeout), who)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
            initialization_timeout=int(init_timeout),
            # JAX's own detection (it aborts the process) only backs up the Watchdog's
            heartbeat_timeout_seconds=int(heartbeat_timeout) + 30,
            shutdown_timeout_seconds=max(60, 3 * int(heartbeat_timeout)))
    except Exception as e:     # one line and out: JAX's exit handler would abort on the half-made client
        detail = _first_line(e)
        if coordinator:
            _exit_with(f"--distributed: {who} could not join the coordinator {coordinator} "
                       f"within {int(init_timeout)} s ({detail})")
        if explicit:
            _exit_with(f"--distributed: {who}: {detail}")
        _exit_with("--distributed: no cluster detected (SLURM, Open MPI, TPU pod) and no "
                   f"--coordinator/--num-processes/--process-id given ({detail})")


def _wait_for_coordinator(address, timeout, who):
    """Until the coordinator accepts connections (JAX itself aborts the process, with
    pages of log, when it cannot register): else one line and exit 2."""
    import socket
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except (OSError, ValueError) as e:
            if time.monotonic() >= deadline:
                _exit_with(f"--distributed: {who} could not reach the coordinator {address} within "
                           f"{timeout:g} s ({e.strerror or e if isinstance(e, OSError) else e})")
            time.sleep(0.25)


def _exit_with(message):
    sys.stderr.write(f"netspec train: error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def _int(value, flag):
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NetspecError(f"{flag} {value}: give a whole number") from None


def _first_line(error):
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


# ------------------------------------------------------------------ failure

def fail(message, code=2):
    """One line on stderr and exit now, on this process (skipping JAX's shutdown barrier,
    which would wait for the processes that are gone)."""
    try:
        sys.stdout.flush()
    except Exception:
        pass
    sys.stderr.write(f"netspec train: error: process {process_index()}: {message}\n")
    sys.stderr.flush()
    os._exit(code)


class Watchdog:
    """A thread that beats (a counter in the coordination service's key-value store)
    every ``interval`` seconds and watches the other processes' beats: a process whose
    beat stops for ``timeout`` seconds has died (or hangs), and a coordinator that stops
    answering is gone; either way this process ``fail``s naming it.  A process that
    finished announces it (``finish``) and is no longer watched."""

    def __init__(self, timeout=DEFAULT_HEARTBEAT_TIMEOUT, interval=None):
        self.timeout = float(timeout)
        self.interval = interval or min(1.0, self.timeout / 4)
        self.index, self.count = process_index(), process_count()
        self.client = _jax_state().client
        self._stop = threading.Event()
        self._thread = None
        self.lost = None        # set (a message) once a peer is lost, before failing

    def start(self):
        self._beat(0)
        self._thread = threading.Thread(target=self._run, name="netspec-watchdog", daemon=True)
        self._thread.start()
        return self

    def _beat(self, n):
        self.client.key_value_set(f"{_KEY}{self.index}", str(n), allow_overwrite=True)

    def _run(self):
        seen = {j: (None, time.monotonic()) for j in range(self.count) if j != self.index}
        n = 0
        unreachable_since = None
        while not self._stop.wait(self.interval):
            n += 1
            now = time.monotonic()
            try:
                self._beat(n)
                for j in list(seen):
                    value = self.client.key_value_try_get(f"{_KEY}{j}")
                    if value == "done":
                        del seen[j]
                    elif value != seen[j][0]:
                        seen[j] = (value, now)
                unreachable_since = None
            except Exception as e:
                if self._stop.is_set():
                    return
                if "NOT_FOUND" in str(e):     # a peer that has not beaten yet
                    continue
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= min(self.timeout, 5.0):
                    self._lose(f"the coordinator (process 0) stopped answering ({_first_line(e)})")
                continue
            for j, (_, since) in seen.items():
                if now - since > self.timeout:
                    self._lose(f"process {j} stopped (no heartbeat for {self.timeout:g} s); stopping")

    def _lose(self, message):
        if self._stop.is_set():
            return
        self.lost = message
        fail(message)

    def finish(self):
        """This process is done: stop watching, tell the others not to watch it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.key_value_set(f"{_KEY}{self.index}", "done", allow_overwrite=True)
        except Exception:
            pass

    def wait_for_verdict(self, error):
        """A collective failed (``error``): let the beats name the lost process (at most
        ``timeout`` + a few seconds), else fail with the collective's error."""
        deadline = time.monotonic() + self.timeout + 5
        while time.monotonic() < deadline and self._thread is not None and self._thread.is_alive():
            time.sleep(0.1)
        fail(f"a collective operation failed, another process probably died ({_first_line(error)})")


# ------------------------------------------------------------------ global arrays

def global_mesh():
    """The 1-D ``batch`` mesh over every process's devices, process by process."""
    import jax
    from jax.sharding import Mesh
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), ("batch",))


def replicate(mesh, tree):
    """``tree`` replicated over the global mesh (host values are the same on every process)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        return jax.device_put(np.asarray(x), sharding)
    return jax.tree.map(put, tree)


def global_batch(mesh, tree):
    """This process's slice of each input (rows along axis 0) as one global array
    sharded along N; the global batch is the processes' slices in process order."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    devices = mesh.devices.size
    count = process_count()

    def put(x):
        x = np.asarray(x)
        n = x.shape[0] * count if x.ndim else 0
        if not x.ndim or n % devices:
            raise NetspecError(f"the global batch size {n} does not split over the {devices} devices of "
                               f"{count} processes; make the batch size a multiple of {devices}")
        return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("batch")), x)
    return jax.tree.map(put, tree)


def global_shapes(batch):
    """``{input: shape}`` of the global batch whose slice this process holds."""
    count = process_count()
    return {name: (np.shape(v)[0] * count,) + tuple(np.shape(v)[1:]) for name, v in batch.items()}


def pad_local(plan, batch):
    """``plan.pad_inputs`` for this process's slice of a global-batch plan: spatial
    padding to the bucket, the slice's own number of rows."""
    if not plan.padded:
        return {name: np.asarray(v) for name, v in batch.items()}
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        target = plan.graph.blob_shapes.get(name)
        if name not in plan.extent_names or target is None or value.shape[1:] == tuple(target[1:]):
            out[name] = value
            continue
        padded = np.zeros((value.shape[0],) + tuple(target[1:]), value.dtype)
        padded[:, :, :value.shape[2], :value.shape[3]] = value
        out[name] = padded
    return out


def to_host(value):
    """A device value as a host array, gathered from every process when it is sharded
    over them (every process must call it)."""
    import jax
    if isinstance(value, jax.Array) and not value.is_fully_addressable and not value.is_fully_replicated:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


class QuietLog:
    """The log of processes other than 0: lines are dropped."""

    interactive = False

    def __call__(self, message):
        pass

    def progress(self, *args, **kwargs):
        pass
