"""``netspec test --model M --weights W --iterations N`` (``caffe test``): mean outputs over N passes."""
import numpy as np

from ..errors import NetspecError
from . import add_execution_arguments, execution_options
from ..solver import Log, _g


def add_arguments(p):
    p.add_argument("--model", required=True, help="the net prototxt")
    p.add_argument("--weights", help="comma-separated .caffemodel files")
    p.add_argument("--iterations", type=int, default=50, help="number of forward passes (default 50)")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST")
    p.add_argument("--python-path", action="append", default=[])
    p.add_argument("--gpu", help="device id to run on")
    add_execution_arguments(p)


def run(args):
    from .. import Net, TEST, TRAIN, set_device
    if args.gpu:
        set_device(int(args.gpu.split(",")[0]))
    if args.iterations < 1:
        raise NetspecError("test: --iterations must be >= 1")
    log = Log()
    net = Net(args.model, weights=args.weights, phase=TEST if args.phase == "TEST" else TRAIN,
              python_path=args.python_path, log=log, prefetch=True, **execution_options(args))
    weights = net.blob_loss_weights
    sums, loss = {}, 0.0
    for i in range(args.iterations):
        out = net.forward()
        loss += net.loss
        for name, value in out.items():
            for k, v in enumerate(np.asarray(value).ravel()):
                log(f"Batch {i}, {name} = {_g(float(v))}")
                sums[(name, k)] = sums.get((name, k), 0.0) + float(v)
    log(f"Loss: {_g(loss / args.iterations)}")
    for (name, k), total in sums.items():
        w = weights.get(name, 0.0)
        mean = total / args.iterations
        extra = f" (* {_g(w)} = {_g(w * mean)} loss)" if w else ""
        log(f"{name} = {_g(mean)}{extra}")
    return 0
