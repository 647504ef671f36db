"""``netspec upgrade IN OUT``: rewrite a legacy Caffe file in the current format.

Handles text net prototxts (V0, V1, ``input:`` fields, old BatchNorm), text
solver prototxts (``solver_type`` enum) and binary ``.caffemodel`` files (V0,
V1 or V2 structure; the weights are carried over unchanged). Like Caffe's
``upgrade_net_proto_text`` / ``upgrade_net_proto_binary``, a file that is
already current is written out unchanged.
"""

import os

from netspec import caffemodel, prototxt, upgrade
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

KINDS = ("net", "solver", "caffemodel")


def add_arguments(parser):
    parser.add_argument("input", metavar="IN",
                        help="net or solver .prototxt, or binary .caffemodel")
    parser.add_argument("output", metavar="OUT", help="where to write the upgraded file")
    parser.add_argument("--kind", choices=KINDS,
                        help="what IN is (default: detected from its content)")


def run(args):
    kind = args.kind or detect_kind(args.input)
    if kind == "net":
        changed = upgrade_net_file(args.input, args.output)
    elif kind == "solver":
        changed = upgrade_solver_file(args.input, args.output)
    else:
        changed = upgrade_caffemodel_file(args.input, args.output)
    status = "upgraded" if changed else "already current, copied"
    print(f"{status} {kind} {args.input} -> {args.output}")
    return 0


def detect_kind(path):
    """'caffemodel' for binary files, else 'net' or 'solver' by which one parses."""
    if not os.path.isfile(path):
        raise NetspecError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if _is_binary(head):
        return "caffemodel"
    text = prototxt.read_text_file(path)
    errors = {}
    for kind, message in (("net", caffe_pb2.NetParameter()),
                          ("solver", caffe_pb2.SolverParameter())):
        try:
            prototxt.parse_text(text, message, path)
            return kind
        except NetspecError as error:
            errors[kind] = error
    # Neither parses: report the error of the kind that got further.
    raise max(errors.values(), key=_error_position)


def _is_binary(head):
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut at the end of the sample is still text.
        return error.start < len(head) - 3
    return False


def _error_position(error):
    """(line, column) parsed from 'file:line:col: ...' ((0, 0) if absent)."""
    parts = str(error).split(": ", 1)[0].rsplit(":", 2)
    try:
        return int(parts[-2]), int(parts[-1])
    except (ValueError, IndexError):
        return 0, 0


def upgrade_net_file(path, output):
    """Upgrade a text net; returns whether anything changed."""
    net = prototxt.parse_net(path, path=path, upgrade_legacy=False)
    changed = upgrade.net_needs_upgrade(net)
    prototxt.write_net(output, upgrade.upgrade_net(net, path))
    return changed


def upgrade_solver_file(path, output):
    """Upgrade a text solver; returns whether anything changed."""
    solver = prototxt.parse_solver(path, path=path, upgrade_legacy=False)
    changed = upgrade.solver_needs_upgrade(solver)
    prototxt.write_solver(output, upgrade.upgrade_solver(solver, path))
    return changed


def upgrade_caffemodel_file(path, output):
    """Upgrade a binary caffemodel's structure to V2, keeping its weights."""
    net, weights = caffemodel.read_caffemodel(path)
    changed = upgrade.net_needs_upgrade(net)
    upgraded = upgrade.upgrade_net(net, path)
    kept = {layer.name for layer in upgraded.layer}
    for name, arrays in weights.items():
        if name not in kept and len(arrays):
            raise NetspecError(f'{path}: layer "{name}" has weights but disappears in '
                               "the upgrade; rename it or remove its weights")
    weights = {name: arrays for name, arrays in weights.items() if name in kept}
    caffemodel.write_caffemodel(output, upgraded, weights)
    return changed
