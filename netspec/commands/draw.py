"""``netspec draw NET.prototxt OUT.(svg|png|pdf|dot)``: a drawing of the net (Caffe's ``draw_net.py``).

Rendering svg/png/pdf needs Graphviz's ``dot``; ``.dot`` writes the DOT source and needs nothing."""
import os

from ..errors import NetspecError

FORMATS = ("svg", "png", "pdf", "dot", "gv", "jpg", "jpeg", "ps", "eps")


def add_arguments(p):
    p.add_argument("net", help="the net prototxt (any version; legacy nets are upgraded)")
    p.add_argument("out", help="the drawing: .svg, .png, .pdf (these need Graphviz) or .dot (DOT source)")
    p.add_argument("--rankdir", choices=("LR", "TB", "BT", "RL"), default="LR",
                   help="layout direction: LR (left to right, default), TB (top to bottom), BT, RL")
    p.add_argument("--phase", choices=("TRAIN", "TEST", "ALL"), default="ALL",
                   help="draw the layers of this phase only (default: ALL layers)")
    p.add_argument("--display-lrm", "--display_lrm", dest="display_lrm", action="store_true",
                   help="show the learning-rate multipliers of Convolution, Deconvolution and InnerProduct layers")


def run(args):
    from ..draw import draw_net
    from ..prototxt import read_net
    ext = os.path.splitext(args.out)[1].lstrip(".").lower()
    if ext not in FORMATS:
        raise NetspecError(f"draw: {args.out}: unknown drawing format {ext or '(no extension)'!r}; "
                           f"use one of .{', .'.join(FORMATS)}")
    net = read_net(args.net)
    data = draw_net(net, args.rankdir, ext, None if args.phase == "ALL" else args.phase, args.display_lrm)
    try:
        with open(args.out, "wb") as f:
            f.write(data)
    except OSError as e:
        raise NetspecError(f"draw: cannot write {args.out}: {e.strerror}") from None
    print(f"Drawing net to {args.out}")
    return 0
