"""``netspec regions``: object regions from a pairwise region net (Long's thesis, ch. 4), and their scores.

``netspec regions --model deploy.prototxt --weights W IMAGE... -o OUTDIR [--top 100] [--nms 0.7]``
writes, per image, the top regions as mask PNGs (``OUTDIR/<stem>/region_000.png``, 0/255),
``OUTDIR/<stem>.json`` (rank, score, pathway, stride, grid cell, pixel centre, bbox
``[x, y, w, h]``, area, mask file) and ``OUTDIR/<stem>_overlay.png`` (the best ``--overlay``
regions in their own colours over the image).

``netspec regions --model ... --weights W --score annotations.json [--image-dir DIR] -o OUTDIR``
instead runs the images of a COCO-format split and prints / writes (``OUTDIR/metrics.json``)
R@50, R@70, ABO, AR and AR@10/100/1000 of the top regions (default 1000 per image) against
the non-crowd instances, all instances of all images pooled (``netspec.regions``).

**Pathways.**  Each pathway ``NAME`` has a region blob ``(1, K*K, h, w)`` named by
``--region-blob`` (default ``regions_{}``, ``{}`` replaced by NAME) and an objectness blob
``(1, 1, h, w)`` logit or ``(1, 2, h, w)`` two-class scores named by ``--objectness-blob``
(default ``objectness_{}``).  ``--pathways p1:4:9,p2:8`` lists them as NAME:STRIDE[:K]
(K, the window in grid cells, is checked against the blob); by default every blob matching
the region pattern is a pathway (a net with ``regions_p1``, ``objectness_p1``,
``regions_p2``, ... works as is) and its stride is the input size over the grid size,
rounded (give ``--pathways`` when the nets' grids are not ``ceil(H/s)``-sized).

**Regions** (``netspec.regions``): per pathway, one candidate per grid cell (mask: logits > 0,
clipped to the grid; score: objectness), greedy NMS on the grid in linear time with IoU >
``--nms`` suppressing; the survivors of all pathways, best score first, are upsampled
(FCN's bilinear Deconvolution) to image masks, and a second greedy NMS across pathways at
image resolution (``--cross-nms``, default ``--nms``) keeps the first ``--top``.
"""
import json
import os
import re

import numpy as np
from PIL import Image

from ..errors import NetspecError
from . import add_execution_arguments, execution_options
from .infer import VOC_MEAN_BGR, preprocess


def add_arguments(p):
    p.add_argument("images", nargs="*", help="images to find regions in (any size); not with --score")
    p.add_argument("--model", required=True, help="a deploy net with an Input 'data' blob and region pathways")
    p.add_argument("--weights", required=True)
    p.add_argument("-o", "--out", default="regions", help="output directory (default: regions)")
    p.add_argument("--pathways", default="auto", metavar="NAME:STRIDE[:K],...",
                   help="the region pathways: name, stride in pixels, window K in grid cells (default: auto, "
                        "every blob matching --region-blob, stride from the blob's grid)")
    p.add_argument("--region-blob", default="regions_{}", metavar="PATTERN",
                   help="a pathway's region logits blob (1, K*K, h, w); {} is its name (default regions_{})")
    p.add_argument("--objectness-blob", default="objectness_{}", metavar="PATTERN",
                   help="a pathway's objectness blob (1, 1, h, w) logit or (1, 2, h, w); {} is its name "
                        "(default objectness_{})")
    p.add_argument("--top", type=int, default=None,
                   help="regions kept per image (default 100; 1000 with --score)")
    p.add_argument("--nms", type=float, default=0.7,
                   help="IoU above which a better region suppresses another, on each pathway's grid (default 0.7)")
    p.add_argument("--cross-nms", type=float, default=None,
                   help="the same across pathways, on image-resolution masks (default: --nms; 1 turns it off)")
    p.add_argument("--overlay", type=int, default=20, metavar="N", help="regions drawn in the overlay (default 20)")
    p.add_argument("--mean", default=",".join(str(m) for m in VOC_MEAN_BGR),
                   help="B,G,R mean to subtract (default: FCN's VOC mean)")
    p.add_argument("--input-blob", default="data")
    p.add_argument("--score", metavar="ANNOTATIONS.json",
                   help="score the regions on a COCO-format split instead of writing them")
    p.add_argument("--image-dir", metavar="DIR",
                   help="with --score: the split's images (default: <annotations dir>/../<split> for "
                        "annotations/instances_<split>.json)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="with --score: only the first N images")
    add_execution_arguments(p)


def parse_pathways(spec):
    """``"p1:4:9,p2:8"`` -> ``[("p1", 4, 9), ("p2", 8, None)]``; ``"auto"`` -> None."""
    if spec.strip() == "auto":
        return None
    pathways = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) not in (2, 3) or not parts[0]:
                raise ValueError
            stride = int(parts[1])
            window = int(parts[2]) if len(parts) == 3 else None
            if stride < 1 or (window is not None and window < 1):
                raise ValueError
        except ValueError:
            raise NetspecError(f"regions: --pathways item {item!r}: give NAME:STRIDE[:K] with positive integers, "
                               "e.g. p1:4:9") from None
        pathways.append((parts[0], stride, window))
    return pathways


def _blob_names(pattern, name, option):
    if pattern.count("{}") != 1:
        raise NetspecError(f"regions: {option} {pattern!r} must contain {{}} once (the pathway name)")
    return pattern.replace("{}", name)


class RegionNet:
    """A deploy net and its pathways; ``propose(path)`` -> the image and its ranked regions."""

    def __init__(self, args):
        from .. import Net, TEST
        try:
            self.mean = [float(x) for x in args.mean.split(",")]
            if len(self.mean) != 3:
                raise ValueError
        except ValueError:
            raise NetspecError(f"regions: --mean {args.mean}: give three numbers B,G,R") from None
        if args.nms < 0 or args.nms > 1 or (args.cross_nms is not None and not 0 <= args.cross_nms <= 1):
            raise NetspecError("regions: --nms and --cross-nms are IoU thresholds in [0, 1]")
        self.nms = args.nms
        self.cross_nms = args.nms if args.cross_nms is None else args.cross_nms
        self.args = args
        self.net = Net(args.model, weights=args.weights, phase=TEST, **execution_options(args))
        if args.input_blob not in self.net.inputs:
            raise NetspecError(f'regions: {args.model} has no input blob "{args.input_blob}" '
                               f'(inputs: {", ".join(self.net.inputs)})')
        spec = parse_pathways(args.pathways)
        _blob_names(args.region_blob, "x", "--region-blob")
        _blob_names(args.objectness_blob, "x", "--objectness-blob")
        if spec is None:
            head, tail = args.region_blob.split("{}")
            pattern = re.compile(re.escape(head) + "(.+)" + re.escape(tail) + "$")
            spec = [(m.group(1), None, None) for m in (pattern.match(b) for b in self.net.blobs) if m]
            if not spec:
                raise NetspecError(f"regions: {args.model} has no blob named like {args.region_blob!r}; "
                                   "name the pathways with --pathways or the blobs with --region-blob")
        self.pathways = []
        for name, stride, window in spec:
            regions = _blob_names(args.region_blob, name, "--region-blob")
            objectness = _blob_names(args.objectness_blob, name, "--objectness-blob")
            for blob in (regions, objectness):
                if blob not in self.net.blobs:
                    raise NetspecError(f'regions: {args.model} has no blob "{blob}" for pathway {name!r} '
                                       f"(see --region-blob/--objectness-blob)")
            self.pathways.append({"name": name, "stride": stride, "window": window,
                                  "regions": regions, "objectness": objectness})

    def candidates(self, x):
        """Per-pathway grid-NMS survivors of one preprocessed image ``x`` (1, 3, H, W)."""
        from ..regions import decode_regions, grid_nms, window_size
        blobs = [b for p in self.pathways for b in (p["regions"], p["objectness"])]
        out = self.net.forward(**{self.args.input_blob: x}, blobs=blobs)
        height, width = x.shape[2:]
        found = []
        for p in self.pathways:
            logits = np.asarray(out[p["regions"]])
            if logits.ndim != 4 or logits.shape[0] != 1:
                raise NetspecError(f'regions: blob "{p["regions"]}" is {logits.shape}; expected (1, K*K, h, w)')
            k = window_size(logits.shape[1])
            if p["window"] is not None and p["window"] != k:
                raise NetspecError(f'regions: pathway {p["name"]!r} has K = {p["window"]} in --pathways but '
                                   f'"{p["regions"]}" has {logits.shape[1]} = {k}x{k} channels')
            stride = p["stride"]
            if stride is None:
                grid_h, grid_w = logits.shape[2:]
                stride = max(1, int(round(max(height / grid_h, width / grid_w))))
            regions = decode_regions(logits[0], np.asarray(out[p["objectness"]])[0], stride, name=p["name"])
            kept = grid_nms(regions.grid, regions.masks, regions.scores, self.nms)
            found.append(regions.subset(kept))
        return found

    def propose(self, path, top):
        """``(rgb, [region dicts with an RLE 'rle', best first])`` for the image file ``path``."""
        from pycocotools import mask as mask_utils

        from ..regions import region_mask
        x, rgb = preprocess(path, self.mean)
        height, width = x.shape[2:]
        found = self.candidates(x)
        pool = [(float(r.scores[i]), n, i) for n, r in enumerate(found) for i in range(len(r))]
        pool.sort(key=lambda item: (-item[0], item[1], item[2]))      # best first; ties: pathway, grid order
        chosen, rles = [], []
        for score, n, i in pool:
            if len(chosen) >= top:
                break
            regions = found[n]
            mask = region_mask(regions, i, (height, width))
            if not mask.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            if rles and self.cross_nms < 1:
                iou = np.asarray(mask_utils.iou([rle], rles, [0] * len(rles))).reshape(-1)
                if (iou > self.cross_nms).any():
                    continue
            rles.append(rle)
            gy, gx = (int(v) for v in regions.grid[i])
            cy, cx = regions.centre(i)
            chosen.append({"rank": len(chosen), "score": score, "pathway": regions.name, "stride": regions.stride,
                           "window": regions.window, "grid": [gy, gx], "centre": [cy, cx],
                           "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                           "area": int(mask_utils.area(rle)), "rle": rle})
        return rgb, chosen


def colours(count):
    """``count`` distinct RGB colours (golden-ratio hues)."""
    import colorsys
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((0.13 + 0.618034 * i) % 1.0, 0.85, 1.0))
            for i in range(count)]


def overlay_picture(rgb, masks, alpha=0.55):
    """The image with ``masks`` (best first) filled in their colours and outlined."""
    picture = np.asarray(rgb, np.float32).copy()
    palette = colours(len(masks))
    for mask, colour in list(zip(masks, palette))[::-1]:                # the best region ends on top
        picture[mask] = (1 - alpha) * picture[mask] + alpha * np.asarray(colour, np.float32)
    for mask, colour in list(zip(masks, palette))[::-1]:
        padded = np.pad(mask, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        picture[mask & ~inner] = colour
    return Image.fromarray(picture.clip(0, 255).astype(np.uint8))


def write_regions(path, rgb, regions, out_dir, overlay_count):
    from ..data.coco_layers import rle_decode
    stem = os.path.splitext(os.path.basename(path))[0]
    os.makedirs(os.path.join(out_dir, stem), exist_ok=True)
    records, masks = [], []
    for region in regions:
        mask = rle_decode(region["rle"]).astype(bool)
        name = f"region_{region['rank']:03d}.png"
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(os.path.join(out_dir, stem, name))
        masks.append(mask)
        record = {k: v for k, v in region.items() if k != "rle"}
        record["mask"] = f"{stem}/{name}"
        records.append(record)
    document = {"image": os.fspath(path), "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                "regions": records}
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(document, f, indent=1)
    overlay_picture(rgb, masks[:max(overlay_count, 0)]).save(os.path.join(out_dir, f"{stem}_overlay.png"))
    return stem


def default_image_dir(annotations):
    match = re.match(r"instances_(.+)\.json$", os.path.basename(annotations))
    if not match:
        raise NetspecError(f"regions: cannot tell the image folder of {annotations}; give --image-dir")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(annotations))), match.group(1))


def run_score(args, region_net, top):
    from pycocotools import mask as mask_utils

    from ..data.coco_layers import COCOInstances
    from ..regions import RegionScorer, rle_iou
    image_dir = args.image_dir or default_image_dir(args.score)
    coco = COCOInstances(args.score, image_dir, "regions --score")
    entries = coco.images[:args.limit] if args.limit is not None else coco.images
    scorer = RegionScorer(ks=(10, 100, 1000))
    for entry in entries:
        path = coco.image_path(entry["id"])
        if not os.path.isfile(path):
            raise NetspecError(f"regions: {path} (image id {entry['id']} in {args.score}) not found; check --image-dir")
        masks, crowd, _ = coco.masks(entry["id"])
        rgb, regions = region_net.propose(path, top)
        if rgb.shape[:2] != masks.shape[1:]:
            raise NetspecError(f"regions: {path} is {rgb.shape[1]}x{rgb.shape[0]} but {args.score} says "
                               f"{masks.shape[2]}x{masks.shape[1]}")
        gt = masks[~crowd]
        gt_rles = mask_utils.encode(np.asfortranarray(gt.transpose(1, 2, 0).astype(np.uint8))) if len(gt) else []
        scorer.add_iou(rle_iou(gt_rles, [r["rle"] for r in regions]).reshape(len(gt), len(regions)))
    summary = scorer.summary()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump({"annotations": args.score, "top": top, "nms": args.nms, **summary}, f, indent=1)
    print(f"{summary['images']} images, {summary['instances']} instances: " + ", ".join(
        f"{k} {100 * summary[k]:.1f}" for k in ("R@50", "R@70", "ABO", "AR", "AR@10", "AR@100", "AR@1000")))
    print(f"metrics -> {os.path.join(args.out, 'metrics.json')}")
    return 0


def run(args):
    if args.score and args.images:
        raise NetspecError("regions: give IMAGE files or --score ANNOTATIONS.json, not both")
    if not args.score and not args.images:
        raise NetspecError("regions: give IMAGE files, or --score ANNOTATIONS.json to score a COCO-format split")
    top = args.top if args.top is not None else (1000 if args.score else 100)
    if top < 1:
        raise NetspecError("regions: --top must be >= 1")
    region_net = RegionNet(args)
    if args.score:
        return run_score(args, region_net, top)
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        rgb, regions = region_net.propose(path, top)
        stem = write_regions(path, rgb, regions, args.out, args.overlay)
        print(f"{path}: {len(regions)} regions -> {os.path.join(args.out, stem)}.json")
    return 0
