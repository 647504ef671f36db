"""Receptive fields, parameter counts and multiply-adds (netspec.receptive_field, `netspec info`)."""
import json
import os

import pytest

from netspec import cli
from netspec.prototxt import parse_net, read_net
from netspec.receptive_field import graph_for_net, info, receptive_fields

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
ALEXNET = os.path.join(HERE, "data", "rf", "bvlc_alexnet_deploy.prototxt")   # BVLC models/bvlc_alexnet


def rows_by_name(path_or_text, **kwargs):
    net = read_net(path_or_text) if os.path.exists(path_or_text) else parse_net(path_or_text)
    rows, notes = info(net, **kwargs)
    return {r.name: r for r in rows}, notes


def rf(row):
    d = row.as_dict()
    return d["rf_size"], d["rf_stride"], d["rf_offset"]


def test_alexnet_reproduces_thesis_table_2_1():
    rows, notes = rows_by_name(ALEXNET, input_shapes={None: (1, 3, 227, 227)})
    table_2_1 = {"conv1": (11, 4), "conv2": (51, 8), "conv3": (99, 16), "conv4": (131, 16),
                 "conv5": (163, 16), "pool5": (195, 32)}
    for layer, (size, stride) in table_2_1.items():
        assert rf(rows[layer])[:2] == ([size, size], [stride, stride]), layer
    # centres: conv1's first unit looks at pixels 0..10; fc6 sees 355 pixels centred on the image
    assert rf(rows["conv1"])[2] == [5, 5]
    assert rf(rows["fc6"]) == ([355, 355], [32, 32], [113, 113])
    # the published AlexNet figures: 61M parameters, 724M multiply-adds per 227x227 image
    total_params = sum(r.params for r in rows.values())
    assert total_params == 60_965_224
    assert sum(r.macs for r in rows.values()) == 724_406_816
    assert rows["conv2"].macs == 27 * 27 * 256 * (96 // 2) * 25      # group 2
    assert rows["fc6"].macs == 9216 * 4096 and rows["pool5"].macs == 0 and rows["relu1"].macs == 0
    assert notes == []


def test_fcn_vgg16_and_fcn_alexnet_match_the_fcn_table():
    rows, notes = rows_by_name(os.path.join(ROOT, "models", "voc-fcn32s", "val.prototxt"))
    assert "assuming data 1x3x500x500" in notes[0]
    for layer in ("fc7", "score_fr"):
        assert rf(rows[layer])[:2] == ([404, 404], [32, 32])
    assert rf(rows["pool5"])[:2] == ([212, 212], [32, 32])
    assert rf(rows["conv1_1"])[2] == [-99, -99]           # pad 100: the first centre is in the padding
    # upscore (64x64, stride 32) mixes two fc7 units per axis: 404 + 32, at stride 1
    assert rf(rows["score"])[:2] == ([436, 436], [1, 1])
    learned = sum(r.learned_params for r in rows.values())
    total = sum(r.params for r in rows.values())
    assert round(learned / 1e6) == 134                   # Table 3.1: 134M (without the fixed upsampling)
    assert total - learned == rows["upscore"].params == 21 * 21 * 64 * 64
    rows, _ = rows_by_name(os.path.join(ROOT, "models", "voc-fcn-alexnet", "val.prototxt"))
    assert rf(rows["score_fr"])[:2] == ([355, 355], [32, 32])
    assert round(sum(r.learned_params for r in rows.values()) / 1e6) == 57
    # FCN-8s: the skips join at strides 16 and 8; each 2x upsampling adds one coarser unit
    rows, notes = rows_by_name(os.path.join(ROOT, "models", "voc-fcn8s", "deploy.prototxt"))
    assert notes == []
    assert rf(rows["score_pool4c"])[:2] == ([100, 100], [16, 16])
    assert rf(rows["fuse_pool4"])[:2] == ([436, 436], [16, 16])
    assert rf(rows["fuse_pool3"])[:2] == ([468, 468], [8, 8])
    assert rf(rows["score"])[:2] == ([468, 468], [1, 1])


NET_HEAD = 'name: "t" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: %d dim: %d } } }\n'


def conv(name, bottom, k, s=1, p=0, d=1, n=4, kind="Convolution", group=1):
    return (f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{name}" convolution_param '
            f'{{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} dilation: {d} group: {group} }} }}\n')


def pool(name, bottom, k, s):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            f'pooling_param {{ pool: MAX kernel_size: {k} stride: {s} }} }}\n')


def test_dilated_convolution():
    text = NET_HEAD % (32, 32) + conv("a", "data", 3, d=2) + pool("p", "a", 2, 2) + conv("b", "p", 3, d=3, p=3)
    rows, _ = rows_by_name(text)
    assert rf(rows["a"]) == ([5, 5], [1, 1], [2, 2])
    assert rf(rows["p"]) == ([6, 6], [2, 2], [2.5, 2.5])
    # 3 taps 3 apart on the stride-2 grid: 6 + 2*3*2; pad 3 (half the dilated extent) keeps the centre
    assert rf(rows["b"]) == ([18, 18], [2, 2], [2.5, 2.5])


def brute_force_rf(net_text, blob, x, axis_size):
    """Input pixels path-connected to unit x of ``blob`` along one axis, from the index
    arithmetic of each layer (padding positions count as units, as in the rf tables)."""
    graph = graph_for_net(parse_net(net_text))
    producer = {}
    for node in graph.nodes:
        for t in node.tops:
            producer[t] = node
    memo = {}

    def pixels(b, u):
        key = (b, u)
        if key in memo:
            return memo[key]
        node = producer[b]
        if node.is_input:
            result = {u}
        elif node.type in ("Convolution", "Pooling"):
            k, s, p = node.impl.kernel[0], node.impl.stride[0], node.impl.pad[0]
            d = getattr(node.impl, "dilation", [1])[0]
            result = set().union(*(pixels(node.bottoms[0], s * u - p + d * t) for t in range(k)))
        elif node.type == "Deconvolution":
            k, s, p, d = node.impl.kernel[0], node.impl.stride[0], node.impl.pad[0], node.impl.dilation[0]
            result = set().union(*(pixels(node.bottoms[0], (u + p - d * t) // s)
                                   for t in range(k) if (u + p - d * t) % s == 0))
        elif node.type == "Crop":
            result = pixels(node.bottoms[0], u + node.impl.starts[2])
        elif node.type == "Eltwise":
            result = set().union(*(pixels(bb, u) for bb in node.bottoms))
        else:
            result = pixels(node.bottoms[0], u)
        memo[key] = result
        return result

    got = pixels(blob, x)
    return min(got), max(got)


SKIP_NET = (NET_HEAD % (64, 64) + conv("c1", "data", 3, p=1) + pool("p1", "c1", 2, 2)
            + conv("c2", "p1", 3, p=1) + pool("p2", "c2", 3, 2) + conv("c3", "p2", 3)
            + conv("up", "c3", 4, s=2, n=4, kind="Deconvolution")
            + 'layer { name: "skip" type: "Crop" bottom: "p1" bottom: "up" top: "skip" crop_param { axis: 2 offset: 1 } }\n'
            + 'layer { name: "fuse" type: "Eltwise" bottom: "up" bottom: "skip" top: "fuse" }\n'
            + conv("up2", "fuse", 5, s=3, p=1, kind="Deconvolution")
            + 'layer { name: "out" type: "Crop" bottom: "up2" bottom: "data" top: "out" crop_param { axis: 2 offset: 5 } }\n')


def test_skip_net_with_deconvolution_crop_and_eltwise_matches_brute_force():
    graph = graph_for_net(parse_net(SKIP_NET))
    rfs = receptive_fields(graph)
    for blob in ("p2", "c3", "up", "skip", "fuse", "up2", "out"):
        axis = rfs[blob][0]
        size = graph.blob_shapes[blob][2]
        for x in range(size):
            lo, hi = brute_force_rf(SKIP_NET, blob, x, size)
            assert (axis.start(x), axis.end(x)) == (lo, hi), (blob, x)
        assert axis.size == max(brute_force_rf(SKIP_NET, blob, x, size)[1]
                                - brute_force_rf(SKIP_NET, blob, x, size)[0] + 1 for x in range(size))
        centres = axis.centres(size)
        assert centres[3] == sum(brute_force_rf(SKIP_NET, blob, 3, size)) / 2
    assert rfs["up"][0].stride == 2 and rfs["up2"][0].stride.denominator == 3


def test_params_and_macs_by_hand():
    text = (NET_HEAD % (8, 8) + conv("c", "data", 3, n=4) + pool("p", "c", 2, 2)
            + conv("d", "p", 2, s=2, n=6, kind="Deconvolution")
            + 'layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip" inner_product_param { num_output: 5 } }\n'
            + 'layer { name: "r" type: "ReLU" bottom: "ip" top: "ip" }\n')
    rows, _ = rows_by_name(text)
    assert (rows["c"].params, rows["c"].macs) == (4 * 3 * 9 + 4, 4 * 6 * 6 * 3 * 9)
    assert (rows["p"].params, rows["p"].macs) == (0, 0)
    # Deconvolution: bottom elements (4x3x3) * C_out * kernel
    assert (rows["d"].params, rows["d"].macs) == (4 * 6 * 4 + 6, 4 * 3 * 3 * 6 * 4)
    assert (rows["ip"].params, rows["ip"].macs) == (6 * 6 * 6 * 5 + 5, 1 * 216 * 5)
    assert rows["ip"].shapes == [(1, 5)] and rows["r"].macs == 0


def test_mismatched_strides_warn_and_report_the_largest():
    text = (NET_HEAD % (12, 12) + conv("a", "data", 7, n=3) + pool("b", "data", 2, 2)
            + 'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }\n')
    rows, notes = rows_by_name(text)
    assert rf(rows["sum"])[1] == [2, 2]
    assert any("different strides" in n and '"sum"' in n for n in notes)


def run_cli(argv, monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "info", "receptive fields")
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_command_text_and_json(monkeypatch, capsys):
    code, out, err = run_cli(["info", ALEXNET, "--input-shape", "1,3,227,227"], monkeypatch, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["layer", "type", "top", "shape"]
    conv3 = next(line for line in lines if line.startswith("conv3 "))
    assert conv3.split()[-3:] == ["99", "16", "17,17"]
    assert lines[-1].startswith("total: 60,965,224 params") and "724,406,816 multiply-adds" in lines[-1]
    code, out, err = run_cli(["info", ALEXNET, "--input-shape", "data=1,3,227,227", "--json"],
                             monkeypatch, capsys)
    entries = json.loads(out)
    assert code == 0 and [e["name"] for e in entries][:3] == ["data", "conv1", "relu1"]
    pool5 = next(e for e in entries if e["name"] == "pool5")
    for key in ("name", "type", "shape", "params", "macs", "rf_size", "rf_stride", "rf_offset"):
        assert key in pool5
    assert (pool5["shape"], pool5["rf_size"], pool5["rf_stride"], pool5["rf_offset"]) == \
        ([1, 256, 6, 6], [195, 195], [32, 32], [33, 33])
    prob = entries[-1]
    assert prob["params"] == 0 and prob["macs"] == 0


@pytest.mark.parametrize("spec, message", [
    ("1,3,x,227", "--input-shape 1,3,x,227: write it as N,C,H,W"),
    ("1,3,0,227", "write it as N,C,H,W"),
    ("image=1,3,227,227", 'no input blob "image" (inputs: data)'),
    ("1,3,20,20", 'layer "pool2" (Pooling)'),
])
def test_info_bad_input_shape_is_one_line(spec, message, monkeypatch, capsys):
    code, out, err = run_cli(["info", ALEXNET, "--input-shape", spec], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and err.startswith("netspec info: error:")
