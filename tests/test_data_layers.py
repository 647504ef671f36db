"""Dataset layers of netspec.data on tiny datasets written in each dataset's on-disk layout."""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
from PIL import Image

from netspec.blob import Blob
from netspec.data.nyud_layers import NYUDSegDataLayer
from netspec.data.pascalcontext_layers import PASCALContextSegDataLayer
from netspec.data.siftflow_layers import SIFTFlowSegDataLayer
from netspec.data.voc_layers import SBDDSegDataLayer, VOCSegDataLayer
from netspec.errors import NetspecError

VOC_MEAN = (104.00698793, 116.66876762, 122.67891434)
# image i has size SIZES[i]; the size identifies which image a forward pass served
SIZES = [(5, 7), (6, 4), (3, 8)]
IDS = ["img_a", "img_b", "img_c"]


def make_layer(cls, params, name="data"):
    layer_param = SimpleNamespace(name=name, python_param=SimpleNamespace(param_str=repr(params)))
    return cls(layer_param)


def run(layer, n_tops, steps):
    """setup, then ``steps`` reshape+forward passes; returns the list of per-step top arrays."""
    tops = [Blob() for _ in range(n_tops)]
    layer.setup([], tops)
    served = []
    for _ in range(steps):
        layer.reshape([], tops)
        layer.forward([], tops)
        served.append([t.data.copy() for t in tops])
    return served


def rgb_image(index, size):
    """A deterministic RGB image whose channels differ clearly (R bright, G mid, B dark)."""
    h, w = size
    rng = np.random.default_rng(index)
    base = np.array([200, 120, 40]) + rng.integers(-20, 20, 3)
    return np.clip(base + rng.integers(-10, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def save_jpeg(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(path, quality=100)
    return np.asarray(Image.open(path).convert("RGB"), np.float64)  # what the decoder gives back


def expected_data(decoded_rgb, mean):
    return (decoded_rgb[:, :, ::-1] - np.asarray(mean, np.float64)).transpose(2, 0, 1)


def write_ids(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def label_map(index, size, classes=21):
    h, w = size
    rng = np.random.default_rng(100 + index)
    label = rng.integers(0, classes, (h, w)).astype(np.uint8)
    label[0, :] = 255  # a void border row
    return label


@pytest.fixture
def voc_dir(tmp_path):
    root = tmp_path / "VOC2011"
    decoded, labels = {}, {}
    for i, (image_id, size) in enumerate(zip(IDS, SIZES)):
        decoded[image_id] = save_jpeg(root / "JPEGImages" / f"{image_id}.jpg", rgb_image(i, size))
        labels[image_id] = label_map(i, size)
        png = Image.fromarray(labels[image_id], "P")
        png.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])
        (root / "SegmentationClass").mkdir(exist_ok=True)
        png.save(root / "SegmentationClass" / f"{image_id}.png")
    write_ids(root / "ImageSets/Segmentation/val.txt", IDS)
    write_ids(root / "ImageSets/Segmentation/train.txt", IDS)
    return root, decoded, labels


def served_ids(served):
    sizes = [tuple(step[0].shape[2:]) for step in served]
    return [IDS[SIZES.index(size)] for size in sizes]


def test_voc_data_label_and_sequential_order(voc_dir):
    root, decoded, labels = voc_dir
    mean = (100.5, 110.25, 120.125)
    served = run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="val", mean=mean)), 2, 5)
    assert served_ids(served) == ["img_a", "img_b", "img_c", "img_a", "img_b"]
    for (data, label), image_id in zip(served, served_ids(served)):
        h, w = SIZES[IDS.index(image_id)]
        assert data.shape == (1, 3, h, w) and label.shape == (1, 1, h, w)
        np.testing.assert_allclose(data[0], expected_data(decoded[image_id], mean), atol=1e-4)
        np.testing.assert_array_equal(label[0, 0], labels[image_id])
    # channel 0 is blue: the images are dark in blue, bright in red
    assert served[0][0][0, 0].mean() + mean[0] < 80 and served[0][0][0, 2].mean() + mean[2] > 160


def test_voc_default_mean_and_float64_subtraction(voc_dir):
    root, decoded, _ = voc_dir
    data = run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="val")), 2, 1)[0][0]
    expected = expected_data(decoded["img_a"], VOC_MEAN).astype(np.float32)
    np.testing.assert_array_equal(data[0], expected)


def test_voc_train_is_random_with_replacement_under_seed(voc_dir):
    root, _, _ = voc_dir
    served = run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="train", seed=7)), 2, 12)
    rng = random.Random(7)  # the reference: seed, then one randint per image, first one in setup
    expected = [IDS[rng.randint(0, len(IDS) - 1)] for _ in range(12)]
    assert served_ids(served) == expected
    assert len(set(expected)) < len(expected)  # drawn with replacement
    default_seed = run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="train")), 2, 6)
    rng = random.Random(1337)
    assert served_ids(default_seed) == [IDS[rng.randint(0, 2)] for _ in range(6)]
    not_random = run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="train", randomize=False)), 2, 4)
    assert served_ids(not_random) == ["img_a", "img_b", "img_c", "img_a"]


def test_voc_errors_name_the_problem(voc_dir, tmp_path):
    root, _, _ = voc_dir
    with pytest.raises(NetspecError, match="test.txt"):
        run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="test")), 2, 1)
    with pytest.raises(NetspecError, match="'colour'"):
        run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="val", colour=1)), 2, 1)
    with pytest.raises(NetspecError, match="'voc_dir'"):
        run(make_layer(VOCSegDataLayer, dict(split="val")), 2, 1)
    with pytest.raises(NetspecError, match="2 tops"):
        run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="val")), 3, 1)
    layer = VOCSegDataLayer(SimpleNamespace(name="data", python_param=SimpleNamespace(
        param_str="__import__('os').getcwd()")))
    with pytest.raises(NetspecError, match="dict literal"):
        run(layer, 2, 1)
    (root / "JPEGImages" / "img_b.jpg").unlink()
    with pytest.raises(NetspecError, match="img_b.jpg"):
        run(make_layer(VOCSegDataLayer, dict(voc_dir=str(root), split="val")), 2, 2)


def test_sbdd_reads_mat_labels(tmp_path):
    root = tmp_path / "dataset"
    decoded, labels = {}, {}
    for i, (image_id, size) in enumerate(zip(IDS, SIZES)):
        decoded[image_id] = save_jpeg(root / "img" / f"{image_id}.jpg", rgb_image(i, size))
        labels[image_id] = label_map(i, size)
        (root / "cls").mkdir(exist_ok=True)
        scipy.io.savemat(root / "cls" / f"{image_id}.mat",
                         {"GTcls": {"Segmentation": labels[image_id], "CategoriesPresent": np.array([1])}})
    write_ids(root / "seg11valid.txt", ["img_c", "img_a"])
    served = run(make_layer(SBDDSegDataLayer, dict(sbdd_dir=str(root), split="seg11valid", mean=VOC_MEAN)), 2, 3)
    assert served_ids(served) == ["img_c", "img_a", "img_c"]
    for (data, label), image_id in zip(served, served_ids(served)):
        np.testing.assert_allclose(data[0], expected_data(decoded[image_id], VOC_MEAN), atol=1e-4)
        np.testing.assert_array_equal(label[0, 0], labels[image_id])


def test_siftflow_semantic_and_geometric_labels(tmp_path):
    sub = "spatial_envelope_256x256_static_8outdoorcategories"
    mean = (114.578, 115.294, 108.353)
    sem = np.array([[0, 1, 2], [33, 5, 0]], np.int32)    # 0 = unlabelled
    geo = np.array([[-1, 0, 1], [2, 3, 3]], np.int16)   # -1 and 0 = unlabelled
    decoded = save_jpeg(tmp_path / "Images" / sub / "coast_1.jpg", rgb_image(0, (2, 3)))
    for folder, array in (("SemanticLabels", sem), ("GeoLabels", geo)):
        (tmp_path / folder / sub).mkdir(parents=True)
        scipy.io.savemat(tmp_path / folder / sub / "coast_1.mat", {"S": array})
    write_ids(tmp_path / "test.txt", ["coast_1"])
    (data, sem_top, geo_top), = run(make_layer(SIFTFlowSegDataLayer, dict(siftflow_dir=str(tmp_path),
                                                                           split="test")), 3, 1)
    np.testing.assert_allclose(data[0], expected_data(decoded, np.float32(mean)), atol=1e-4)
    np.testing.assert_array_equal(sem_top[0, 0], [[255, 0, 1], [32, 4, 255]])
    np.testing.assert_array_equal(geo_top[0, 0], [[255, 255, 0], [1, 2, 2]])


def test_nyud_tops_in_requested_order(tmp_path):
    size = (3, 4)
    rng = np.random.default_rng(3)
    color = rgb_image(0, size)  # NYUD colour images are PNGs: lossless
    (tmp_path / "data/images").mkdir(parents=True)
    Image.fromarray(color, "RGB").save(tmp_path / "data/images/img_5001.png")
    hha = rng.integers(0, 256, size + (3,)).astype(np.uint8)
    (tmp_path / "data/hha").mkdir(parents=True)
    Image.fromarray(hha, "RGB").save(tmp_path / "data/hha/img_5001.png")
    depth = rng.integers(500, 9000, size).astype(np.uint16)
    (tmp_path / "data/depth").mkdir(parents=True)
    Image.fromarray(depth).save(tmp_path / "data/depth/img_5001.png")
    seg = np.array([[0, 1, 40, 7], [3, 0, 2, 2], [40, 39, 1, 0]], np.uint8)
    (tmp_path / "segmentation").mkdir()
    scipy.io.savemat(tmp_path / "segmentation/img_5001.mat", {"segmentation": seg})
    write_ids(tmp_path / "val.txt", ["5001"])
    tops = ["label", "color", "depth", "hha"]
    (label, data, d, h), = run(make_layer(NYUDSegDataLayer, dict(nyud_dir=str(tmp_path), split="val", tops=tops)),
                               4, 1)
    np.testing.assert_array_equal(label[0, 0], np.where(seg == 0, 255, seg.astype(int) - 1))
    bgr_mean = np.array([116.190, 97.203, 92.318], np.float32)
    np.testing.assert_allclose(data[0], color[:, :, ::-1].transpose(2, 0, 1) - bgr_mean[:, None, None], atol=1e-4)
    np.testing.assert_allclose(d[0, 0], np.log(depth.astype(np.float64)) - 7.844, atol=1e-5)
    hha_mean = np.array([132.431, 94.076, 118.477])
    np.testing.assert_allclose(h[0], hha.transpose(2, 0, 1) - hha_mean[:, None, None], atol=1e-4)
    with pytest.raises(NetspecError, match="tops"):
        run(make_layer(NYUDSegDataLayer, dict(nyud_dir=str(tmp_path), split="val", tops=["rgb"])), 1, 1)


def test_pascalcontext_maps_full_labels_to_task(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "labels.txt").write_text("1: accordion\n2: aeroplane\n3: air conditioner\n4: table\n"
                                        "5: sky\n6: bedclothes\n7: cloth\n8: tree\n")
    (context / "59_labels.txt").write_text("1: aeroplane\n2: diningtable\n3: sky\n4: bedcloth\n5: clothes\n")
    full = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 8, 2, 4]], np.uint16)
    (context / "trainval").mkdir()
    scipy.io.savemat(context / "trainval/2008_000002.mat", {"LabelMap": full})
    voc = tmp_path / "VOCdevkit"
    decoded = save_jpeg(voc / "VOC2010/JPEGImages/2008_000002.jpg", rgb_image(1, (3, 4)))
    write_ids(voc / "VOC2010/ImageSets/Main/val.txt", ["2008_000002"])
    (data, label), = run(make_layer(PASCALContextSegDataLayer,
                                    dict(voc_dir=str(voc), context_dir=str(context), split="val")), 2, 1)
    # full number -> task class: aeroplane 2->1, table 4->2, sky 5->3, bedclothes 6->4, cloth 7->5, rest -> 0
    np.testing.assert_array_equal(label[0, 0], [[0, 0, 1, 0], [2, 3, 4, 5], [0, 0, 1, 2]])
    mean = np.array((104.007, 116.669, 122.679), np.float32)
    np.testing.assert_allclose(data[0], expected_data(decoded, mean), atol=1e-4)
