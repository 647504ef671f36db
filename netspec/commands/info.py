"""``netspec info NET.prototxt``: every layer's top shapes, parameters, multiply-adds and
receptive field (size, stride and first centre per axis, in input pixels).

``--input-shape 1,3,227,227`` (the first input) or ``--input-shape data=1,3,500,500``
sets input sizes; data layers are not run (their tops default to 1x3x500x500).
``--json`` prints a JSON list with one object per layer (``name``, ``type``, ``shape``,
``params``, ``macs``, ``rf_size``, ``rf_stride``, ``rf_offset`` as [h, w] lists, and
``blobs`` for every top).  The rules are in :mod:`netspec.receptive_field`.
"""
import json
import sys

HELP = "shapes, parameters, multiply-adds and receptive fields of every layer of a net"


def add_arguments(p):
    p.add_argument("net", help="the net prototxt (any version; legacy nets are upgraded)")
    p.add_argument("--input-shape", action="append", default=[], metavar="[BLOB=]N,C,H,W",
                   help="shape of an input blob (without BLOB=: the first input); repeatable")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST",
                   help="which layers to keep (default TEST)")
    p.add_argument("--json", action="store_true", help="print a JSON list of per-layer objects")


def run(args):
    from ..layers.base import TEST, TRAIN
    from ..prototxt import read_net
    from ..receptive_field import format_table, info, parse_input_shapes
    shapes = parse_input_shapes(args.input_shape)
    net = read_net(args.net)
    rows, notes = info(net, TRAIN if args.phase == "TRAIN" else TEST, shapes)
    for note in notes:
        print(f"netspec info: note: {note}", file=sys.stderr)
    if args.json:
        print("[\n" + ",\n".join(json.dumps(r.as_dict()) for r in rows) + "\n]")
    else:
        print(format_table(rows))
    return 0
