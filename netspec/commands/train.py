"""``netspec train --solver S [--weights W] [--snapshot STATE|latest] [--gpu all]`` (``caffe train``).

The Caffe-format log goes to stderr as Caffe's does; ``--log FILE`` also writes it to
FILE and then draws the training curve into FILE's name with ``.png``; ``--curve PNG``
draws it anywhere (without ``--log`` too, from the lines kept in memory).

``--snapshot latest`` resumes from the newest complete snapshot pair of the solver's
``snapshot_prefix`` (``netspec.snapshots``), or starts afresh when there is none: the
command to rerun after a crash.  ``--max-memory BYTES|auto`` refuses, before anything
is compiled, a net whose planned training memory exceeds the limit.
"""
import math
import os
import re

from ..errors import NetspecError
from . import add_execution_arguments, execution_options


def add_arguments(p):
    p.add_argument("solver_file", nargs="?", help="the solver prototxt (or use --solver)")
    p.add_argument("--solver", help="the solver prototxt")
    p.add_argument("--weights", help="comma-separated .caffemodel files to initialize from (fine-tuning)")
    p.add_argument("--snapshot", metavar="STATE|latest",
                   help="a .solverstate to resume from; 'latest': the newest complete snapshot pair "
                        "<snapshot_prefix>_iter_N.caffemodel/.solverstate (none: start from iteration 0)")
    p.add_argument("--max-memory", metavar="BYTES|auto",
                   help="refuse to train, before compiling, when the train net's planned memory "
                        "(activations x2 for their gradients, parameters, gradients and solver history) "
                        "exceeds BYTES (e.g. 12G, 512M) or, with 'auto', the device's memory")
    p.add_argument("--gpu", help="device ids (0,1) or 'all': train data-parallel over them (batch split along N)")
    p.add_argument("--python-path", action="append", default=[],
                   help="a directory to search for Python layer modules (repeatable)")
    p.add_argument("--sigint_effect", choices=("stop", "snapshot", "none"), default="stop",
                   help="what Ctrl-C does (Caffe's default: snapshot and stop)")
    p.add_argument("--sighup_effect", choices=("stop", "snapshot", "none"), default="snapshot",
                   help="what SIGHUP does (default: snapshot and continue)")
    p.add_argument("--score-classes", type=int, default=0, metavar="N",
                   help="at every test, also log pixel accuracy, mean accuracy, mean IU and f.w. IU "
                        "of the test net's argmax over --score-blob against --label-blob, N classes")
    p.add_argument("--score-blob", default="score")
    p.add_argument("--label-blob", default="label")
    p.add_argument("--log", metavar="FILE",
                   help="also write the Caffe-format log lines to FILE (they always go to stderr); "
                        "the training curve then goes to FILE's name with .png unless --curve says otherwise")
    p.add_argument("--curve", metavar="PNG",
                   help="draw the training curve (loss, test outputs, learning rate) into PNG when "
                        "training ends, stops early or diverges (see netspec plot)")
    add_execution_arguments(p)
    p.add_argument("--distributed", action="store_true",
                   help="multi-process data-parallel training (one process per host or accelerator): "
                        "the process group comes from the cluster (SLURM, Open MPI, TPU pod) or from "
                        "--coordinator/--num-processes/--process-id; see README, 'Training on several machines'")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="--distributed: process 0's address (default $NETSPEC_COORDINATOR, else the cluster's)")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="--distributed: the number of processes (default $NETSPEC_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, metavar="I",
                   help="--distributed: this process's index, 0..N-1 (default $NETSPEC_PROCESS_ID)")
    p.add_argument("--heartbeat-timeout", type=float, metavar="SECONDS", default=None,
                   help="--distributed: a process silent this long counts as dead and ends the run "
                        "(default 10)")
    p.add_argument("--init-timeout", type=float, metavar="SECONDS", default=None,
                   help="--distributed: how long to wait for the coordinator and the other processes (default 60)")


def select_devices(spec):
    """``None`` -> default device; ``all`` -> every local device; ``0,2`` -> those local devices."""
    if not spec:
        return None
    import jax
    devices = jax.local_devices()
    if spec == "all":
        return devices
    try:
        ids = [int(x) for x in spec.split(",")]
    except ValueError:
        raise NetspecError(f"--gpu {spec}: give device ids like 0,1 or 'all'") from None
    bad = [i for i in ids if not 0 <= i < len(devices)]
    if bad:
        raise NetspecError(f"--gpu {spec}: no device {bad[0]} (there are {len(devices)}: 0..{len(devices) - 1})")
    return [devices[i] for i in ids]


def run(args):
    path = args.solver or args.solver_file
    if not path:
        raise NetspecError("train: give the solver prototxt (netspec train --solver solver.prototxt)")
    if args.snapshot and args.weights and args.snapshot != LATEST:
        raise NetspecError("train: give --snapshot or --weights, not both")
    limit = parse_memory_limit(args.max_memory)
    if not args.distributed:
        if args.coordinator or args.num_processes is not None or args.process_id is not None:
            raise NetspecError("train: --coordinator/--num-processes/--process-id need --distributed")
        return _run(args, path, limit)
    from .. import distributed
    heartbeat = args.heartbeat_timeout or distributed.DEFAULT_HEARTBEAT_TIMEOUT
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, heartbeat_timeout=heartbeat,
                           init_timeout=args.init_timeout or distributed.DEFAULT_INIT_TIMEOUT)
    if args.gpu and args.gpu != "all":
        distributed.fail(f"--gpu {args.gpu}: with --distributed every process trains on all its devices "
                         "(pick them with CUDA_VISIBLE_DEVICES, or give --gpu all)")
    watchdog = distributed.Watchdog(heartbeat).start() if distributed.active() else None
    try:
        code = _run(args, path, limit, main=distributed.is_main(), group=distributed.active())
    except NetspecError as e:           # on every process alike, or only here: end it now
        distributed.fail(str(e))
    except BaseException as e:          # a collective failed: which process is gone?
        if watchdog is None or isinstance(e, KeyboardInterrupt):
            distributed.fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        watchdog.wait_for_verdict(e)
    if watchdog is not None:
        watchdog.finish()
    return code


def _run(args, path, limit, main=True, group=False):
    """The training itself; ``main``: this process logs, plots and writes snapshots."""
    from ..log import Log
    from ..solver import Solver
    from ..training_log import LogTee
    options = execution_options(args)
    curve = args.curve or (os.path.splitext(args.log)[0] + ".png" if args.log else None)
    log_file = None
    if not main:                        # multi-process: only process 0 logs and plots
        from ..distributed import QuietLog
        curve = None
    if args.log and main:
        try:
            log_file = open(args.log, "w")
        except OSError as e:
            raise NetspecError(f"train: --log {args.log}: cannot write ({e.strerror or e})") from None
    tee = LogTee(files=[log_file] if log_file else [])
    finished = False
    try:
        solver = Solver(path, python_path=args.python_path,
                        devices=None if group else select_devices(args.gpu),
                        weights=args.weights.split(",") if args.weights else None,
                        log=QuietLog() if not main else Log(tee) if (log_file or curve) else None, **options)
        solver.sigint_effect, solver.sighup_effect = args.sigint_effect, args.sighup_effect
        solver.score_classes, solver.score_blob, solver.label_blob = (args.score_classes, args.score_blob,
                                                                      args.label_blob)
        if limit is not None:
            check_memory(solver, *limit)
        solver.solve(resume_file=resume_file(solver, args.snapshot))
        finished = True
    finally:
        if log_file:
            log_file.close()
        if curve:
            _write_curve(tee.lines, args.log or path, curve, raise_errors=finished)
    return 0


LATEST = "latest"


def resume_file(solver, snapshot):
    """``--snapshot``'s .solverstate: as given, or for ``latest`` the newest complete pair's."""
    if snapshot != LATEST:
        return snapshot
    from ..snapshots import latest
    prefix = solver.snapshot_prefix
    found = latest(prefix, log=solver.log)
    if found is None:
        solver.log(f"--snapshot latest: no complete snapshot {prefix}_iter_N.solverstate; "
                   "starting from iteration 0")
        return None
    return found.solverstate


# ---------------------------------------------------------------- --max-memory

_UNITS = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


def parse_memory_limit(text):
    """``--max-memory``: None, ``(bytes, "--max-memory X")`` or ``(device bytes, "the device's memory")``."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return device_memory()
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:([kmgt])(?:i?b)?|b)?\s*", text.lower())
    if not m:
        raise NetspecError(f"--max-memory {text}: give a size like 8G, 512M or 1073741824 (bytes), or 'auto'")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""]), f"--max-memory {text}"


def device_memory():
    """The default device's memory and where the figure comes from: the accelerator's
    ``bytes_limit`` (what XLA may allocate), on a CPU the machine's physical memory."""
    import jax
    device = jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:                   # some backends do not implement it
        pass
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"the memory of device {device.id}, {device.device_kind}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        raise NetspecError("--max-memory auto: cannot tell this device's memory; give a size like 8G") from None
    return int(total), "this machine's physical memory"


def planned_memory(solver):
    """Bytes one device holds while training (an estimate made before compiling):
    ``(total, activations, parameters)``.  Activations are every blob of the train net's
    graph (padded to its size bucket), twice in TRAIN (values and their gradients),
    split over the data-parallel devices; parameters are float32, held 2 + H times (the
    weights, their gradients, and the solver's H history sets: 1 for SGD, 2 for Adam)."""
    plan = solver.net.plan()
    itemsize = 2 if solver.precision == "bf16" else 4
    count = sum(math.prod(shape) for shape in plan.graph.blob_shapes.values())
    devices = max(1, len(solver._devices or ()))
    activations = 2 * count * itemsize // devices
    params = sum(math.prod(shape) for shapes in plan.graph.param_shapes.values() for shape in shapes)
    parameters = params * 4 * (2 + solver._history_sets())
    return activations + parameters, activations, parameters


def check_memory(solver, limit, source):
    total, activations, parameters = planned_memory(solver)
    if total > limit:
        raise NetspecError(f"{solver.path}: training needs about {format_bytes(total)} per device "
                           f"(activations and their gradients {format_bytes(activations)}, parameters, "
                           f"gradients and solver history {format_bytes(parameters)}), more than "
                           f"{format_bytes(limit)} ({source}); lower the batch size or the input size")
    solver.log(f"Planned memory: {format_bytes(total)} per device, within {format_bytes(limit)} ({source})")


def format_bytes(n):
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _write_curve(lines, name, curve, raise_errors):
    """The curve of the captured lines (also after an early stop or a divergence; then quietly)."""
    import sys
    from ..plots import training_curve
    from ..training_log import parse_lines
    log = parse_lines(lines, name)
    if log.empty():
        if raise_errors:
            print(f"netspec train: no iterations were logged (display: 0?); no curve written to {curve}",
                  file=sys.stderr)
        return
    try:
        training_curve(log, curve)
    except NetspecError as e:
        if raise_errors:
            raise
        print(f"netspec train: {e}", file=sys.stderr)
        return
    print(f"netspec train: training curve -> {curve}", file=sys.stderr)
