"""``netspec plot LOG [-o curve.png]``: training curves from a Caffe-format training log.

Reads netspec's logs (``netspec train 2>&1 | tee train.log``, ``netspec train --log``,
quickstart's ``train.log``) and BVLC Caffe's glog output alike (see
:mod:`netspec.training_log`): train loss raw and smoothed, test losses, test outputs
(accuracy, mean IU, ...) and the learning rate, as one PNG (default: LOG with ``.png``).
"""
import os

from ..errors import NetspecError


def add_arguments(p):
    p.add_argument("log", help="a netspec or Caffe training log")
    p.add_argument("-o", "--out", help="the PNG to write (default: LOG's name with .png)")
    p.add_argument("--title", help="the figure's title (default: the log's file name and last iteration)")
    p.add_argument("--csv", metavar="PREFIX",
                   help="also write the parsed tables as PREFIX.train.csv, PREFIX.test<k>.csv, ...")


def default_output(log_path):
    return os.path.splitext(log_path)[0] + ".png"


def write_csv(log, prefix):
    """The tables of a :class:`TrainingLog` as CSV files (like Caffe's parse_log.py); return the paths."""
    import csv
    tables = {"train": log.train, "train_outputs": log.train_outputs}
    for k in log.test_nets:
        tables[f"test{k}"] = log.test.get(k, [])
        tables[f"test{k}_outputs"] = log.test_outputs.get(k, [])
        tables[f"test{k}_segmentation"] = log.segmentation.get(k, [])
    written = []
    for name, rows in tables.items():
        if not rows:
            continue
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        path = f"{prefix}.{name}.csv"
        try:
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, columns, restval="")
                writer.writeheader()
                writer.writerows(rows)
        except OSError as e:
            raise NetspecError(f"{path}: cannot write ({e.strerror or e})") from None
        written.append(path)
    return written


def run(args):
    from ..plots import training_curve
    from ..training_log import parse_log
    log = parse_log(args.log)
    out = args.out or default_output(args.log)
    if os.path.abspath(out) == os.path.abspath(args.log):
        raise NetspecError(f"plot: {out} is the log itself; give -o curve.png")
    training_curve(log, out, title=args.title)
    last = max([r["iteration"] for r in log.train] or [0])
    print(f"{args.log}: {len(log.train)} train rows (last iteration {last}), "
          f"test nets {log.test_nets or 'none'} -> {out}")
    if args.csv:
        for path in write_csv(log, args.csv):
            print(f"  {path}")
    return 0
