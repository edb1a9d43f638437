"""Square's starting points and proposals per norm (Linf, L2, L1), as pyautoattack's.

    from hpm_jax.attacks import square_proposals as sp
    x0 = sp.l1_init(key, x, eps)                  # the meta-pattern grid, projected to the ball
    sp.l2_pattern(5), sp.l1_pattern(5)            # (5, 5) patterns, unit L2 / L1 norm

Linf starts from vertical stripes at +-eps and proposes one window per sample at a fresh
vertex. L2 and L1 start from a grid of tiles carrying the meta-pattern (concentric
rectangles, positive in one half and negative in the other, random transposition, a random
sign per channel) and propose to move the perturbation mass of a second window into the
first, keeping the perturbation on the sphere. L2 rescales to norm eps and clips to the box;
L1, as the reference, projects onto the L1 ball of radius eps (1 - 1e-6) intersected with
the box: the exact projection the reference's `L1_projection` computes, by
`geometry.project_l1_bisect` (no sort: XLA:CPU's sort of 2 d breakpoints cost 14x a forward pass of
the parity CNN per query, the bisection half of one). The L1 pattern weights ring j by
1 / (j + 1)^4 (L2: ^2) and is normalised in L1.

Every random choice (window corners, signs, transpositions) is drawn per sample, where the
reference draws corners and transpositions once per iteration (or start tile) for the whole
batch; `key` is one key, or one key per sample (B,) as `square` passes them. Windows are
masks from iota comparisons, since their side is traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hpm_jax.attacks import geometry

# Added to norms before dividing, as the reference does.
_TINY = 1e-12
# The reference projects L1 points onto a ball just inside eps, so rounding keeps them in it.
L1_SHRINK = 1.0 - 1e-6


# ---- the L2 and L1 meta-patterns (host side, static) ------------------------------------------


def _unit(v: np.ndarray, norm: str) -> np.ndarray:
    return v / (np.sum(np.abs(v)) if norm == "L1" else np.sqrt(np.sum(v**2)))


def _rectangles(rows: int, cols: int, norm: str = "L2") -> np.ndarray:
    """Concentric rectangles around (rows // 2, cols // 2): ring k (Chebyshev distance k from
    the centre) holds sum_{j >= k} 1 / (j + 1)^q, the sum of the nested rectangles covering it
    (q = 2 for L2, 4 for L1, as the reference); unit norm in `norm`."""
    if rows == 0:
        return np.zeros((0, cols))
    dist = np.maximum(
        np.abs(np.arange(rows)[:, None] - rows // 2), np.abs(np.arange(cols)[None, :] - cols // 2)
    )
    n_rings = max(rows // 2, cols // 2) + 1
    power = 4 if norm == "L1" else 2
    tail = np.cumsum((1.0 / np.arange(1, n_rings + 1) ** power)[::-1])[::-1]
    return _unit(tail[dist], norm)


def l2_pattern(side: int, norm: str = "L2") -> np.ndarray:
    """(side, side) float64: the reference's square pattern (its `eta`) before the random
    transposition: rectangles, positive on the top side // 2 rows and negative below; unit
    norm (L2, or L1 with norm="L1": see `l1_pattern`)."""
    top, bottom = _rectangles(side // 2, side, norm), _rectangles(side - side // 2, side, norm)
    return _unit(np.concatenate([top, -bottom]), norm)


def l1_pattern(side: int) -> np.ndarray:
    """The reference's L1 pattern: as the L2 one with ring weights 1 / (j + 1)^4 and every
    normalisation in L1 (unit L1 norm)."""
    return l2_pattern(side, "L1")


# ---- starts and proposals (traced) -----------------------------------------------------------


def uniform(key: jax.Array, batch: int, shape: tuple[int, ...]) -> jax.Array:
    """(batch, *shape) uniforms in [0, 1): from one key, or row i from key[i] when `key` holds
    one key per row (Square's per-point keys: a point's draws do not depend on its bucket)."""
    if jnp.ndim(key) == 0:
        return jax.random.uniform(key, (batch, *shape))
    return jax.vmap(lambda k: jax.random.uniform(k, shape))(key)


def _sign(u: jax.Array, dtype) -> jax.Array:
    """+1 or -1 with equal chance, from uniforms in [0, 1)."""
    return jnp.where(u < 0.5, -1.0, 1.0).astype(dtype)


def linf_init(key: jax.Array, x: jax.Array, eps: jax.Array | float) -> jax.Array:
    """Vertical stripes: every pixel at x +- eps (clipped to [0, 1]), one sign per column and
    channel of each sample. eps: a number or (B,)."""
    b, _, w, c = x.shape
    eps = geometry.radius(eps, x)
    sign = _sign(uniform(key, b, (1, w, c)), x.dtype)
    return jnp.clip(x + eps * sign, 0.0, 1.0)


def _tiling(h: int, w: int, norm: str = "L2"):
    """The reference's start grid, as static per-pixel maps: the tile index (-1 off the grid)
    and the pattern value at each pixel, untransposed and transposed. Tiles of side H // 5 from
    offset (H - 5 * side) // 2 on both axes (as the reference, which takes both from H); tiles
    running past the edge are cut."""
    side = h // 5
    start = (h - 5 * side) // 2
    n_rows, n_cols = h // side, w // side
    pattern = l2_pattern(side, norm)

    def axis(size, n_tiles):  # per pixel: tile number along the axis, offset inside the tile
        pos = np.arange(size) - start
        tile, local = pos // side, pos % side
        return np.where((pos >= 0) & (tile < n_tiles), tile, -1), local

    tile_r, local_r = axis(h, n_rows)
    tile_c, local_c = axis(w, n_cols)
    on_grid = (tile_r[:, None] >= 0) & (tile_c[None, :] >= 0)
    tile = np.where(on_grid, tile_r[:, None] * n_cols + tile_c[None, :], -1)
    plain = np.where(on_grid, pattern[local_r[:, None], local_c[None, :]], 0.0)
    transposed = np.where(on_grid, pattern.T[local_r[:, None], local_c[None, :]], 0.0)
    return tile, n_rows * n_cols, plain, transposed


def _tiled_pattern(key: jax.Array, x: jax.Array, norm: str) -> jax.Array:
    """The reference's start perturbation for L2 and L1: a grid of tiles of side H // 5, each
    the meta-pattern of `norm` (transposed or not) times a random sign per channel."""
    b, h, w, c = x.shape
    tile, n_tiles, plain, transposed = _tiling(h, w, norm)
    # One draw for every random choice: each jax.random call site costs compile time.
    u = uniform(key, b, (n_tiles, c + 1))
    index = np.maximum(tile, 0)  # pixels off the grid have plain == transposed == 0
    flip = u[:, index, c] < 0.5
    value = jnp.where(flip, jnp.asarray(transposed, x.dtype), jnp.asarray(plain, x.dtype))
    return value[..., None] * _sign(u[:, index, :c], x.dtype)


def l2_init(key: jax.Array, x: jax.Array, eps: jax.Array | float) -> jax.Array:
    """The reference's L2 start: the tiled meta-pattern scaled to L2 norm eps and clipped to
    [0, 1]. eps: a number or (B,)."""
    delta = _tiled_pattern(key, x, "L2")
    return jnp.clip(x + geometry.radius(eps, x) * geometry.normalize(delta, "L2"), 0.0, 1.0)


def l1_init(key: jax.Array, x: jax.Array, eps: jax.Array | float) -> jax.Array:
    """The reference's L1 start: the tiled L1 meta-pattern as it is (each tile unit L1 norm
    per channel, not rescaled), projected onto the L1 ball of radius eps (1 - 1e-6) ∩ the
    box. eps: a number or (B,)."""
    delta = _tiled_pattern(key, x, "L1")
    return geometry.project_l1_bisect(x + delta, x, geometry.radius(eps, x)[:, 0, 0, 0] * L1_SHRINK)


def _corner(u: jax.Array, side: jax.Array, size: int) -> jax.Array:
    """(B,) int32: window corners drawn as the reference's random_int, floor(u * (size - side)),
    so in [0, size - side) (0 when the window spans the axis); the min guards float rounding."""
    span = size - side
    return jnp.minimum(jnp.floor(u * span), jnp.maximum(span - 1, 0)).astype(jnp.int32)


def _window(top, left, side, h, w):
    """(B, H, W, 1) bool, True inside each sample's window: iota comparisons, since `side` is
    traced."""
    rows = jnp.arange(h)[None, :] - top[:, None]
    cols = jnp.arange(w)[None, :] - left[:, None]
    in_rows = (rows >= 0) & (rows < side)
    in_cols = (cols >= 0) & (cols < side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]


def linf_proposal(key, x, x_best, eps, side):
    """x_best with one window per sample moved to the vertex x +- eps, one sign per channel."""
    b, h, w, c = x.shape
    u = uniform(key, b, (2 + c,))
    window = _window(_corner(u[:, 0], side, h), _corner(u[:, 1], side, w), side, h, w)
    sign = _sign(u[:, None, None, 2:], x.dtype)
    return jnp.where(window, jnp.clip(x + eps * sign, 0.0, 1.0), x_best)


def l2_proposal(key, x, x_best, eps, side, pattern):
    """The reference's L2 step per sample: window 2 is emptied and window 1 gets the pattern
    plus its old (normalised) content, rescaled per channel to carry window 1 and 2's mass
    plus whatever norm budget clipping lost; then the whole delta is rescaled to norm eps."""
    return _pattern_proposal(key, x, x_best, eps, side, pattern, "L2")


def l1_proposal(key, x, x_best, eps, side, pattern):
    """The reference's L1 step per sample: as L2's with L1 norms, window 1's new L1 mass per
    channel c * (the unused budget / c + windows 1 and 2's mass in that channel), which can
    exceed eps; then the projection onto the L1 ball of radius eps (1 - 1e-6) ∩ the box."""
    return _pattern_proposal(key, x, x_best, eps, side, pattern, "L1")


def _pattern_proposal(key, x, x_best, eps, side, pattern, norm):
    """The L2 / L1 proposal; eps: (B, 1, 1, 1), pattern: (S, S) zero-padded beyond `side`."""
    b, h, w, c = x.shape
    u = uniform(key, b, (5 + c,))
    top, left = _corner(u[:, 0], side, h), _corner(u[:, 1], side, w)
    win1 = _window(top, left, side, h, w)
    win2 = _window(_corner(u[:, 2], side, h), _corner(u[:, 3], side, w), side, h, w)
    delta = x_best - x

    def channel_norm(v):  # (B, 1, 1, C): the norm per sample and channel
        if norm == "L1":
            return jnp.sum(jnp.abs(v), axis=(1, 2), keepdims=True)
        return jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))

    norm_image = geometry.expand(geometry.per_sample_norm(delta, norm), x)
    norm_windows = channel_norm(jnp.where(win1 | win2, delta, 0.0))
    # The pattern at each sample's window: pattern[i - top, j - left] (zero-padded beyond
    # `side`, so only indices below 0 need the window mask).
    rows = jnp.clip(jnp.arange(h)[None, :] - top[:, None], 0, pattern.shape[0] - 1)
    cols = jnp.clip(jnp.arange(w)[None, :] - left[:, None], 0, pattern.shape[1] - 1)
    rows, cols = rows[:, :, None], cols[:, None, :]
    flip = u[:, 4, None, None] < 0.5
    placed = jnp.where(flip, pattern.T[rows, cols], pattern[rows, cols])
    sign = _sign(u[:, None, None, 5:], x.dtype)
    old = jnp.where(win1, delta, 0.0)
    new = jnp.where(win1, placed[..., None] * sign + old / (_TINY + channel_norm(old)), 0.0)
    if norm == "L1":
        mass = (jnp.maximum(eps - norm_image, 0.0) / c + norm_windows) * c
    else:
        mass = jnp.sqrt(jnp.maximum(eps**2 - norm_image**2, 0.0) / c + norm_windows**2)
    new = new / (_TINY + channel_norm(new)) * mass
    delta = jnp.where(win1, new, jnp.where(win2, 0.0, delta))
    if norm == "L1":
        return geometry.project_l1_bisect(x + delta, x, eps[:, 0, 0, 0] * L1_SHRINK)
    return jnp.clip(x + eps * geometry.normalize(delta, "L2"), 0.0, 1.0)
