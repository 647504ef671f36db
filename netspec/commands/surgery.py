"""``netspec surgery``: weight transplants between nets and bilinear upsampling init.

``netspec surgery transplant --weights OLD.caffemodel --model NEW.prototxt --out NEW.caffemodel``
copies every layer by name (an InnerProduct weight becomes a Convolution weight of the
same element count: fc6 4096x25088 -> 4096x512x7x7), and with ``--interp`` sets every
Deconvolution whose name contains "up" to bilinear interpolation (the FCN recipe).
``netspec surgery vgg16-to-fcn`` is that recipe for the VGG16 ILSVRC classifier and an
FCN train prototxt.  Layers the old weights lack keep the new net's fillers (FCN's
score layers have none, so they start at zero).
``netspec surgery dilate NET WEIGHTS --at pool4,pool5 -o OUT`` removes those layers'
strides and dilates every later filter (shift-and-stitch as dilation,
:mod:`netspec.shift_and_stitch`), writing OUT.prototxt and OUT.caffemodel.
"""
import numpy as np

from ..errors import NetspecError


def add_arguments(p):
    sub = p.add_subparsers(dest="operation", metavar="OPERATION", required=True)
    t = sub.add_parser("transplant", help="copy weights by layer name into another net")
    t.add_argument("--weights", required=True, help="the source .caffemodel")
    t.add_argument("--model", required=True, help="the target net prototxt")
    t.add_argument("--out", required=True, help="the .caffemodel to write")
    t.add_argument("--suffix", default="", help="target layer = source layer + suffix")
    t.add_argument("--interp", action="store_true", help="bilinear-initialize Deconvolutions named *up*")
    t.add_argument("--input-shape", action="append", default=[], metavar="BLOB=N,C,H,W",
                   help="shape of a data-layer top (default data 1,3,500,500, labels 1,1,500,500)")
    v = sub.add_parser("vgg16-to-fcn", help="VGG16 ILSVRC caffemodel -> FCN initialization")
    v.add_argument("--vgg-weights", required=True, help="VGG_ILSVRC_16_layers.caffemodel (V1 is fine)")
    v.add_argument("--fcn-model", required=True, help="an FCN train prototxt, e.g. models/voc-fcn32s/train.prototxt")
    v.add_argument("--out", required=True)
    v.add_argument("--input-shape", action="append", default=[], metavar="BLOB=N,C,H,W")
    d = sub.add_parser("dilate", help="shift-and-stitch as filter dilation: remove the stride of "
                                      "layers and dilate every later filter, keeping the weights")
    d.add_argument("net", help="the net prototxt (cut before any upsampling/classifier layers)")
    d.add_argument("weights", help="its .caffemodel (copied unchanged)")
    d.add_argument("--at", required=True, help="comma-separated Convolution/Pooling layers whose "
                                               "stride to remove, e.g. pool4,pool5")
    d.add_argument("--end", metavar="LAYER",
                   help="first cut the net after LAYER (e.g. score_fr: before FCN's upsampling)")
    d.add_argument("-o", "--out", required=True, metavar="OUT_PREFIX",
                   help="writes OUT_PREFIX.prototxt and OUT_PREFIX.caffemodel")


def _parse_shapes(specs):
    shapes = {}
    for spec in specs:
        try:
            name, dims = spec.split("=")
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise NetspecError(f"--input-shape {spec}: write it as BLOB=N,C,H,W") from None
    return shapes


def _guess_shape(top, side=500):
    channels = 1 if any(k in top for k in ("label", "sem", "geo", "depth")) else 3
    return (1, channels, side, side)


def target_net(model, input_shapes):
    """The target net's graph (TRAIN phase) with data layers replaced by input shapes; no data is read."""
    from ..graph import build_graph, filter_layers
    from ..layers import TRAIN
    from ..proto import caffe_pb2
    from ..prototxt import read_net
    net = read_net(model)
    state = caffe_pb2.NetState(phase=TRAIN)
    hosts = [lp for lp in filter_layers(net, state) if lp.type not in ("Input",) and not lp.bottom
             and lp.type in ("Python", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData")]
    shapes = {t: _guess_shape(t) for lp in hosts for t in lp.top}
    shapes.update(input_shapes)
    return build_graph(net, TRAIN, input_shapes=shapes, host_layers=[lp.name for lp in hosts])


def transplant_into(graph, old_weights, suffix="", interp=False):
    """New-net weights: fillers, then the old weights by name, then (optionally) bilinear upsampling."""
    from .. import compiler
    from ..surgery import format_report, interp_init, transplant
    params, state = compiler.init_params(graph, seed=0)
    weights, report = transplant(params, graph.param_shapes, old_weights, suffix)
    if interp:
        ups = [n.name for n in graph.nodes if n.type == "Deconvolution" and "up" in n.name]
        weights = interp_init(weights, ups)
        report.setdefault("interp", ups)
    weights.update({k: v for k, v in state.items() if k not in weights})
    return weights, format_report(report)


def _ordered(graph, weights):
    return {n.name: [np.asarray(a, np.float32) for a in weights[n.name]] for n in graph.nodes if n.name in weights}


def run_dilate(args):
    """``netspec surgery dilate NET WEIGHTS --at pool4,pool5 -o OUT``."""
    from ..caffemodel import load_weights, write_caffemodel
    from ..prototxt import read_net, write_net
    from ..shift_and_stitch import dilate_net
    at = [name.strip() for name in args.at.split(",") if name.strip()]
    net = read_net(args.net)
    if args.end:
        from ..features import truncated_net
        net = truncated_net(net, [args.end])
    net = dilate_net(net, at)
    weights = load_weights(args.weights)
    names = {lp.name for lp in net.layer}
    structure = type(net)(name=net.name)
    structure.layer.extend(lp for lp in net.layer if lp.name in weights and len(weights[lp.name]))
    kept = {lp.name: [np.asarray(a, np.float32) for a in weights[lp.name]] for lp in structure.layer}
    missing = sorted(set(weights) - names)
    write_net(args.out + ".prototxt", net)
    write_caffemodel(args.out + ".caffemodel", structure, kept)
    if missing:
        print(f"not in the net, dropped: {', '.join(missing)}")
    print(f"removed the stride of {', '.join(at)}; wrote {args.out}.prototxt and {args.out}.caffemodel")
    return 0


def run(args):
    from ..caffemodel import load_weights, write_caffemodel
    if args.operation == "dilate":
        return run_dilate(args)
    if args.operation == "transplant":
        graph = target_net(args.model, _parse_shapes(args.input_shape))
        weights, lines = transplant_into(graph, load_weights(args.weights), args.suffix, args.interp)
        source_net = args.model
    else:
        graph = target_net(args.fcn_model, _parse_shapes(args.input_shape))
        old = load_weights(args.vgg_weights)
        old = {k: v for k, v in old.items() if k != "fc8"}    # the 1000-way classifier has no FCN twin
        weights, lines = transplant_into(graph, old, interp=True)
        source_net = args.fcn_model
    from ..prototxt import read_net
    net = read_net(source_net)
    kept = {n.name for n in graph.nodes}
    structure = type(net)(name=net.name)
    structure.layer.extend(lp for lp in net.layer if lp.name in kept and lp.name in weights)
    write_caffemodel(args.out, structure, _ordered(graph, weights))
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0
