"""``ttm-train``: train Through-The-Mask on a diffusers base model.

    ttm-train stage2 --config configs/train/stage2_wan21_i2v.yaml [--resume DIR|latest] [--max-steps N]
                     [--set key=value ...]
    ttm-train stage1 --config configs/train/stage1_wan21_i2v.yaml [...]   (the mask-trajectory model)
    accelerate launch --config_file configs/train/fsdp2.yaml -m ttm_core.train.train_cli stage2 --config ...
    torchrun --nproc_per_node 8 -m ttm_core.train.train_cli stage2 --config ...

accelerate reads the process layout from the environment ``accelerate launch`` / ``torchrun`` set,
so the same command runs on one device or many. Errors in the config or the data are reported as
one line naming the key or file and the fix (exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..errors import TTMInputError

logger = logging.getLogger(__name__)


def _stage2_task() -> object:
    from .trainer import Stage2Task

    return Stage2Task()


def _stage1_task() -> object:
    from .trainer import Stage1Task

    return Stage1Task()


TASKS: dict[str, Callable[[], object]] = {"stage1": _stage1_task, "stage2": _stage2_task}
"""Subcommand -> the trainer's Task (what is conditioned and generated)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttm-train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in TASKS:
        command = sub.add_parser(name, help=f"train {name} (Through-The-Mask)")
        command.add_argument("--config", required=True, help="training config (.yaml / .json; docs/TRAINING.md)")
        command.add_argument("--resume", metavar="DIR|latest",
                             help="continue from a checkpoints/step-N folder, or the run's latest")
        command.add_argument("--max-steps", type=int, default=None,
                             help="stop after this many steps in total (the schedule keeps config.steps)")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                             help="override a config key, e.g. --set data.batch_size=2 (repeatable)")
        command.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .config import load_config
    from .trainer import Trainer

    try:
        config = load_config(args.config, args.set)
        if args.max_steps is not None and args.max_steps < 1:
            raise TTMInputError("--max-steps", f"{args.max_steps} < 1", "give 1 or more steps")
        trainer = Trainer(config, task=TASKS[args.command]())  # type: ignore[arg-type]
        result = trainer.train(max_steps=args.max_steps, resume=args.resume)
    except TTMInputError as err:
        logger.error("%s", err)
        return 2
    if trainer.accelerator.is_main_process:
        sys.stdout.write(f"step {result.step}: checkpoint {result.checkpoint}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
