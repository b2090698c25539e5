"""Surrogate-gradient training and evaluation, writing a run folder.

``train(cfg, run_dir)`` writes::

    RUN/model.safetensors   the state dict (safetensors: no pickle)
    RUN/config.json         the TrainConfig and the NetworkSpec
    RUN/metrics.json        test_accuracy, train_seconds, firing_rates, energy, history
    RUN/training_curve.png  loss and accuracy per epoch

Loss: MSE between the output rate (score / T, or / (2**T - 1) for STCB) and the
one-hot target (both papers' code) or cross-entropy on the scores.  Adam.
Same seed on the same machine gives the same result: data order, init and
dropout all come from seeded generators, and torch's deterministic mode is on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from spikeforge.config import MAX_TIMESTEPS, NetworkSpec
from spikeforge.errors import SpikeforgeError
from spikeforge.files import read_json
from spikeforge.sw import data as sfdata
from spikeforge.sw import energy
from spikeforge.sw.models import SpikingNet, check_size, spec_for
from spikeforge.sw.neurons import steb_encode


class TrainError(SpikeforgeError, ValueError):
    """Bad training configuration or run folder."""


@dataclass(frozen=True)
class TrainConfig:
    model: str = "convsnn"
    dataset: str = "mnist5k"
    epochs: int = 5
    timesteps: int | None = None      # None: the model's default
    batch_size: int = 20
    lr: float = 5e-4
    seed: int = 0
    loss: str = "mse"                 # "mse" | "ce"
    hybrid_epochs: int = 0            # ConvSNN hybrid pre-training epochs
    hybrid_beta: float = 0.05
    dropout: float = 0.0
    train_limit: int | None = None    # use only the first N training samples
    overrides: dict = field(default_factory=dict)  # model builder keyword overrides

    def __post_init__(self):
        def is_int(v):
            return type(v) is int

        def is_real(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("model", "dataset"):
            if not isinstance(getattr(self, name), str):
                raise TrainError(f"{name} must be a string, not {getattr(self, name)!r:.40}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise TrainError(f"{name} must be a positive integer, not {v!r:.40}")
        if self.timesteps is not None and (not is_int(self.timesteps)
                                           or not 1 <= self.timesteps <= MAX_TIMESTEPS):
            raise TrainError(f"timesteps must be null or an integer in 1..{MAX_TIMESTEPS}, "
                             f"not {self.timesteps!r:.40}")
        if not is_real(self.lr) or self.lr <= 0:
            raise TrainError(f"lr must be a finite number above 0, not {self.lr!r:.40}")
        if not is_int(self.seed) or not 0 <= self.seed < 1 << 63:
            raise TrainError(f"seed must be an integer in 0..2**63-1, not {self.seed!r:.40}")
        if self.loss not in ("mse", "ce"):
            raise TrainError(f"loss must be 'mse' or 'ce', not {self.loss!r:.40}")
        if not is_int(self.hybrid_epochs) or not 0 <= self.hybrid_epochs <= self.epochs:
            raise TrainError(f"hybrid_epochs must be an integer in [0, epochs], "
                             f"not {self.hybrid_epochs!r:.40}")
        if not is_real(self.hybrid_beta) or self.hybrid_beta < 0:
            raise TrainError(f"hybrid_beta must be a non-negative finite number, "
                             f"not {self.hybrid_beta!r:.40}")
        if not is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise TrainError(f"dropout must be a number in [0, 1), not {self.dropout!r:.40}")
        if self.train_limit is not None and (not is_int(self.train_limit)
                                             or self.train_limit < 1):
            raise TrainError(f"train_limit must be null or a positive integer, "
                             f"not {self.train_limit!r:.40}")
        if not isinstance(self.overrides, dict) or not all(isinstance(k, str)
                                                           for k in self.overrides):
            raise TrainError(f"overrides must be an object of builder arguments, "
                             f"not {self.overrides!r:.40}")


def network_spec(cfg: TrainConfig, ds: sfdata.Dataset) -> NetworkSpec:
    """The model's spec adapted to the data set (shape, classes, frames)."""
    kw = dict(cfg.overrides)
    kw.setdefault("classes", ds.classes)
    kw.setdefault("input_shape", tuple(ds.shape))
    if cfg.timesteps is not None:
        kw.setdefault("timesteps", cfg.timesteps)
    if ds.frames > 1:
        kw.setdefault("frames", ds.frames)
        kw.setdefault("timesteps", ds.frames)
    spec = spec_for(cfg.model, **kw)
    if spec.classes != ds.classes:
        raise TrainError(f"the model has {spec.classes} classes, the data set {cfg.dataset} "
                         f"{ds.classes}: drop --set classes or match the data")
    if tuple(spec.input_shape) != tuple(ds.shape):
        raise TrainError(f"the model takes input {list(spec.input_shape)}, the data set "
                         f"{cfg.dataset} has {list(ds.shape)}")
    if ds.frames > 1 and spec.frames != ds.frames:
        raise TrainError(f"the data set {cfg.dataset} has {ds.frames} frames per sample, "
                         f"the model takes {spec.frames}")
    return spec


def _score_scale(spec: NetworkSpec, stcb: bool) -> float:
    return float((1 << spec.timesteps) - 1 if stcb else spec.timesteps)


def _loss(cfg: TrainConfig, model: SpikingNet, scores, y):
    if cfg.loss == "ce":
        return F.cross_entropy(scores, y)
    rate = scores / _score_scale(model.spec, model.stcb)
    return F.mse_loss(rate, F.one_hot(y, model.spec.classes).to(rate.dtype))


def _batches(n: int, batch: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for i in range(0, n, batch):
        yield order[i:i + batch]


@torch.no_grad()
def evaluate(model: SpikingNet, x: torch.Tensor, y: torch.Tensor, batch: int = 100) -> dict:
    """Accuracy, per-layer firing rates (output spikes per neuron and step,
    after pooling) and the input rates the energy estimate needs."""
    model.eval()
    spec = model.spec
    correct, n = 0, len(y)
    sums = [0.0] * len(spec.layers)
    in_rate0 = 0.0
    for idx in _batches(n, batch, None):
        xb = sfdata.encode(x[idx], spec.timesteps, spec.encoding)
        tr = model.run(xb)
        correct += int((tr.scores.argmax(1) == y[idx]).sum())
        for l, s in enumerate(tr.spikes):
            if model.stcb:
                s = steb_encode(s, model.layers[l].neuron.thresholds)
            sums[l] += float(s.mean()) * len(idx)
        in_rate0 += float(xb.mean()) * len(idx)
    rates = [v / n for v in sums]
    binary_input = spec.encoding != "direct"
    input_rates = [in_rate0 / n if binary_input else None] + rates[:-1]
    return {"accuracy": correct / n, "firing_rates": rates, "input_rates": input_rates}


def train_data(cfg: TrainConfig, ds: sfdata.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.train_limit is not None:
        return ds.x_train[:cfg.train_limit], ds.y_train[:cfg.train_limit]
    return ds.x_train, ds.y_train


def fit(model: SpikingNet, cfg: TrainConfig, ds: sfdata.Dataset, epochs: int, *,
        lr: float | None = None, hybrid_epochs: int = 0, progress: bool = True,
        label: str = "epoch") -> list[dict]:
    """Train ``model`` in place for ``epochs`` epochs; the per-epoch history."""
    spec = model.spec
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr if lr is None else lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_train, y_train = train_data(cfg, ds)
    history = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        beta = cfg.hybrid_beta if epoch < hybrid_epochs else None
        total, seen = 0.0, 0
        steps = _batches(len(y_train), cfg.batch_size, gen)
        bar = tqdm(steps, total=-(-len(y_train) // cfg.batch_size), disable=not progress,
                   desc=f"{label} {epoch + 1}/{epochs}" + (" (hybrid)" if beta else ""),
                   leave=False)
        for idx in bar:
            xb = sfdata.encode(x_train[idx], spec.timesteps, spec.encoding, generator=gen)
            loss = _loss(cfg, model, model(xb, beta) if beta else model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        ev = evaluate(model, ds.x_test, ds.y_test)
        history.append({"epoch": epoch + 1, "loss": total / seen, "test_accuracy": ev["accuracy"],
                        "hybrid": beta is not None, "seconds": time.perf_counter() - t0})
        if progress:
            tqdm.write(f"{label} {epoch + 1}: loss {total / seen:.4f}  test accuracy "
                       f"{100 * ev['accuracy']:.2f}%")
    return history


def train(cfg: TrainConfig, run_dir: str | Path, progress: bool = True) -> dict:
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    ds = sfdata.load(cfg.dataset, seed=cfg.seed)
    spec = network_spec(cfg, ds)
    model = SpikingNet(spec, dropout=cfg.dropout)
    t0 = time.perf_counter()
    history = fit(model, cfg, ds, cfg.epochs, hybrid_epochs=cfg.hybrid_epochs, progress=progress)
    train_seconds = time.perf_counter() - t0
    ev = evaluate(model, ds.x_test, ds.y_test)
    metrics = {
        "model": cfg.model, "dataset": cfg.dataset,
        "test_accuracy": ev["accuracy"],
        "train_seconds": train_seconds,
        "firing_rates": ev["firing_rates"],
        "energy": energy.estimate(spec, ev["input_rates"]),
        "history": history,
    }
    save_run(run, cfg, model, metrics)
    return metrics


def save_run(run: Path, cfg: TrainConfig, model: SpikingNet, metrics: dict) -> None:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(run / "model.safetensors"))
    (run / "config.json").write_text(json.dumps(
        {"train": dataclasses.asdict(cfg), "spec": model.spec.to_dict()}, indent=2))
    write_metrics(run, metrics)
    plot_curve(run / "training_curve.png", metrics["history"])


def write_metrics(run: Path, update: dict) -> dict:
    """Merge ``update`` into RUN/metrics.json (later steps add their figures)."""
    path = Path(run) / "metrics.json"
    metrics = read_json(path) if path.exists() else {}
    metrics.update(update)
    path.write_text(json.dumps(metrics, indent=2))
    return metrics


def load_run(run_dir: str | Path) -> tuple[TrainConfig, SpikingNet]:
    """The config and trained model of a run folder; TrainError names what is missing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    run = Path(run_dir)
    for name in ("config.json", "model.safetensors"):
        if not (run / name).is_file():
            raise TrainError(f"{run}: no {name}; run `spikeforge train --out {run}` first")
    path = run / "config.json"
    cfg_d = read_json(path)
    for key in ("train", "spec"):
        if not isinstance(cfg_d.get(key), dict):
            raise TrainError(f"{path}: field {key!r} must be an object, "
                             f"not {reprlib.repr(cfg_d.get(key))}")
    try:
        cfg = TrainConfig(**cfg_d["train"])
        spec = NetworkSpec.from_dict(cfg_d["spec"])
        check_size(spec)
    except TypeError as e:  # unknown or missing TrainConfig fields
        raise TrainError(f"{path}: not a spikeforge run config ({e})") from None
    except SpikeforgeError as e:
        raise TrainError(f"{path}: {e}") from None
    model = SpikingNet(spec, dropout=cfg.dropout)
    try:
        model.load_state_dict(load_file(str(run / "model.safetensors")))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise TrainError(f"{run / 'model.safetensors'}: cannot load ({e})") from None
    model.eval()
    return cfg, model


def plot_curve(path: Path, history: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h["loss"] for h in history], "o-")
    ax[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    ax[1].plot(ep, [100 * h["test_accuracy"] for h in history], "o-", color="C1")
    ax[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_imported_run(run: Path, model: SpikingNet, *, dataset: str, seed: int = 0,
                       ds: sfdata.Dataset | None = None, name: str | None = None) -> dict:
    """A run folder for a model trained elsewhere (``spikeforge import``; any
    :class:`SpikingNet`, e.g. from :func:`spikeforge.sw.models.from_weights`):
    ``model.safetensors``, ``config.json`` and ``metrics.json`` as :func:`train`
    writes them, with the float model's test accuracy, firing rates and energy
    on ``dataset`` and ``train_seconds`` 0, so that quantize (QAT included),
    export, verify, build and report take it unchanged."""
    run = Path(run)
    ds = ds if ds is not None else sfdata.load(dataset, seed=seed)
    spec = model.spec
    if tuple(spec.input_shape) != tuple(ds.shape) or spec.classes != ds.classes:
        raise TrainError(f"the model takes {list(spec.input_shape)} and gives {spec.classes} "
                         f"classes; the data set {dataset} has {list(ds.shape)} and "
                         f"{ds.classes}")
    cfg = TrainConfig(model=name or spec.name, dataset=dataset, epochs=1,
                      timesteps=spec.timesteps, seed=seed)
    ev = evaluate(model, ds.x_test, ds.y_test)
    metrics = {"model": cfg.model, "dataset": dataset, "test_accuracy": ev["accuracy"],
               "train_seconds": 0.0, "firing_rates": ev["firing_rates"],
               "energy": energy.estimate(spec, ev["input_rates"]), "history": [],
               "imported": True}
    from safetensors.torch import save_file
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(run / "model.safetensors"))
    (run / "config.json").write_text(json.dumps(
        {"train": dataclasses.asdict(cfg), "spec": spec.to_dict()}, indent=2))
    path = run / "metrics.json"
    path.unlink(missing_ok=True)  # figures of an earlier model in this folder are stale
    write_metrics(run, metrics)
    return metrics
