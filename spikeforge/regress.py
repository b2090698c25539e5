"""Regression at scale: random networks through Verilator against the golden model.

``spikeforge regress --nets N --images M [--workers W | --scheduler ADDRESS]``
draws ``N`` random integer networks (:func:`draw`: LIF / IF networks from
:func:`~spikeforge.hw.randnet.random_network`, with every reset mode, decay
shift lists, weight / state / input widths, pooling, bit-plane and per-step
inputs, or STCB networks from :func:`~spikeforge.hw.randnet.random_stcb_network`;
one to three conv layers; random lanes per layer and, for a conv layer after
a LIF / IF layer, random word widths (:func:`draw_words`); a harness that withholds
``valid`` on some cycles or not), builds each one's engine with Verilator
(:mod:`spikeforge.sim.runner`), plays ``M`` random images through it and
compares every layer's spikes at every time step, and the class, with the
golden model.  A case is one (network, image) pair.  Network ``k`` of a run
has the seed ``SEED + k`` and everything about it (the network, lanes,
harness, images) follows from that seed alone, so a mismatch is reproduced
with ``spikeforge regress --seed <its seed> --nets 1 --images M``.

A Verilator build costs tens of CPU seconds, an image a few milliseconds of
simulation: one task is one network with all of its images, and tasks are
spread over worker processes.  ``--workers 1`` runs in this process;
``--workers W`` starts a local Dask cluster of ``W`` single-threaded worker
processes; ``--scheduler ADDRESS`` sends the tasks to an existing Dask
cluster (``dask scheduler`` on one machine, ``dask worker ADDRESS
--nthreads 1`` on each machine that has spikeforge installed, g++ and make).

Why Dask (``distributed``) and not Ray: the tasks are coarse (one build and
simulation per network, seconds to minutes each) and independent, so all
that is needed is "submit a function, collect results as they complete,
workers on other machines"; both engines do that.  Dask is pure Python on
top of tornado / msgpack / cloudpickle: installing ``distributed`` into
this project's environment took 13 s, 4.5 MB of wheels (dask 1.5 MB,
distributed 1.0 MB, the rest small; 25 MB on disk), no native services.
Ray ships a compiled core (raylet, GCS, object store, gRPC) in a
per-platform wheel of tens of MB (not installed here to measure) and starts
several daemon processes per node, which costs install time on CI's fresh
2-core machine and memory on the same cores that run the Verilator builds.  A
Dask worker is a plain Python process that runs our function, which is what
a Verilator build and a cocotb run (each a subprocess) want.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from spikeforge.errors import SpikeforgeError

__all__ = ["RegressError", "RegressFailed", "draw", "frames", "check_network", "regress",
           "summarize", "MAX_SEED"]

MAX_SEED = (1 << 31) - 1
#: input words per simulator run: the harness ROM (``depth``) holds one chunk
CHUNK_WORDS = 1 << 16
#: a hung engine ends the simulation after this many cycles per image
MAX_CYCLES_PER_IMAGE = 2_000_000


class RegressError(SpikeforgeError):
    """The regression could not run (bad options, an unreachable cluster)."""


class RegressFailed(SpikeforgeError):
    """Some case differs from the golden model or a network failed to build
    or simulate (exit status 1, like ``verify``)."""

    exit_status = 1


def _rng(seed: int, what: str) -> random.Random:
    # str seeds go through sha512: the same draw in every process and on every machine
    return random.Random(f"spikeforge-regress:{what}:{seed}")


def draw(seed: int):
    """The network of ``seed`` and how it is put into hardware:
    ``(net, lanes, pause, frames_per_image)``."""
    from spikeforge.hw.randnet import random_network, random_stcb_network
    rng = _rng(seed, "net")
    stcb = rng.random() < 0.25
    depth = rng.choice((1, 2, 2, 3))
    if stcb:
        net = random_stcb_network(seed, max_layers_conv=depth)
    else:
        net = random_network(seed, max_layers_conv=depth)
    lanes = [rng.randint(1, layer.out_channels) for layer in net.spec.layers]
    pause = rng.random() < 0.5
    # direct encoding: one frame held for all steps, or one frame per step
    per_step = not stcb and net.spec.encoding == "direct" and rng.random() < 0.5
    return net, lanes, pause, net.spec.timesteps if per_step else 1


def draw_words(seed: int, net, lanes) -> tuple[list[int], int]:
    """The words of network ``seed`` with ``lanes`` (input channels per event,
    :func:`spikeforge.hw.plan.word_options`): for a layer that takes words,
    a whole lane group half the time, else any narrower width; and how many
    layers took a narrower one."""
    from spikeforge.hw.network import lane_counts
    from spikeforge.hw.plan import word_options
    rng = _rng(seed, "words")
    ps = lane_counts(net, lanes)
    out, narrow = [], 0
    for n in range(len(ps)):
        opts = word_options(net, ps, n)
        q = opts[-1] if len(opts) == 1 or rng.random() < 0.5 else rng.choice(opts[:-1])
        narrow += q != opts[-1]
        out.append(q)
    return out, narrow


def _image_seed(seed: int, i: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:7], "little")


def frames(net, seed: int, n: int, per_image: int):
    """``n`` random uint8 images ``[n, F, C, H, W]`` for network ``seed``
    (image ``i`` depends on ``seed`` and ``i`` only), ``F = per_image``, each
    with its own density of non-zero pixels."""
    import torch

    from spikeforge.hw.randnet import random_frames
    out = []
    for i in range(n):
        s = _image_seed(seed, i)
        f = random_frames(net, s, density=random.Random(s).uniform(0.2, 0.8))
        if f.shape[1] != per_image:
            f = (f[:, :1] if per_image == 1 else
                 f[:, :1].expand(-1, per_image, -1, -1, -1).contiguous())
        out.append(f)
    return torch.cat(out)


def _describe(net, lanes, pause, per_image, words=None, narrow: int = 0) -> dict:
    spec = net.spec
    return {"layers": [f"{l.kind.value}{'/pool' if l.pool > 1 else ''} {l.neuron.kind.value}"
                       + ("" if l.neuron.kind.value == "stcb" else f" reset={l.neuron.reset.value}")
                       for l in spec.layers],
            "input": list(spec.input_shape), "timesteps": spec.timesteps,
            "encoding": spec.encoding, "frames_per_image": per_image,
            "widths": [{"weight": il.weight_bits, "state": il.state_bits, "acc": il.acc_bits,
                        "input": il.input_bits} for il in net.layers],
            "lanes": lanes, "words": words, "narrow_words": narrow, "pause": pause}


def _chunks(counts: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` image ranges whose words fit ``limit``."""
    out, start, total = [], 0, 1
    for i, c in enumerate(counts):
        if i > start and total + c > limit:
            out.append((start, i))
            start, total = i, 1
        total += c
    out.append((start, len(counts)))
    return out


def check_network(seed: int, images: int, build_root: str | None = None,
                  faults: dict | None = None) -> dict:
    """Build network ``seed``'s engine, play ``images`` images through it and
    compare with the golden model: one result record (a task of the
    regression; runs in a worker).  ``build_root``: where builds are kept
    (and reused); None: a temporary folder, removed afterwards.  ``faults``:
    test-only deliberate faults (``NetworkTop``'s ``faults``)."""
    from spikeforge import toolchain
    from spikeforge.hw.network import input_events
    from spikeforge.sim import runner
    from spikeforge.sw import golden

    t0 = time.perf_counter()
    rec = {"seed": seed, "worker": f"{socket.gethostname()}:{os.getpid()}", "cases": 0,
           "mismatches": 0, "first_mismatch": None, "error": None}
    scratch = Path(tempfile.mkdtemp(prefix=f"spikeforge-regress-{seed}-"))
    root = Path(build_root) if build_root else scratch / "build"
    try:
        net, lanes, pause, per_image = draw(seed)
        words, narrow = draw_words(seed, net, lanes)
        rec.update(_describe(net, lanes, pause, per_image, words, narrow))
        x = frames(net, seed, images, per_image)
        counts = [len(input_events(net, x[i])) + 1 for i in range(images)]
        parts = _chunks(counts, CHUNK_WORDS)
        need = max(sum(counts[a:b]) + 1 for a, b in parts)
        depth = 1 << max(10, (need - 1).bit_length())
        toolchain.setup()
        sb = runner.build(net, lanes, root, depth=depth, pause=pause, faults=faults,
                          words=words)
        rec["build_seconds"] = sb.build_seconds
        sim_s, silent, spikes = 0.0, 0, 0
        for a, b in parts:
            sim = runner.run(sb, x[a:b], scratch / "work",
                             max_cycles_per_image=MAX_CYCLES_PER_IMAGE)
            sim_s += sim.wall_seconds
            ref, per = runner.compare(net, x[a:b], sim)
            for k, mm in enumerate(per):
                rec["cases"] += 1
                if mm is not None:
                    rec["mismatches"] += 1
                    if rec["first_mismatch"] is None:
                        rec["first_mismatch"] = {
                            "image": a + k, "layer": mm.layer, "step": mm.step,
                            "neuron": mm.neuron, "expected": mm.expected, "got": mm.got}
            # how much the golden model spiked: equal silence proves little
            out_spikes = [int(golden.unpack(ref.spikes[-1][:, k], net.spec.layers[-1]
                                            .out_features).sum()) for k in range(b - a)]
            silent += sum(s == 0 for s in out_spikes)
            spikes += sum(int(golden.unpack(s, l.out_features).sum())
                          for s, l in zip(ref.spikes, net.spec.layers))
        rec.update(sim_seconds=sim_s, silent_output_cases=silent, golden_spikes=spikes)
    except SpikeforgeError as e:  # a build failure, a hang, a bad trace: named per network
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _client(scheduler: str | None, workers: int, timeout: float):
    """A Dask client (and the local cluster it owns, or None)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RegressError("--workers above 1 and --scheduler need Dask's `distributed` "
                           "(pip install distributed)") from None
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=timeout), None
        except (OSError, ValueError, TypeError) as e:  # TimeoutError is an OSError
            raise RegressError(f"cannot reach the Dask scheduler at {scheduler!r}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") \
                from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster


def regress(seeds: Iterable[int], images: int, *, workers: int = 1,
            scheduler: str | None = None, build_root: str | None = None,
            faults: dict | None = None, connect_timeout: float = 20.0,
            on_result: Callable[[dict], None] | None = None) -> dict:
    """Check every network of ``seeds`` on ``images`` images, on ``workers``
    local processes (1: in this process) or on the Dask cluster at
    ``scheduler``; the summary (:func:`summarize`).  ``on_result`` sees each
    network's record as it completes."""
    seeds = list(seeds)
    if not seeds:
        raise RegressError("no networks to check")
    if type(images) is not int or images < 1:
        raise RegressError(f"images per network must be a positive integer, not {images!r}")
    if type(workers) is not int or workers < 1:
        raise RegressError(f"workers must be a positive integer, not {workers!r}")
    results = []
    t0 = time.perf_counter()
    if scheduler is None and workers == 1:
        for s in seeds:
            results.append(check_network(s, images, build_root, faults))
            if on_result:
                on_result(results[-1])
        used = 1
    else:
        from distributed import KilledWorker, as_completed
        from distributed.client import FutureCancelledError
        client, cluster = _client(scheduler, workers, connect_timeout)
        try:
            used = len(client.scheduler_info(n_workers=-1)["workers"]) if scheduler else workers
            if used < 1:
                raise RegressError(f"the Dask cluster at {scheduler} has no workers")
            futures = {client.submit(check_network, s, images, build_root, faults, pure=False,
                                     key=f"regress-net-{s}-{images}-{time.time_ns()}"): s
                       for s in seeds}
            for fut in as_completed(list(futures)):
                try:
                    results.append(fut.result())
                except (KilledWorker, FutureCancelledError) as e:
                    # a worker died (out of memory, killed) on this network: a failure of it
                    results.append({"seed": futures[fut], "worker": "?", "cases": 0,
                                    "mismatches": 0, "first_mismatch": None, "seconds": 0.0,
                                    "error": f"{type(e).__name__}: {e}"})
                if on_result:
                    on_result(results[-1])
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    wall = time.perf_counter() - t0
    results.sort(key=lambda r: seeds.index(r["seed"]))
    return summarize(results, images, wall, used)


def summarize(results: list[dict], images: int, wall: float, workers: int) -> dict:
    """Totals over the networks' records: cases, mismatches, errors, speed
    and what the random networks covered."""
    cases = sum(r["cases"] for r in results)
    busy: dict[str, float] = {}
    done: dict[str, int] = {}
    for r in results:
        busy[r["worker"]] = busy.get(r["worker"], 0.0) + r["seconds"]
        done[r["worker"]] = done.get(r["worker"], 0) + r["cases"]
    layers = Counter(l for r in results for l in r.get("layers", []))
    return {
        "networks": len(results), "images_per_network": images, "cases": cases,
        "mismatching_cases": sum(r["mismatches"] for r in results),
        "mismatching_networks": [r["seed"] for r in results if r["mismatches"]],
        "failed_networks": [r["seed"] for r in results if r["error"]],
        "wall_seconds": wall, "workers": workers,
        "cases_per_second": cases / wall if wall > 0 else 0.0,
        "cases_per_second_per_worker": cases / wall / workers if wall > 0 else 0.0,
        "per_worker": {w: {"networks": sum(r["worker"] == w for r in results),
                           "cases": done[w], "busy_seconds": busy[w],
                           "cases_per_busy_second": done[w] / busy[w] if busy[w] else 0.0}
                       for w in busy},
        "build_seconds": sum(r.get("build_seconds", 0.0) for r in results),
        "sim_seconds": sum(r.get("sim_seconds", 0.0) for r in results),
        "silent_output_cases": sum(r.get("silent_output_cases", 0) for r in results),
        "coverage": {
            "stcb_networks": sum(any("stcb" in l for l in r.get("layers", [])) for r in results),
            "layer_kinds": dict(sorted(layers.items())),
            "conv_layers": dict(sorted(Counter(sum(l.startswith("conv") for l in r["layers"])
                                               for r in results if "layers" in r).items())),
            "bitplane_networks": sum(r.get("encoding") == "bitplane" for r in results),
            "per_step_frame_networks": sum(r.get("frames_per_image", 1) > 1 for r in results),
            "multi_lane_layers": sum(p > 1 for r in results for p in r.get("lanes", [])),
            "narrow_word_layers": sum(r.get("narrow_words", 0) for r in results),
            "paused_harness_networks": sum(bool(r.get("pause")) for r in results),
            "weight_bits": sorted({w["weight"] for r in results for w in r.get("widths", [])}),
            "input_bits": sorted({w["input"] for r in results for w in r.get("widths", [])}),
        },
        "results": results,
    }


def reproduce_hint(seed: int, images: int) -> str:
    return f"spikeforge regress --seed {seed} --nets 1 --images {images}"


def line(rec: dict, images: int) -> str:
    """One line about one network's record."""
    head = (f"net {rec['seed']}: " + ", ".join(rec.get("layers", ["?"]))
            + f"; lanes {rec.get('lanes')}")
    if rec["error"]:
        return f"{head}: FAILED {rec['error']}; reproduce: {reproduce_hint(rec['seed'], images)}"
    if rec["mismatches"]:
        m = rec["first_mismatch"]
        return (f"{head}: MISMATCH in {rec['mismatches']} of {rec['cases']} images; first: "
                f"image {m['image']}, layer {m['layer']}, time step {m['step']}, neuron "
                f"{m['neuron']}: expected {m['expected']}, got {m['got']}; reproduce: "
                f"{reproduce_hint(rec['seed'], images)}")
    return (f"{head}: {rec['cases']} cases equal (build {rec['build_seconds']:.0f} s, "
            f"simulation {rec['sim_seconds']:.1f} s)")
