"""A small deterministic segmentation dataset in PASCAL VOC layout, for quick starts and tests.

Each scene is a textured background with a few objects drawn on it.  Every object
class has its own shape, colour distribution and texture; objects get random
positions, sizes and rotations, later ones cover earlier ones, and, as in VOC, a
band of void (255) pixels runs along every object outline.  Image sizes vary, so a
slim FCN trains on it in minutes on a CPU.  The files are what
:class:`netspec.data.voc_layers.VOCSegDataLayer` reads::

    root/JPEGImages/{id}.jpg
    root/SegmentationClass/{id}.png          palette PNG of class indices
    root/ImageSets/Segmentation/train.txt, val.txt
    root/classes.txt                         class names in index order

The same arguments give byte-identical files.  From the shell:
``python -m netspec.data.synthetic DIR [--train N] [--val N] [--seed S]``.
"""
import argparse
import os

import numpy as np
from PIL import Image

from netspec.errors import NetspecError

CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "bar", "cross", "diamond", "ellipse")
VOID = 255

# Per object class: mean RGB colour, colour spread (std), texture kind, texture amplitude.
CLASS_STYLES = {
    "disc": ((200, 60, 50), 25, "stripes", 35),
    "square": ((50, 90, 200), 25, "checker", 40),
    "triangle": ((60, 170, 60), 25, "dots", 45),
    "ring": ((215, 190, 50), 20, "diagonal", 35),
    "bar": ((160, 60, 170), 25, "speckle", 30),
    "cross": ((50, 190, 190), 20, "grid", 35),
    "diamond": ((225, 225, 215), 15, "vertical", 30),
    "ellipse": ((230, 130, 40), 20, "smooth", 40),
}
BACKGROUND_COLOUR = ((120, 115, 100), 35)


def voc_palette():
    """The 256-colour PASCAL VOC label palette (flat list of RGB values)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        code = index
        for bit in range(8):
            r |= ((code >> 0) & 1) << (7 - bit)
            g |= ((code >> 1) & 1) << (7 - bit)
            b |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette += [r, g, b]
    return palette


def smooth_noise(rng, height, width, cells):
    """Low-frequency noise in about [-1, 1]: a random ``cells x cells`` grid, bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    rows = np.linspace(0, cells, height)
    cols = np.linspace(0, cells, width)
    along_rows = np.stack([np.interp(rows, np.arange(cells + 1), grid[:, j]) for j in range(cells + 1)], axis=1)
    return np.stack([np.interp(cols, np.arange(cells + 1), row) for row in along_rows])


def texture(kind, rng, yy, xx):
    """A texture pattern in [-1, 1] over the pixel coordinates ``yy, xx``."""
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == "stripes":
        return np.sin(2 * np.pi * along / rng.uniform(5, 8))
    if kind == "diagonal":
        return np.sign(np.sin(2 * np.pi * (xx + yy) / rng.uniform(6, 9)))
    if kind == "vertical":
        return np.sin(2 * np.pi * xx / rng.uniform(3, 5))
    if kind == "checker":
        period = rng.uniform(6, 10)
        return np.sign(np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))
    if kind == "grid":
        period = rng.uniform(5, 8)
        lines = (np.abs(np.sin(np.pi * xx / period)) < 0.3) | (np.abs(np.sin(np.pi * yy / period)) < 0.3)
        return np.where(lines, 1.0, -0.5)
    if kind == "dots":
        period = rng.uniform(5, 7)
        bumps = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        return np.where(bumps > 0.5, 1.0, -0.4)
    if kind == "speckle":
        return rng.uniform(-1.0, 1.0, yy.shape)
    if kind == "smooth":
        return smooth_noise(rng, yy.shape[0], yy.shape[1], 3)
    raise ValueError(kind)


def shape_mask(name, yy, xx, cy, cx, radius, angle):
    """Boolean mask of one object outline centred at ``(cy, cx)``."""
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    distance = np.hypot(dx, dy)
    if name == "disc":
        return distance <= radius
    if name == "ring":
        return (distance <= radius) & (distance >= 0.55 * radius)
    if name == "square":
        return (np.abs(u) <= 0.8 * radius) & (np.abs(v) <= 0.8 * radius)
    if name == "bar":
        return (np.abs(u) <= 1.3 * radius) & (np.abs(v) <= 0.3 * radius)
    if name == "cross":
        return (((np.abs(u) <= radius) & (np.abs(v) <= 0.28 * radius))
                | ((np.abs(v) <= radius) & (np.abs(u) <= 0.28 * radius)))
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= radius
    if name == "ellipse":
        return (u / radius) ** 2 + (v / (0.55 * radius)) ** 2 <= 1.0
    if name == "triangle":
        inside = np.ones(yy.shape, bool)
        for k in range(3):  # three edges of an equilateral triangle, inradius radius/2
            edge = angle + 2 * np.pi * k / 3
            inside &= dx * np.cos(edge) + dy * np.sin(edge) <= 0.5 * radius
        return inside
    raise ValueError(name)


def outline_band(label, width):
    """Pixels within ``width`` of a boundary between two different labels."""
    padded = np.pad(label, width, mode="edge")
    height, cols = label.shape
    band = np.zeros(label.shape, bool)
    for oy in range(2 * width + 1):
        for ox in range(2 * width + 1):
            band |= padded[oy:oy + height, ox:ox + cols] != label
    return band


def render_scene(rng, height, width, class_names, max_objects=4, border=1):
    """One scene: ``(rgb uint8 (H, W, 3), label uint8 (H, W))``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    mean, spread = BACKGROUND_COLOUR
    colour = np.clip(np.array(mean) + rng.normal(0, spread, 3), 0, 255)
    image = colour + 30 * smooth_noise(rng, height, width, 4)[..., None]
    image += 12 * rng.uniform(-1, 1, (height, width, 1))
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, max_objects + 1)):
        class_index = int(rng.integers(1, len(class_names)))
        name = class_names[class_index]
        mean, spread, kind, amplitude = CLASS_STYLES[name]
        radius = rng.uniform(0.12, 0.3) * min(height, width)
        mask = shape_mask(name, yy, xx, rng.uniform(0, height), rng.uniform(0, width),
                          radius, rng.uniform(0, 2 * np.pi))
        if not mask.any():
            continue
        colour = np.clip(np.array(mean) + rng.normal(0, spread, 3), 0, 255)
        pixels = colour + amplitude * texture(kind, rng, yy, xx)[..., None]
        image[mask] = pixels[mask]
        label[mask] = class_index
    label[outline_band(label, border)] = VOID
    image += rng.normal(0, 5, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _side_ranges(size):
    """``(lo, hi)`` for both sides, or ``((h_lo, h_hi), (w_lo, w_hi))``."""
    size = tuple(size)
    if len(size) == 2 and all(np.isscalar(s) for s in size):
        return (size, size)
    return tuple(tuple(s) for s in size)


def voc_like_sizes(count, longer=500, shorter=(250, 500), seed=0):
    """``count`` (height, width) pairs as in PASCAL VOC: the longer side ``longer``, the
    shorter uniform in the inclusive range ``shorter``, either orientation (seeded)."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        short = int(rng.integers(shorter[0], shorter[1] + 1))
        sizes.append((longer, short) if rng.integers(2) else (short, longer))
    return sizes


def make_dataset(root, n_train=160, n_val=40, size=(64, 128), num_classes=6, seed=0, max_objects=4, border=1,
                 sizes=None):
    """Write the dataset under ``root``; return ``(class_names, mean_bgr)``.

    ``num_classes`` counts background (at most ``len(CLASS_NAMES)``); ``size`` is the
    inclusive range of image sides, or ``sizes`` gives each image's (height, width)
    (train images first; e.g. ``voc_like_sizes``).  ``mean_bgr`` is the mean pixel of
    the written training JPEGs, in BGR order, for the data layer's ``mean``.
    """
    if sizes is not None and len(sizes) != n_train + n_val:
        raise NetspecError(f"make_dataset: {len(sizes)} sizes for {n_train + n_val} images")
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise NetspecError(f"make_dataset: num_classes must be 2..{len(CLASS_NAMES)} "
                           f"(background included), got {num_classes}")
    (h_lo, h_hi), (w_lo, w_hi) = _side_ranges(size)
    if min(h_lo, w_lo) < 8 or h_lo > h_hi or w_lo > w_hi:
        raise NetspecError(f"make_dataset: size {size!r} must give sides of at least 8 pixels, low <= high")
    class_names = CLASS_NAMES[:num_classes]
    root = os.fspath(root)
    for folder in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    palette = voc_palette()
    pixel_sum = np.zeros(3)
    pixel_count = 0
    splits = {"train": [], "val": []}
    for index in range(n_train + n_val):
        split = "train" if index < n_train else "val"
        rng = np.random.default_rng([seed, index])
        height = int(rng.integers(h_lo, h_hi + 1))
        width = int(rng.integers(w_lo, w_hi + 1))
        if sizes is not None:
            height, width = (int(v) for v in sizes[index])
        rgb, label = render_scene(rng, height, width, class_names, max_objects, border)
        image_id = f"{index:06d}"
        jpeg_path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
        Image.fromarray(rgb, "RGB").save(jpeg_path, quality=95)
        label_image = Image.fromarray(label, "P")
        label_image.putpalette(palette)
        label_image.save(os.path.join(root, "SegmentationClass", f"{image_id}.png"))
        splits[split].append(image_id)
        if split == "train":
            with Image.open(jpeg_path) as written:
                decoded = np.asarray(written.convert("RGB"), np.float64)
            pixel_sum += decoded.reshape(-1, 3).sum(axis=0)
            pixel_count += decoded.shape[0] * decoded.shape[1]
    for split, ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
            f.write("".join(f"{image_id}\n" for image_id in ids))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    mean_rgb = pixel_sum / max(pixel_count, 1)
    mean_bgr = tuple(float(round(c, 6)) for c in mean_rgb[::-1])
    return list(class_names), mean_bgr


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the synthetic segmentation dataset in VOC layout.")
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--classes", type=int, default=6, help="number of classes, background included")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names, mean_bgr = make_dataset(args.root, args.train, args.val, num_classes=args.classes, seed=args.seed)
    print(f"wrote {args.train} train + {args.val} val images to {args.root}")
    print(f"classes: {', '.join(names)}")
    print(f"mean (BGR): ({mean_bgr[0]:.6f}, {mean_bgr[1]:.6f}, {mean_bgr[2]:.6f})")


if __name__ == "__main__":
    main()
