"""``netspec keypoints flow|classify|predict``: the thesis's ch. 2 keypoint experiments.

- ``flow``: keypoint transfer by convnet flow (Sec. 2.2, Table 2.2): rows per layer
  ("<layer> flow"), the HOG-like baseline's flow and "NN transfer" (the neighbours'
  keypoints copied unwarped); PCK per category at alpha = 0.1 and the mean at 0.1,
  0.05, 0.025.
- ``classify``: keypoint classification (Sec. 2.3, Table 2.3): accuracy per category
  and layer, and the HOG-like baseline.
- ``predict``: keypoint prediction (Sec. 2.4, Table 2.4): "<layer>", "<layer>+prior",
  "hog", "hog+prior" and the prior alone ("NN prior"); PCK as for flow.

The dataset is a directory of poselets-format XML annotations
(``netspec.keypoints.annotations``); without ``--data`` a synthetic one is generated
(``netspec.keypoints.synthetic``).  Without ``--model`` a small AlexNet-shaped net with
random weights is used (``netspec.keypoints.tiny_net``): the command runs end to end,
but the convnet's numbers are weak.  Nearest neighbours (flow sources, the prior) come
from ``--global-layer`` (pool5) of the box, by cosine similarity, for every row.
"""
import argparse
import os
import time


from ..errors import NetspecError
from . import add_execution_arguments, execution_options

DEFAULT_LAYERS = {"flow": "conv4", "classify": "conv1,conv2,conv3,conv4,conv5", "predict": "conv5"}


def _common(p):
    p.add_argument("--model", help="deploy prototxt with one image input (default: a small "
                                   "randomly initialised AlexNet-shaped net)")
    p.add_argument("--weights", help="caffemodel(s) for --model, comma separated")
    p.add_argument("--data", help="dataset directory (JPEGImages/, Annotations_Keypoints/<category>/*.xml, "
                                  "ImageSets/Keypoints/train.txt, val.txt); default: generate the "
                                  "synthetic set under --out")
    p.add_argument("--layers", help="comma-separated blobs to evaluate (default: conv4 for flow, "
                                    "conv1-conv5 for classify, conv5 for predict)")
    p.add_argument("--global-layer", default="pool5",
                   help="blob whose box features pick nearest neighbours by cosine similarity "
                        "(the thesis: fc7 for flow, pool5 for the prior; default pool5)")
    p.add_argument("--mean", default="104.00698793,116.66876762,122.67891434", help="B,G,R mean to subtract")
    p.add_argument("--baseline", choices=("hog", "none"), default="hog",
                   help="hand-engineered baseline rows: a HOG-like gradient-histogram feature "
                        "(stand-in for SIFT) or none")
    p.add_argument("--hog-stride", type=int, default=8, help="cell stride of the HOG-like baseline")
    p.add_argument("--oracle", action="store_true",
                   help="also an 'oracle' row from the synthetic set's part labels (an upper bound)")
    p.add_argument("--out", default=os.path.join("runs", "keypoints"),
                   help="where the synthetic data and default net are written")
    p.add_argument("--train", type=int, default=40, help="synthetic images in train (default 40)")
    p.add_argument("--val", type=int, default=20, help="synthetic images in val (default 20)")
    p.add_argument("--image-size", type=int, default=112, help="synthetic image side (default 112)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    add_execution_arguments(p)


def add_arguments(p):
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    f = sub.add_parser("flow", help="keypoint transfer by convnet flow (Table 2.2)")
    _common(f)
    f.add_argument("--size", type=int, default=64, help="boxes are rescaled to SIZE x SIZE (default 64)")
    f.add_argument("--beta", default="auto",
                   help="smoothness weight (displacements in grid cells), or auto: 0.05 x the median "
                        "feature distance at equal positions (default)")
    f.add_argument("--radius", type=int, default=3, help="displacements range over [-R, R] cells per axis")
    f.add_argument("--iterations", type=int, help="BP iterations (default: grid height + width)")
    f.add_argument("--neighbours", type=int, default=25, help="nearest neighbours warped per target")
    f.add_argument("--top", type=int, default=5, help="median over this many lowest-deformation neighbours")
    f.add_argument("--order", choices=("deformation", "data", "energy"), default="deformation",
                   help="how the warped neighbours are ordered (thesis: deformation)")
    c = sub.add_parser("classify", help="keypoint classification with linear SVMs (Table 2.3)")
    _common(c)
    c.add_argument("--C", type=float, default=1.0, help="LinearSVC C (features scaled to unit mean norm)")
    r = sub.add_parser("predict", help="keypoint prediction with SVM part detectors and a prior (Table 2.4)")
    _common(r)
    r.add_argument("--size", type=int, default=500, help="boxes are rescaled to SIZE x SIZE (thesis: 500)")
    r.add_argument("--C", type=float, default=1.0, help="LinearSVC C (features scaled to unit mean norm)")
    r.add_argument("--rounds", type=int, default=2, help="hard negative mining rounds")
    r.add_argument("--positives", type=int, default=10, help="closest cells per keypoint taken as positives")
    r.add_argument("--eta", type=float, default=0.1, help="prior weight in s^(1-eta) p^eta")
    r.add_argument("--sigma", type=float, help="prior std in box pixels (default 22 * SIZE / 500)")


def _table(title, rows, categories, alphas=True):
    """``rows``: [(label, {category: value at alpha .1}, [mean at each alpha] or mean)]."""
    width = max([len(r[0]) for r in rows] + [12])
    cols = [c[:9] for c in categories]
    head = f"{'':{width}}  " + " ".join(f"{c:>9}" for c in cols)
    head += "  |  " + ("a=0.1 a=0.05 a=0.025" if alphas else "  mean")
    lines = [title, head]
    for label, per_category, means in rows:
        line = f"{label:{width}}  " + " ".join(
            f"{100 * per_category[c]:9.1f}" if c in per_category else f"{'-':>9}" for c in categories)
        if alphas:
            line += "  |  " + f"{100 * means[0]:5.1f} {100 * means[1]:6.1f} {100 * means[2]:7.2f}"
        else:
            line += "  |  " + f"{100 * means:6.1f}"
        lines.append(line)
    print("\n".join(lines))


def _pck_row(label, val, predictions):
    from ..keypoints.pck import ALPHAS, pck, pck_records
    means, per_category = [], None
    for alpha in ALPHAS:
        mean, per_cat, _ = pck(pck_records(val, predictions), alpha)
        means.append(mean)
        per_category = per_cat if per_category is None else per_category
    return label, per_category, means


def _setup(args):
    from .. import Net, TEST
    from ..keypoints.annotations import KeypointDataset
    from ..keypoints.extract import HogExtractor, NetExtractor, OracleExtractor
    from ..keypoints.tiny_net import write_tiny_net
    try:
        mean = [float(v) for v in args.mean.split(",")]
        assert len(mean) == 3
    except (ValueError, AssertionError):
        raise NetspecError(f"keypoints: --mean {args.mean}: give three numbers B,G,R") from None
    data = args.data
    if data is None:
        from ..keypoints.synthetic import make_dataset
        data = os.path.join(args.out, "data")
        make_dataset(data, args.train, args.val, size=args.image_size, seed=args.seed)
        print(f"synthetic keypoint data ({args.train} train + {args.val} val images) -> {data}")
    dataset = KeypointDataset(data)
    train, val = dataset.split("train"), dataset.split("val")
    if not train or not val:
        raise NetspecError(f"{data}: the train and val splits must both hold instances "
                           f"(train {len(train)}, val {len(val)})")
    model = args.model
    if model is None:
        os.makedirs(args.out, exist_ok=True)
        model = write_tiny_net(os.path.join(args.out, "tiny_alexnet.prototxt"))
    net = Net(model, weights=args.weights, phase=TEST, **execution_options(args))
    layers = [s.strip() for s in (args.layers or DEFAULT_LAYERS[args.experiment]).split(",") if s.strip()]
    wanted = layers + ([args.global_layer] if args.global_layer not in layers else [])
    network = NetExtractor(dataset, net, wanted, mean)        # one forward pass per image for all layers
    extractors = [(layer, network) for layer in layers]
    baselines = []
    if args.baseline == "hog":
        baselines.append(("hog", HogExtractor(dataset, args.hog_stride)))
    if args.oracle:
        if not os.path.isdir(os.path.join(data, "PartLabels")):
            raise NetspecError(f"keypoints: --oracle needs {data}/PartLabels (the synthetic set's)")
        baselines.append(("oracle", OracleExtractor(dataset, args.hog_stride)))
    return dataset, train, val, network, extractors, baselines


def run(args):
    from ..keypoints.flow import cosine_neighbours, flow_experiment
    from ..keypoints.svm import classify_experiment, predict_experiment
    start = time.time()
    dataset, train, val, network, extractors, baselines = _setup(args)
    categories = sorted({i.category for i in val})
    print(f"{len(train)} train and {len(val)} val instances; categories: {', '.join(categories)}")
    if args.experiment == "classify":
        rows = []
        for label, extractor in extractors + baselines:
            mean, per_category = classify_experiment(extractor, label, train, val, args.C)
            rows.append((label, per_category, mean))
        _table("keypoint classification accuracy (%) on val (Table 2.3)", rows, categories, alphas=False)
    elif args.experiment == "flow":
        size = args.size
        glob = {id(i): network.global_feature(i, size, args.global_layer) for i in train + val}
        neighbours = []
        for target in val:
            same = [j for j, s in enumerate(train) if s.category == target.category]
            order = cosine_neighbours(glob[id(target)], [glob[id(train[j])] for j in same], args.neighbours)
            neighbours.append([same[k] for k in order])
        beta = None if args.beta == "auto" else float(args.beta)
        rows = []
        for label, extractor in extractors + baselines:
            predictions, used = flow_experiment(extractor, label, val, train, neighbours, size, beta,
                                                args.radius, args.top, args.iterations, args.order)
            rows.append(_pck_row(f"{label} flow", val, predictions))
            print(f"  {label} flow: beta {used:.4g}", flush=True)
        predictions, _ = flow_experiment(None, None, val, train, neighbours, size, top=args.top, no_flow=True)
        rows.append(_pck_row("NN transfer", val, predictions))
        _table("keypoint transfer PCK (%) on val: per category at alpha 0.1 (Table 2.2)", rows, categories)
    else:
        size = args.size
        glob = lambda instance: network.global_feature(instance, size, args.global_layer)
        rows, prior = [], None
        for label, extractor in extractors + baselines:
            out = predict_experiment(extractor, label, train, val, size, args.C, args.positives, args.rounds,
                                     eta=args.eta, sigma=args.sigma, global_feature=glob, seed=args.seed)
            rows.append(_pck_row(label, val, out["svm"]))
            rows.append(_pck_row(f"{label}+prior", val, out["svm+prior"]))
            prior = out["prior"]
        rows.append(_pck_row("NN prior", val, prior))
        _table("keypoint prediction PCK (%) on val: per category at alpha 0.1 (Table 2.4)", rows, categories)
    print(f"done in {time.time() - start:.1f} s")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="netspec keypoints", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
