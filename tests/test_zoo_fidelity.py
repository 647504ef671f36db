"""The FCN model zoo equals the reference implementation field by field.

tests/data/fcn_reference/<model>/<file>.json holds a field-level description of
every net and solver prototxt of shelhamer/fcn.berkeleyvision.org (facts only,
made by ``python tools/describe_prototxt.py --reference <mirror>``). Each
models/<model>/<file>.prototxt, described the same way, must equal it, except
for the differences declared in models/<model>/DIFFERENCES.json and explained
in DIFFERENCES.md next to it. An undeclared difference fails, and so does a
declared one that no longer exists (the docs must stay true).

Difference paths: ``name`` / ``net.<field>`` (NetParameter fields other than
layers), ``layers`` (the ordered list of layer names), ``layers[<layer
name>].<field>[.<field>|[<index>]]...`` for a layer's fields, and
``solver.<field>`` for solvers. A missing field is ``null``.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, 'models')
REFERENCE = os.path.join(ROOT, 'tests', 'data', 'fcn_reference')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import describe_prototxt  # noqa: E402
from describe_prototxt import describe  # noqa: E402

# where a mirror of the reference may be found (only for the freshness check)
MIRROR = os.environ.get('FCN_REFERENCE_MIRROR',
                        '/work/.mirror/shelhamer+fcn.berkeleyvision.org/repo')

REFERENCE_MODELS = sorted(d for d in os.listdir(REFERENCE)
                          if os.path.isdir(os.path.join(REFERENCE, d)))
REFERENCE_FILES = [(model, name[:-len('.json')] + '.prototxt')
                   for model in REFERENCE_MODELS
                   for name in sorted(os.listdir(os.path.join(REFERENCE, model)))
                   if name.endswith('.json')]


def _leaf_diffs(path, reference, ours, out):
    if isinstance(reference, dict) and isinstance(ours, dict):
        for key in sorted(set(reference) | set(ours)):
            _leaf_diffs(f'{path}.{key}' if path else key,
                        reference.get(key), ours.get(key), out)
    elif (isinstance(reference, list) and isinstance(ours, list)
          and len(reference) == len(ours)):
        for index, (a, b) in enumerate(zip(reference, ours)):
            _leaf_diffs(f'{path}[{index}]', a, b, out)
    elif reference != ours:
        out[path] = (reference, ours)


def differences(reference, ours):
    """{path: (reference value, netspec value)} for every field where two
    descriptions differ (None: the field is not set)."""
    out = {}
    if reference['kind'] != ours['kind']:
        return {'kind': (reference['kind'], ours['kind'])}
    if reference['kind'] == 'solver':
        _leaf_diffs('solver', reference['solver'], ours['solver'], out)
        return out
    _leaf_diffs('name', reference['name'], ours['name'], out)
    _leaf_diffs('net', reference['net'], ours['net'], out)
    names = {}
    for side, description in (('reference', reference), ('netspec', ours)):
        names[side] = [layer['name'] for layer in description['layers']]
        assert len(set(names[side])) == len(names[side]), f'{side}: repeated layer names'
    if names['reference'] != names['netspec']:
        out['layers'] = (names['reference'], names['netspec'])
    ours_by_name = {layer['name']: layer for layer in ours['layers']}
    for layer in reference['layers']:
        if layer['name'] in ours_by_name:
            _leaf_diffs(f"layers[{layer['name']}]", layer, ours_by_name[layer['name']], out)
    return out


def declared_differences(model):
    """{(file, path): (reference value, netspec value)} from models/<model>/DIFFERENCES.json."""
    path = os.path.join(MODELS, model, 'DIFFERENCES.json')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        entries = json.load(f)
    declared = {}
    for entry in entries:
        assert set(entry) == {'file', 'path', 'reference', 'netspec'}, entry
        key = (entry['file'], entry['path'])
        assert key not in declared, f'{model}: {key} declared twice'
        declared[key] = (entry['reference'], entry['netspec'])
    return declared


def load_reference(model, filename):
    with open(os.path.join(REFERENCE, model, filename[:-len('.prototxt')] + '.json')) as f:
        return json.load(f)


def test_every_reference_model_has_a_counterpart():
    assert len(REFERENCE_MODELS) == 15
    missing = [m for m in REFERENCE_MODELS if not os.path.isfile(os.path.join(MODELS, m, 'net.py'))]
    assert not missing


@pytest.mark.parametrize('model', REFERENCE_MODELS)
def test_counterpart_has_the_reference_prototxts(model):
    ours = sorted(f for f in os.listdir(os.path.join(MODELS, model)) if f.endswith('.prototxt'))
    theirs = sorted(f for m, f in REFERENCE_FILES if m == model)
    assert ours == theirs


@pytest.mark.parametrize('model,filename', REFERENCE_FILES,
                         ids=[f'{m}/{f}' for m, f in REFERENCE_FILES])
def test_prototxt_equals_the_reference_but_for_declared_differences(model, filename):
    found = differences(load_reference(model, filename),
                        describe(os.path.join(MODELS, model, filename)))
    declared = {path: values for (file, path), values in declared_differences(model).items()
                if file == filename}
    undeclared = {p: v for p, v in found.items() if p not in declared}
    assert not undeclared, (
        f'{model}/{filename} differs from the reference; fix it, or declare it in '
        f'models/{model}/DIFFERENCES.json and explain it in DIFFERENCES.md: {undeclared}')
    stale = {p: v for p, v in declared.items() if p not in found}
    assert not stale, f'{model}/{filename}: declared differences that no longer exist: {stale}'
    for path, (reference, netspec) in declared.items():
        assert found[path] == (reference, netspec), (
            f'{model}/{filename} {path}: declared (reference, netspec) = '
            f'{(reference, netspec)!r}, found {found[path]!r}')


@pytest.mark.parametrize('model', sorted(d for d in os.listdir(MODELS)
                                         if os.path.exists(os.path.join(MODELS, d,
                                                                        'DIFFERENCES.json'))))
def test_declared_differences_are_explained(model):
    declared = declared_differences(model)
    assert declared, f'{model}: empty DIFFERENCES.json'
    assert model in REFERENCE_MODELS, f'{model} has no reference counterpart'
    files = {f for m, f in REFERENCE_FILES if m == model}
    md_path = os.path.join(MODELS, model, 'DIFFERENCES.md')
    assert os.path.exists(md_path), f'{model}: DIFFERENCES.json without DIFFERENCES.md'
    with open(md_path) as f:
        text = f.read()
    for file, path in declared:
        assert file in files, f'{model}: {file} has no reference counterpart'
        assert f'`{path}`' in text, f'{model}/DIFFERENCES.md does not explain `{path}`'


def test_models_without_declared_differences_have_no_differences_file():
    for model in REFERENCE_MODELS:
        if not os.path.exists(os.path.join(MODELS, model, 'DIFFERENCES.json')):
            assert not os.path.exists(os.path.join(MODELS, model, 'DIFFERENCES.md')), model


def test_descriptions_are_canonical():
    v2 = '''name: "n"
layer { name: "c" type: "Convolution" bottom: "x" top: "c"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 2 kernel_size: 3 } }'''
    reordered = '''# a comment
name: "n"
layer { top: "c" bottom: "x" type: "Convolution" name: "c"
        convolution_param { kernel_size: 3 num_output: 2 }
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } }'''
    v1 = '''name: "n"
layers { name: "c" type: CONVOLUTION bottom: "x" top: "c"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 2 kernel_size: 3 } }'''
    assert describe(v2) == describe(reordered) == describe(v1)
    assert describe(v2)['layers'][0]['param'] == [{'lr_mult': 1.0, 'decay_mult': 1.0},
                                                  {'lr_mult': 2.0, 'decay_mult': 0.0}]
    solver = describe('net: "a.prototxt"\nbase_lr: 1e-12\nsolver_type: NESTEROV\n')
    assert solver == {'kind': 'solver', 'solver': {'net': 'a.prototxt', 'base_lr': 1e-12,
                                                   'type': 'Nesterov'}}


def test_differences_sees_every_kind_of_change():
    base = describe('layer { name: "a" type: "Input" top: "x" '
                    'input_param { shape { dim: 1 } } }\n'
                    'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
    changed = describe('layer { name: "input" type: "Input" top: "x" '
                       'input_param { shape { dim: 2 } } }\n'
                       'layer { name: "r" type: "ReLU" bottom: "x" top: "x" loss_weight: 1 }')
    assert differences(base, changed) == {
        'layers': (['a', 'r'], ['input', 'r']),
        'layers[r].loss_weight': (None, [1.0]),
    }
    assert differences(base, base) == {}


@pytest.mark.skipif(not os.path.isdir(MIRROR), reason='no mirror of the reference repository')
def test_checked_in_descriptions_match_the_reference_mirror(tmp_path):
    describe_prototxt.write_reference(MIRROR, str(tmp_path))
    with open(os.path.join(REFERENCE, 'SOURCE.json')) as f:
        source = json.load(f)
    with open(tmp_path / 'SOURCE.json') as f:
        mirror_source = json.load(f)
    if source['commit'] != mirror_source['commit']:
        pytest.skip('the mirror is at another commit than the checked-in descriptions')
    for model, filename in REFERENCE_FILES:
        relative = os.path.join(model, filename[:-len('.prototxt')] + '.json')
        with open(os.path.join(REFERENCE, relative)) as f:
            assert (tmp_path / relative).read_text() == f.read(), relative
    generated = sorted(os.path.relpath(os.path.join(d, f), tmp_path)
                       for d, _, files in os.walk(tmp_path) for f in files)
    checked_in = sorted(os.path.relpath(os.path.join(d, f), REFERENCE)
                        for d, _, files in os.walk(REFERENCE) for f in files)
    assert generated == checked_in


def test_describe_prototxt_script_prints_json():
    path = os.path.join(MODELS, 'voc-fcn8s', 'solver.prototxt')
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'describe_prototxt.py'),
                             path], check=True, capture_output=True, text=True)
    assert json.loads(result.stdout) == describe(path)
