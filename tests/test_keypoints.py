"""Thesis ch. 2 keypoint experiments: convnet flow, PCK, SVM pipelines, poselets XML."""
import argparse
import os
import time

import numpy as np
import pytest

from netspec.errors import NetspecError
from netspec.keypoints import flow as F
from netspec.keypoints.annotations import KeypointDataset, read_annotation
from netspec.keypoints.extract import HogExtractor, OracleExtractor, to_box, to_image
from netspec.keypoints.pck import pck, pck_records
from netspec.keypoints.svm import classify_experiment, concat3x3, predict_experiment
from netspec.keypoints.synthetic import make_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("kp")
    written = make_dataset(root, n_train=30, n_val=12, size=96, seed=3)
    return root, written, KeypointDataset(root)


# -- distance transform and BP ---------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("beta", [0.05, 1.0, 7.5])
def test_distance_transform_matches_brute_force(n, beta):
    rng = np.random.default_rng(n)
    f = rng.normal(0, 5, (6, 5, n))
    f[0, 0, 0] = 1e6          # a huge cost (off-grid displacements) stays exact
    for axis in (0, 1, 2):
        assert np.allclose(F.distance_transform(f, beta, axis), F.distance_transform_brute(f, beta, axis))


@pytest.mark.parametrize("shape", [(1, 4), (3, 1), (4, 1)])
def test_bp_is_exact_on_chains(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(4):
        D = rng.uniform(0, 1, shape + (3, 3))
        beta = [0.02, 0.2, 0.6, 2.0][trial]
        labels, _ = F.belief_propagation(D, beta)
        _, best = F.exhaustive_minimum(D, beta)
        assert F.energy(D, labels, beta, 1) == pytest.approx(best, abs=1e-9)


def test_bp_near_exact_on_2x2_grid():
    rng = np.random.default_rng(0)
    gaps = []
    for beta in (0.05, 0.3, 1.0):
        D = rng.uniform(0, 1, (2, 2, 3, 3))
        labels, _ = F.belief_propagation(D, beta, iterations=20)
        _, best = F.exhaustive_minimum(D, beta)
        gaps.append(F.energy(D, labels, beta, 1) - best)
    assert min(gaps) >= -1e-9 and max(gaps) <= 0.1


def test_flow_recovers_a_shift():
    rng = np.random.default_rng(1)
    fs = rng.normal(size=(16, 6, 7))
    ft = np.zeros_like(fs)
    ft[:, :, 1:] = fs[:, :, :-1]           # the target is the source moved one cell right
    c = 8.0 * np.arange(7) + 3.5
    flow = F.convnet_flow((fs, c[:6], c), (ft, c[:6], c), beta=0.1, radius=2)
    assert (flow.labels[:, :-1] == [0, 1]).all()
    assert flow.data_energy < F.OUTSIDE
    assert flow.energy == pytest.approx(flow.data_energy + flow.deformation_energy)


# -- spline warping --------------------------------------------------------------------
def test_warp_identity_and_constant_flow():
    cy, cx = 8.0 * np.arange(6) + 3.5, 8.0 * np.arange(7) + 3.5
    points = np.array([[3.5, 3.5], [20.0, 17.3], [51.5, 43.5], [9.9, 40.1]])
    zero = F.Flow(np.zeros((6, 7, 2), int), 0.0, 0.0, (cy, cx), (cy, cx))
    assert np.allclose(zero.warp_points(points), points)
    shifted = np.zeros((6, 7, 2), int)
    shifted[..., 0], shifted[..., 1] = 1, 2                  # down one cell, right two
    target = (8.0 * np.arange(8) + 3.5, 8.0 * np.arange(9) + 3.5)     # room for the shift
    flow = F.Flow(shifted, 0.0, 0.0, (cy, cx), target)
    assert np.allclose(flow.warp_points(points), points + [16.0, 8.0])
    # a linear displacement field is reproduced exactly between the grid points
    dy = np.zeros((6, 7)) + 0.5 * cy[:, None]
    dx = np.zeros((6, 7)) - 0.25 * cx[None, :]
    moved = F.warp_points(points, cy, cx, dy, dx)
    assert np.allclose(moved, points + np.stack([-0.25 * points[:, 0], 0.5 * points[:, 1]], -1))


def test_box_coordinates_round_trip():
    bbox = (10.0, 20.0, 40.0, 80.0)
    p = np.array([[10.0, 20.0], [49.0, 99.0], [23.4, 57.1]])
    assert np.allclose(to_image(to_box(p, bbox, 64), bbox, 64), p)


def test_concat3x3():
    f = np.arange(12, dtype=float).reshape(1, 3, 4)
    c = concat3x3(f)
    assert c.shape == (9, 3, 4)
    assert c[4].tolist() == f[0].tolist()                        # the centre
    assert c[0, 1, 1] == f[0, 0, 0] and c[0, 0, 0] == 0          # up-left neighbour, zero padded


# -- PCK ---------------------------------------------------------------------------------
def test_pck_hand_computed():
    box = (100.0, 50.0)                          # alpha 0.1 -> threshold 10 pixels
    records = [
        ("cat", "eye", (0.0, 0.0), (6.0, 8.0), True, box),       # distance 10: not < 10
        ("cat", "eye", (0.0, 0.0), (6.0, 7.0), True, box),       # 9.2: correct
        ("cat", "nose", (5.0, 5.0), (5.0, 5.0), True, box),      # correct
        ("cat", "nose", (90.0, 90.0), (5.0, 5.0), False, box),   # not visible: not scored
        ("dog", "tail", None, (1.0, 1.0), True, box),            # no prediction: wrong
        ("dog", "ear", (1.0, 1.0), (1.0, 3.0), True, (40.0, 10.0)),  # 2 < 4: correct
    ]
    mean, per_category, per_type = pck(records, 0.1)
    assert per_type == {("cat", "eye"): 0.5, ("cat", "nose"): 1.0, ("dog", "tail"): 0.0, ("dog", "ear"): 1.0}
    assert per_category == {"cat": 0.75, "dog": 0.5}
    assert mean == pytest.approx(0.625)
    assert pck(records, 0.025)[1] == {"cat": 0.5, "dog": 0.0}


# -- annotations -------------------------------------------------------------------------
def test_synthetic_round_trip_and_determinism(tmp_path):
    start = time.time()
    written = make_dataset(tmp_path / "a", n_train=14, n_val=6, size=(80, 112), seed=5)
    assert time.time() - start < 2.0
    make_dataset(tmp_path / "b", n_train=14, n_val=6, size=(80, 112), seed=5)
    for folder, _, files in os.walk(tmp_path / "a"):
        for name in files:
            other = os.path.join(str(folder).replace(str(tmp_path / "a"), str(tmp_path / "b")), name)
            assert open(os.path.join(folder, name), "rb").read() == open(other, "rb").read()
    dataset = KeypointDataset(tmp_path / "a")
    assert len(dataset.instances) == len(written) > 20
    assert dataset.categories == ["figure", "plane", "quadruped"]
    by_path = {i.path: i for i in dataset.instances}
    for instance in written:
        read = by_path[instance.path]
        assert (read.image, read.category, read.bbox, read.voc_id) == \
            (instance.image, instance.category, instance.bbox, instance.voc_id)
        assert read.keypoints == instance.keypoints
    assert len(dataset.split("train")) + len(dataset.split("val")) == len(written)
    visible = [v for i in written for (_, _, v) in i.keypoints.values()]
    assert 0.5 < np.mean(visible) < 1.0          # some keypoints occluded or outside


GOOD = """<annotation>
  <image>2008_000008</image>
  <category>horse</category>
  <visible_bounds xmin="52" ymin="86" width="380" height="274"/>
  <keypoints>
    <keypoint name="L_Eye" x="167.1" y="117.9" z="0" visible="1"/>
    <keypoint name="Nose" x="0" y="0" z="0" visible="0"/>
  </keypoints>
</annotation>
"""


@pytest.mark.parametrize("broken, message", [
    (GOOD.replace("</keypoints>", ""), "b.xml:9:3: not well-formed XML (mismatched tag)"),
    (GOOD.replace('y="117.9"', 'y="11x"'), 'b.xml:6: <keypoint> y="11x" is not a number'),
    (GOOD.replace('visible="1"', ""), 'b.xml:6: <keypoint> has no "visible" attribute'),
    (GOOD.replace('<visible_bounds xmin="52" ymin="86" width="380" height="274"/>', ""),
     "b.xml:1: <annotation> has no <visible_bounds>"),
    (GOOD.replace('name="Nose"', 'name="L_Eye"'), 'b.xml:7: keypoint "L_Eye" appears twice'),
    (GOOD.replace("<image>2008_000008</image>", ""), "b.xml:1: <annotation> has no <image>"),
])
def test_annotation_errors_are_one_line(tmp_path, broken, message):
    path = tmp_path / "b.xml"
    path.write_text(broken)
    with pytest.raises(NetspecError) as e:
        read_annotation(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text


def test_annotation_reader_good_file(tmp_path):
    path = tmp_path / "g.xml"
    path.write_text(GOOD)
    instance = read_annotation(path)
    assert instance.category == "horse" and instance.image == "2008_000008"
    assert instance.bbox == (52.0, 86.0, 380.0, 274.0)
    assert instance.keypoints == {"L_Eye": (167.1, 117.9, True), "Nose": (0.0, 0.0, False)}


# -- the pipelines, with oracle and HOG-like features -------------------------------------
def _neighbours(extractor, layer, val, train, size, k):
    g = lambda i: np.asarray(extractor.box(i, size)[layer][0]).ravel()
    out = []
    for target in val:
        same = [j for j, s in enumerate(train) if s.category == target.category]
        out.append([same[n] for n in F.cosine_neighbours(g(target), [g(train[j]) for j in same], k)])
    return out


def test_classification_oracle_beats_chance(synthetic):
    _, _, dataset = synthetic
    train, val = dataset.split("train"), dataset.split("val")
    oracle = OracleExtractor(dataset, 8)
    mean, per_category = classify_experiment(oracle, "oracle", train, val, C=1.0)
    assert set(per_category) <= {"figure", "plane", "quadruped"}
    assert mean > 0.9                                   # chance is about 1 / 6.5
    hog_mean, _ = classify_experiment(HogExtractor(dataset, 8), "hog", train, val)
    assert 0.0 <= hog_mean <= 1.0


def test_prediction_and_transfer_oracle(synthetic):
    _, _, dataset = synthetic
    train, val = dataset.split("train"), dataset.split("val")
    oracle = OracleExtractor(dataset, 8)
    out = predict_experiment(oracle, "oracle", train, val, size=64)
    scores = {k: pck(pck_records(val, v), 0.1)[0] for k, v in out.items()}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert scores["svm+prior"] > 0.6 and scores["svm"] > 0.3        # a random cell: about 0.05
    neighbours = _neighbours(oracle, "oracle", val[:6], train, 64, 5)
    warped, beta = F.flow_experiment(oracle, "oracle", val[:6], train, neighbours, size=64, radius=3)
    copied, _ = F.flow_experiment(None, None, val[:6], train, neighbours, size=64, no_flow=True)
    flow_pck = pck(pck_records(val[:6], warped), 0.1)[0]
    nn_pck = pck(pck_records(val[:6], copied), 0.1)[0]
    assert beta > 0 and flow_pck > 0.8 and flow_pck >= nn_pck


def test_fallback_features_agree_with_netspec_features(tmp_path):
    from netspec import Net, TEST
    from netspec.keypoints import extract
    from netspec.keypoints.tiny_net import write_tiny_net
    net = Net(write_tiny_net(str(tmp_path / "tiny.prototxt")), phase=TEST)
    x = np.random.default_rng(0).uniform(-50, 50, (3, 64, 80)).astype(np.float32)
    ours = extract.dense_features(net, x, ["conv3", "conv5", "pool5"])
    assert ours["conv5"][1].tolist() == (6.0 + 8.0 * np.arange(8)).tolist()
    assert extract.rf_geometry(net)["conv5"] == (8.0, 6.0, 73.0)
    features = pytest.importorskip("netspec.features")
    theirs = features.dense_features(net, x, ["conv3", "conv5", "pool5"])
    for layer in ours:
        for a, b in zip(ours[layer], theirs[layer]):
            assert np.allclose(a, b)


# -- the command, with the small random convnet --------------------------------------------
def _command(argv):
    from netspec.commands import keypoints
    parser = argparse.ArgumentParser()
    keypoints.add_arguments(parser)
    return keypoints.run(parser.parse_args(argv))


def test_command_runs_each_experiment(tmp_path, capsys):
    common = ["--out", str(tmp_path), "--train", "8", "--val", "4", "--image-size", "64", "--oracle"]
    assert _command(["classify", "--layers", "conv3,conv5"] + common) == 0
    text = capsys.readouterr().out
    assert "Table 2.3" in text and "conv3" in text and "oracle" in text
    assert _command(["flow", "--neighbours", "3", "--top", "2"] + common + ["--data", str(tmp_path / "data")]) == 0
    text = capsys.readouterr().out
    assert "conv4 flow" in text and "NN transfer" in text and "a=0.025" in text
    assert _command(["predict", "--size", "64", "--rounds", "1"] + common + ["--data", str(tmp_path / "data")]) == 0
    text = capsys.readouterr().out
    assert "conv5+prior" in text and "hog+prior" in text and "NN prior" in text
    with pytest.raises(NetspecError, match="no blob 'fc9'"):
        _command(["classify", "--layers", "fc9"] + common + ["--data", str(tmp_path / "data")])
