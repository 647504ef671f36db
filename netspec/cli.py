"""The ``netspec`` command line, mirroring Caffe's ``caffe`` tool.

Each subcommand lives in ``netspec/commands/<name>.py`` with ``add_arguments(parser)``
and ``run(args) -> int``.  Errors in the user's input are printed as one line and the
command exits with status 2; there is no traceback unless ``NETSPEC_DEBUG=1``.
"""
import argparse
import importlib
import os
import sys

from .errors import NetspecError

COMMANDS = {
    "train": "train a net from a solver prototxt (caffe train)",
    "test": "score a trained model over some iterations (caffe test)",
    "time": "per-layer forward/backward timing (caffe time)",
    "device_query": "list the JAX devices",
    "upgrade": "upgrade a legacy net, solver or caffemodel to the current format",
    "surgery": "transplant weights between nets, bilinear-initialize upsampling layers, dilate strides "
               "(shift-and-stitch)",
    "score": "segmentation metrics of a net over a dataset split",
    "infer": "segment images and write palette PNGs and overlays",
    "quickstart": "generate a synthetic dataset, train a slim FCN-8s on it and score it",
    "convert_imageset": "image list -> LMDB/LevelDB of Caffe Datums (caffe's convert_imageset)",
    "compute_image_mean": "database of Datums -> mean.binaryproto (caffe's compute_image_mean)",
    "plot": "training curves from a Caffe-format training log",
    "draw": "draw a net with Graphviz (caffe's draw_net.py)",
    "export": "convert a net and its weights to safetensors, Orbax, ONNX or StableHLO",
    "regions": "object regions from a pairwise region net: mask PNGs, JSON and overlays, "
               "or proposal metrics (R@50, R@70, ABO, AR@k) with --score",
    "info": "shapes, parameters, multiply-adds and receptive fields of every layer of a net",
    "features": "dense features of whole images at chosen layers, with each feature's rf centre (npz)",
    "keypoints": "thesis ch. 2 keypoint experiments: convnet flow keypoint transfer, keypoint "
                 "classification, keypoint prediction (flow|classify|predict; PCK tables)",
}

_ALIASES = {"device-query": "device_query", "convert-imageset": "convert_imageset",
            "compute-image-mean": "compute_image_mean"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="netspec", description="Caffe-compatible networks on JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available = {}
    wanted = _ALIASES.get(argv[0], argv[0]) if argv else None
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"netspec.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"netspec.commands.{name}":
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        available[name] = module
        if name == wanted and name != argv[0]:
            argv[0] = name
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(available[args.command].run(args) or 0)
    except NetspecError as e:
        if os.environ.get("NETSPEC_DEBUG"):
            raise
        print(f"netspec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"netspec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
