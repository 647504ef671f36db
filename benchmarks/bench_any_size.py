"""Whole-image training at any image size: bucketed vs exact shapes, as `netspec train` runs it.

A seeded VOC-like image stream (longer side 500, shorter side uniform in [250, 500],
either orientation; ``--images`` of them, the number of distinct sizes is printed) is
written as a synthetic dataset in PASCAL VOC layout and read by the FCN reference's
``VOCSegDataLayer``.  voc-fcn8s's own train net (Dropout active) and val net, at
1/``--width`` of its channel widths (1 = the real net; default 8 on CPU, 1 on GPU),
train for ``--steps`` iterations with FCN's solver (SGD, momentum 0.99, weight decay
5e-4, batch 1, whole images) through ``Solver.step``, the loop of ``netspec train``,
then the TEST net scores ``--val`` images.  Each mode runs in a fresh process with the
persistent compile cache off, so every compile is paid:

- ``bucketed``: the default (each side rounded up to a multiple of 32);
- ``exact``: ``buckets off``, one executable per distinct input size.

Reported per mode: training executables compiled, compile seconds, wall seconds,
seconds per step without compiles, images/s over the whole run; the same for the val
pass.

  python benchmarks/bench_any_size.py                      # CPU: width 1/8, 40 steps
  python benchmarks/bench_any_size.py --device gpu --steps 300 --val 100
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODES = {"bucketed": "auto", "exact": "off"}


def write_dataset(directory, images, val, seed):
    from netspec.data.synthetic import make_dataset, voc_like_sizes
    sizes = voc_like_sizes(images + val, seed=seed)
    make_dataset(directory, n_train=images, n_val=val, num_classes=9, seed=seed, sizes=sizes)
    return sizes


def slim_net(path, data_dir, split, width):
    """voc-fcn8s's prototxt reading the synthetic dataset, its trunk at 1/width of the channels."""
    from netspec.prototxt import read_net
    net = read_net(path)
    data = net.layer[0]
    data.python_param.module = "voc_layers"
    data.python_param.layer = "VOCSegDataLayer"
    data.python_param.param_str = str(dict(voc_dir=data_dir, split=split, seed=1337,
                                           mean=(104.00699, 116.66877, 122.67892)))
    for layer in net.layer:
        cp = layer.convolution_param
        if layer.type == "Convolution" and not layer.name.startswith("score"):
            cp.num_output = max(1, cp.num_output // width)
            cp.weight_filler.type = "msra"
        elif layer.type == "Convolution":
            cp.weight_filler.type, cp.weight_filler.std = "gaussian", 0.01
        elif layer.type == "Deconvolution":
            cp.weight_filler.type = "bilinear"
    return net


def run_mode(args):
    """One mode in this process; prints one JSON line."""
    import jax
    from netspec import Net, TEST
    from netspec.compilation import TOTALS, disable_cache
    from netspec.log import Log
    from netspec.proto import caffe_pb2
    from netspec.prototxt import write_net
    from netspec.solver import Solver
    disable_cache()
    if args.device == "gpu":
        import netspec
        netspec.set_mode_gpu()
    models = os.path.join(ROOT, "models", "voc-fcn8s")
    work = args.workdir
    train = slim_net(os.path.join(models, "train.prototxt"), args.data, "train", args.width)
    val = slim_net(os.path.join(models, "val.prototxt"), args.data, "val", args.width)
    write_net(os.path.join(work, "train.prototxt"), train)
    write_net(os.path.join(work, "val.prototxt"), val)
    sp = caffe_pb2.SolverParameter(train_net=os.path.join(work, "train.prototxt"), base_lr=1e-10,
                                   lr_policy="fixed", momentum=0.99, weight_decay=5e-4,
                                   max_iter=args.steps, display=0, random_seed=1)
    quiet = Log(open(os.devnull, "w"))
    solver = Solver(sp, buckets=MODES[args.only], log=quiet)
    before = TOTALS.snapshot()
    start = time.perf_counter()
    solver.step(args.steps)
    train_wall = time.perf_counter() - start
    compiles, compile_s = TOTALS.count - before[0], TOTALS.seconds - before[1]

    net = Net(os.path.join(work, "val.prototxt"), phase=TEST, buckets=MODES[args.only], log=quiet,
              prefetch=True)
    net.share_with(solver.net)
    before = TOTALS.snapshot()
    start = time.perf_counter()
    for _ in range(args.val):
        net.forward()
    val_wall = time.perf_counter() - start
    val_compiles, val_compile_s = TOTALS.count - before[0], TOTALS.seconds - before[1]
    row = {
        "mode": args.only, "steps": args.steps, "width": args.width, "device": str(jax.devices()[0]),
        "train_compiles": compiles, "train_compile_s": round(compile_s, 2),
        "train_wall_s": round(train_wall, 2),
        "step_s": round((train_wall - compile_s) / args.steps, 4),
        "train_images_per_s": round(args.steps / train_wall, 3),
        "val_images": args.val, "val_compiles": val_compiles, "val_compile_s": round(val_compile_s, 2),
        "val_wall_s": round(val_wall, 2),
        "val_s_per_image": round((val_wall - val_compile_s) / max(1, args.val), 4),
        "val_images_per_s": round(args.val / val_wall, 3),
    }
    print(json.dumps(row), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300, help="training images in the stream")
    ap.add_argument("--val", type=int, default=20, help="val images scored by the TEST net")
    ap.add_argument("--steps", type=int, default=40, help="training iterations")
    ap.add_argument("--width", type=int, help="channel divisor (default 8 on CPU, 1 on GPU)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--modes", default="bucketed,exact")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="reuse (or write) the dataset here")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--only", choices=sorted(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.width is None:
        args.width = 1 if args.device == "gpu" else 8
    if args.only:
        return run_mode(args)

    with tempfile.TemporaryDirectory() as work:
        data = args.data or os.path.join(work, "data")
        if not os.path.exists(os.path.join(data, "classes.txt")):
            sizes = write_dataset(data, args.images, args.val, args.seed)
        else:
            from netspec.data.synthetic import voc_like_sizes
            sizes = voc_like_sizes(args.images + args.val, seed=args.seed)
        train_sizes = sizes[:args.images]
        from netspec.buckets import round_side
        buckets = {tuple(round_side(s, ("multiple", 32)) for s in hw) for hw in train_sizes}
        info = {"machine": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                "python": platform.python_version(), "images": args.images,
                "distinct_sizes": len(set(train_sizes)), "distinct_buckets_of_32": len(buckets)}
        print(json.dumps(info), flush=True)
        rows = []
        for mode in args.modes.split(","):
            command = [sys.executable, os.path.abspath(__file__), "--only", mode, "--workdir", work,
                       "--data", data, "--steps", str(args.steps), "--val", str(args.val),
                       "--width", str(args.width), "--device", args.device]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
