"""Build and load the fused LIF CPU kernel (``lif_kernel.cpp``) at first use.

:func:`load` compiles the C++ source once per machine with the C++ compiler
(``$CXX`` or ``g++``) against the installed torch's headers, caches the
library under ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``,
torch's own default) in a folder named by a hash of the source, the flags and
the torch version, and registers the ops ``torch.ops.spikeforge_lif.*``.  It
does not need ninja (``torch.utils.cpp_extension.load`` would).  On any
failure it warns once and returns ``False``; :mod:`spikeforge.sw.neurons`
then uses its PyTorch path, which the kernel must equal.

Set ``SPIKEFORGE_LIF_KERNEL=0`` to disable the kernel.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("lif_kernel.cpp")
_lock = threading.Lock()
_state: dict = {}          # "ok": bool once tried; "seconds": build time; "path": library


def _isa_flags() -> list[str]:
    """Vector ISA for the build: what torch dispatches to on this CPU."""
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "AMD64"):
        return []
    cap = torch.backends.cpu.get_cpu_capability()
    if cap in ("AVX2", "AVX512"):
        return ["-mavx2", "-mfma"]
    return []


def _flags() -> tuple[list[str], list[str]]:
    from torch.utils import cpp_extension as ce
    abi = int(torch.compiled_with_cxx11_abi())
    cflags = ["-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off",
              "-fno-math-errno", "-fno-trapping-math", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *_isa_flags()]
    cflags += [f"-I{p}" for p in ce.include_paths()]
    cflags += [f"-I{sysconfig.get_paths()['include']}"]
    lib = ce.library_paths()[0]
    ldflags = [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu", "-ltorch"]
    return cflags, ldflags


def _cache_dir() -> Path:
    base = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not base:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(cache, "torch_extensions")
    return Path(base)


def _build(cxx: str, cflags: list[str], ldflags: list[str], target: Path) -> float:
    import time
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    t0 = time.perf_counter()
    try:
        cmd = [cxx, *cflags, str(SOURCE), "-o", tmp, *ldflags]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:1])} failed ({r.returncode}):\n{r.stderr[-2000:]}")
        os.replace(tmp, target)   # atomic: a concurrent build of the same key is harmless
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - t0


def library_path() -> Path:
    """Where this machine's build of the kernel lives (built or not)."""
    cxx = os.environ.get("CXX", "g++")
    cflags, ldflags = _flags()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cxx, *cflags, *ldflags,
                                    torch.__version__]).encode()).hexdigest()[:16]
    return _cache_dir() / f"spikeforge_lif_{key}" / "spikeforge_lif.so"


def load(verbose: bool = False) -> bool:
    """Build (if needed) and load the kernel; ``True`` when its ops are usable."""
    if "ok" in _state:
        return _state["ok"]
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        ok = False
        try:
            if os.environ.get("SPIKEFORGE_LIF_KERNEL", "1") == "0":
                raise RuntimeError("disabled by SPIKEFORGE_LIF_KERNEL=0")
            cxx = os.environ.get("CXX", "g++")
            if shutil.which(cxx) is None:
                raise RuntimeError(f"no C++ compiler {cxx!r} on PATH")
            cflags, ldflags = _flags()
            path = library_path()
            if not path.exists():
                if verbose:
                    print(f"spikeforge: compiling the fused LIF kernel into {path.parent} ...",
                          file=sys.stderr)
                _state["seconds"] = _build(cxx, cflags, ldflags, path)
                if verbose:
                    print(f"spikeforge: compiled in {_state['seconds']:.1f} s", file=sys.stderr)
            torch.ops.load_library(str(path))
            _state["path"] = path
            ok = _self_test()
        except (RuntimeError, OSError, ImportError, AttributeError) as e:
            # any of these means: use the PyTorch path.  RuntimeError: disabled,
            # no compiler, the build or the self-test failed, torch refused the
            # library; OSError: the cache folder or the compiler could not be
            # used, or the library not loaded; ImportError: torch's C++ extension
            # helpers missing; AttributeError: the library loaded without its ops
            warnings.warn(f"spikeforge: fused LIF kernel unavailable, using the PyTorch path "
                          f"({type(e).__name__}: {str(e).strip()[:500]})", RuntimeWarning,
                          stacklevel=3)
        _state["ok"] = ok
        return ok


def _self_test() -> bool:
    """A three-step sanity check of the loaded ops against hand values."""
    i = torch.tensor([[0.3], [0.3], [0.6]], dtype=torch.float64)
    o = torch.ops.spikeforge_lif.forward(i, 0, 1, 0, 0.5, 0.5, 0.0, False)
    if o.flatten().tolist() != [0.0, 0.0, 1.0]:   # u = 0.3, 0.45, 0.825
        raise RuntimeError(f"kernel self-test failed: {o.flatten().tolist()}")
    i = torch.tensor([[0.5], [0.5]], dtype=torch.float32)
    o = [torch.ops.spikeforge_lif.forward(i, 0, 1, 1, 1.0, 0.5, 0.0, s).flatten().tolist()
         for s in (False, True)]
    if o != [[1.0, 1.0], [0.0, 1.0]]:   # u = 0.5 (>= only), then 1.0 (both)
        raise RuntimeError(f"kernel self-test (>= / >) failed: {o}")
    return True
