"""``netspec train --solver S [--weights W] [--snapshot STATE] [--gpu all]`` (``caffe train``).

The Caffe-format log goes to stderr as Caffe's does; ``--log FILE`` also writes it to
FILE and then draws the training curve into FILE's name with ``.png``; ``--curve PNG``
draws it anywhere (without ``--log`` too, from the lines kept in memory).
"""
import os

from ..errors import NetspecError
from . import add_execution_arguments, execution_options


def add_arguments(p):
    p.add_argument("solver_file", nargs="?", help="the solver prototxt (or use --solver)")
    p.add_argument("--solver", help="the solver prototxt")
    p.add_argument("--weights", help="comma-separated .caffemodel files to initialize from (fine-tuning)")
    p.add_argument("--snapshot", help="a .solverstate to resume from")
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
                   help="call jax.distributed.initialize() first (multi-host; see README)")


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
    if args.snapshot and args.weights:
        raise NetspecError("train: give --snapshot or --weights, not both")
    if args.distributed:
        import jax
        jax.distributed.initialize()
    from ..log import Log
    from ..solver import Solver
    from ..training_log import LogTee
    options = execution_options(args)
    curve = args.curve or (os.path.splitext(args.log)[0] + ".png" if args.log else None)
    log_file = None
    if args.log:
        try:
            log_file = open(args.log, "w")
        except OSError as e:
            raise NetspecError(f"train: --log {args.log}: cannot write ({e.strerror or e})") from None
    tee = LogTee(files=[log_file] if log_file else [])
    finished = False
    try:
        solver = Solver(path, python_path=args.python_path, devices=select_devices(args.gpu),
                        weights=args.weights.split(",") if args.weights else None,
                        log=Log(tee) if (log_file or curve) else None, **options)
        solver.sigint_effect, solver.sighup_effect = args.sigint_effect, args.sighup_effect
        solver.score_classes, solver.score_blob, solver.label_blob = (args.score_classes, args.score_blob,
                                                                      args.label_blob)
        solver.solve(resume_file=args.snapshot)
        finished = True
    finally:
        if log_file:
            log_file.close()
        if curve:
            _write_curve(tee.lines, args.log or path, curve, raise_errors=finished)
    return 0


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
