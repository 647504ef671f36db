"""Region decoding, grid NMS, upsampling, proposal metrics, and the ``regions`` command."""
import argparse
import json

import numpy as np
import pytest
from PIL import Image

from netspec.errors import NetspecError
from netspec.regions import (RegionScorer, bilinear_matrix, decode_regions, greedy_nms, grid_canvas_masks,
                             grid_nms, mask_iou, region_mask, rle_iou, upsample_logits)
from netspec.surgery import bilinear_kernel


@pytest.mark.parametrize("seed", range(6))
def test_grid_nms_equals_quadratic_greedy_nms(seed):
    rng = np.random.default_rng(seed)
    for _ in range(6):
        k = int(rng.integers(1, 8))
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        logits = rng.normal(0, 1, (k * k, h, w)).astype(np.float32) + rng.normal(0, 1.5)
        if seed % 2:                                   # smooth windows: near-duplicate regions, much suppression
            logits = np.repeat(rng.normal(0.5, 1, (1, h, w)), k * k, 0) + 0.3 * logits
        objectness = rng.normal(0, 1, (h, w))
        if seed % 3 == 0:
            objectness = np.round(objectness)          # ties: both break them by grid order
        regions = decode_regions(logits, objectness, stride=int(rng.integers(1, 9)))
        canvas = grid_canvas_masks(regions)            # every mask in one common frame
        for threshold in (0.0, 0.2, 0.5, 0.7, 0.95, 1.0):
            fast = grid_nms(regions.grid, regions.masks, regions.scores, threshold)
            slow = greedy_nms(canvas, regions.scores, threshold)
            np.testing.assert_array_equal(fast, slow)


def test_grid_nms_suppresses_by_windowed_iou_and_rejects_bad_input():
    masks = np.zeros((3, 3, 3), bool)
    masks[:, :, :] = True                              # full 3x3 windows
    grid = np.array([[0, 0], [0, 1], [0, 3]])          # offsets 1 (IoU 6/12) and 3 (disjoint)
    kept = grid_nms(grid, masks, np.array([3.0, 2.0, 1.0]), 0.4)
    assert kept.tolist() == [0, 2]
    assert grid_nms(grid, masks, np.array([3.0, 2.0, 1.0]), 0.5).tolist() == [0, 1, 2]
    with pytest.raises(NetspecError, match="share a grid cell"):
        grid_nms(np.array([[0, 0], [0, 0]]), masks[:2], np.ones(2), 0.5)
    with pytest.raises(NetspecError, match=r"\[0, 1\]"):
        grid_nms(grid, masks, np.ones(3), 1.5)


def test_decode_layout_clipping_and_empty_regions():
    k, h, w = 3, 2, 4
    logits = -np.ones((k * k, h, w), np.float32)
    logits[1 * k + 2, 0, 1] = 5.0                     # region (0, 1), offset (0, +1): grid cell (0, 2)
    logits[0 * k + 0, 0, 0] = 5.0                     # region (0, 0), offset (-1, -1): off the grid, clipped
    regions = decode_regions(logits, np.zeros((1, h, w)), stride=4)
    assert regions.grid.tolist() == [[0, 1]]
    assert np.argwhere(regions.masks[0]).tolist() == [[1, 2]]
    assert regions.box(0) == (-4, 0, 8, 12)
    two_class = decode_regions(logits, np.stack([np.zeros((h, w)), np.full((h, w), np.log(3))]), 4)
    np.testing.assert_allclose(two_class.scores, [0.75])
    with pytest.raises(NetspecError, match="K\\*K"):
        decode_regions(np.zeros((5, 2, 2)), np.zeros((2, 2)), 2)


def numpy_deconvolution(window, stride):
    """Caffe's Deconvolution of one channel, kernel 2s - s%2 bilinear, stride s, then crop s//2."""
    size = 2 * stride - stride % 2
    kernel = bilinear_kernel(size).astype(np.float64)
    k = window.shape[0]
    full = np.zeros(((k - 1) * stride + size,) * 2)
    for a in range(k):
        for b in range(k):
            full[a * stride:a * stride + size, b * stride:b * stride + size] += window[a, b] * kernel
    c = stride // 2
    return full[c:c + k * stride, c:c + k * stride]


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 5, 8])
def test_upsampling_is_fcn_bilinear_deconvolution(stride):
    rng = np.random.default_rng(stride)
    for k in (1, 2, 5):
        window = rng.normal(0, 1, (k, k))
        np.testing.assert_allclose(upsample_logits(window, stride), numpy_deconvolution(window, stride), atol=1e-6)
    # each window cell's value sits at the centre of its s x s block: constant inside, partition of unity
    u = bilinear_matrix(4, stride)
    np.testing.assert_allclose(u[stride // 2:-(stride // 2) or None].sum(axis=1), 1.0)


def test_upsampling_equals_netspec_deconvolution_layer(tmp_path):
    from netspec import TEST, Net
    from netspec.caffemodel import write_caffemodel
    for stride, k in ((2, 3), (3, 2)):
        size = 2 * stride - stride % 2
        net_file = tmp_path / f"up{stride}.prototxt"
        net_file.write_text(f"""
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: {k} dim: {k} }} }} }}
layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up"
  convolution_param {{ num_output: 1 bias_term: false kernel_size: {size} stride: {stride} pad: {stride // 2} }} }}
""")
        write_caffemodel(str(tmp_path / "w.caffemodel"), None, {"up": [bilinear_kernel(size)[None, None]]})
        net = Net(str(net_file), weights=str(tmp_path / "w.caffemodel"), phase=TEST, buckets="off")
        window = np.random.default_rng(stride).normal(0, 1, (k, k)).astype(np.float32)
        out = net.forward(data=window[None, None])["up"][0, 0]
        assert out.shape == (k * stride, k * stride)
        np.testing.assert_allclose(out, upsample_logits(window, stride), atol=1e-5)


def test_region_mask_thresholds_and_clips_to_the_image():
    k, stride = 3, 2
    logits = -np.ones((k * k, 3, 3), np.float32)
    logits[:, 0, 0] = 1.0                              # region at grid (0, 0): window starts at pixel -2
    regions = decode_regions(logits, np.zeros((3, 3)), stride)
    mask = region_mask(regions, 0, (5, 3))
    up = upsample_logits(regions.logits[0], stride)
    expected = np.zeros((5, 3), bool)
    expected[0:4, 0:3] = (up > 0)[2:6, 2:5]
    np.testing.assert_array_equal(mask, expected)
    assert mask[:4].all() and not mask[4:].any()


def strip(*spans, width=60):
    out = np.zeros((len(spans), 1, width), bool)
    for i, (a, b) in enumerate(spans):
        out[i, 0, a:b] = True
    return out


def test_metrics_by_hand():
    gt = strip((0, 10), (20, 30), (40, 50))
    proposals = strip((0, 8), (20, 25), (40, 46), (20, 29))   # IoUs: A .8, B .5, C .6, B .9
    np.testing.assert_allclose(mask_iou(gt, proposals), [[.8, 0, 0, 0], [0, .5, 0, .9], [0, 0, .6, 0]])
    np.testing.assert_allclose(rle_iou(gt, proposals), mask_iou(gt, proposals))
    scorer = RegionScorer(ks=(1, 2, 10))
    scorer.add(gt, proposals)
    s = scorer.summary()
    # best overlaps .8, .9, .6: counts at 0.5..0.95 are 3,3,3,2,2,2,2,1,1,0 = 19
    assert s["R@50"] == 1.0 and s["R@70"] == pytest.approx(2 / 3)
    assert s["ABO"] == pytest.approx((.8 + .9 + .6) / 3) and s["AR"] == pytest.approx(19 / 30)
    assert s["AR@1"] == pytest.approx(7 / 30)          # only A (.8): thresholds 0.5..0.8
    assert s["AR@2"] == pytest.approx(8 / 30)          # A .8, B .5
    assert s["AR@10"] == pytest.approx(19 / 30)
    scorer.add(strip((5, 15)), np.zeros((0, 1, 60), bool))    # an image with one instance, no proposals
    s = scorer.summary()
    assert s["images"] == 2 and s["instances"] == 4
    assert s["R@50"] == 0.75 and s["R@70"] == 0.5 and s["ABO"] == pytest.approx(2.3 / 4)
    assert s["AR"] == pytest.approx(19 / 40) and s["AR@1"] == pytest.approx(7 / 40)


DEPLOY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "regions_p1" type: "Convolution" bottom: "data" top: "regions_p1"
  convolution_param { num_output: 9 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "objectness_p1" type: "Convolution" bottom: "data" top: "objectness_p1"
  convolution_param { num_output: 1 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE kernel_size: 4 stride: 4 } }
layer { name: "regions_p2" type: "Convolution" bottom: "pool" top: "regions_p2"
  convolution_param { num_output: 25 kernel_size: 1 } }
layer { name: "objectness_p2" type: "Convolution" bottom: "pool" top: "objectness_p2"
  convolution_param { num_output: 1 kernel_size: 1 } }
"""


def regions_args(argv):
    from netspec.commands import regions
    parser = argparse.ArgumentParser()
    regions.add_arguments(parser)
    return regions, parser.parse_args(argv)


@pytest.fixture(scope="module")
def region_net(tmp_path_factory):
    from netspec.caffemodel import write_caffemodel
    root = tmp_path_factory.mktemp("regionnet")
    (root / "deploy.prototxt").write_text(DEPLOY)
    rs = np.random.RandomState(0)
    weights = {"regions_p1": [rs.randn(9, 3, 3, 3).astype(np.float32) * 0.02, rs.randn(9).astype(np.float32)],
               "objectness_p1": [rs.randn(1, 3, 3, 3).astype(np.float32) * 0.02, np.zeros(1, np.float32)],
               "regions_p2": [rs.randn(25, 3, 1, 1).astype(np.float32) * 0.02, rs.randn(25).astype(np.float32)],
               "objectness_p2": [rs.randn(1, 3, 1, 1).astype(np.float32) * 0.02, np.zeros(1, np.float32)]}
    write_caffemodel(str(root / "w.caffemodel"), None, weights)
    return root


def test_regions_command_writes_masks_json_and_overlay(region_net, tmp_path, capsys):
    rgb = np.random.default_rng(1).integers(0, 256, (21, 30, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    module, args = regions_args(["--model", str(region_net / "deploy.prototxt"), "--weights",
                                 str(region_net / "w.caffemodel"), "--top", "7", "--nms", "0.5",
                                 "-o", str(tmp_path / "out"), str(tmp_path / "img.png")])
    assert module.run(args) == 0
    document = json.loads((tmp_path / "out" / "img.json").read_text())
    assert document["height"] == 21 and document["width"] == 30
    regions = document["regions"]
    assert 1 <= len(regions) <= 7
    assert [r["rank"] for r in regions] == list(range(len(regions)))
    assert all(a["score"] >= b["score"] for a, b in zip(regions, regions[1:]))
    assert {r["pathway"] for r in regions} <= {"p1", "p2"}
    assert {r["stride"] for r in regions} <= {2, 4}     # auto strides: 30/15 and 30/8 rounded
    masks = []
    for r in regions:
        mask = np.asarray(Image.open(tmp_path / "out" / r["mask"])) > 0
        assert mask.shape == (21, 30) and mask.sum() == r["area"] > 0
        masks.append(mask)
    iou = mask_iou(np.array(masks), np.array(masks))
    assert (iou[np.triu_indices(len(masks), 1)] <= 0.5 + 1e-9).all()   # the cross-pathway NMS
    assert Image.open(tmp_path / "out" / "img_overlay.png").size == (30, 21)
    # explicit pathways and a wrong window are checked against the blobs
    module, args = regions_args(["--model", str(region_net / "deploy.prototxt"), "--weights",
                                 str(region_net / "w.caffemodel"), "--pathways", "p1:2:4", "-o",
                                 str(tmp_path / "o2"), str(tmp_path / "img.png")])
    with pytest.raises(NetspecError, match="K = 4"):
        module.run(args)


def test_regions_command_scores_a_coco_split(region_net, tmp_path):
    from netspec.data.synthetic_instances import make_instance_dataset
    make_instance_dataset(tmp_path / "coco", n_train=0, n_val=3, size=(24, 40), seed=1)
    module, args = regions_args(["--model", str(region_net / "deploy.prototxt"), "--weights",
                                 str(region_net / "w.caffemodel"), "--pathways", "p1:2:3,p2:4:5",
                                 "--score", str(tmp_path / "coco" / "annotations" / "instances_val.json"),
                                 "-o", str(tmp_path / "scores")])
    assert module.run(args) == 0
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert metrics["images"] == 3 and metrics["instances"] > 0
    for key in ("R@50", "R@70", "ABO", "AR", "AR@10", "AR@100", "AR@1000"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["R@50"] >= metrics["R@70"] and metrics["AR@10"] <= metrics["AR@100"] <= metrics["AR@1000"]


def test_regions_command_errors(region_net, tmp_path):
    module, args = regions_args(["--model", str(region_net / "deploy.prototxt"), "--weights",
                                 str(region_net / "w.caffemodel"), "--region-blob", "masks_{}", "x.png"])
    with pytest.raises(NetspecError, match="masks_"):
        module.run(args)
    module, args = regions_args(["--model", str(region_net / "deploy.prototxt"), "--weights",
                                 str(region_net / "w.caffemodel"), "--pathways", "p1:two"])
    with pytest.raises(NetspecError, match="IMAGE"):
        module.run(args)
    with pytest.raises(NetspecError, match="NAME:STRIDE"):
        module.parse_pathways("p1:two")
