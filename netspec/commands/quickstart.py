"""``netspec quickstart``: the whole FCN pipeline on data netspec makes itself.

1. writes a synthetic segmentation dataset in PASCAL VOC layout (``netspec.data.synthetic``);
2. trains the slim FCN-8s of ``models/quickstart-fcn8s`` (voc-fcn8s's topology, narrow)
   from scratch with ``netspec.solver`` through its ``VOCSegDataLayer`` Python data layer;
3. scores it on the val split (pixel accuracy, mean accuracy, mean IU, f.w. IU);
4. writes palette PNG predictions + overlays, ``predictions/panels.png`` (image | ground
   truth | prediction | overlay for the first val images), ``training_curve.png``,
   ``confusion_matrix.png`` and ``per_class_iu.png`` (:mod:`netspec.plots`).
Everything lands in ``--out`` (default ``runs/quickstart``).
"""
import importlib.util
import os
import sys
import time

import numpy as np

from ..errors import NetspecError

MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "models", "quickstart-fcn8s")


def add_arguments(p):
    p.add_argument("--out", default=os.path.join("runs", "quickstart"), help="output directory")
    p.add_argument("--iters", type=int, default=None,
                   help="training iterations, batch 1 (default: max_iter of models/quickstart-fcn8s/solver.prototxt)")
    p.add_argument("--train-images", type=int, default=200)
    p.add_argument("--val-images", type=int, default=40)
    p.add_argument("--size", type=int, default=96, help="image side in pixels (one size: one compile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="training and scoring arithmetic (see netspec train --help)")


def load_model_module():
    path = os.path.join(MODEL_DIR, "net.py")
    if not os.path.exists(path):
        raise NetspecError(f"quickstart: {path} not found; run from a netspec source checkout "
                           "(pip install -e .)")
    spec = importlib.util.spec_from_file_location("quickstart_fcn8s_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point_data_layer(net_param, data_dir, mean):
    for layer in net_param.layer:
        if layer.type == "Python" and layer.python_param.layer == "VOCSegDataLayer":
            params = eval(layer.python_param.param_str, {"__builtins__": {}})  # a dict literal we wrote
            params.update(voc_dir=data_dir, mean=tuple(float(m) for m in mean))
            layer.python_param.param_str = repr(params)
    return net_param


def make_solver_param(model, data_dir, mean, iters, prefix, seed):
    from ..proto import caffe_pb2
    from ..prototxt import parse_solver
    solver_file = os.path.join(MODEL_DIR, "solver.prototxt")
    sp = parse_solver(solver_file) if os.path.exists(solver_file) else caffe_pb2.SolverParameter(
        type="Adam", base_lr=1e-3, momentum=0.9, momentum2=0.999, lr_policy="fixed", display=20)
    for field in ("net", "train_net", "test_net", "net_param", "train_net_param", "test_net_param",
                  "test_iter", "test_interval"):
        sp.ClearField(field)
    sp.train_net_param.CopyFrom(_point_data_layer(model.fcn("train"), data_dir, mean))
    if iters is not None:
        sp.max_iter = iters
    sp.display = max(1, min(sp.display or 20, sp.max_iter // 10 or 1))
    sp.snapshot = 0
    sp.snapshot_after_train = True
    sp.snapshot_prefix = prefix
    sp.random_seed = seed
    return sp


def run(args):
    from .. import Net, TEST
    from ..data.synthetic import make_dataset
    from ..prototxt import write_net, write_solver
    from ..score import format_scores, net_hist, scores
    from ..plots import prediction_panels, score_figures, training_curve
    from ..solver import Log, Solver
    from ..training_log import LogTee, parse_log
    from .infer import overlay, palette_image

    start = time.time()
    out = os.path.abspath(args.out)
    data_dir = os.path.join(out, "data")
    os.makedirs(out, exist_ok=True)
    print(f"[1/4] writing a synthetic VOC-layout dataset to {data_dir}", flush=True)
    class_names, mean = make_dataset(data_dir, n_train=args.train_images, n_val=args.val_images,
                                     size=(args.size, args.size), seed=args.seed)
    n_cl = len(class_names)
    model = load_model_module()
    if model.NUM_CLASSES != n_cl:
        raise NetspecError(f"quickstart: the model has {model.NUM_CLASSES} classes, the dataset {n_cl}")

    sp = make_solver_param(model, data_dir, mean, args.iters, os.path.join(out, "quickstart-fcn8s"), args.seed)
    print(f"[2/4] training the slim FCN-8s for {sp.max_iter} iterations (log: {out}/train.log)", flush=True)
    write_solver(os.path.join(out, "solver.prototxt"), sp)
    val_net_param = _point_data_layer(model.fcn("val"), data_dir, mean)
    write_net(os.path.join(out, "val.prototxt"), val_net_param)
    with open(os.path.join(out, "train.log"), "w") as log_file:
        solver = Solver(sp, log=Log(LogTee(sys.stderr, [log_file])), precision=args.precision)
        solver.solve()
    training_curve(parse_log(os.path.join(out, "train.log")), os.path.join(out, "training_curve.png"),
                   title=f"quickstart: slim FCN-8s on {args.train_images} synthetic images, {solver.iter} iterations")
    weights = f"{solver._snapshot_prefix()}_iter_{solver.iter}.caffemodel"

    print(f"[3/4] scoring on the {args.val_images} val images", flush=True)
    net = Net(val_net_param, weights=weights, phase=TEST, precision=args.precision)
    hist = net_hist(net, args.val_images, n_cl)
    result = scores(hist)
    score_figures(hist, list(class_names), out)
    report = format_scores(result, list(class_names))
    with open(os.path.join(out, "scores.txt"), "w") as f:
        f.write("\n".join(report) + "\n")

    print(f"[4/4] writing predictions to {out}/predictions", flush=True)
    pred_dir = os.path.join(out, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
    panels = []
    for i in range(min(8, args.val_images)):
        net.forward()
        label = net.blobs["score"].data[0].argmax(0)
        bgr = net.blobs["data"].data[0].transpose(1, 2, 0) + np.asarray(mean, np.float32)
        rgb = bgr[:, :, ::-1].clip(0, 255)
        palette_image(label).save(os.path.join(pred_dir, f"val_{i:02d}.png"))
        overlay(rgb, label).save(os.path.join(pred_dir, f"val_{i:02d}_overlay.jpg"), quality=92)
        if i < 4:
            truth = np.array(net.blobs["label"].data[0]).reshape(label.shape) if "label" in net.blobs else None
            panels.append({"image": rgb, "label": truth, "prediction": label, "title": f"val_{i:02d}"})
    prediction_panels(panels, list(class_names), None, os.path.join(pred_dir, "panels.png"))
    print("\n".join(report))
    print(f"mean IU {100 * result['mean_iu']:.1f} on {args.val_images} val images after {solver.iter} "
          f"iterations ({time.time() - start:.0f} s); weights {weights}, curve {out}/training_curve.png, "
          f"panels {pred_dir}/panels.png")
    return 0
