"""PASCAL VOC 2011 keypoint annotations in the Berkeley "poselets" XML format.

The thesis (Secs. 2.2-2.4) uses the keypoint annotations of Bourdev & Malik [BM09] on
the twenty PASCAL VOC 2011 classes.  They come as one XML file per object instance,
grouped in one folder per class; this reader is written for that documented element
structure (it was not checked against the released files, which this project does not
download)::

    <annotation>
      <image>2008_000008</image>                 the VOC image id (JPEGImages/<id>.jpg)
      <category>horse</category>                 optional: else the parent folder's name
      <voc_id>1</voc_id>                         optional: the object's index in the image
      <visible_bounds xmin="52" ymin="86" width="380" height="274"/>
      <keypoints>
        <keypoint name="L_Eye" x="167.1" y="117.9" z="0" visible="1"/>
        ...
      </keypoints>
    </annotation>

``visible="0"`` marks a keypoint that is not visible (its coordinates are ignored; the
released files write such points with their guessed or zero coordinates).  ``z`` is
read and kept but not used.

A dataset directory (what :mod:`netspec.keypoints.synthetic` writes) is::

    root/JPEGImages/<image>.jpg
    root/Annotations_Keypoints/<category>/<image>_<n>.xml    one file per instance
    root/ImageSets/Keypoints/train.txt, val.txt              image ids
    root/PartLabels/<image>.png                              synthetic only (oracle features)

Every problem with a file is a :class:`~netspec.errors.NetspecError` of one line,
``file:line: what is wrong`` (the line of the element at fault).
"""
import glob
import os
from dataclasses import dataclass, field
from xml.parsers import expat

from ..errors import NetspecError

ANNOTATION_DIR = "Annotations_Keypoints"


@dataclass
class Instance:
    """One annotated object: bbox ``(xmin, ymin, width, height)`` in pixels and
    ``keypoints = {name: (x, y, visible)}`` in the file's order."""
    image: str
    category: str
    bbox: tuple
    keypoints: dict
    path: str = ""
    voc_id: int = 0
    z: dict = field(default_factory=dict)

    @property
    def box_size(self):
        return (self.bbox[2], self.bbox[3])


class _Element:
    __slots__ = ("tag", "attrs", "line", "children", "text")

    def __init__(self, tag, attrs, line):
        self.tag, self.attrs, self.line = tag, attrs, line
        self.children, self.text = [], ""

    def find(self, tag):
        for child in self.children:
            if child.tag == tag:
                return child
        return None


def _parse(path):
    """The XML file as a tree of elements that know their line numbers."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise NetspecError(f"{path}: cannot read ({e.strerror})") from None
    parser = expat.ParserCreate()
    stack, roots = [], []

    def start(tag, attrs):
        element = _Element(tag, attrs, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(tag):
        stack.pop()

    def text(chunk):
        if stack:
            stack[-1].text += chunk

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise NetspecError(f"{path}:{e.lineno}:{e.offset + 1}: not well-formed XML "
                           f"({expat.ErrorString(e.code)})") from None
    return roots[0]


def _number(path, element, attr, kind=float):
    if attr not in element.attrs:
        raise NetspecError(f'{path}:{element.line}: <{element.tag}> has no "{attr}" attribute')
    value = element.attrs[attr]
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise NetspecError(f'{path}:{element.line}: <{element.tag}> {attr}="{value}" is not a number') from None


def read_annotation(path, category=None):
    """One instance file -> :class:`Instance` (``category`` when the file names none)."""
    path = os.fspath(path)
    root = _parse(path)
    if root.tag != "annotation":
        raise NetspecError(f"{path}:{root.line}: the root element is <{root.tag}>, expected <annotation>")
    image = root.find("image")
    if image is None or not image.text.strip():
        raise NetspecError(f"{path}:{root.line}: <annotation> has no <image> (the VOC image id)")
    cat = root.find("category")
    category = cat.text.strip() if cat is not None and cat.text.strip() else category
    if not category:
        raise NetspecError(f"{path}:{root.line}: <annotation> has no <category> and the folder names none")
    voc = root.find("voc_id")
    voc_id = 0
    if voc is not None:
        try:
            voc_id = int(voc.text.strip())
        except ValueError:
            raise NetspecError(f'{path}:{voc.line}: <voc_id> "{voc.text.strip()}" is not an integer') from None
    bounds = root.find("visible_bounds")
    if bounds is None:
        raise NetspecError(f"{path}:{root.line}: <annotation> has no <visible_bounds>")
    bbox = tuple(_number(path, bounds, a) for a in ("xmin", "ymin", "width", "height"))
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise NetspecError(f"{path}:{bounds.line}: <visible_bounds> width and height must be > 0")
    points = root.find("keypoints")
    if points is None:
        raise NetspecError(f"{path}:{root.line}: <annotation> has no <keypoints>")
    keypoints, z = {}, {}
    for point in points.children:
        if point.tag != "keypoint":
            raise NetspecError(f"{path}:{point.line}: <keypoints> holds a <{point.tag}>, expected <keypoint>")
        name = point.attrs.get("name", "").strip()
        if not name:
            raise NetspecError(f'{path}:{point.line}: <keypoint> has no "name" attribute')
        if name in keypoints:
            raise NetspecError(f'{path}:{point.line}: keypoint "{name}" appears twice')
        visible = _number(path, point, "visible", int)
        if visible not in (0, 1):
            raise NetspecError(f'{path}:{point.line}: <keypoint name="{name}"> visible must be 0 or 1')
        x = _number(path, point, "x")
        y = _number(path, point, "y")
        z[name] = _number(path, point, "z") if "z" in point.attrs else 0.0
        keypoints[name] = (x, y, bool(visible))
    return Instance(image.text.strip(), category, bbox, keypoints, path, voc_id, z)


def _fmt(v):
    return f"{v:.2f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def write_annotation(path, instance):
    """Write ``instance`` in the same format (what the synthetic set uses)."""
    x, y, w, h = instance.bbox
    lines = ["<annotation>", f"  <image>{instance.image}</image>",
             f"  <category>{instance.category}</category>", f"  <voc_id>{instance.voc_id}</voc_id>",
             f'  <visible_bounds xmin="{_fmt(x)}" ymin="{_fmt(y)}" width="{_fmt(w)}" height="{_fmt(h)}"/>',
             "  <keypoints>"]
    for name, (kx, ky, visible) in instance.keypoints.items():
        lines.append(f'    <keypoint name="{name}" x="{_fmt(float(kx))}" y="{_fmt(float(ky))}" '
                     f'z="{_fmt(float(instance.z.get(name, 0.0)))}" visible="{int(bool(visible))}"/>')
    lines += ["  </keypoints>", "</annotation>", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


class KeypointDataset:
    """The instances of a dataset directory (see the module docstring), by split.

    ``names[category]`` lists the category's keypoint names in the order they first
    appear in its files (sorted by path).
    """

    def __init__(self, root):
        self.root = os.fspath(root)
        folder = os.path.join(self.root, ANNOTATION_DIR)
        if not os.path.isdir(folder):
            raise NetspecError(f"{self.root}: no {ANNOTATION_DIR}/ folder of keypoint annotations")
        self.instances = []
        for path in sorted(glob.glob(os.path.join(folder, "*", "*.xml"))):
            self.instances.append(read_annotation(path, os.path.basename(os.path.dirname(path))))
        if not self.instances:
            raise NetspecError(f"{folder}: no annotation files (<category>/<image>_<n>.xml)")
        self.names = {}
        for instance in self.instances:
            names = self.names.setdefault(instance.category, [])
            names += [n for n in instance.keypoints if n not in names]
        self.categories = sorted(self.names)
        self.splits = {}
        for split in ("train", "val"):
            path = os.path.join(self.root, "ImageSets", "Keypoints", f"{split}.txt")
            if os.path.exists(path):
                with open(path) as f:
                    self.splits[split] = [line.strip() for line in f if line.strip()]

    def split(self, name):
        """The instances whose image is in split ``name``."""
        if name not in self.splits:
            raise NetspecError(f"{self.root}: no ImageSets/Keypoints/{name}.txt")
        ids = set(self.splits[name])
        return [i for i in self.instances if i.image in ids]

    def image_path(self, image):
        return os.path.join(self.root, "JPEGImages", f"{image}.jpg")

    def read_image(self, image):
        """RGB ``uint8 (H, W, 3)``."""
        import numpy as np
        from PIL import Image
        path = self.image_path(image)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as e:
            raise NetspecError(f"{path}: cannot read the image ({e})") from None
