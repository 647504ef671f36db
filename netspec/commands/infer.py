"""``netspec infer --model deploy.prototxt --weights W IMAGE...``: palette PNG + overlay per image.

``--panels PNG`` also draws one picture of image | ground truth | prediction | overlay
rows with a legend of the classes present (ground truth from ``--labels DIR`` when it
holds ``<image stem>.png``, e.g. VOC's SegmentationClass).
"""
import os

import numpy as np
from PIL import Image

from ..errors import NetspecError
from . import add_execution_arguments, execution_options

VOC_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


def add_arguments(p):
    p.add_argument("images", nargs="+", help="images to segment (any size)")
    p.add_argument("--model", required=True, help="a deploy net with an Input 'data' blob")
    p.add_argument("--weights", required=True)
    p.add_argument("--mean", default=",".join(str(m) for m in VOC_MEAN_BGR),
                   help="B,G,R mean to subtract (default: FCN's VOC mean)")
    p.add_argument("--out", default="predictions", help="output directory")
    p.add_argument("--input-blob", default="data")
    p.add_argument("--score-blob", default="score")
    p.add_argument("--panels", metavar="PNG",
                   help="also draw image | prediction | overlay rows (and ground truth, see --labels) "
                        "with a class legend into PNG")
    p.add_argument("--panels-rows", type=int, default=8, metavar="N",
                   help="the first N images go into --panels (default 8)")
    p.add_argument("--labels", metavar="DIR",
                   help="ground-truth label PNGs (class indices, 255 = void) named <image stem>.png, "
                        "for the --panels ground-truth column")
    p.add_argument("--class-names", metavar="FILE",
                   help="class names, one a line, for the --panels legend (default: PASCAL VOC's)")
    add_execution_arguments(p)


def preprocess(path, mean_bgr):
    """Reference FCN preprocessing: RGB -> BGR, minus mean, HWC -> CHW, batch of one."""
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    except (OSError, ValueError) as e:
        raise NetspecError(f"{path}: cannot read image ({e})") from None
    return ((rgb[:, :, ::-1] - np.asarray(mean_bgr, np.float32)).transpose(2, 0, 1))[None], rgb


def palette_image(label):
    from ..data.synthetic import voc_palette
    image = Image.fromarray(label.astype(np.uint8), "P")
    image.putpalette(voc_palette())
    return image


def overlay(rgb, label, alpha=0.5):
    colours = np.asarray(palette_image(label).convert("RGB"), np.float32)
    return Image.fromarray(((1 - alpha) * rgb + alpha * colours).clip(0, 255).astype(np.uint8))


def run(args):
    from .. import Net, TEST
    try:
        mean = [float(x) for x in args.mean.split(",")]
    except ValueError:
        raise NetspecError(f"infer: --mean {args.mean}: give three numbers B,G,R") from None
    net = Net(args.model, weights=args.weights, phase=TEST, **execution_options(args))
    if args.input_blob not in net.inputs:
        raise NetspecError(f'infer: {args.model} has no input blob "{args.input_blob}" (inputs: {net.inputs})')
    class_names = None
    if args.panels:
        from ..plots import read_class_names
        if args.panels_rows < 1:
            raise NetspecError("infer: --panels-rows must be >= 1")
        class_names = read_class_names(args.class_names) if args.class_names else None
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for path in args.images:
        x, rgb = preprocess(path, mean)
        out = net.forward(**{args.input_blob: x}, blobs=[args.score_blob])
        label = out[args.score_blob][0].argmax(0)
        stem = os.path.splitext(os.path.basename(path))[0]
        palette_image(label).save(os.path.join(args.out, f"{stem}.png"))
        overlay(rgb, label).save(os.path.join(args.out, f"{stem}_overlay.jpg"), quality=92)
        print(f"{path} -> {os.path.join(args.out, stem)}.png")
        if args.panels and len(rows) < args.panels_rows:
            rows.append({"image": rgb, "prediction": label, "title": stem,
                         "label": read_label(args.labels, stem, label.shape) if args.labels else None})
    if args.panels:
        from ..plots import prediction_panels
        prediction_panels(rows, class_names, None, args.panels)
        print(f"panels -> {args.panels}")
    return 0


def read_label(directory, stem, shape):
    """``directory/<stem>.png`` as class indices, or None when there is no such file."""
    path = os.path.join(directory, f"{stem}.png")
    if not os.path.exists(path):
        return None
    try:
        image = Image.open(path)
        label = np.asarray(image if image.mode in ("P", "L", "I", "I;16") else image.convert("L"))
    except (OSError, ValueError) as e:
        raise NetspecError(f"{path}: cannot read the label image ({e})") from None
    if label.shape != tuple(shape):
        raise NetspecError(f"{path}: the label is {label.shape[1]}x{label.shape[0]} but the image "
                           f"{shape[1]}x{shape[0]}")
    return label
