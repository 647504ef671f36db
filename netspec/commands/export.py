"""``netspec export NET.prototxt WEIGHTS.caffemodel -o OUT --format F``: the net and its
weights in safetensors, Orbax, ONNX or StableHLO, checked by loading the result back with
the format's own library and comparing its outputs with netspec's on a random input."""
import os

from ..errors import NetspecError

TOLERANCE = 1e-4


def add_arguments(p):
    from ..export import FORMATS
    p.add_argument("net", help="the net prototxt (a deploy net: its inputs are Input layers)")
    p.add_argument("weights", help="the .caffemodel")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the file (a directory for orbax) to write")
    p.add_argument("--format", required=True, metavar="|".join(FORMATS),
                   help="safetensors (weights + prototxt in the metadata), orbax (CaffeModule "
                        "variables + net.prototxt), onnx, stablehlo (jax.export of the forward "
                        "pass; weights in OUT's stem + .weights.safetensors)")
    p.add_argument("--input-shape", action="append", default=[], metavar="[NAME=]N,C,H,W",
                   help="input blob shape (default: what the Input layers declare); repeat for "
                        "several inputs, in order or by name")
    p.add_argument("--phase", choices=("TEST",), default="TEST",
                   help="the phase whose layers are exported: TEST, the inference computation "
                        "(BatchNorm with its stored statistics, no Dropout), which every format runs")
    p.add_argument("--no-check", action="store_true",
                   help="do not load the result back and compare outputs")


def run(args):
    from .. import TEST
    from ..export import (build_net, export, format_module, input_shapes_of, parse_input_shapes,
                          random_inputs, verify)
    from ..graph import filter_layers
    from ..proto import caffe_pb2
    from ..prototxt import read_net
    format_module(args.format)         # an unknown or unavailable format fails first
    if not os.path.isfile(args.weights):
        raise NetspecError(f"export: {args.weights}: no such weights file")
    net_param = read_net(args.net)
    phase = TEST
    inputs = [t for lp in filter_layers(net_param, caffe_pb2.NetState(phase=phase))
              if lp.type == "Input" for t in lp.top]
    shapes = parse_input_shapes(args.input_shape, inputs)
    net = build_net(net_param, args.weights, shapes, phase=phase)
    description = export(net, args.format, args.output, input_shapes_of(net))
    print(f"{args.output}: {description}")
    if args.no_check:
        return 0
    difference = verify(net, args.format, args.output, random_inputs(net))
    print(f"check: {args.format} output vs netspec on a random input: max abs difference {difference:.3g}")
    if not difference <= TOLERANCE:
        raise NetspecError(f"export: the {args.format} model's outputs differ from netspec's by "
                           f"{difference:.3g} (more than {TOLERANCE:g})")
    return 0
