"""``netspec.draw`` (pycaffe's ``caffe.draw``), ``netspec draw`` and BVLC's ``python/draw_net.py``
run on netspec: the DOT source (layer boxes with their parameters, blob ovals, in-place layers
folded, phase filtering) and, where Graphviz's ``dot`` is installed, rendered files."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import netspec as caffe
from netspec import draw
from netspec.cli import main
from netspec.errors import NetspecError
from netspec.prototxt import parse_net

REPO = Path(__file__).resolve().parents[1]
HAVE_DOT = shutil.which("dot") is not None
NO_DOT = "Graphviz's dot is not installed (apt-get install graphviz): rendering is not tested"

NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { batch_size: 64 source: "train_lmdb" } }
layer { name: "data" type: "Input" top: "data" include { phase: TEST }
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1/a" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" include { phase: TRAIN } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" exclude { phase: TRAIN } }
"""


def net_param():
    return parse_net(NET)


def node_lines(source, prefix):
    return [line for line in source.splitlines() if line.startswith(f'"{prefix}') and " -> " not in line]


def test_layer_boxes_carry_their_parameters():
    source = draw.dot_source(net_param(), "LR")
    conv = [line for line in node_lines(source, "layer") if "conv1" in line]
    assert len(conv) == 1
    assert ('label="conv1\\n(Convolution)\\nkernel size: 3\\nstride: 2\\npad: 1\\nnum_output: 4"'
            in conv[0])
    assert "shape=box" in conv[0] and 'fillcolor="#FF5050"' in conv[0]
    pool = [line for line in node_lines(source, "layer") if "pool1/a" in line][0]
    assert "(Pooling AVE)\\nkernel size: 2x3\\nstride: 2\\npad: 0" in pool
    assert 'fillcolor="#FF9900"' in pool
    fc = [line for line in node_lines(source, "layer") if '\\n(InnerProduct)' in line][0]
    assert "num_output: 5" in fc and 'fillcolor="#CC33FF"' in fc
    # edges to tops carry num_output (Caffe's edge labels), the Data layer's its batch size
    assert '-> "blob conv1" [label="4"]' in source
    assert '-> "blob label" [label="64"]' in source
    unlabelled = draw.dot_source(net_param(), "LR", label_edges=False)
    assert not [line for line in unlabelled.splitlines() if " -> " in line and "label=" in line]
    # top-to-bottom drawings put the parameters on one line
    tb = draw.dot_source(net_param(), "TB")
    assert "rankdir=TB" in tb
    assert 'label="conv1 (Convolution) kernel size: 3 stride: 2 pad: 1 num_output: 4"' in tb


def test_learning_rate_multipliers_on_request():
    assert "lr mult" not in draw.dot_source(net_param(), "LR")
    source = draw.dot_source(net_param(), "LR", display_lrm=True)
    assert "lr mult: 1.0, 2.0" in source        # conv1's two params
    assert "lr mult: 1.0, 1.0" in source        # fc: Caffe's defaults
    assert draw.get_layer_lr_mult(net_param().layer[2]) == (1.0, 2.0)


def test_blobs_are_ovals_and_in_place_layers_fold_onto_their_blob():
    source = draw.dot_source(net_param(), "LR")
    blobs = node_lines(source, "blob")
    assert sorted(line.split('"')[1] for line in blobs) == [
        "blob conv1", "blob data", "blob fc", "blob label", "blob loss", "blob pool1", "blob prob"]
    assert all("shape=oval" in line and 'fillcolor="#E0E0E0"' in line for line in blobs)
    # relu1 writes conv1 in place: no new blob, a green box hanging on conv1
    relu = [line for line in node_lines(source, "layer") if "relu1" in line][0]
    assert 'fillcolor="#90EE90"' in relu
    relu_id = relu.split('"')[1]
    assert f'"blob conv1" -> "{relu_id}";' in source
    assert f'"{relu_id}" -> "blob conv1";' in source


def test_phase_filtering():
    every = draw.dot_source(net_param(), "LR")
    train = draw.dot_source(net_param(), "LR", phase=caffe.TRAIN)
    test = draw.dot_source(net_param(), "LR", phase=caffe.TEST)
    assert "(Data)" in every and "(Input)" in every and "(SoftmaxWithLoss)" in every
    assert "(Data)" in train and "(SoftmaxWithLoss)" in train
    assert "(Input)" not in train and "(Softmax)" not in train and "blob label" in train
    assert "(Input)" in test and "(Softmax)" in test
    assert "(Data)" not in test and "(SoftmaxWithLoss)" not in test and "blob label" not in test
    assert draw.dot_source(net_param(), "LR", phase="TEST") == test
    assert draw.dot_source(net_param(), "LR", phase="ALL") == every
    bad = net_param()
    bad.layer[3].include.add(phase=caffe.TRAIN)
    bad.layer[3].exclude.add(phase=caffe.TEST)
    with pytest.raises(NetspecError, match='"relu1" has both include and exclude'):
        draw.dot_source(bad, "LR", phase=caffe.TEST)


def test_legacy_v1_nets_are_drawn():
    v1 = parse_net('name: "old" layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y" '
                   "inner_product_param { num_output: 3 } }", upgrade_legacy=False)
    assert "ip\\n(InnerProduct)\\nnum_output: 3" in draw.dot_source(v1, "LR")


def test_dot_source_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))       # no dot anywhere
    assert draw.draw_net(net_param(), "LR", ext="dot").startswith(b'digraph "tiny" {')
    with pytest.raises(NetspecError, match="apt-get install graphviz") as e:
        draw.draw_net(net_param(), "LR", ext="png")
    assert "\n" not in str(e.value)
    assert main(["draw", _write(tmp_path), str(tmp_path / "net.png")]) == 2
    assert main(["draw", _write(tmp_path), str(tmp_path / "net.dot"), "--phase", "TEST"]) == 0
    assert "(Input)" in (tmp_path / "net.dot").read_text()


def _write(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return str(path)


@pytest.mark.skipif(not HAVE_DOT, reason=NO_DOT)
def test_rendered_png_svg_pdf(tmp_path):
    png = draw.draw_net(net_param(), "LR", ext="png", phase=caffe.TEST)
    assert png.startswith(b"\x89PNG")
    draw.draw_net_to_file(net_param(), str(tmp_path / "net.svg"), "TB")
    svg = (tmp_path / "net.svg").read_text()
    assert "<svg" in svg and "kernel size: 3" in svg and "pool1/a" in svg
    assert main(["draw", _write(tmp_path), str(tmp_path / "net.pdf"), "--rankdir", "BT",
                 "--phase", "TRAIN", "--display-lrm"]) == 0
    assert (tmp_path / "net.pdf").read_bytes().startswith(b"%PDF")


def test_command_errors_are_one_line(tmp_path, capsys):
    assert main(["draw", _write(tmp_path), str(tmp_path / "net.bmpx")]) == 2
    assert "unknown drawing format 'bmpx'" in capsys.readouterr().err
    assert main(["draw", str(tmp_path / "missing.prototxt"), str(tmp_path / "net.dot")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.prototxt" in err


def test_caffe_draw_is_an_attribute_of_the_package():
    assert caffe.draw is draw
    assert callable(caffe.draw.draw_net_to_file) and callable(caffe.draw.get_pydot_graph)


# BVLC/caffe python/draw_net.py (BSD 2-Clause, (c) the Caffe contributors), at commit
# 9b891540183ddc834a02b2bd81b31afae71b2153, verbatim; run_draw_net_py changes only its imports
# (import caffe -> import netspec as caffe, import caffe.draw -> nothing, caffe.proto -> netspec.proto).
DRAW_NET_PY = r'''#!/usr/bin/env python
"""
Draw a graph of the net architecture.
"""
from argparse import ArgumentParser, ArgumentDefaultsHelpFormatter
from google.protobuf import text_format

import caffe
import caffe.draw
from caffe.proto import caffe_pb2


def parse_args():
    """Parse input arguments
    """

    parser = ArgumentParser(description=__doc__,
                            formatter_class=ArgumentDefaultsHelpFormatter)

    parser.add_argument('input_net_proto_file',
                        help='Input network prototxt file')
    parser.add_argument('output_image_file',
                        help='Output image file')
    parser.add_argument('--rankdir',
                        help=('One of TB (top-bottom, i.e., vertical), '
                              'RL (right-left, i.e., horizontal), or another '
                              'valid dot option; see '
                              'http://www.graphviz.org/doc/info/'
                              'attrs.html#k:rankdir'),
                        default='LR')
    parser.add_argument('--phase',
                        help=('Which network phase to draw: can be TRAIN, '
                              'TEST, or ALL.  If ALL, then all layers are drawn '
                              'regardless of phase.'),
                        default="ALL")
    parser.add_argument('--display_lrm', action='store_true',
                        help=('Use this flag to visualize the learning rate '
                              'multiplier, when non-zero, for the learning '
                              'layers (Convolution, Deconvolution, InnerProduct).'))

    args = parser.parse_args()
    return args


def main():
    args = parse_args()
    net = caffe_pb2.NetParameter()
    text_format.Merge(open(args.input_net_proto_file).read(), net)
    print('Drawing net to %s' % args.output_image_file)
    phase=None;
    if args.phase == "TRAIN":
        phase = caffe.TRAIN
    elif args.phase == "TEST":
        phase = caffe.TEST
    elif args.phase != "ALL":
        raise ValueError("Unknown phase: " + args.phase)
    caffe.draw.draw_net_to_file(net, args.output_image_file, args.rankdir,
                                phase, args.display_lrm)


if __name__ == '__main__':
    main()
'''


def run_draw_net_py(workdir, args):
    source = DRAW_NET_PY
    for old, new in (("\nimport caffe\n", "\nimport netspec as caffe\n"), ("\nimport caffe.draw\n", "\n"),
                     ("\nfrom caffe.proto import caffe_pb2\n", "\nfrom netspec.proto import caffe_pb2\n")):
        assert source.count(old) == 1
        source = source.replace(old, new)
    script = workdir / "draw_net.py"
    script.write_text(source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(script)] + [str(a) for a in args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)


def test_bvlc_draw_net_py(tmp_path):
    _write(tmp_path)
    proc = run_draw_net_py(tmp_path, ["net.prototxt", "net.dot", "--phase", "TEST", "--rankdir", "TB"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Drawing net to net.dot" in proc.stdout
    source = (tmp_path / "net.dot").read_text()
    assert source == draw.dot_source(net_param(), "TB", phase=caffe.TEST)
    if not HAVE_DOT:
        pytest.skip(NO_DOT)
    proc = run_draw_net_py(tmp_path, ["net.prototxt", "net.png", "--display_lrm"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "net.png").read_bytes().startswith(b"\x89PNG")
