"""Field-level descriptions of Caffe net and solver prototxts, as plain JSON data.

A description is what the prototxt *says*, in a canonical form: two files that
parse to the same proto (comments, layout, field order and legacy V0/V1 syntax
aside) get equal descriptions. It is built with netspec's own parser
(``netspec.prototxt``, which upgrades legacy nets and solvers as Caffe does on
load) and protobuf's ``MessageToDict`` with the proto field names:

* a net: ``{"kind": "net", "name": ..., "net": {other set NetParameter
  fields}, "layers": [...]}``, one entry per layer, in order, each the whole
  LayerParameter (name, type, bottom, top, param ParamSpecs, loss_weight,
  include/exclude, every ``*_param`` message that is set);
* a solver: ``{"kind": "solver", "solver": {every set SolverParameter field}}``.

Only fields that are set appear; defaults are not filled in.

Usage::

    python tools/describe_prototxt.py FILE.prototxt            # print its description
    python tools/describe_prototxt.py --solver FILE.prototxt   # force solver parsing

    # (re)generate tests/data/fcn_reference/ from a checkout or bare mirror of
    # shelhamer/fcn.berkeleyvision.org (a bare repo is read at HEAD with git):
    python tools/describe_prototxt.py --reference \\
        /work/.mirror/shelhamer+fcn.berkeleyvision.org/repo [--out tests/data/fcn_reference]

The reference mode writes ``<out>/<model dir>/<file>.json`` for every
``*.prototxt`` one level deep in the reference and ``<out>/SOURCE.json`` naming
the commit it was read from. Only these extracted facts are stored, never the
prototxt text.
"""
import argparse
import json
import os
import subprocess
import sys

from google.protobuf import json_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import netspec  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, ROOT)
from netspec import prototxt  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, 'tests', 'data', 'fcn_reference')


def _to_dict(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _is_solver_text(text, path=None):
    """Guess whether ``text`` is a solver: the file is named *solver*, or it names a
    net / has solver-only fields and no layers."""
    if path and 'solver' in os.path.basename(path):
        return True
    for line in text.splitlines():
        key = line.split('#', 1)[0].strip().split(':', 1)[0].split('{', 1)[0].strip()
        if key in ('layer', 'layers', 'input'):
            return False
        if key in ('base_lr', 'lr_policy', 'train_net', 'net', 'max_iter', 'solver_type',
                   'test_iter', 'snapshot_prefix'):
            return True
    return False


def describe_net(net):
    """The description of a parsed (upgraded) ``NetParameter``."""
    data = _to_dict(net)
    layers = data.pop('layer', [])
    name = data.pop('name', None)
    return {'kind': 'net', 'name': name, 'net': data, 'layers': layers}


def describe_solver(solver):
    """The description of a parsed (upgraded) ``SolverParameter``."""
    return {'kind': 'solver', 'solver': _to_dict(solver)}


def describe(net_or_solver_text_or_path, *, solver=None, path=None):
    """Describe a net or solver given as a path, prototxt text, or parsed message.

    ``solver`` forces the kind (True: solver, False: net); by default a file whose
    name contains ``solver`` or text with solver fields and no layers is a solver.
    """
    from netspec.proto import caffe_pb2
    value = net_or_solver_text_or_path
    if isinstance(value, caffe_pb2.NetParameter):
        return describe_net(value)
    if isinstance(value, caffe_pb2.SolverParameter):
        return describe_solver(value)
    value = os.fspath(value)
    if '\n' not in value and os.path.isfile(value):
        path = value
        text = prototxt.read_text_file(value)
    else:
        text = value
    if solver is None:
        solver = _is_solver_text(text, path)
    if solver:
        return describe_solver(prototxt.parse_solver(text, path=path))
    return describe_net(prototxt.parse_net(text, path=path))


def dumps(description):
    """The JSON text the checked-in descriptions are stored as."""
    return json.dumps(description, indent=1, sort_keys=True) + '\n'


# --- the reference mode -------------------------------------------------------

def _reference_files(source):
    """(relative path, text) of every ``<dir>/*.prototxt`` in ``source``, and the commit.

    ``source`` is a work tree, or a bare git repository read at HEAD."""
    bare = os.path.isfile(os.path.join(source, 'HEAD')) and os.path.isdir(
        os.path.join(source, 'objects'))
    if bare or os.path.isdir(os.path.join(source, '.git')):
        git = ['git', '-C', source]
        commit = subprocess.run(git + ['rev-parse', 'HEAD'], check=True, capture_output=True,
                                text=True).stdout.strip()
        names = subprocess.run(git + ['ls-tree', '-r', '--name-only', 'HEAD'], check=True,
                               capture_output=True, text=True).stdout.split('\n')
        names = sorted(n for n in names if n.endswith('.prototxt') and n.count('/') == 1)
        files = [(n, subprocess.run(git + ['show', f'HEAD:{n}'], check=True, capture_output=True,
                                    text=True).stdout) for n in names]
        return files, commit
    files = []
    for model in sorted(os.listdir(source)):
        directory = os.path.join(source, model)
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if name.endswith('.prototxt'):
                with open(os.path.join(directory, name)) as f:
                    files.append((f'{model}/{name}', f.read()))
    return files, None


def write_reference(source, out=DEFAULT_OUT):
    """Write the description of every reference prototxt under ``out``; returns the paths."""
    files, commit = _reference_files(source)
    written = []
    for relative, text in files:
        description = describe(text, path=relative)
        target = os.path.join(out, relative[:-len('.prototxt')] + '.json')
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, 'w') as f:
            f.write(dumps(description))
        written.append(target)
    with open(os.path.join(out, 'SOURCE.json'), 'w') as f:
        f.write(dumps({'repository': 'https://github.com/shelhamer/fcn.berkeleyvision.org',
                       'commit': commit,
                       'generated_by': 'python tools/describe_prototxt.py --reference <mirror>'}))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('path', help='a prototxt, or with --reference the reference repository')
    parser.add_argument('--solver', action='store_true', help='parse PATH as a solver')
    parser.add_argument('--reference', action='store_true',
                        help='describe every prototxt of the reference repository at PATH')
    parser.add_argument('--out', default=DEFAULT_OUT, help='where --reference writes')
    args = parser.parse_args(argv)
    if args.reference:
        for target in write_reference(args.path, args.out):
            print('wrote', os.path.relpath(target))
        return 0
    sys.stdout.write(dumps(describe(args.path, solver=True if args.solver else None)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
