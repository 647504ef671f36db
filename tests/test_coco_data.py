"""The COCO instance data layer on the synthetic COCO-format dataset, and its errors."""
import json
import random
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from netspec.blob import Blob
from netspec.data.coco_layers import COCOInstanceDataLayer, instance_map
from netspec.data.synthetic_instances import make_instance_dataset
from netspec.errors import NetspecError

MEAN = (100.0, 110.0, 120.0)


def make_layer(params, name="coco"):
    layer_param = SimpleNamespace(name=name, python_param=SimpleNamespace(param_str=repr(params)))
    return COCOInstanceDataLayer(layer_param)


def serve(layer, steps):
    tops = [Blob(), Blob()]
    layer.setup([], tops)
    served = []
    for _ in range(steps):
        layer.reshape([], tops)
        layer.forward([], tops)
        served.append((tops[0].data.copy(), tops[1].data.copy()))
    return served


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    start = time.perf_counter()
    make_instance_dataset(root, n_train=20, n_val=4, seed=3)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"writing 24 images took {elapsed:.2f} s"
    return root


def scanline_fill(polygon, height, width):
    """Independent polygon fill: per pixel row, the crossings of the row centre with the
    edges, sorted, filled pairwise (pixels whose centre x + 0.5 lies between two crossings)."""
    xs, ys = np.asarray(polygon[0::2], float), np.asarray(polygon[1::2], float)
    mask = np.zeros((height, width), bool)
    centres = np.arange(width) + 0.5
    for row in range(height):
        yc = row + 0.5
        crossings = []
        for i in range(len(xs)):
            x0, y0, x1, y1 = xs[i], ys[i], xs[i - 1], ys[i - 1]
            if (y0 <= yc < y1) or (y1 <= yc < y0):
                crossings.append(x0 + (yc - y0) * (x1 - x0) / (y1 - y0))
        crossings.sort()
        for a, b in zip(crossings[0::2], crossings[1::2]):
            mask[row] |= (centres > a) & (centres < b)
    return mask


def rle_decode(segmentation, height, width):
    """Independent RLE decoding: uncompressed counts, or COCO's compressed LEB128-like string."""
    counts = segmentation["counts"]
    if isinstance(counts, str):
        values, p = [], 0
        while p < len(counts):
            x, k, more = 0, 0, True
            while more:
                c = ord(counts[p]) - 48
                x |= (c & 0x1f) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(values) > 2:
                x += values[-2]
            values.append(x)
        counts = values
    flat = np.zeros(height * width, bool)
    position = 0
    for i, run in enumerate(counts):
        if i % 2:
            flat[position:position + run] = True
        position += run
    return flat.reshape(width, height).T                              # column-major


def expected_instances(document, image):
    """The instance map as the data layer documents it, from independent decoders."""
    height, width = image["height"], image["width"]
    anns = [a for a in document["annotations"] if a["image_id"] == image["id"]]
    decoded = []
    for ann in anns:
        seg = ann["segmentation"]
        decoded.append(scanline_fill(seg[0], height, width) if isinstance(seg, list) else rle_decode(seg, height, width))
    out = np.zeros((height, width), np.float32)
    for ann, mask in zip(anns, decoded):
        if ann["iscrowd"]:
            out[mask] = 255
    objects = [(mask.sum(), i, mask) for i, (ann, mask) in enumerate(zip(anns, decoded)) if not ann["iscrowd"]]
    ids = {i: n + 1 for n, (_, i, _) in enumerate(sorted(objects, key=lambda o: o[1]))}
    for _, i, mask in sorted(objects, key=lambda o: (-o[0], o[1])):
        out[mask] = ids[i]
    return out, anns


def test_dataset_has_polygons_rle_crowd_touching_instances_and_varied_sizes(coco):
    document = json.loads((coco / "annotations" / "instances_train.json").read_text())
    kinds = {("polygon" if isinstance(a["segmentation"], list) else
              "rle-string" if isinstance(a["segmentation"]["counts"], str) else "rle-list") for a in document["annotations"]}
    assert kinds == {"polygon", "rle-string", "rle-list"}
    assert any(a["iscrowd"] for a in document["annotations"])
    sides = {(i["height"], i["width"]) for i in document["images"]}
    assert len(sides) == 20 and min(min(s) for s in sides) >= 64 and max(max(s) for s in sides) <= 160
    areas = np.array([a["area"] for a in document["annotations"] if not a["iscrowd"]])
    assert areas.min() < 100 and areas.max() > 2000
    assert {c["id"] for c in document["categories"]} >= {a["category_id"] for a in document["annotations"]}
    for ann in document["annotations"]:
        assert ann["bbox"][2] > 0 and ann["area"] > 0
    again = coco.parent / "again"
    make_instance_dataset(again, n_train=20, n_val=4, seed=3)
    assert (again / "annotations" / "instances_train.json").read_bytes() == \
        (coco / "annotations" / "instances_train.json").read_bytes()
    assert (again / "train" / "000000000007.jpg").read_bytes() == (coco / "train" / "000000000007.jpg").read_bytes()
    # touching/overlapping instances: some image has two instances 4-adjacent
    layer = make_layer({"coco_dir": str(coco), "split": "val", "mean": MEAN})
    touching = 0
    for _, inst in serve(layer, 4):
        m = inst[0, 0]
        a, b = m[:, 1:], m[:, :-1]
        touching += int(((a != b) & (a > 0) & (b > 0) & (a < 255) & (b < 255)).any())
    assert touching >= 1


def test_layer_serves_bgr_and_instance_map_equal_to_independent_decoding(coco):
    document = json.loads((coco / "annotations" / "instances_train.json").read_text())
    layer = make_layer({"coco_dir": str(coco), "split": "train", "mean": MEAN, "randomize": False})
    served = serve(layer, 20)
    for image, (data, instances) in zip(document["images"], served):
        rgb = np.asarray(Image.open(coco / "train" / image["file_name"]).convert("RGB"), np.float64)
        expected_data = (rgb[:, :, ::-1] - np.asarray(MEAN)).transpose(2, 0, 1)
        assert data.shape == (1, 3, image["height"], image["width"])
        np.testing.assert_allclose(data[0], expected_data, atol=1e-4)
        expected, anns = expected_instances(document, image)
        assert instances.shape == (1, 1, image["height"], image["width"])
        np.testing.assert_array_equal(instances[0, 0], expected)
        assert set(np.unique(instances)) <= {0.0, 255.0, *range(1, 1 + sum(not a["iscrowd"] for a in anns))}


def test_training_split_samples_with_replacement_under_the_seed(coco):
    layer = make_layer({"coco_dir": str(coco), "split": "train", "mean": MEAN, "seed": 5})
    tops = [Blob(), Blob()]
    layer.setup([], tops)
    order = []
    for _ in range(12):
        order.append(layer.indices[layer.idx])
        layer.reshape([], tops)
        layer.forward([], tops)
    rng = random.Random(5)
    ids = [i + 1 for i in range(20)]
    assert order == [ids[rng.randint(0, 19)] for _ in range(12)]


def test_instance_map_order_overlap_crowd_and_max_instances():
    masks = np.zeros((4, 4, 6), bool)
    masks[0, :, :4] = True          # big, annotation 0
    masks[1, 1:3, 2:5] = True       # small, overlaps the big one: stays visible
    masks[2, 3, :] = True           # crowd
    masks[3, 0, 5] = True           # tiny
    crowd = np.array([False, False, True, False])
    out = instance_map(masks, crowd)
    assert out[1, 2] == 2 and out[0, 0] == 1 and out[0, 5] == 3
    assert out[3, 5] == 255 and out[3, 0] == 1                      # instances over crowd
    capped = instance_map(masks, crowd, max_instances=1)
    assert capped[0, 0] == 1 and capped[1, 2] == 1 and capped[1, 4] == 255 and capped[0, 5] == 255


def write_bad(coco, tmp_path, mutate):
    document = json.loads((coco / "annotations" / "instances_val.json").read_text())
    mutate(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("case, mutate, expect", [
    ("unknown image id", lambda d: d["annotations"][0].update(image_id=999), "image id 999"),
    ("missing file", lambda d: d["images"][0].update(file_name="nope.jpg"), "nope.jpg"),
    ("short polygon", lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "4 coordinates"),
    ("bad rle size", lambda d: d["annotations"][0].update(segmentation={"size": [3, 3], "counts": [9]}), "size 3x3"),
    ("bad rle counts", lambda d: d["annotations"][0].update(
        segmentation={"size": [d["images"][0]["height"], d["images"][0]["width"]], "counts": [1, 2]}), "sum to 3"),
    ("not a segmentation", lambda d: d["annotations"][0].update(segmentation="x"), "a str"),
    ("wrong size", lambda d: d["images"][0].update(height=d["images"][0]["height"] + 1), "says"),
])
def test_bad_annotations_are_one_line_errors_naming_file_and_annotation(coco, tmp_path, case, mutate, expect):
    path = write_bad(coco, tmp_path, mutate)
    first_ann = json.loads((coco / "annotations" / "instances_val.json").read_text())["annotations"][0]
    layer = make_layer({"coco_dir": str(coco), "split": "val", "annotations": str(path), "mean": MEAN})
    with pytest.raises(NetspecError) as info:
        serve(layer, 1)
    message = str(info.value)
    assert "\n" not in message and expect in message, message
    assert "bad.json" in message or "nope.jpg" in message
    if case in ("short polygon", "bad rle size", "bad rle counts", "not a segmentation", "unknown image id"):
        assert f"annotation {first_ann['id']}" in message


def test_unreadable_json_and_unknown_keys(coco, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(NetspecError, match="broken.json"):
        serve(make_layer({"coco_dir": str(coco), "split": "val", "annotations": str(broken)}), 1)
    with pytest.raises(NetspecError, match="unknown param_str key"):
        serve(make_layer({"coco_dir": str(coco), "split": "val", "colour": 1}), 1)
    with pytest.raises(NetspecError, match="instances_nosuch.json"):
        serve(make_layer({"coco_dir": str(coco), "split": "nosuch"}), 1)
