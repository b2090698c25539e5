"""Surrogate-gradient training and evaluation, writing a run folder.

``train(cfg, run_dir)`` writes::

    RUN/model.safetensors   the state dict (safetensors: no pickle)
    RUN/config.json         the TrainConfig and the NetworkSpec
    RUN/metrics.json        test_accuracy, train_seconds, firing_rates, energy, history
    RUN/training_curve.png  loss and accuracy per epoch

Loss: MSE between the output rate (score / T, or / (2**T - 1) for STCB, over
the class's voting group: / V more) and the one-hot target (both papers'
code) or cross-entropy on the scores.  Adam, at a constant learning rate or
(``lr_schedule = "cosine"``) one that falls from ``lr`` to 0 along a half
cosine over the run's batches.  ``augment``: each batch's images moved by
random whole pixels (:func:`spikeforge.sw.data.shift`).  What these did for
the default network, seed by seed: README (``benchmarks/bench_recipe.py``).
Same seed on the same machine gives the same result: data order, init and
dropout all come from seeded generators, and torch's deterministic mode is on.

Training runs on ``cuda:LOCAL_RANK`` when torch sees a CUDA device (where the
neurons take their PyTorch path: the fused LIF kernel is CPU-only), else on
the CPU; ``SPIKEFORGE_DEVICE=cpu`` keeps to the CPU.  Under ``torchrun``
(``WORLD_SIZE`` > 1) the processes form a process group (gloo on the CPU,
NCCL on CUDA) and train one model with DistributedDataParallel: every
process draws the same shuffled global batch of ``batch_size`` samples,
takes its slice of it and scales its loss so that the step is the one a
single process takes on the whole batch (:func:`batch_loss`); rank 0 alone
evaluates and writes the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import reprlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from spikeforge.config import LR_SCHEDULES, MAX_AUGMENT, MAX_TIMESTEPS, NetworkSpec
from spikeforge.errors import SpikeforgeError, shown
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
    lr_schedule: str = "constant"     # "constant" | "cosine" (to 0 over the run's batches)
    augment: int = 0                  # training images moved by up to this many pixels
    seed: int = 0
    loss: str = "mse"                 # "mse" | "ce"
    hybrid_epochs: int = 0            # ConvSNN hybrid pre-training epochs
    hybrid_beta: float = 0.05
    dropout: float = 0.0
    rate_penalty: float = 0.0         # loss += this x the hidden layers' mean firing rate
    penalty_warmup: int = 0           # epochs over which the rate penalty ramps up from 0
    ema: float = 0.0                  # weights averaged over the steps with this decay (0: off)
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
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"not {self.lr_schedule!r:.40}")
        if not is_int(self.augment) or not 0 <= self.augment <= MAX_AUGMENT:
            raise TrainError(f"augment must be an integer in 0..{MAX_AUGMENT}, "
                             f"not {self.augment!r:.40}")
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
        if not is_real(self.rate_penalty) or self.rate_penalty < 0:
            raise TrainError(f"rate_penalty must be a non-negative finite number, "
                             f"not {self.rate_penalty!r:.40}")
        if not is_int(self.penalty_warmup) or self.penalty_warmup < 0:
            raise TrainError(f"penalty_warmup must be an integer of 0 or more, "
                             f"not {self.penalty_warmup!r:.40}")
        if not is_real(self.ema) or not 0 <= self.ema < 1:
            raise TrainError(f"ema must be a number in [0, 1) (0: off), not {self.ema!r:.40}")
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
    """The largest score a class can reach (MSE's target 1: every neuron of
    its voting group spikes at every step)."""
    return float(((1 << spec.timesteps) - 1 if stcb else spec.timesteps) * spec.voting)


def _loss(cfg: TrainConfig, model: SpikingNet, scores, y):
    if cfg.loss == "ce":
        return F.cross_entropy(scores, y)
    rate = scores / _score_scale(model.spec, model.stcb)
    return F.mse_loss(rate, F.one_hot(y, model.spec.classes).to(rate.dtype))


def _rate_loss(cfg: TrainConfig, trace, ramp: float = 1.0) -> torch.Tensor:
    """``rate_penalty`` x ``ramp`` x the mean firing rate of the layers before
    the last (their pooled outputs: the events the next layer's synapse unit
    takes, whose count sets the engine's cycles; the surrogate gradient
    carries it).  ``ramp``: :func:`penalty_ramp`."""
    hidden = trace.spikes[:-1]
    if cfg.rate_penalty == 0 or ramp == 0 or not hidden:
        return trace.scores.new_zeros(())
    return cfg.rate_penalty * ramp * sum(s.float().mean() for s in hidden) / len(hidden)


def penalty_ramp(warmup: int, step: int, per_epoch: int) -> float:
    """The share of the rate penalty at training step ``step`` (from 0): rising
    linearly from 0 at the first step to 1 after ``warmup`` epochs of
    ``per_epoch`` steps (``TrainConfig.penalty_warmup``).  At full strength
    from the start, the penalty can switch a layer off before the loss has
    taught it anything (the default recipe without a warm-up, seed 8: no
    spike out of any layer after the first epoch, 10 %)."""
    return 1.0 if warmup == 0 else min(1.0, step / (warmup * per_epoch))


# --------------------------------------------------------------------------- devices, processes


@dataclass(frozen=True)
class Processes:
    """This process's place in a ``torchrun`` launch of ``world`` > 1 processes."""
    world: int
    rank: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, lo: int, hi: int | None, world: int) -> int:
    text = os.environ.get(name)
    hint = (f"start the processes with torchrun (e.g. torchrun --nproc_per_node {world} "
            f"--no-python spikeforge train ...), which sets WORLD_SIZE, RANK, LOCAL_RANK, "
            f"MASTER_ADDR and MASTER_PORT")
    if text is None:
        raise TrainError(f"WORLD_SIZE={world} but {name} is not set: {hint}")
    try:
        v = int(text)
    except ValueError:
        raise TrainError(f"{name} must be an integer, not {text!r:.40}: {hint}") from None
    if v < lo or hi is not None and v > hi:
        raise TrainError(f"{name}={v} is outside {lo}..{'' if hi is None else hi}: {hint}")
    return v


def distributed_env() -> Processes | None:
    """The ``torchrun`` launch this process belongs to, from its environment
    (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
    checked; None for a single process (``WORLD_SIZE`` unset or 1)."""
    text = os.environ.get("WORLD_SIZE")
    if text is None:
        return None
    try:
        world = int(text)
    except ValueError:
        raise TrainError(f"WORLD_SIZE must be a positive integer, not {text!r:.40}") from None
    if world < 1:
        raise TrainError(f"WORLD_SIZE must be a positive integer, not {world}")
    if world == 1:
        return None
    rank = _env_int("RANK", 0, world - 1, world)
    local_rank = _env_int("LOCAL_RANK", 0, world - 1, world)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise TrainError(f"WORLD_SIZE={world} but {name} is not set: start the processes "
                             f"with torchrun (e.g. torchrun --nproc_per_node {world} "
                             f"--no-python spikeforge train ...)")
    if not torch.distributed.is_available():
        raise TrainError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    return Processes(world, rank, local_rank)


def is_main_process() -> bool:
    """True unless this is a process of a ``torchrun`` launch other than rank 0
    (those train beside rank 0 and write nothing)."""
    procs = distributed_env()
    return procs is None or procs.main


def train_device(local_rank: int = 0) -> torch.device:
    """``cuda:LOCAL_RANK`` when torch sees a CUDA device, else the CPU;
    ``SPIKEFORGE_DEVICE=cpu`` (or ``cuda``) chooses."""
    choice = os.environ.get("SPIKEFORGE_DEVICE", "") or "auto"
    if choice not in ("auto", "cpu", "cuda"):
        raise TrainError(f"SPIKEFORGE_DEVICE must be cpu, cuda or unset, not {choice!r:.40}")
    if choice == "cpu" or choice == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainError("SPIKEFORGE_DEVICE=cuda but torch sees no CUDA device")
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise TrainError(f"LOCAL_RANK {local_rank} needs a CUDA device {local_rank}; this machine "
                         f"has {n}: start at most {n} processes per machine, or set "
                         f"SPIKEFORGE_DEVICE=cpu")
    return torch.device("cuda", local_rank)


def _deterministic(device: torch.device) -> None:
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; ops with no
        # deterministic CUDA kernel warn instead of stopping the run
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)


_GROUP = {"owned": False}  # whether this module opened the default process group


def _join(procs: Processes, device: torch.device) -> None:
    """Join the launch's process group (gloo on the CPU, NCCL on CUDA) unless
    it is open already.  A group opened here stays open for the later
    commands of the process and is closed when the process exits
    (:func:`end_processes`): under torchrun a default group opened a second
    time in a process can find the first one's addresses in the launch's
    store and wait for them."""
    dist = torch.distributed
    if dist.is_initialized():
        if (dist.get_world_size(), dist.get_rank()) != (procs.world, procs.rank):
            raise TrainError(f"the open process group is rank {dist.get_rank()} of "
                             f"{dist.get_world_size()}, the environment says {procs.rank} of "
                             f"{procs.world}")
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    except (RuntimeError, ValueError) as e:
        raise TrainError(f"cannot join the {procs.world} processes' {backend} group at "
                         f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                         f"({str(e).strip()[:300]})") from None
    if not _GROUP["owned"]:
        import atexit
        atexit.register(end_processes)
    _GROUP["owned"] = True


def end_processes() -> None:
    """Close the process group this module opened (nothing otherwise); runs
    when the process exits.  The processes meet first (at most a minute), so
    none closes its end while a peer's collective still runs on it: a gloo
    process closing the group under a peer's work aborted at exit
    ("terminate called without an active exception") after all its work was
    done, and torchrun then reported the launch as failed."""
    dist = torch.distributed
    if _GROUP["owned"] and dist.is_initialized():
        try:
            if dist.get_backend() == "gloo":
                from datetime import timedelta
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            else:
                dist.barrier()
        except RuntimeError:
            pass   # a peer is gone: close this end anyway
        dist.destroy_process_group()
    _GROUP["owned"] = False


def share_train_decision(train_now: bool) -> bool:
    """Under ``torchrun``: rank 0's ``train_now`` on every process (the others'
    argument is ignored).  One process: ``train_now``."""
    procs = distributed_env()
    if procs is None:
        return train_now
    device = train_device(procs.local_rank)
    _join(procs, device)
    flag = torch.tensor([int(train_now) if procs.main else 0], device=device)
    torch.distributed.broadcast(flag, 0)
    return bool(flag.item())


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _shard(n: int, procs: Processes) -> tuple[int, int]:
    """This process's slice ``[lo, hi)`` of a global batch of ``n`` samples:
    ``n`` cut into ``world`` contiguous parts whose sizes differ by at most
    one, the larger first (``torch.tensor_split``'s cut)."""
    q, r = divmod(n, procs.world)
    lo = procs.rank * q + min(procs.rank, r)
    return lo, lo + q + (1 if procs.rank < r else 0)


def batch_loss(cfg: TrainConfig, model: SpikingNet, net: torch.nn.Module, xb: torch.Tensor,
               yb: torch.Tensor, beta: float | None = None,
               procs: Processes | None = None, ramp: float = 1.0) -> tuple[torch.Tensor, float]:
    """The loss to back-propagate for one global batch (``xb`` ``[T, B, ...]``
    and ``yb`` ``[B]``, encoded on the CPU) and the sum of the per-sample
    losses this process computed.  ``net`` is ``model`` or its
    DistributedDataParallel wrapper.

    One process: :func:`_loss` (a mean) on the batch.  Under ``torchrun``
    each process takes its slice of ``b`` samples (:func:`_shard`) and
    multiplies its mean loss by ``world * b / B``: DDP averages the gradients
    over the ``world`` processes, so the step is that of the mean over the B
    samples, whether or not B splits evenly.  A process whose slice is empty
    (a last batch smaller than the number of processes) runs one sample of
    the batch with weight 0: DDP needs a backward from every process.
    ``ramp``: the share of the rate penalty (:func:`penalty_ramp`).
    """
    device = _device_of(model)
    if procs is None:
        xs, ys, count, weight = xb, yb, len(yb), 1.0
    else:
        lo, hi = _shard(len(yb), procs)
        count = hi - lo
        weight = procs.world * count / len(yb)
        if count == 0:
            lo, hi = 0, 1
        xs, ys = xb[:, lo:hi].contiguous(), yb[lo:hi]
    xs, ys = xs.to(device), ys.to(device)
    trace = net(xs, beta, trace=True)
    loss = _loss(cfg, model, trace.scores, ys) + _rate_loss(cfg, trace, ramp)
    seen = loss.item() * count
    return (loss if weight == 1.0 else loss * weight), seen


class WeightAverage:
    """An exponential moving average of a model's parameters and buffers over
    its training steps, ``decay`` per step, bias-corrected as Adam's moments
    are: after n steps the weights' sum over steps k = 1..n with weights
    ``decay**(n-k)``, divided by the sum of those (the initial weights count
    for nothing; the first step copies).  :meth:`swapped` puts the average
    into the model for an evaluation; :meth:`load` keeps it there.  Integer
    buffers are copied, not averaged."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        # the new step's share of the corrected average: (1 - d) / (1 - d**n)
        share = (1 - self.decay) / (1 - self.decay ** self.steps)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.detach(), share)
            else:
                self.shadow[k].copy_(v)

    def load(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module):
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.load(model)
        try:
            yield model
        finally:
            model.load_state_dict(live)


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
    device = _device_of(model)
    correct, n = 0, len(y)
    sums = [0.0] * len(spec.layers)
    in_rate0 = 0.0
    for idx in _batches(n, batch, None):
        xb = sfdata.encode(x[idx], spec.timesteps, spec.encoding).to(device)
        tr = model.run(xb)
        correct += int((tr.scores.argmax(1).cpu() == y[idx]).sum())
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
        label: str = "epoch", procs: Processes | None = None, ema: float = 0.0,
        penalty_warmup: int = 0) -> list[dict]:
    """Train ``model`` in place, on the device it is on, for ``epochs`` epochs;
    the per-epoch history.  ``ema`` > 0: the model is evaluated and left with
    the moving average of its weights over the steps (:class:`WeightAverage`);
    ``penalty_warmup``: epochs over which the rate penalty ramps up
    (:func:`penalty_ramp`).  Both count from the first spiking epoch, after
    ``hybrid_epochs`` of pre-training; a fine-tuning (QAT) passes neither:
    the whole penalty from the start, its last weights kept.  ``procs``: one of the processes of a ``torchrun`` launch (its
    process group open), which train ``model`` together under
    DistributedDataParallel (:func:`batch_loss`); rank 0 alone evaluates and
    returns the history, the others an empty list."""
    spec = model.spec
    net = model
    if procs is not None:
        from torch.nn.parallel import DistributedDataParallel
        device = _device_of(model)
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                      else None)
    main = procs is None or procs.main
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr if lr is None else lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_train, y_train = train_data(cfg, ds)
    per_epoch = -(-len(y_train) // cfg.batch_size)
    # (stepped after each batch: the last batch runs at a rate just above 0)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch)
             if cfg.lr_schedule == "cosine" else None)
    average = WeightAverage(model, ema) if ema else None
    step = 0
    history = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        beta = cfg.hybrid_beta if epoch < hybrid_epochs else None
        if epoch == hybrid_epochs > 0:
            # the spiking phase starts here: the ramp and the average count
            # from its first step, not over the pre-training's other neurons
            step = 0
            average = WeightAverage(model, ema) if ema else None
        total, seen, here = 0.0, 0, 0
        steps = _batches(len(y_train), cfg.batch_size, gen)
        bar = tqdm(steps, total=per_epoch, disable=not progress,
                   desc=f"{label} {epoch + 1}/{epochs}" + (" (hybrid)" if beta else ""),
                   leave=False)
        for idx in bar:
            # every process encodes the whole global batch: the same draws as one process
            xb = sfdata.encode(sfdata.shift(x_train[idx], cfg.augment, gen), spec.timesteps,
                               spec.encoding, generator=gen)
            ramp = penalty_ramp(penalty_warmup, step, per_epoch)
            step += 1
            loss, part = batch_loss(cfg, model, net, xb, y_train[idx], beta, procs, ramp)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if average is not None:
                average.update(model)
            total += part
            seen += len(idx)
            lo, hi = (0, len(idx)) if procs is None else _shard(len(idx), procs)
            here += hi - lo  # the samples this process saw: its running loss
            bar.set_postfix(loss=f"{total / max(here, 1):.4f}")
        if procs is not None:  # the global batch's loss: every process's part
            t = torch.tensor([total], dtype=torch.float64, device=_device_of(model))
            torch.distributed.all_reduce(t)
            total = float(t.item())
        if not main:
            continue
        with average.swapped(model) if average is not None else contextlib.nullcontext():
            ev = evaluate(model, ds.x_test, ds.y_test)
        history.append({"epoch": epoch + 1, "loss": total / seen, "test_accuracy": ev["accuracy"],
                        "hybrid": beta is not None, "seconds": time.perf_counter() - t0})
        if progress:
            tqdm.write(f"{label} {epoch + 1}: loss {total / seen:.4f}  test accuracy "
                       f"{100 * ev['accuracy']:.2f}%")
    if average is not None:
        average.load(model)
    return history


def train(cfg: TrainConfig, run_dir: str | Path, progress: bool = True) -> dict | None:
    """Train a model of ``cfg`` and write the run folder; its metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this with the
    same ``cfg``: they train one model together (the module docstring), rank 0
    writes the run folder and returns the metrics, the other processes write
    nothing and return None.  The process group is opened here unless it is
    open already (:func:`_join`: it stays open until the process exits)."""
    procs = distributed_env()
    if procs is not None and cfg.batch_size < procs.world:
        raise TrainError(f"the batch size ({cfg.batch_size}) is the global batch, split over "
                         f"the {procs.world} processes: use --batch-size {procs.world} or more, "
                         f"or fewer processes")
    device = train_device(procs.local_rank if procs is not None else 0)
    main = procs is None or procs.main
    run = Path(run_dir)
    if main:
        run.mkdir(parents=True, exist_ok=True)
    if procs is not None:
        _join(procs, device)
    torch.manual_seed(cfg.seed)
    _deterministic(device)
    ds = sfdata.load(cfg.dataset, seed=cfg.seed)
    spec = network_spec(cfg, ds)
    model = SpikingNet(spec, dropout=cfg.dropout).to(device)
    if procs is not None:
        # the same initial weights everywhere; then the other processes' own
        # dropout masks (rank 0 keeps one process's stream: a rate-encoded
        # evaluation draws from it)
        if not main:
            torch.manual_seed(cfg.seed + procs.rank)
        apart = ((["draws its own dropout masks"] if cfg.dropout else [])
                 + (["normalises with its own slice's batch statistics"]
                    if any(l.batchnorm for l in spec.layers) else []))
        if main and apart:
            print(f"note: each of the {procs.world} processes {' and '.join(apart)}: the "
                  f"result is close to one process's, not equal", file=sys.stderr)
    t0 = time.perf_counter()
    history = fit(model, cfg, ds, cfg.epochs, hybrid_epochs=cfg.hybrid_epochs,
                  progress=progress and main, procs=procs, ema=cfg.ema,
                  penalty_warmup=cfg.penalty_warmup)
    train_seconds = time.perf_counter() - t0
    if not main:
        return None
    ev = evaluate(model, ds.x_test, ds.y_test)
    warn_silent(cfg, ev)
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


def silent_layers(rates: list[float]) -> list[int]:
    """The layers that sent no spike at all (firing rate 0)."""
    return [i for i, r in enumerate(rates) if r == 0]


def warn_silent(cfg: TrainConfig, ev: dict) -> None:
    """A warning on stderr when training left a layer silent (a strong
    ``--rate-penalty`` can switch all its neurons off): in a chain of layers
    every layer after it gets no input and the network answers one class
    whatever the image; a residual block's skip may still carry spikes past
    it, so the warning gives the test accuracy beside the layers."""
    silent = silent_layers(ev["firing_rates"])
    if not silent:
        return
    longer = (f"a longer --penalty-warmup than {cfg.penalty_warmup}" if cfg.penalty_warmup
              else "--penalty-warmup 2")
    hint = (f"a smaller --rate-penalty than {cfg.rate_penalty:g}, {longer}, or another --seed"
            if cfg.rate_penalty else "another --seed or learning rate")
    print(f"warning: layer{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} "
          f"sent no spike on the {cfg.dataset} test images (test accuracy "
          f"{100 * ev['accuracy']:.1f} %); try {hint}", file=sys.stderr)


def save_run(run: Path, cfg: TrainConfig, model: SpikingNet, metrics: dict) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
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
        if (run / name).is_dir():
            raise TrainError(f"{run / name}: a folder, not a file")
        if not (run / name).is_file():
            raise TrainError(f"{run}: no {name}; run `spikeforge train --out {run}` first")
    path = run / "config.json"
    cfg_d = read_json(path)
    for key in ("train", "spec"):
        if not isinstance(cfg_d.get(key), dict):
            raise TrainError(f"{path}: field {key!r} must be an object, "
                             f"not {reprlib.repr(cfg_d.get(key))}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [shown(k) for k in cfg_d["train"] if k not in known]
    if unknown:
        raise TrainError(f"{path}: not a spikeforge run config (unknown train field(s) "
                         f"{', '.join(unknown)})")
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
        state = load_file(str(run / "model.safetensors"))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise TrainError(f"{run / 'model.safetensors'}: cannot load ({why})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TrainError(f"{run / 'model.safetensors'}: {', '.join(bad[:3])} "
                         f"{'holds' if len(bad) == 1 else 'hold'} NaN or infinite values "
                         "(did the training diverge? try a lower --lr)")
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
