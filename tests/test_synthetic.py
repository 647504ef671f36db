"""The synthetic VOC-layout dataset: determinism, layout, labels, mean, and readability by VOCSegDataLayer."""
import filecmp
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from netspec.blob import Blob
from netspec.data.synthetic import CLASS_NAMES, make_dataset
from netspec.data.voc_layers import VOCSegDataLayer
from netspec.errors import NetspecError


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    start = time.perf_counter()
    names, mean_bgr = make_dataset(root, n_train=30, n_val=10, size=(48, 96), num_classes=6, seed=3)
    return root, names, mean_bgr, time.perf_counter() - start


def test_same_seed_gives_byte_identical_files(dataset, tmp_path):
    root, names, mean_bgr, _ = dataset
    again = tmp_path / "again"
    assert make_dataset(again, n_train=30, n_val=10, size=(48, 96), num_classes=6, seed=3) == (names, mean_bgr)
    files = all_files(root)
    assert files == all_files(again)
    match, mismatch, errors = filecmp.cmpfiles(root, again, files, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(files)
    other = tmp_path / "other"
    make_dataset(other, n_train=30, n_val=10, size=(48, 96), num_classes=6, seed=4)
    assert not filecmp.cmp(root / "JPEGImages/000000.jpg", other / "JPEGImages/000000.jpg", shallow=False)


def test_layout_and_split_lists(dataset):
    root, names, _, seconds = dataset
    assert names == list(CLASS_NAMES[:6]) and names[0] == "background"
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 30 and len(val) == 10 and not set(train) & set(val)
    for image_id in train + val:
        assert (root / "JPEGImages" / f"{image_id}.jpg").is_file()
        assert (root / "SegmentationClass" / f"{image_id}.png").is_file()
    assert seconds < 10  # 40 images; about 1 s for 200 on one core


def test_labels_are_palette_pngs_with_void_outlines(dataset):
    root, _, _, _ = dataset
    sizes, classes_seen = set(), set()
    for png in sorted((root / "SegmentationClass").iterdir()):
        with Image.open(png) as image:
            assert image.mode == "P"
            label = np.array(image)
        with Image.open(root / "JPEGImages" / (png.stem + ".jpg")) as jpg:
            assert jpg.size == image.size and jpg.mode == "RGB"
        h, w = label.shape
        assert 48 <= h <= 96 and 48 <= w <= 96
        sizes.add((h, w))
        values = set(np.unique(label).tolist())
        assert values <= set(range(6)) | {255}
        classes_seen |= values
        # void separates regions: no two 4-neighbours carry different class labels
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            both_classes = (a != 255) & (b != 255)
            assert not np.any(both_classes & (a != b))
    assert len(sizes) > 10  # varying image sizes
    assert classes_seen == set(range(6)) | {255}


def test_mean_is_train_mean_in_bgr(dataset):
    root, _, mean_bgr, _ = dataset
    pixels = []
    for image_id in (root / "ImageSets/Segmentation/train.txt").read_text().split():
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as jpg:
            pixels.append(np.asarray(jpg, np.float64).reshape(-1, 3))
    rgb_mean = np.concatenate(pixels).mean(axis=0)
    np.testing.assert_allclose(mean_bgr, rgb_mean[::-1], atol=1e-5)


def test_objects_differ_from_background_in_colour(dataset):
    root, _, _, _ = dataset
    per_class = {c: [] for c in range(6)}
    for png in sorted((root / "SegmentationClass").iterdir()):
        label = np.array(Image.open(png))
        rgb = np.asarray(Image.open(root / "JPEGImages" / (png.stem + ".jpg")), np.float64)
        for c in range(6):
            per_class[c].append(rgb[label == c])
    means = np.array([np.concatenate(per_class[c]).mean(axis=0) for c in range(6)])
    # disc is red-dominant, square blue-dominant, triangle green-dominant
    assert means[1].argmax() == 0 and means[2].argmax() == 2 and means[3].argmax() == 1
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[np.triu_indices(6, 1)].min() > 20


def test_voc_layer_reads_the_dataset(dataset):
    root, _, mean_bgr, _ = dataset
    param = SimpleNamespace(name="data", python_param=SimpleNamespace(
        param_str=repr(dict(voc_dir=str(root), split="val", mean=mean_bgr))))
    layer, tops = VOCSegDataLayer(param), [Blob(), Blob()]
    layer.setup([], tops)
    layer.reshape([], tops)
    layer.forward([], tops)
    label = np.array(Image.open(root / "SegmentationClass/000030.png"))
    np.testing.assert_array_equal(tops[1].data[0, 0], label)
    assert tops[0].shape == (1, 3) + label.shape


def test_bad_arguments():
    with pytest.raises(NetspecError, match="num_classes"):
        make_dataset("/nonexistent-never-written", num_classes=len(CLASS_NAMES) + 1)
    with pytest.raises(NetspecError, match="size"):
        make_dataset("/nonexistent-never-written", size=(4, 2))
