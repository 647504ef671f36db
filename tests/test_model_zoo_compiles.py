"""Every model-zoo prototxt compiles at an odd input size and crops its scores to that size.

The data layers' tops are given shapes instead of reading a dataset; the whole
forward pass is traced with ``jax.eval_shape`` (no arithmetic runs, so the VGG-size
nets stay cheap) and the traced shapes must equal the graph's own inference.
"""
import glob
import os

import jax
import numpy as np
import pytest

from netspec import compiler
from netspec.graph import build_graph
from netspec.layers import TEST, TRAIN
from netspec.prototxt import read_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the FCN nets (the thesis's region nets, models/coco-regions-*, have tests/test_region_models.py)
NETS = sorted(p for p in glob.glob(os.path.join(ROOT, "models", "*", "*.prototxt"))
              if not p.endswith("solver.prototxt") and "coco-regions" not in p)
HEIGHT, WIDTH = 87, 113          # odd, and not square


def _channels(top):
    return 1 if top in ("label", "sem", "geo", "depth") else 3


@pytest.mark.parametrize("path", NETS, ids=[os.path.relpath(p, os.path.join(ROOT, "models")) for p in NETS])
def test_net_compiles_at_odd_size_and_scores_are_cropped_to_the_input(path):
    net = read_net(path)
    phase = TRAIN if os.path.basename(path).startswith("train") else TEST
    data_layers = [lp for lp in net.layer if lp.type == "Python" and not lp.bottom]
    inputs = [lp for lp in net.layer if lp.type == "Input"]          # deploy nets
    assert data_layers or inputs, "a zoo net reads a dataset through a Python data layer, or is a deploy net"
    shapes = {t: (1, _channels(t), HEIGHT, WIDTH) for lp in data_layers + inputs for t in lp.top}
    graph = build_graph(net, phase, input_shapes=shapes, host_layers=[lp.name for lp in data_layers])

    losses = [n for n in graph.nodes if n.type == "SoftmaxWithLoss"]
    scored = [n.bottoms[0] for n in losses] or [b for b in graph.outputs if b.startswith("score")]
    assert scored
    for score in scored:
        assert graph.blob_shapes[score][2:] == (HEIGHT, WIDTH), (score, graph.blob_shapes[score])
    for loss in losses:
        assert graph.blob_shapes[loss.bottoms[1]] == (1, 1, HEIGHT, WIDTH)

    params = {k: [jax.ShapeDtypeStruct(s, np.float32) for s in v] for k, v in graph.param_shapes.items()}
    state = {k: [jax.ShapeDtypeStruct(s, np.float32) for s in v] for k, v in graph.state_shapes.items()}
    inputs = {k: jax.ShapeDtypeStruct(v, np.float32) for k, v in shapes.items()}
    blobs, loss, _ = jax.eval_shape(
        lambda p, s, x: compiler.forward(graph, p, s, x, train=phase == TRAIN, rng=jax.random.PRNGKey(0)),
        params, state, inputs)
    assert loss.shape == ()
    for name, shape in graph.blob_shapes.items():
        assert blobs[name].shape == shape, name
