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
    p.add_argument("--panels", metavar="PNG",
                   help="also draw image | ground truth | prediction | overlay for the first images")
    p.add_argument("--panels-rows", type=int, default=8, metavar="N", help="images in --panels (default 8)")
    p.add_argument("--data-blob", default="data", help="the image blob drawn in --panels")
    p.add_argument("--mean", metavar="B,G,R",
                   help="the mean the data layer subtracted, added back for --panels (default: the data "
                        "layer's own: python_param mean or transform_param mean_value)")
    add_execution_arguments(p)


def data_layer_mean(net_param):
    """The BGR mean a net's data layer subtracts: a Python data layer's ``mean`` in its
    param_str, or Caffe's ``transform_param.mean_value``; zeros when neither is given."""
    import ast
    for layer in net_param.layer:
        if layer.type == "Python" and not layer.bottom:
            try:
                params = ast.literal_eval(layer.python_param.param_str or "{}")
            except (ValueError, SyntaxError):
                continue
            if isinstance(params, dict) and "mean" in params:
                return [float(m) for m in params["mean"]]
        if layer.transform_param.mean_value:
            return [float(m) for m in layer.transform_param.mean_value]
    return [0.0, 0.0, 0.0]


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
    rows = []
    if args.panels:
        import numpy as np
        if args.panels_rows < 1:
            raise NetspecError("score: --panels-rows must be >= 1")
        if args.data_blob not in net.blobs:
            raise NetspecError(f'score: {args.model} has no blob "{args.data_blob}" to draw (use --data-blob)')
        try:
            mean = ([float(m) for m in args.mean.split(",")] if args.mean else data_layer_mean(net.to_proto()))
        except ValueError:
            raise NetspecError(f'score: --mean "{args.mean}": give B,G,R numbers') from None

        def keep(i, net, prediction):
            if i < args.panels_rows:
                bgr = net.blobs[args.data_blob].data[0].transpose(1, 2, 0) + np.asarray(mean, np.float32)
                rows.append({"image": bgr[:, :, ::-1].clip(0, 255), "label": net.blobs[args.label_blob].data[0],
                             "prediction": prediction, "title": f"image {i}"})
    hist = net_hist(net, args.iterations, args.classes, args.score_blob, args.label_blob,
                    after_pass=keep if args.panels else None)
    result = scores(hist)
    print("\n".join(format_scores(result, class_names)))
    if rows:
        from ..plots import prediction_panels
        prediction_panels(rows, class_names, path=args.panels)
        print(f"panels -> {args.panels}")
    if args.figures:
        from ..plots import score_figures
        for path in score_figures(hist, class_names, args.figures):
            print(f"figure -> {path}")
    return 0
