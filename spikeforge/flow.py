"""The flow as a list of named steps over one run folder.

Each step reads what earlier steps wrote into the run folder and writes its
own output file; a step whose output exists is skipped, so an interrupted run
resumes where it stopped, and ``--from-step`` redoes a step and all after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from spikeforge.sw.train import TrainConfig

# The embedded default: ConvSNN on the 5,000 shipped MNIST digits, sized so
# that the whole flow finishes in minutes on 2 CPU cores.  Bigger:
# `spikeforge run --set channels=[48,48] --epochs 20`.
DEFAULT = TrainConfig(model="convsnn", dataset="mnist5k", epochs=4, batch_size=20,
                      overrides={"channels": (16, 32), "hidden": 64})


@dataclass(frozen=True)
class Step:
    name: str
    output: str                      # file in the run folder that marks the step done
    fn: Callable[[Path, object], None]


def _train(run: Path, args) -> None:
    from spikeforge.cli import _train_config
    from spikeforge.sw.train import train
    train(_train_config(args), run, progress=not args.quiet)


def _report(run: Path, args) -> None:
    import json
    m = json.loads((run / "metrics.json").read_text())
    rows = [("model", m["model"]), ("dataset", m["dataset"]),
            ("float test accuracy", f"{100 * m['test_accuracy']:.2f} %"),
            ("train time", f"{m['train_seconds']:.0f} s"),
            ("firing rates", " ".join(f"{r:.3f}" for r in m["firing_rates"])),
            ("energy SNN / ANN fp32", f"{m['energy']['e_snn_pj'] / 1e6:.3f} uJ / "
                                     f"{m['energy']['e_ann_fp32_pj'] / 1e6:.3f} uJ")]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    (run / "report.txt").write_text(text + "\n")
    print(text)


STEPS_LIST = [
    Step("train", "model.safetensors", _train),
    Step("report", "report.txt", _report),
]
STEPS = tuple(s.name for s in STEPS_LIST)


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    redo = False
    for step in STEPS_LIST:
        redo = redo or step.name == args.from_step
        if (out / step.output).exists() and not redo and step.name != "report":
            print(f"[{step.name}] done earlier ({out / step.output}); skipping")
            continue
        print(f"[{step.name}]")
        step.fn(out, args)
        redo = True  # what follows a redone step is stale
    return 0
