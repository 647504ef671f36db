"""Train the slim region net from scratch on the synthetic COCO-format instance set and
score its regions, in a few minutes on a CPU -- one command:

    python models/coco-regions-slim/run.py [--out runs/regions-slim] [--iters N] [--seed S]

1. writes the synthetic set (``netspec.data.synthetic_instances``; 96 x 96 images, one
   size so the net compiles once) to ``OUT/data``;
2. trains ``net.py``'s train net with this directory's solver (netspec's Solver, exactly
   what ``netspec train`` runs) through the ``COCOInstanceDataLayer``;
3. scores ``netspec regions --score OUT/data/annotations/instances_val.json`` on the
   deploy net (grid NMS 0.7 per pathway, cross-pathway NMS, top 1000 per image) and
   prints AR, AR@10, AR@100, ABO, R@50, R@70;
4. scores two baselines through the same command: the same net untrained (its
   fillers), and fixed box-shaped masks at every centre (the trained weights with the
   shared matrix zeroed and its bias a centred box of ``--box`` of the window, and a
   constant objectness, so ranking is grid order).

Everything lands in OUT: train.log, the caffemodels, deploy.prototxt, one metrics
folder per model, and summary.json.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
if MODELS not in sys.path:
    sys.path.insert(0, MODELS)
try:
    import netspec  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, os.path.dirname(MODELS))

import numpy as np  # noqa: E402

KEYS = ('AR', 'AR@10', 'AR@100', 'ABO', 'R@50', 'R@70')


def load_net_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location('coco_regions_slim_net', os.path.join(HERE, 'net.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_data(data_dir, n_train=200, n_val=40, size=96, seed=0):
    """The synthetic instance set; returns its BGR mean."""
    from netspec.data.synthetic_instances import make_instance_dataset
    return make_instance_dataset(data_dir, n_train=n_train, n_val=n_val, size=(size, size), seed=seed)


def pathway_spec(pathways):
    """``--pathways`` for ``netspec regions``: NAME:STRIDE:K."""
    return ','.join(f'{name}:{stride}:{k}' for name, _, stride, _, k in pathways)


def train(out, data_dir, mean, iters=None, seed=0, log_name='train.log', quiet=False, initial=None,
          **net_kwargs):
    """Train ``net.regions_net('train', **net_kwargs)`` with solver.prototxt's settings.
    Returns ``(weights, losses)``: the final caffemodel and the smoothed loss every ``display``
    iterations.  ``initial``: also save the untrained weights to this path."""
    from netspec.prototxt import parse_solver, write_solver
    from netspec.solver import Log, Solver
    from netspec.training_log import LogTee
    net = load_net_module()
    sp = parse_solver(os.path.join(HERE, 'solver.prototxt'))
    for field in ('net', 'train_net', 'test_net', 'train_net_param', 'test_net_param', 'test_iter',
                  'test_interval'):
        sp.ClearField(field)
    sp.train_net_param.CopyFrom(net.regions_net('train', coco_dir=data_dir, mean=mean, **net_kwargs))
    if iters is not None:
        if iters < sp.max_iter:      # keep the step at the same fraction of the run
            sp.stepsize = max(1, int(sp.stepsize * iters / sp.max_iter))
        sp.max_iter = iters
    sp.display = max(1, min(sp.display, sp.max_iter // 10 or 1))
    sp.snapshot = 0
    sp.snapshot_after_train = True
    sp.snapshot_prefix = os.path.join(out, 'slim')
    sp.random_seed = seed
    os.makedirs(out, exist_ok=True)
    write_solver(os.path.join(out, 'solver.prototxt'), sp)
    with open(os.path.join(out, log_name), 'w') as log_file:
        streams = [log_file] if quiet else [sys.stderr, log_file]
        solver = Solver(sp, log=Log(LogTee(streams[0], streams[1:])))
        if initial:
            solver.net.save(initial)
        losses = []
        while solver.iter < sp.max_iter:
            solver.step(min(sp.display, sp.max_iter - solver.iter))
            losses.append(float(solver.smoothed_loss))
        solver.snapshot()
    return f'{solver._snapshot_prefix()}_iter_{solver.iter}.caffemodel', losses


def write_deploy(path, **net_kwargs):
    from netspec.prototxt import write_net
    write_net(path, load_net_module().regions_net('deploy', **net_kwargs))
    return path


def score(deploy, weights, annotations, pathways, mean, out, limit=None, quiet=False):
    """``netspec regions --score``; returns its metrics dict."""
    import contextlib
    import io
    from netspec.commands import regions
    parser = argparse.ArgumentParser()
    regions.add_arguments(parser)
    argv = ['--model', deploy, '--weights', weights, '--pathways', pathway_spec(pathways),
            '--mean', ','.join(str(m) for m in mean), '--score', annotations, '-o', out]
    if limit:
        argv += ['--limit', str(limit)]
    args = parser.parse_args(argv)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        regions.run(args)
    with open(os.path.join(out, 'metrics.json')) as f:
        return json.load(f)


def box_weights(weights, out, pathways, fraction):
    """The caffemodel ``weights`` with every shared matrix zeroed, its bias +1 on a centred
    box of ``fraction`` of the window and -1 elsewhere, and objectness constant 0."""
    from netspec.caffemodel import load_weights, write_caffemodel
    params = {name: [np.array(b, np.float32) for b in blobs] for name, blobs in load_weights(weights).items()}
    for name, _, _, _, k in pathways:
        side = max(1, int(round(fraction * k)))
        lo = k // 2 - side // 2
        pattern = -np.ones((k, k), np.float32)
        pattern[lo:lo + side, lo:lo + side] = 1
        w, b = params[f'regions_{name}']
        params[f'regions_{name}'] = [np.zeros_like(w), pattern.reshape(-1)]
        params[f'objectness_{name}'] = [np.zeros_like(blob) for blob in params[f'objectness_{name}']]
    write_caffemodel(out, None, params)
    return out


def line(name, m):
    return f'{name:<22}' + '  '.join(f'{k} {100 * m[k]:5.1f}' for k in KEYS)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--out', default=os.path.join('runs', 'regions-slim'))
    p.add_argument('--iters', type=int, default=None, help='training iterations (default: solver.prototxt max_iter)')
    p.add_argument('--train-images', type=int, default=200)
    p.add_argument('--val-images', type=int, default=40)
    p.add_argument('--size', type=int, default=96, help='image side (one size: one compile)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--box', type=float, nargs='+', default=[0.5, 0.75],
                   help='box baseline sizes, as fractions of the window side')
    args = p.parse_args(argv)
    start = time.time()
    out = os.path.abspath(args.out)
    data_dir = os.path.join(out, 'data')
    net = load_net_module()
    print(f'[1/4] writing the synthetic instance set to {data_dir}', flush=True)
    mean = make_data(data_dir, args.train_images, args.val_images, args.size, args.seed)
    print(f'[2/4] training the slim region net (log: {out}/train.log)', flush=True)
    weights, losses = train(out, data_dir, mean, args.iters, args.seed,
                            initial=os.path.join(out, 'untrained.caffemodel'))
    trained_at = time.time()
    print(f'      smoothed loss {losses[0]:.4f} -> {losses[-1]:.4f} ({trained_at - start:.0f} s)', flush=True)
    deploy = write_deploy(os.path.join(out, 'deploy.prototxt'))
    annotations = os.path.join(data_dir, 'annotations', 'instances_val.json')
    print(f'[3/4] netspec regions --score {annotations}', flush=True)
    results = {'trained': score(deploy, weights, annotations, net.PATHWAYS, mean, os.path.join(out, 'trained'))}
    print('[4/4] baselines: untrained net, fixed boxes', flush=True)
    results['untrained'] = score(deploy, os.path.join(out, 'untrained.caffemodel'), annotations, net.PATHWAYS, mean,
                                 os.path.join(out, 'untrained'), quiet=True)
    for fraction in args.box:
        model = box_weights(weights, os.path.join(out, f'box{fraction:g}.caffemodel'), net.PATHWAYS, fraction)
        results[f'boxes {fraction:g}'] = score(deploy, model, annotations, net.PATHWAYS, mean,
                                               os.path.join(out, f'box{fraction:g}'), quiet=True)
    summary = {'iters': len(losses) and int(weights.rsplit('_', 1)[1].split('.')[0]), 'losses': losses,
               'seconds': round(time.time() - start, 1), 'train_seconds': round(trained_at - start, 1),
               'val_images': args.val_images, 'instances': results['trained']['instances'],
               'results': {k: {m: v[m] for m in KEYS} for k, v in results.items()}}
    with open(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print(f"\n{results['trained']['instances']} val instances in {args.val_images} images "
          f"(percent; top 1000 regions per image after NMS):")
    for name, m in results.items():
        print(line(name, m))
    print(f'({time.time() - start:.0f} s; weights {weights}; summary {out}/summary.json)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
