"""Experiments of Long's thesis, ch. 4, on netspec's region nets (CPU-sized).

``python benchmarks/bench_regions.py ablation [--iters 600]``
    Fig. 4.4's 2x2 ablation on ONE pathway of models/coco-regions-slim (p2: conv3_2,
    stride 4, kernel 5, K = 12, 48 px windows): with/without PairTranspose x with/without
    the shared K^2 x K^2 matrix, same kernel, data, seeds and iterations; each variant is
    trained from scratch on the synthetic instance set (96 x 96 images) and scored with
    ``netspec regions --score`` on its val split.  -> benchmarks/results/regions_ablation.json

``python benchmarks/bench_regions.py pyramid [--size 256] [--net vgg16|slim]``
    Sec. 4.3.4's natural feature pyramid vs an image pyramid: forward time of the deploy
    net with the coarsest pathway alone at 1x, 2x and 3x the input side, against all
    pathways at 1x (random weights; the pure jitted core, median of --repeats runs after
    a warm-up).  -> benchmarks/results/regions_pyramid_<net>.json

Each run stays under 10 minutes on the 2-core CPU this project is developed on.
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, 'models')
RESULTS = os.path.join(ROOT, 'benchmarks', 'results')
sys.path.insert(0, ROOT)
sys.path.insert(0, MODELS)

VARIANTS = (('neither', False, False), ('transpose only', True, False),
            ('matrix only', False, True), ('transpose + matrix', True, True))


def load(model_dir, filename='net.py'):
    spec = importlib.util.spec_from_file_location(f'bench_{model_dir}_{filename[:-3]}'.replace('-', '_'),
                                                  os.path.join(MODELS, model_dir, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine():
    import jax
    return {'platform': platform.platform(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
            'device': str(jax.devices()[0])}


def ablation(args):
    run = load('coco-regions-slim', 'run.py')
    net = load('coco-regions-slim')
    pathways = tuple(p for p in net.PATHWAYS if p[0] == args.pathway)
    out = os.path.abspath(args.out)
    data = os.path.join(out, 'data')
    mean = run.make_data(data, args.train_images, args.val_images, 96, args.seed)
    annotations = os.path.join(data, 'annotations', 'instances_val.json')
    rows = []
    for label, transpose, matrix in VARIANTS:
        start = time.time()
        tag = label.replace(' + ', '_').replace(' ', '_')
        folder = os.path.join(out, tag)
        kwargs = dict(transpose=transpose, matrix=matrix, pathways=pathways)
        weights, losses = run.train(folder, data, mean, args.iters, args.seed, quiet=True, **kwargs)
        deploy = run.write_deploy(os.path.join(folder, 'deploy.prototxt'), **kwargs)
        metrics = run.score(deploy, weights, annotations, pathways, mean, os.path.join(folder, 'scores'), quiet=True)
        row = {'variant': label, 'transpose': transpose, 'matrix': matrix, 'final_loss': losses[-1],
               'seconds': round(time.time() - start, 1), **{k: metrics[k] for k in run.KEYS + ('instances',)}}
        rows.append(row)
        print(f"{label:<20} AR {100 * row['AR']:5.1f}  ABO {100 * row['ABO']:5.1f}  R@50 {100 * row['R@50']:5.1f}  "
              f"R@70 {100 * row['R@70']:5.1f}  loss {row['final_loss']:.3f}  ({row['seconds']:.0f} s)", flush=True)
    name, feature, stride, kernel, k = pathways[0]
    document = {'experiment': "Fig. 4.4 ablation: one pathway, with/without PairTranspose x with/without shared matrix",
                'pathway': {'name': name, 'feature': feature, 'stride': stride, 'kernel': kernel, 'K': k,
                            'window_px': k * stride},
                'iters': args.iters, 'seed': args.seed, 'train_images': args.train_images,
                'val_images': args.val_images, 'image_size': 96, 'solver': 'models/coco-regions-slim/solver.prototxt',
                'rows': rows, 'machine': machine()}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, 'regions_ablation.json')
    with open(path, 'w') as f:
        json.dump(document, f, indent=1)
    print(f'-> {path}')


def _random_params(graph, seed=0):
    from netspec import compiler
    import jax.numpy as jnp
    params, state = compiler.init_params(graph, seed=seed)
    rs = np.random.RandomState(seed)
    out = {}
    for name, blobs in params.items():
        new = []
        for blob in blobs:
            shape = np.shape(blob)
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            new.append(jnp.asarray(rs.standard_normal(shape).astype(np.float32) * np.sqrt(2.0 / fan_in)))
        out[name] = new
    return out, state


def time_forward(net_param, side, repeats):
    import jax
    from netspec import compiler
    from netspec.graph import build_graph
    from netspec.layers import TEST
    graph = build_graph(net_param, TEST, input_shapes={'data': (1, 3, side, side)})
    params, state = _random_params(graph)
    outputs = [b for b in graph.outputs]
    apply = jax.jit(lambda p, x: [compiler.forward(graph, p, state, {'data': x})[0][b] for b in outputs])
    x = jax.numpy.asarray(np.random.RandomState(1).standard_normal((1, 3, side, side)).astype(np.float32) * 50)
    t0 = time.perf_counter()
    jax.block_until_ready(apply(params, x))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(apply(params, x))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), compile_s, outputs


def pyramid(args):
    module = load('coco-regions-vgg16' if args.net == 'vgg16' else 'coco-regions-slim')
    coarsest = module.PATHWAYS[-1:]
    cases = [('coarsest pathway alone', coarsest, 1), ('coarsest pathway alone', coarsest, 2),
             ('coarsest pathway alone', coarsest, 3), ('all pathways (natural pyramid)', module.PATHWAYS, 1)]
    rows = []
    for label, pathways, scale in cases:
        side = args.size * scale
        net_param = module.regions_net('deploy', pathways=pathways)
        seconds, compile_s, outputs = time_forward(net_param, side, args.repeats)
        rows.append({'case': label, 'pathways': [p[0] for p in pathways], 'scale': scale, 'input': [1, 3, side, side],
                     'forward_ms': round(1000 * seconds, 1), 'compile_s': round(compile_s, 1)})
        print(f"{label:<32} {scale}x  1x3x{side}x{side}  {1000 * seconds:9.1f} ms  (compile {compile_s:.1f} s)",
              flush=True)
    base = rows[0]['forward_ms']
    for row in rows:
        row['relative_to_coarsest_1x'] = round(row['forward_ms'] / base, 2)
    document = {'experiment': "Sec. 4.3.4: natural feature pyramid vs image pyramid (forward time)",
                'net': f'models/coco-regions-{args.net}/net.py deploy (random weights)', 'base_size': args.size,
                'repeats': args.repeats, 'rows': rows, 'machine': machine(),
                'thesis_gpu_640x480_ms': {'coarsest 1x': 161, 'coarsest 2x': 416, 'coarsest 3x': 922,
                                          'all pathways 1x': 292}}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f'regions_pyramid_{args.net}.json')
    with open(path, 'w') as f:
        json.dump(document, f, indent=1)
    print('\n| input | pathways | forward (ms) | x coarsest@1x |\n|---|---|---|---|')
    for row in rows:
        print(f"| {row['scale']}x ({row['input'][2]}x{row['input'][3]}) | {', '.join(row['pathways'])} | "
              f"{row['forward_ms']:.0f} | {row['relative_to_coarsest_1x']:.2f} |")
    print(f'-> {path}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='experiment', required=True)
    a = sub.add_parser('ablation', help="Fig. 4.4's 2x2 ablation on one slim pathway")
    a.add_argument('--iters', type=int, default=600)
    a.add_argument('--pathway', default='p2', help='the slim net pathway (default p2: stride 4, K 12)')
    a.add_argument('--train-images', type=int, default=200)
    a.add_argument('--val-images', type=int, default=40)
    a.add_argument('--seed', type=int, default=0)
    a.add_argument('--out', default=os.path.join('runs', 'bench-regions-ablation'))
    y = sub.add_parser('pyramid', help="sec. 4.3.4's feature pyramid vs image pyramid timing")
    y.add_argument('--net', choices=('vgg16', 'slim'), default='vgg16')
    y.add_argument('--size', type=int, default=256, help='the 1x input side')
    y.add_argument('--repeats', type=int, default=3)
    args = p.parse_args(argv)
    (ablation if args.experiment == 'ablation' else pyramid)(args)


if __name__ == '__main__':
    main()
