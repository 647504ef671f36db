"""COCO-format instance segmentation data layer (for the region nets of Long's thesis, ch. 4).

``python_param { module: "coco_layers" layer: "COCOInstanceDataLayer" param_str: "{...}" }``

param_str keys: ``coco_dir`` (required), ``split`` (required), ``annotations`` (the JSON;
default ``{coco_dir}/annotations/instances_{split}.json``; a relative path is taken under
``coco_dir``), ``image_dir`` (default ``{coco_dir}/{split}``, COCO 2017's layout; relative
under ``coco_dir``), ``mean`` (BGR, default the VOC mean), ``randomize`` (default True: splits
named ``*train*`` are sampled at random with replacement), ``seed`` (default 1337),
``max_instances`` (default 254).

Tops: ``data`` ``(1, 3, H, W)``: the whole image at its natural size, RGB -> BGR, minus
``mean``; ``instances`` ``(1, 1, H, W)`` float: 0 background, ``1..M`` instances, 255 void.

**Instance ids and painting.**  The image's non-crowd annotations get ids ``1..M`` in their
order in the JSON's ``annotations`` list.  Their masks are painted largest first (decoded
pixel count, ties by annotation order), so where masks overlap the smaller instance is kept
(it would otherwise vanish).  Crowd regions (``iscrowd: 1``) are 255 (void) where no instance
lies.  With more than ``max_instances`` instances (at most 254, so no id reaches 255) the
largest ``max_instances`` keep ids (renumbered ``1..`` in annotation order) and the pixels of
the others become void.  Images with no annotations are served (all background), in the
order of the JSON's ``images`` list.

Polygons and RLE (compressed string or uncompressed count list) are decoded with pycocotools,
as the COCO API does.  An annotation JSON that does not match its images is an error naming
the file (and the annotation): an unreadable JSON, an annotation whose ``image_id`` has no
image entry, a missing image file, an image whose size differs from its entry, a
segmentation that does not parse.
"""
import json
import os
import warnings

import numpy as np

from netspec.data import VOC_MEAN_BGR, SegDataLayer, load_bgr_image, require_file
from netspec.errors import NetspecError

VOID = 255
MAX_INSTANCES = 254


def _read_json(path, who):
    require_file(path, who)
    try:
        with open(path) as f:
            document = json.load(f)
    except (OSError, ValueError) as e:
        raise NetspecError(f"{who}: {path} is not a readable JSON file ({str(e).splitlines()[0]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list) \
            or not isinstance(document.get("annotations"), list):
        raise NetspecError(f"{who}: {path} is not a COCO annotation file: it needs 'images' and 'annotations' lists")
    return document


def check_segmentation(segmentation, height, width):
    """A reason string when ``segmentation`` is not a valid COCO segmentation of an
    ``height x width`` image, else None."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "an empty polygon list"
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in polygon):
                return "a polygon that is not a list of numbers"
            if len(polygon) < 6 or len(polygon) % 2:
                return f"a polygon of {len(polygon)} coordinates (needs an even number, at least 6)"
            if not np.all(np.isfinite(polygon)):
                return "a polygon with a non-finite coordinate"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            return "an RLE without a [height, width] 'size'"
        if list(size) != [height, width]:
            return f"an RLE of size {size[0]}x{size[1]} for a {height}x{width} image"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "an RLE whose counts are not non-negative integers"
            if sum(counts) != height * width:
                return f"an RLE whose counts sum to {sum(counts)}, not {height}*{width}"
            return None
        if isinstance(counts, str):
            return None
        return "an RLE without 'counts'"
    return f"a {type(segmentation).__name__} (expected a polygon list or an RLE dict)"


def rle_decode(rle):
    """``pycocotools.mask.decode`` without its NumPy 2 ``copy=False`` DeprecationWarning."""
    from pycocotools import mask as mask_utils
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copy keyword.*", category=DeprecationWarning)
        return mask_utils.decode(rle)


def decode_segmentation(segmentation, height, width):
    """A COCO segmentation as a bool ``(height, width)`` mask (pycocotools, as the COCO API does)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    mask = rle_decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"decodes to {mask.shape[0]}x{mask.shape[1]}")
    return mask.astype(bool)


class COCOInstances:
    """The images and annotations of one COCO JSON, indexed by image (no pycocotools COCO object)."""

    def __init__(self, path, image_dir, who="COCOInstances"):
        self.path, self.image_dir, self.who = path, image_dir, who
        document = _read_json(path, who)
        self.images = []
        self.by_id = {}
        for entry in document["images"]:
            if not isinstance(entry, dict) or not all(k in entry for k in ("id", "file_name", "height", "width")):
                raise NetspecError(f"{who}: {path}: an image entry lacks id, file_name, height or width: "
                                   f"{str(entry)[:80]}")
            if entry["id"] in self.by_id:
                raise NetspecError(f"{who}: {path}: image id {entry['id']} appears twice")
            self.by_id[entry["id"]] = entry
            self.images.append(entry)
        if not self.images:
            raise NetspecError(f"{who}: {path} lists no images")
        self.annotations = {image["id"]: [] for image in self.images}
        for ann in document["annotations"]:
            if not isinstance(ann, dict) or "segmentation" not in ann or "image_id" not in ann:
                raise NetspecError(f"{who}: {path}: annotation {ann.get('id') if isinstance(ann, dict) else ann!r} "
                                   "lacks image_id or segmentation")
            if ann["image_id"] not in self.annotations:
                raise NetspecError(f"{who}: {path}: annotation {ann.get('id')} refers to image id {ann['image_id']}, "
                                   "which the file's 'images' list does not have")
            self.annotations[ann["image_id"]].append(ann)

    def image_path(self, image_id):
        return os.path.join(self.image_dir, self.by_id[image_id]["file_name"])

    def masks(self, image_id):
        """``(masks (m, H, W) bool, iscrowd (m,) bool, annotations)`` of an image, annotation order."""
        entry = self.by_id[image_id]
        height, width = int(entry["height"]), int(entry["width"])
        anns = self.annotations[image_id]
        masks = np.zeros((len(anns), height, width), bool)
        for i, ann in enumerate(anns):
            problem = check_segmentation(ann["segmentation"], height, width)
            if problem is None:
                try:
                    masks[i] = decode_segmentation(ann["segmentation"], height, width)
                except Exception as e:                                  # pycocotools' own complaints
                    problem = f"a segmentation pycocotools cannot decode ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            if problem is not None:
                raise NetspecError(f"{self.who}: {self.path}: annotation {ann.get('id')} (image {entry['file_name']}) "
                                   f"has {problem}")
        crowd = np.array([bool(ann.get("iscrowd", 0)) for ann in anns], bool)
        return masks, crowd, anns


def instance_map(masks, crowd, max_instances=MAX_INSTANCES):
    """The instance-id map (float32 ``(H, W)``) of an image's masks, as the module docstring says."""
    masks = np.asarray(masks, bool)
    crowd = np.asarray(crowd, bool)
    height, width = masks.shape[1:]
    out = np.zeros((height, width), np.float32)
    for mask in masks[crowd]:
        out[mask] = VOID
    objects = np.flatnonzero(~crowd)
    areas = masks[objects].reshape(len(objects), -1).sum(axis=1)
    by_size = objects[np.lexsort((objects, -areas))]                   # largest first, ties in annotation order
    kept = np.sort(by_size[:max_instances])
    ids = {int(a): i + 1 for i, a in enumerate(kept)}
    for a in by_size[max_instances:][::-1]:                            # dropped instances: void
        out[masks[a]] = VOID
    for a in by_size[:max_instances]:
        out[masks[a]] = ids[int(a)]
    return out


class COCOInstanceDataLayer(SegDataLayer):
    """COCO instances: tops ``data`` and ``instances`` (see the module docstring)."""

    dir_keys = ("coco_dir",)
    extra_keys = ("mean", "annotations", "image_dir", "max_instances")

    def configure(self, params):
        self.coco_dir = os.fspath(params["coco_dir"])
        self.mean = self.parse_mean(params, VOC_MEAN_BGR)
        annotations = params.get("annotations", os.path.join("annotations", f"instances_{self.split}.json"))
        self.annotations_path = os.path.join(self.coco_dir, os.fspath(annotations))
        self.image_dir = os.path.join(self.coco_dir, os.fspath(params.get("image_dir", self.split)))
        max_instances = params.get("max_instances", MAX_INSTANCES)
        if not isinstance(max_instances, int) or not 1 <= max_instances <= MAX_INSTANCES:
            raise NetspecError(f"{self._who}: param_str 'max_instances' must be an integer in 1..{MAX_INSTANCES}, "
                               f"got {max_instances!r}")
        self.max_instances = max_instances

    def top_names(self):
        return ("data", "instances")

    def image_ids(self):
        """The ids of the annotation file's ``images``, in its order."""
        self.coco = COCOInstances(self.annotations_path, self.image_dir, self._who)
        return [entry["id"] for entry in self.coco.images]

    def load(self, top_name, image_id):
        entry = self.coco.by_id[image_id]
        if top_name == "data":
            path = self.coco.image_path(image_id)
            if not os.path.isfile(path):
                raise NetspecError(f"{self._who}: {path} (image id {image_id} in {self.annotations_path}) not found; "
                                   "check image_dir")
            data = load_bgr_image(path, self.mean, self._who)
            if data.shape[1:] != (entry["height"], entry["width"]):
                raise NetspecError(f"{self._who}: {path} is {data.shape[2]}x{data.shape[1]} but "
                                   f"{self.annotations_path} says {entry['width']}x{entry['height']} (image id {image_id})")
            return data
        masks, crowd, _ = self.coco.masks(image_id)
        return instance_map(masks, crowd, self.max_instances)[np.newaxis]
