"""A small deterministic instance-segmentation dataset in COCO format, for region nets and tests.

Every image is a textured background with 2..``max_instances`` objects of **one colour
family**: rectangles, octagons (disc-like), diamonds and rotated ellipses, from about 8 px
to most of the image, many of them placed to touch or overlap an earlier one, later ones in
front.  Neighbouring objects differ only by a slight colour jitter, so a semantic
segmentation cannot separate them; only instance-level reasoning can.  Image sides vary
(default 64..160 px), so whole-image any-size training is exercised.  Some images have a
crowd region (a cluster of small dots, ``iscrowd: 1``).  Files::

    root/train/{id:012d}.jpg, root/val/{id:012d}.jpg
    root/annotations/instances_train.json, instances_val.json

Annotations (COCO's fields: ``images``, ``annotations``, ``categories``; ``segmentation``,
``area`` (visible pixels), ``bbox`` ``[x, y, w, h]``, ``iscrowd``) hold the *visible* part of
each object.  Fully visible polygonal objects inside the image are usually written as
polygons; occluded ones, ellipses and some others as RLE (compressed string counts or
uncompressed count lists, alternately); crowd regions as uncompressed RLE, as COCO does.
Polygons have axis-parallel edges on integer coordinates and diagonal edges on
half-integer lines ``x +- y = c``, so every pixel centre ``(x + 0.5, y + 0.5)`` is at least
0.35 px from every edge: the pixel set of a polygon is unambiguous, and pycocotools'
rasteriser gives exactly the point-in-polygon set (checked while writing).

The same arguments give byte-identical files.  From the shell:
``python -m netspec.data.synthetic_instances DIR [--train N] [--val N] [--seed S]``.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image

from netspec.data.coco_layers import rle_decode
from netspec.data.synthetic import smooth_noise
from netspec.errors import NetspecError

CATEGORIES = ({"id": 1, "name": "box", "supercategory": "shape"},
              {"id": 2, "name": "octagon", "supercategory": "shape"},
              {"id": 3, "name": "diamond", "supercategory": "shape"},
              {"id": 4, "name": "ellipse", "supercategory": "shape"})
_CATEGORY = {c["name"]: c["id"] for c in CATEGORIES}
MIN_VISIBLE = 12      # objects with fewer visible pixels are left out of the scene


def polygon_mask(polygon, height, width):
    """Pixels whose centre ``(x + 0.5, y + 0.5)`` is inside the polygon (even-odd rule)."""
    xs = np.asarray(polygon[0::2], np.float64)
    ys = np.asarray(polygon[1::2], np.float64)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    inside = np.zeros((height, width), bool)
    for i in range(len(xs)):
        x0, y0, x1, y1 = xs[i], ys[i], xs[(i + 1) % len(xs)], ys[(i + 1) % len(xs)]
        if y0 == y1:
            continue
        crosses = (y0 > yy) != (y1 > yy)
        x_at = x0 + (yy - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xx < x_at)
    return inside


def _shape(rng, kind, cy, cx, radius):
    """``(polygon or None, mask function)`` of one object."""
    r = max(radius, 4.0)
    if kind == "box":
        hy, hx = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        x0, x1 = int(np.floor(cx - hx)), int(np.ceil(cx + hx))
        y0, y1 = int(np.floor(cy - hy)), int(np.ceil(cy + hy))
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    if kind == "octagon":
        hy, hx = r * rng.uniform(0.75, 1.0), r * rng.uniform(0.75, 1.0)
        x0, x1 = int(np.floor(cx - hx)), int(np.ceil(cx + hx))
        y0, y1 = int(np.floor(cy - hy)), int(np.ceil(cy + hy))
        side = min(x1 - x0, y1 - y0)
        a = float(int(rng.uniform(0.2, 0.33) * side)) + 0.5         # a half-integer cut
        return [x0 + a, y0, x1 - a, y0, x1, y0 + a, x1, y1 - a, x1 - a, y1, x0 + a, y1, x0, y1 - a, x0, y0 + a]
    if kind == "diamond":
        x, y, h = int(round(cx)), int(round(cy)), int(r) + 0.5
        return [x, y - h, x + h, y, x, y + h, x - h, y]
    raise ValueError(kind)


def _ellipse_mask(cy, cx, radius, angle, ratio, height, width):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / radius) ** 2 + (v / (ratio * radius)) ** 2 <= 1.0


def _rle(mask, compressed):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _bbox(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def render_instances(rng, height, width, max_instances=10, crowd_prob=0.3, polygon_prob=0.75):
    """One scene: ``(rgb uint8 (H, W, 3), objects)``; objects back to front, each a dict with
    ``kind``, ``mask`` (visible, bool), ``polygon`` (or None when occluded/clipped/elliptic),
    ``iscrowd``."""
    yy_noise = smooth_noise(rng, height, width, 4)
    background = np.clip(rng.uniform(60, 190, 3), 0, 255)
    image = background + 30 * yy_noise[..., None] + 10 * rng.uniform(-1, 1, (height, width, 1))
    family = rng.uniform(40, 220, 3)
    while np.abs(family - background).max() < 50:                     # visible against the background
        family = rng.uniform(40, 220, 3)
    short = min(height, width)
    placed = []                                                         # (kind, cy, cx, radius, polygon, full mask)
    for _ in range(int(rng.integers(2, max_instances + 1))):
        radius = float(np.exp(rng.uniform(np.log(4.0), np.log(0.45 * short))))
        if placed and rng.uniform() < 0.7:                             # touch or overlap an earlier object
            _, py, px, pr, _, _ = placed[int(rng.integers(len(placed)))]
            theta = rng.uniform(0, 2 * np.pi)
            distance = (pr + radius) * rng.uniform(0.55, 1.0)
            cy, cx = py + distance * np.sin(theta), px + distance * np.cos(theta)
        else:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        kind = ("box", "octagon", "diamond", "ellipse")[int(rng.integers(4))]
        if kind == "ellipse":
            polygon = None
            full = _ellipse_mask(cy, cx, radius, rng.uniform(0, np.pi), rng.uniform(0.45, 1.0), height, width)
        else:
            polygon = _shape(rng, kind, cy, cx, radius)
            full = polygon_mask(polygon, height, width)
        if full.any():
            placed.append((kind, cy, cx, radius, polygon, full))
    covered = np.zeros((height, width), bool)
    objects = []
    for kind, _, _, _, polygon, full in reversed(placed):             # front to back
        visible = full & ~covered
        if visible.sum() < MIN_VISIBLE:
            continue
        covered |= full
        xs, ys = (np.asarray(polygon[0::2]), np.asarray(polygon[1::2])) if polygon else (None, None)
        whole = polygon is not None and (visible == full).all() and xs.min() >= 0 and ys.min() >= 0 \
            and xs.max() <= width and ys.max() <= height
        objects.append({"kind": kind, "mask": visible, "iscrowd": 0,
                        "polygon": polygon if whole and rng.uniform() < polygon_prob else None})
    objects.reverse()
    if rng.uniform() < crowd_prob:                                      # a crowd of dots, behind everything
        crowd = np.zeros((height, width), bool)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        spread = 0.15 * short
        for _ in range(int(rng.integers(6, 15))):
            y = int(np.clip(cy + rng.normal(0, spread), 0, height - 3))
            x = int(np.clip(cx + rng.normal(0, spread), 0, width - 3))
            crowd[y:y + 3, x:x + 3] = True
        crowd &= ~covered
        if crowd.sum() >= MIN_VISIBLE:
            objects.insert(0, {"kind": "box", "mask": crowd, "iscrowd": 1, "polygon": None})
    for obj in objects:                                                 # back to front; visible masks are disjoint
        colour = family + rng.normal(0, 8, 3)
        shade = colour + 18 * smooth_noise(rng, height, width, 3)[..., None]
        image[obj["mask"]] = shade[obj["mask"]]
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def make_instance_dataset(root, n_train=20, n_val=8, size=(64, 160), seed=0, max_instances=10,
                          crowd_prob=0.3):
    """Write the dataset under ``root``; return ``mean_bgr``, the mean pixel (BGR) of the training JPEGs."""
    from pycocotools import mask as mask_utils

    lo, hi = size
    if lo < 16 or lo > hi:
        raise NetspecError(f"make_instance_dataset: size {size!r} must be (low, high) sides with 16 <= low <= high")
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    pixel_sum, pixel_count = np.zeros(3), 0
    annotation_id = 1
    for split, start, count in (("train", 0, n_train), ("val", n_train, n_val)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for index in range(start, start + count):
            rng = np.random.default_rng([seed, index])
            height, width = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            rgb, objects = render_instances(rng, height, width, max_instances, crowd_prob)
            image_id = index + 1
            file_name = f"{image_id:012d}.jpg"
            path = os.path.join(root, split, file_name)
            Image.fromarray(rgb, "RGB").save(path, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for number, obj in enumerate(objects):
                mask = obj["mask"]
                if obj["polygon"] is not None:
                    segmentation = [[float(v) for v in obj["polygon"]]]
                    decoded = rle_decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
                    if not np.array_equal(decoded.astype(bool), mask):
                        raise NetspecError(f"make_instance_dataset: polygon of annotation {annotation_id} does not "
                                           "rasterise to its mask (internal error)")
                else:
                    segmentation = _rle(mask, compressed=bool(obj["iscrowd"] == 0 and number % 2 == 0))
                annotations.append({"id": annotation_id, "image_id": image_id,
                                    "category_id": _CATEGORY[obj["kind"]], "segmentation": segmentation,
                                    "area": float(mask.sum()), "bbox": _bbox(mask), "iscrowd": obj["iscrowd"]})
                annotation_id += 1
            if split == "train":
                with Image.open(path) as written:
                    decoded = np.asarray(written.convert("RGB"), np.float64)
                pixel_sum += decoded.reshape(-1, 3).sum(axis=0)
                pixel_count += decoded.shape[0] * decoded.shape[1]
        document = {"info": {"description": "netspec synthetic instances", "version": "1.0"},
                    "images": images, "annotations": annotations, "categories": list(CATEGORIES)}
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(document, f, separators=(",", ":"))
    mean_rgb = pixel_sum / max(pixel_count, 1)
    return tuple(float(round(c, 6)) for c in mean_rgb[::-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the synthetic instance dataset in COCO format.")
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mean_bgr = make_instance_dataset(args.root, args.train, args.val, seed=args.seed)
    print(f"wrote {args.train} train + {args.val} val images to {args.root}")
    print(f"mean (BGR): ({mean_bgr[0]:.6f}, {mean_bgr[1]:.6f}, {mean_bgr[2]:.6f})")


if __name__ == "__main__":
    main()
