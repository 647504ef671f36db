"""``netspec features NET WEIGHTS --layers conv4,conv5 IMAGE... -o out.npz``: dense features.

Each image runs at its own size through the net cut after the deepest requested layer
(so classification nets such as AlexNet take any size).  The npz holds, per image and
layer, ``<image stem>/<layer>`` (C, h, w) and ``<image stem>/<layer>/centres_y`` (h,),
``.../centres_x`` (w,): the image coordinates of each feature's receptive-field centre
(:mod:`netspec.features`).
"""
import os

from ..errors import NetspecError
from . import add_execution_arguments, execution_options

HELP = "dense features of whole images at chosen layers, with each feature's rf centre (npz)"
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


def add_arguments(p):
    p.add_argument("net", help="a deploy prototxt with an Input blob")
    p.add_argument("weights", help="the .caffemodel")
    p.add_argument("images", nargs="+", help="images (any size; each runs at its own size)")
    p.add_argument("--layers", required=True, help="comma-separated layer names, e.g. conv4,conv5")
    p.add_argument("-o", "--out", required=True, help="the .npz to write")
    p.add_argument("--mean", default=",".join(f"{m:g}" for m in MEAN_BGR),
                   help="B,G,R mean to subtract (default: the ILSVRC/VOC mean 104,117,123)")
    p.add_argument("--input-blob", default=None, help="the input blob (default: the net's first input)")
    add_execution_arguments(p)


def run(args):
    import numpy as np
    from .. import Net, TEST
    from ..features import dense_features, load_image, truncated_net
    from ..prototxt import read_net
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if not layers:
        raise NetspecError("features: --layers names no layer")
    try:
        mean = [float(x) for x in args.mean.split(",")]
        if len(mean) != 3:
            raise ValueError
    except ValueError:
        raise NetspecError(f"features: --mean {args.mean}: give three numbers B,G,R") from None
    stems = [os.path.splitext(os.path.basename(path))[0] for path in args.images]
    seen = set()
    for stem, path in zip(stems, args.images):
        if stem in seen:
            raise NetspecError(f"features: two images are named {stem!r} ({path}); npz keys use the file stem")
        seen.add(stem)
    net_param = truncated_net(read_net(args.net), layers, TEST)
    net = Net(net_param, weights=args.weights, phase=TEST, **execution_options(args))
    arrays = {}
    for stem, path in zip(stems, args.images):
        result = dense_features(net, load_image(path, mean), layers, args.input_blob)
        for layer, (features, ys, xs) in result.items():
            arrays[f"{stem}/{layer}"] = features
            arrays[f"{stem}/{layer}/centres_y"] = ys
            arrays[f"{stem}/{layer}/centres_x"] = xs
        shapes = ", ".join(f"{layer} {'x'.join(map(str, f.shape))}" for layer, (f, _, _) in result.items())
        print(f"{path}: {shapes}")
    try:
        with open(args.out, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        raise NetspecError(f"features: cannot write {args.out}: {e.strerror}") from None
    print(f"wrote {args.out}")
    return 0
