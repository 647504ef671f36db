"""3x3 stride-1 convolution by Winograd's minimal filtering, F(m x m, 3 x 3) (for CPU).

A 3x3 convolution producing an m x m output tile reads an (m+2) x (m+2) input tile.
Winograd (Lavin & Gray 2016, from Cook-Toom) computes that tile as

    Y = A^T [ (G g G^T) * (B^T d B) ] A

where ``*`` is elementwise over the (m+2)^2 transformed positions.  Summed over input
channels, each transformed position is one matrix product: (tiles, C) @ (C, O).  So
the whole convolution is (m+2)^2 GEMMs of (N*H*W/m^2, C) @ (C, O): (m+2)^2/m^2
multiplications per output instead of 9, i.e. 2.25x fewer for m = 2 and 4x fewer for
m = 4, at the cost of cheap, fused add/subtract transforms.  The backward pass is the
same GEMMs transposed (hand-written below, not left to autodiff of the transforms):

    dM = A-transform of dY's tiles,  dU = V^T @ dM,  dV = dM @ U^T,
    dg = G^T dU G,                   dx = overlap-add of B dV B^T

so forward, data gradient and weight gradient all get the reduction.

Accuracy: F(2x2,3x3)'s transforms have coefficients 0, +-1, 1/2 (exact in binary);
measured on FCN-8s's VGG layers its float32 results differ from XLA's direct
convolution by about 1e-6 of the output's range, the same as two direct convolutions
summing in different orders: it is the default for full float32 (Caffe's arithmetic).
F(4x4,3x3) (points 0, +-1, 1/2, -2, which are more accurate than Lavin's +-2) differs
by about 2e-5: it is used only when the user traded exactness for speed
(``--precision tf32``, which on a GPU means TF32 tensor cores, ~1e-3).

Layout: x (N, H, W, C) float32, kernel (3, 3, C, O), stride 1, no dilation, one group,
padding ((top, bottom), (left, right)) >= 0.  ``conv_grad`` decides when to use it.
"""
from fractions import Fraction
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: Interpolation points of each tile size's transforms (plus the point at infinity).
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, Fraction(1, 2), -2)}


@lru_cache(maxsize=None)
def transforms(m):
    """(B^T, G, A^T) of F(m x m, 3 x 3) as float64 arrays, built exactly (Cook-Toom with
    rational arithmetic) from ``POINTS[m]``: B^T (m+2, m+2), G (m+2, 3), A^T (m, m+2)."""
    points = [Fraction(p) for p in POINTS[m]]
    n = m + 2

    def product(roots):
        poly = [Fraction(1)]                        # ascending coefficients
        for root in roots:
            poly = [(poly[k - 1] if k else 0) - root * (poly[k] if k < len(poly) else 0)
                    for k in range(len(poly) + 1)]
        return poly

    bt = []
    for j in range(n - 1):
        poly = product([p for i, p in enumerate(points) if i != j])
        bt.append(poly + [Fraction(0)] * (n - len(poly)))
    bt.append(product(points))
    g = []
    for j, a in enumerate(points):
        scale = Fraction(1)
        for i, b in enumerate(points):
            if i != j:
                scale *= a - b
        g.append([a ** k / scale for k in range(3)])
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    at = [[p ** i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (bt, g, at))


def tile_grid(x_shape, padding, m):
    """Output size (oh, ow) and m x m tile counts (th, tw) of a 3x3 stride-1 convolution
    of an (N, H, W, C) input with ``padding``."""
    oh = x_shape[1] + sum(padding[0]) - 2
    ow = x_shape[2] + sum(padding[1]) - 2
    return oh, ow, -(-oh // m), -(-ow // m)


def _left_multiply(matrix, a):
    """The constant ``matrix`` (p, q) times ``a`` viewed as (q, rest): (p, rest), exactly
    (Precision.HIGHEST).  A product's result is materialized, so what reads it reads each
    value once rather than re-deriving it inside its own fusion."""
    return lax.dot_general(jnp.asarray(matrix, a.dtype), a.reshape(matrix.shape[1], -1),
                           (((1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)


def _combine(matrix, parts):
    """``[sum_j matrix[i, j] * parts[j] for every row i]``, skipping zero terms and
    multiplications by +-1: the input and output transforms written out, which XLA
    fuses with the slices that cut the tiles or the interleaving of the output (one
    pass over memory)."""
    out = []
    for row in matrix:
        total = None
        for coef, part in zip(row, parts):
            if coef == 0:
                continue
            term = part if coef == 1 else -part if coef == -1 else part * float(coef)
            total = term if total is None else total + term
        out.append(jnp.zeros_like(parts[0]) if total is None else total)
    return out


def _tile_transform(xp, matrix, m, th, tw):
    """``matrix @ tile @ matrix^T`` of every tile of the padded (N, H, W, C) map ``xp``,
    tiles of ``matrix.shape[1]`` x ``matrix.shape[1]`` cells placed m apart: returns
    (p^2, N*th*tw, C) for a (p, q) matrix.  Written out (``_combine``) over strided
    slices, one stack per row of the result: XLA fuses each row's stack of p components
    with the slices and sums into one pass over memory, where a single stack of all p^2
    components (more operands than XLA:CPU fuses into a concatenation) was written
    component by component and then copied (1.4-2.5x slower on FCN-8s's maps)."""
    p, q = matrix.shape
    n, c = xp.shape[0], xp.shape[-1]
    rows = [lax.slice_in_dim(xp, i, i + m * (th - 1) + 1, m, 1) for i in range(q)]
    groups = []
    for row in _combine(matrix, rows):
        cols = [lax.slice_in_dim(row, j, j + m * (tw - 1) + 1, m, 2) for j in range(q)]
        groups.append(jnp.stack(_combine(matrix, cols)).reshape(p, n * th * tw, c))
    return jnp.concatenate(groups)


def input_transform(x, padding, m):
    """V: (m+2)^2 x (N*th*tw) x C, the B^T d B of every input tile."""
    n, h, w, c = x.shape
    _, _, th, tw = tile_grid(x.shape, padding, m)
    (top, _), (left, _) = padding
    xp = jnp.pad(x, ((0, 0), (top, m * th + 2 - h - top), (left, m * tw + 2 - w - left), (0, 0)))
    return _tile_transform(xp, transforms(m)[0], m, th, tw)


def input_transform_transpose(dv, x_shape, padding, m):
    """The adjoint of ``input_transform``: each tile's B dV B^T, overlap-added back into
    the (padded) input and cropped to x's shape.  Cell (m*Y + r, m*X + s) of the padded
    input gathers tile cell (r + m*a, s + m*b) of tile (Y - a, X - b) for the a, b that
    keep the tile cell inside the (m+2)-wide tile: each of the m^2 phases (r, s) is a sum
    of shifted tile-cell maps, and the phases interleave into the input."""
    b = transforms(m)[0].T
    n, h, w, c = x_shape
    _, _, th, tw = tile_grid(x_shape, padding, m)
    t = m + 2
    # z = (B (x) B) dV as one small product, materialized: the interleaving below (fused
    # with whatever reads dx, e.g. a ReLU's mask) reads each tile cell once
    z = _left_multiply(np.kron(b, b), dv).reshape(t, t, n, th, tw, c)
    zero = jnp.zeros((), dv.dtype)

    def shifted(cell, a, b):    # the map of tile cell ``cell`` moved a tiles down, b right
        return lax.pad(cell, zero, [(0, 0, 0), (a, 1 - a, 0), (b, 1 - b, 0), (0, 0, 0)])
    phase_rows = []
    for r in range(m):
        phases = []
        for s_ in range(m):
            terms = [shifted(z[r + m * a][s_ + m * b_], a, b_)
                     for a in range(2) if r + m * a < t for b_ in range(2) if s_ + m * b_ < t]
            phases.append(sum(terms[1:], terms[0]))
        phase_rows.append(jnp.stack(phases, 3))                 # (n, th+1, tw+1, m, c)
    full = jnp.stack(phase_rows, 2).reshape(n, m * (th + 1), m * (tw + 1), c)
    (top, _), (left, _) = padding
    return full[:, top:top + h, left:left + w]


def filter_transform(kernel, m):
    """U: (m+2)^2 x C x O, G g G^T of every (input, output) channel pair: one product of
    (G (x) G) with the kernel viewed as (9, C*O), no transposes of the kernel."""
    g = transforms(m)[1]
    return _left_multiply(np.kron(g, g), kernel).reshape((-1,) + kernel.shape[2:])


def filter_transform_transpose(du, m):
    g = transforms(m)[1]
    return _left_multiply(np.kron(g, g).T, du).reshape((3, 3) + du.shape[1:])


def output_transform(mt, out_shape, m):
    """Y (N, OH, OW, O) from M ((m+2)^2, N*th*tw, O): A^T M A per tile, tiles interleaved."""
    at = transforms(m)[2]
    n, oh, ow, th, tw = out_shape
    t = m + 2
    mt = mt.reshape(t, t, n, th, tw, mt.shape[-1])
    rows = _combine(at, [mt[i] for i in range(t)])
    y = jnp.stack([jnp.stack(_combine(at, [r[j] for j in range(t)]), -2) for r in rows], 2)
    return y.reshape(n, m * th, m * tw, y.shape[-1])[:, :oh, :ow]     # y: (n, th, m, tw, m, o)


def output_transform_transpose(dy, th, tw, m):
    """The adjoint of ``output_transform``: dM from dY, A dY A^T of every m x m tile."""
    n, oh, ow, o = dy.shape
    dy = jnp.pad(dy, ((0, 0), (0, m * th - oh), (0, m * tw - ow), (0, 0)))
    return _tile_transform(dy, transforms(m)[2].T, m, th, tw)


def _batched_matmul(a, b, contract_a, contract_b):
    """Per transformed position (leading axis): a @ b contracting the given axes."""
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((0,), (0,))))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def winograd_conv(x, kernel, padding, m):
    """The cross-correlation of x (N, H, W, C) with kernel (3, 3, C, O), stride 1, with
    ``padding`` ((top, bottom), (left, right)), by Winograd F(m x m, 3 x 3).

    Everything computes in float32, also for bfloat16 x (a bf16 pass): y and dx come
    back in x's type, the kernel's gradient in the kernel's (float32 master weights
    stay float32).  (Rounding V and U to bfloat16 for the products would make them
    no faster here, the transforms dominate, and 7x less exact than a bfloat16 direct
    convolution for F(4x4,3x3): 1.6e-2 RMS against 2.4e-3.)"""
    return _forward(x, kernel, padding, m)[0]


def _forward(x, kernel, padding, m):
    oh, ow, th, tw = tile_grid(x.shape, padding, m)
    v = input_transform(x.astype(jnp.float32), padding, m)
    u = filter_transform(kernel.astype(jnp.float32), m)
    mt = _batched_matmul(v, u, 2, 1)
    y = output_transform(mt, (x.shape[0], oh, ow, th, tw), m).astype(x.dtype)
    # the backward pass transforms x and the kernel again rather than keeping V (4x
    # the input for m = 2, 2.25x for m = 4): as fast (one pass over memory, measured
    # within noise per layer) and no more memory than the direct convolution keeps
    return y, (x, kernel)


def _backward(padding, m, residuals, dy):
    x, kernel = residuals
    _, _, th, tw = tile_grid(x.shape, padding, m)
    v = input_transform(x.astype(jnp.float32), padding, m)
    u = filter_transform(kernel.astype(jnp.float32), m)
    dm = output_transform_transpose(dy.astype(jnp.float32), th, tw, m)
    du = _batched_matmul(v, dm, 1, 1)               # ((m+2)^2, C, O)
    dv = _batched_matmul(dm, u, 2, 2)               # ((m+2)^2, tiles, C)
    return (input_transform_transpose(dv, x.shape, padding, m).astype(x.dtype),
            filter_transform_transpose(du, m).astype(kernel.dtype))


winograd_conv.defvjp(_forward, _backward)
