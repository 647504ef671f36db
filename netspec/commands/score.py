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
    p.add_argument("--figures", metavar="DIR",
                   help="also write confusion_matrix.png and per_class_iu.png into DIR")
    p.add_argument("--class-names", metavar="FILE",
                   help="class names, one a line, for the per-class lines and figures "
                        "(default: PASCAL VOC's for up to 21 classes)")
    add_execution_arguments(p)


def run(args):
    from .. import Net, TEST
    from ..score import format_scores, net_hist, scores
    if args.iterations < 1 or args.classes < 2:
        raise NetspecError("score: --iterations must be >= 1 and --classes >= 2")
    class_names = None
    if args.class_names:
        from ..plots import read_class_names
        class_names = read_class_names(args.class_names)
        if len(class_names) != args.classes:
            raise NetspecError(f"score: {args.class_names} names {len(class_names)} classes, --classes is "
                               f"{args.classes}")
    net = Net(args.model, weights=args.weights, phase=TEST, python_path=args.python_path, prefetch=True,
              **execution_options(args))
    for blob in (args.score_blob, args.label_blob):
        if blob not in net.blobs:
            raise NetspecError(f'score: {args.model} has no blob "{blob}" (use --score-blob/--label-blob)')
    hist = net_hist(net, args.iterations, args.classes, args.score_blob, args.label_blob)
    result = scores(hist)
    print("\n".join(format_scores(result, class_names)))
    if args.figures:
        from ..plots import score_figures
        for path in score_figures(hist, class_names, args.figures):
            print(f"figure -> {path}")
    return 0
