"""The ``spikeforge`` command line.

Every sub-command reads and writes files in one run folder, so a run can be
resumed from any step.  Bad input ends with ``error: ...`` on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from spikeforge.errors import SpikeforgeError


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpikeforgeError(f"--set expects KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _add_train_args(p: argparse.ArgumentParser, defaults) -> None:
    p.add_argument("--model", default=defaults.model, help="model name (default %(default)s)")
    p.add_argument("--dataset", default=defaults.dataset,
                   help="mnist5k, digits8x8, seq1..seq5 or idx:DIR (default %(default)s)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--timesteps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--loss", choices=("mse", "ce"), default=defaults.loss)
    p.add_argument("--hybrid-epochs", type=int, default=defaults.hybrid_epochs,
                   help="ConvSNN hybrid pre-training epochs (leaky ReLU, no reset)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="train on the first N samples only")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="model builder override, e.g. --set channels=[16,32] (repeatable)")


def _train_config(args, **fixed):
    from spikeforge.sw.train import TrainConfig
    return TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs,
                       timesteps=args.timesteps, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed, loss=args.loss, hybrid_epochs=args.hybrid_epochs,
                       train_limit=args.train_limit, overrides=_overrides(args.set), **fixed)


def cmd_train(args) -> int:
    from spikeforge.sw.train import train
    m = train(_train_config(args), args.out, progress=not args.quiet)
    print(f"test accuracy {100 * m['test_accuracy']:.2f}%  ({m['train_seconds']:.0f} s) -> {args.out}")
    return 0


def cmd_run(args) -> int:
    from spikeforge import flow
    return flow.run(args)


def main(argv: list[str] | None = None) -> int:
    from spikeforge import flow
    from spikeforge.sw.train import TrainConfig
    parser = argparse.ArgumentParser(prog="spikeforge", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an SNN with surrogate gradients")
    _add_train_args(p, TrainConfig())
    p.add_argument("--out", required=True, help="run folder")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("run", help="the whole flow on the embedded default")
    _add_train_args(p, flow.DEFAULT)
    p.add_argument("--out", default="runs/default", help="run folder (default %(default)s)")
    p.add_argument("--from-step", choices=flow.STEPS, default=None,
                   help="redo the flow from this step (default: resume after the last done)")
    p.set_defaults(fn=cmd_run)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except SpikeforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
