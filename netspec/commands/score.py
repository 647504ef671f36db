"""``netspec score --model val.prototxt --weights W --classes N``: the FCN paper's four metrics."""
from ..errors import NetspecError
from . import add_execution_arguments, execution_options


def add_arguments(p):
    p.add_argument("--model", required=True, help="a net whose data layer yields image and label (e.g. val.prototxt)")
    p.add_argument("--weights", required=True, help="the .caffemodel to score")
    p.add_argument("--classes", type=int, required=True, help="number of classes (21 for VOC)")
    p.add_argument("--iterations", type=int, required=True, help="images to score (736 for seg11valid)")
    p.add_argument("--score-blob", default="score")
    p.add_argument("--label-blob", default="label")
    p.add_argument("--python-path", action="append", default=[])
    add_execution_arguments(p)


def run(args):
    from .. import Net, TEST
    from ..score import format_scores, net_hist, scores
    if args.iterations < 1 or args.classes < 2:
        raise NetspecError("score: --iterations must be >= 1 and --classes >= 2")
    net = Net(args.model, weights=args.weights, phase=TEST, python_path=args.python_path, prefetch=True,
              **execution_options(args))
    for blob in (args.score_blob, args.label_blob):
        if blob not in net.blobs:
            raise NetspecError(f'score: {args.model} has no blob "{blob}" (use --score-blob/--label-blob)')
    result = scores(net_hist(net, args.iterations, args.classes, args.score_blob, args.label_blob))
    print("\n".join(format_scores(result)))
    return 0
