"""A deterministic synthetic keypoint dataset in the poselets XML format.

Each category is an articulated shape: a skeleton of named keypoints joined by limbs.
Every limb is a thick bar with its own colour and texture, and every keypoint carries
a small disc of its own colour, the same in every instance of the category, so local
features can tell the parts apart and localise the keypoints.  Instances get random
articulation (each keypoint jittered about the category's canonical pose), rotation,
aspect, scale and position; an image holds one or two instances; a grey occluder
sometimes covers part of an instance, and keypoints under it or outside the image are
written ``visible="0"``.  The files are what
:class:`netspec.keypoints.annotations.KeypointDataset` reads::

    root/JPEGImages/<id>.jpg
    root/PartLabels/<id>.png                    part index per pixel (0 = none; parts.txt)
    root/Annotations_Keypoints/<category>/<id>_<n>.xml
    root/ImageSets/Keypoints/train.txt, val.txt
    root/parts.txt                              part names in index order (from 1)

The same arguments give byte-identical files.  ``part_features`` turns the part labels
into an "oracle" feature grid (a one-hot of the part under each cell), which tests use
to check that the pipelines work when the features are informative.
"""
import os

import numpy as np
from PIL import Image

from ..data.synthetic import smooth_noise, texture
from ..errors import NetspecError
from .annotations import ANNOTATION_DIR, Instance, write_annotation

# category -> (keypoints {name: canonical (x, y) in the unit box}, limbs [(a, b, texture)])
CATEGORIES = {
    "figure": (
        {"head": (0.5, 0.08), "neck": (0.5, 0.27), "l_hand": (0.1, 0.45), "r_hand": (0.9, 0.45),
         "hip": (0.5, 0.62), "l_foot": (0.25, 0.95), "r_foot": (0.75, 0.95)},
        [("head", "neck", "smooth"), ("neck", "l_hand", "stripes"), ("neck", "r_hand", "checker"),
         ("neck", "hip", "vertical"), ("hip", "l_foot", "dots"), ("hip", "r_foot", "grid")]),
    "quadruped": (
        {"nose": (0.05, 0.45), "ear": (0.2, 0.08), "withers": (0.38, 0.35), "tail": (0.95, 0.3),
         "front_foot": (0.32, 0.95), "back_foot": (0.82, 0.95)},
        [("nose", "ear", "speckle"), ("nose", "withers", "diagonal"), ("withers", "tail", "stripes"),
         ("withers", "front_foot", "grid"), ("tail", "back_foot", "checker"), ("ear", "withers", "smooth")]),
    "plane": (
        {"nose": (0.5, 0.04), "l_wingtip": (0.04, 0.5), "r_wingtip": (0.96, 0.5), "tail": (0.5, 0.85),
         "l_stabiliser": (0.3, 0.96), "r_stabiliser": (0.7, 0.96)},
        [("nose", "tail", "vertical"), ("l_wingtip", "r_wingtip", "dots"),
         ("l_stabiliser", "r_stabiliser", "diagonal")]),
}


def _palette(count, seed=7):
    """``count`` well-separated RGB colours (golden-angle hues, alternating brightness)."""
    import colorsys
    colours = []
    for i in range(count):
        hue = (i * 0.618033988749895) % 1.0
        sat = 0.85 if i % 2 == 0 else 0.55
        val = 0.95 if (i // 2) % 2 == 0 else 0.6
        colours.append(np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255)
    return colours


def part_table(categories=None):
    """``[(category, kind, name)]`` in part-index order (index 0 = no part): every limb
    (kind "limb", name "a-b") and keypoint marker (kind "keypoint") of every category."""
    parts = []
    for category in (categories or CATEGORIES):
        points, limbs = CATEGORIES[category]
        parts += [(category, "limb", f"{a}-{b}") for a, b, _ in limbs]
        parts += [(category, "keypoint", name) for name in points]
    return parts


def _segment_distance(yy, xx, p, q):
    (px, py), (qx, qy) = p, q
    vx, vy = qx - px, qy - py
    length2 = max(vx * vx + vy * vy, 1e-9)
    t = np.clip(((xx - px) * vx + (yy - py) * vy) / length2, 0, 1)
    return np.hypot(xx - (px + t * vx), yy - (py + t * vy))


def render_instance(rng, image, parts, yy, xx, category, region, part_index, colours):
    """Draw one instance of ``category`` inside ``region`` (y0, x0, y1, x1) of ``image``;
    write part indices into ``parts``; return ``(keypoints {name: (x, y)}, mask)``."""
    points, limbs = CATEGORIES[category]
    y0, x0, y1, x1 = region
    side = min(y1 - y0, x1 - x0)
    size = rng.uniform(0.6, 0.9) * side
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    angle = np.deg2rad(rng.uniform(-25, 25))
    cy = rng.uniform(y0 + 0.45 * size, y1 - 0.45 * size) if y1 - y0 > 0.9 * size else (y0 + y1) / 2
    cx = rng.uniform(x0 + 0.45 * size, x1 - 0.45 * size) if x1 - x0 > 0.9 * size else (x0 + x1) / 2
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    keypoints = {}
    for name, (u, v) in points.items():
        u, v = u + rng.normal(0, 0.04), v + rng.normal(0, 0.04)
        offset = rotation @ np.array([(u - 0.5) * size * aspect, (v - 0.5) * size / aspect])
        keypoints[name] = (float(cx + offset[0]), float(cy + offset[1]))
    mask = np.zeros(parts.shape, bool)
    thickness = 0.06 * size
    for a, b, kind in limbs:
        index = part_index[(category, "limb", f"{a}-{b}")]
        limb = _segment_distance(yy, xx, keypoints[a], keypoints[b]) <= thickness
        colour = np.clip(colours[index] + rng.normal(0, 12, 3), 0, 255)
        pixels = colour + 45 * texture(kind, rng, yy, xx)[..., None]
        image[limb] = pixels[limb]
        parts[limb] = index
        mask |= limb
    radius = 0.075 * size
    for name, (kx, ky) in keypoints.items():
        index = part_index[(category, "keypoint", name)]
        disc = np.hypot(yy - ky, xx - kx) <= radius
        image[disc] = np.clip(colours[index] + rng.normal(0, 12, 3), 0, 255)
        parts[disc] = index
        mask |= disc
    return keypoints, mask


def render_image(rng, height, width, categories, part_index, colours, occluders=0.25):
    """One image: ``(rgb uint8, parts uint8, [(category, keypoints, visible, bbox)])``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.array([120.0, 115, 100]) + rng.normal(0, 25, 3)
    image = image + 30 * smooth_noise(rng, height, width, 4)[..., None]
    image = image + 10 * rng.uniform(-1, 1, (height, width, 1))
    parts = np.zeros((height, width), np.uint8)
    count = 2 if rng.uniform() < 0.3 else 1
    regions = ([(0, 0, height, width)] if count == 1 else
               ([(0, 0, height, width / 2), (0, width / 2, height, width)] if width >= height else
                [(0, 0, height / 2, width), (height / 2, 0, height, width)]))
    drawn = []
    for region in regions:
        category = categories[int(rng.integers(len(categories)))]
        keypoints, mask = render_instance(rng, image, parts, yy, xx, category, region, part_index, colours)
        drawn.append((category, keypoints, mask))
    covered = np.zeros((height, width), bool)
    if rng.uniform() < occluders:
        oh, ow = rng.uniform(0.2, 0.35) * height, rng.uniform(0.2, 0.35) * width
        oy, ox = rng.uniform(0, height - oh), rng.uniform(0, width - ow)
        covered = (yy >= oy) & (yy < oy + oh) & (xx >= ox) & (xx < ox + ow)
        grey = 128 + 20 * smooth_noise(rng, height, width, 2)[..., None]
        image[covered] = grey[covered]
        parts[covered] = 0
    instances = []
    for category, keypoints, mask in drawn:
        rows, cols = np.nonzero(mask)
        bbox = (float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
                float(rows.max() - rows.min() + 1))
        visible = {}
        for name, (kx, ky) in keypoints.items():
            iy, ix = int(round(ky)), int(round(kx))
            visible[name] = 0 <= iy < height and 0 <= ix < width and not covered[iy, ix]
        instances.append((category, keypoints, visible, bbox))
    image = image + rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), parts, instances


def make_dataset(root, n_train=24, n_val=12, size=(96, 128), categories=None, seed=0, occluders=0.25):
    """Write the dataset under ``root``; return the list of :class:`Instance` written.

    ``size``: one side length or an inclusive ``(low, high)`` range of image sides.
    """
    categories = list(categories or CATEGORIES)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise NetspecError(f"keypoints synthetic: unknown categories {unknown} (have {list(CATEGORIES)})")
    lo, hi = (size, size) if np.isscalar(size) else size
    if lo < 32 or lo > hi:
        raise NetspecError(f"keypoints synthetic: size {size!r}: sides must be >= 32, low <= high")
    table = part_table()                     # indices fixed over all categories
    part_index = {part: i + 1 for i, part in enumerate(table)}
    colours = [None] + _palette(len(table))
    root = os.fspath(root)
    for folder in ["JPEGImages", "PartLabels", os.path.join("ImageSets", "Keypoints")] + \
            [os.path.join(ANNOTATION_DIR, c) for c in categories]:
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    splits, written = {"train": [], "val": []}, []
    for index in range(n_train + n_val):
        rng = np.random.default_rng([seed, index])
        height, width = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        rgb, parts, instances = render_image(rng, height, width, categories, part_index, colours, occluders)
        image_id = f"kp_{index:06d}"
        Image.fromarray(rgb, "RGB").save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), quality=95)
        Image.fromarray(parts, "L").save(os.path.join(root, "PartLabels", f"{image_id}.png"))
        splits["train" if index < n_train else "val"].append(image_id)
        for n, (category, keypoints, visible, bbox) in enumerate(instances, 1):
            points = {name: (round(x, 2), round(y, 2), visible[name]) for name, (x, y) in keypoints.items()}
            instance = Instance(image_id, category, bbox, points, voc_id=n)
            instance.path = os.path.join(root, ANNOTATION_DIR, category, f"{image_id}_{n}.xml")
            write_annotation(instance.path, instance)
            written.append(instance)
    for split, ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Keypoints", f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    with open(os.path.join(root, "parts.txt"), "w") as f:
        f.write("".join(f"{c}/{kind}/{name}\n" for c, kind, name in table))
    return written


def read_parts(root, image):
    path = os.path.join(os.fspath(root), "PartLabels", f"{image}.png")
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except OSError as e:
        raise NetspecError(f"{path}: cannot read the part labels ({e})") from None


def part_features(parts, stride, num_parts=None):
    """The oracle feature grid of a part-label map: ``(features (P + 1, h, w), cy, cx)``,
    each cell the fraction of its ``stride x stride`` pixels showing each part (channel 0:
    no part); centres at ``stride * i + (stride - 1) / 2``."""
    parts = np.asarray(parts)
    num_parts = num_parts or len(part_table())
    h, w = parts.shape[0] // stride, parts.shape[1] // stride
    cells = parts[:h * stride, :w * stride].reshape(h, stride, w, stride)
    onehot = np.zeros((num_parts + 1, h, w), np.float32)
    for p in np.unique(cells):
        onehot[p] = (cells == p).mean(axis=(1, 3))
    centres = lambda n: stride * np.arange(n) + (stride - 1) / 2.0
    return onehot, centres(h), centres(w)
