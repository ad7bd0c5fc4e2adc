"""`grpo` command line: train | sft | demo | eval | plan | reproduce | plot | convert | config.

    grpo demo                                   # SFT warm start, then GRPO, on the built-in task
    grpo train --config configs/gsm8k_style.yaml grpo.beta=0.0 train.steps=200
    grpo train --overwrite train.steps=20       # a directory holding a run is refused without --overwrite
    grpo sft   sft.max_steps=500
    grpo sft   --resume runs/sft                # continue a stopped run from its newest checkpoint
    grpo eval  --model runs/demo/grpo/final --n 8 --k 1,2,4,8
    grpo plan  --params 7B --layers 32 --hidden 4096 --vocab 32000 --precision bf16 --gpu-gib 80
    grpo reproduce                              # SFT, then GRPO / PPO / RFT at equal budget -> results.md
    grpo convert model.gguf models/mine         # a GGUF file -> a Hugging Face directory
    grpo config train grpo.                     # every key of a config: type, default, what it does

Every command but convert takes `--config FILE.yaml` and any number of `section.key=value` overrides;
`grpo config train|sft|demo` lists every key (`eval`, `plan` and `plot` read a `grpo
train` config: the model, data,
sampling, reward, batch shape or output directory they need comes from it where a flag does not give it;
`demo` and `reproduce` read a `grpo demo` config). Mistakes in config or data print one line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

import grpo.config
from grpo.api import quiet_libraries
from grpo.commands.eval import build_eval_parser, parse_ks
from grpo.commands.plan import build_plan_parser
from grpo.config import SFTConfig, TrainConfig, load_config
from grpo.config_io import add_config_arguments, config_keys, format_config_keys
from grpo.errors import UserError
from grpo.models.convert import convert_gguf
from grpo.plotting import plot_comparison, plot_training, read_metrics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cmd_train(args) -> None:
    # imports torch: here, not at the top, so that `grpo --help` and the light commands stay light
    from grpo.models.loading import emulates_bf16, resolve_device
    from grpo.train.grpo import train

    cfg = _config_or_resumed(args, TrainConfig, "train")
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 prints
    if cfg.model.path == "tiny" and main_process:
        print("note: model.path=tiny is the built-in model with random weights, so rewards start at 0; "
              "`grpo demo` warm-starts it with SFT first (or pass model.path=DIR)", file=sys.stderr)
    if "bfloat16" in (cfg.model.dtype, cfg.sampler_dtype) and main_process and emulates_bf16(
            resolve_device(cfg.model.device)):
        asked, slower = (("model.dtype=bfloat16", "training runs ~10x") if cfg.model.dtype == "bfloat16"
                         else ("rollout.dtype=bfloat16", "sampling runs"))
        print(f"note: {asked} on a CPU without AVX512-BF16 or AMX: torch emulates bf16 matmuls here, so "
              f"{slower} slower than with float32", file=sys.stderr)
    res = train(cfg, progress=not args.quiet, overwrite=args.overwrite)
    if main_process:
        if res.accuracy_before != res.accuracy_before:  # NaN: no held-out prompts to evaluate
            accuracy = "held-out accuracy: not measured (no held-out set: set data.heldout_source)"
        else:
            accuracy = (
                f"held-out accuracy: {100 * res.accuracy_before:.1f}% -> {100 * res.accuracy_after:.1f}%"
            )
        print(f"{accuracy} after {res.steps} {cfg.algorithm.upper()} steps ({res.seconds:.0f} s); "
              f"model: {res.output_dir / 'final'}")


def _config_or_resumed(args, cls, command: str):
    """`grpo train|sft`'s config: --config and the overrides; with --resume DIR, the run's own config.yaml
    (unless --config gives another; overrides still apply) continuing in DIR."""
    config = args.config
    if args.resume is not None and args.overwrite:
        raise UserError("give --resume (continue the run in the directory) or --overwrite (replace it), not "
                        "both")
    if args.resume is not None:
        config = config or Path(args.resume) / "config.yaml"
        if not Path(config).is_file():
            raise UserError(f"--resume {args.resume}: no config.yaml there (is it a grpo {command} output "
                            "directory?)")
    cfg = load_config(cls, config, args.overrides)
    if args.resume is not None:
        section = getattr(cfg, command)  # train.* or sft.*
        section.output_dir, section.resume = str(args.resume), True
    return cfg


def _cmd_sft(args) -> None:
    # imports torch: here, not at the top, so that `grpo --help` and the light commands stay light
    from grpo.train.sft import sft

    cfg = _config_or_resumed(args, SFTConfig, "sft")
    res = sft(cfg, progress=not args.quiet, overwrite=args.overwrite)
    split = "validation" if res.chose_on_validation else "held-out"
    print(f"best {split} accuracy {100 * res.best_accuracy:.1f}% at step {res.best_step} "
          f"(stopped at {res.steps}, {res.seconds:.0f} s); model: {res.model_dir}")


def _cmd_demo(args) -> None:
    # imports torch: here, not at the top, so that `grpo --help` and the light commands stay light
    from grpo.commands.demo import run_demo

    run_demo(args.config, args.overrides, progress=not args.quiet, overwrite=args.overwrite)


def _cmd_reproduce(args) -> None:
    # imports torch: here, not at the top, so that `grpo --help` and the light commands stay light
    from grpo.commands.reproduce import run_reproduce
    from grpo.commands.reproduce_jobs import continue_command

    run_reproduce(args.config, args.overrides, n=args.n, ks=parse_ks(args.k), docs_dir=args.docs,
                  methods=args.methods.split(","),
                  progress=not args.quiet, sft_dir=args.sft, seeds=args.seeds, jobs=args.jobs,
                  first_seed=args.first_seed, reuse=args.reuse, sample_prompts=args.sample_prompts,
                  ood=tuple(args.ood.split(",")) if args.ood else (), again=continue_command(args.argv))


def _cmd_plot(args) -> None:
    is_override = re.compile(r"^[A-Za-z_][\w.]*=").match
    overrides = [x for x in args.items if is_override(x)]
    runs = [Path(r) for r in args.items if not is_override(r)]
    if not runs:  # the run the config (and overrides) describe: its train.output_dir
        runs = [Path(load_config(TrainConfig, args.config, overrides).train.output_dir)]
    elif args.config is not None or overrides:
        raise UserError("grpo plot: give run directories, or a config (--config, overrides) naming one, not "
                        "both")
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise UserError(f"{run}: no metrics.jsonl (is it a grpo output directory?)")
    labels = args.labels.split(",") if args.labels else [str(r) for r in runs]
    if len(labels) != len(runs):
        raise UserError(f"--labels: {len(labels)} labels for {len(runs)} runs")
    if len(runs) == 1 and args.out is None:
        print(plot_training(read_metrics(runs[0] / "metrics.jsonl"), runs[0] / "training.png"))
    elif args.out is None:
        raise UserError("plotting several runs together needs --out FILE.png")
    else:
        print(plot_comparison({label: read_metrics(r / "metrics.jsonl") for label, r in zip(labels, runs)},
                              args.out))


CONFIGS = {"train": "TrainConfig", "sft": "SFTConfig", "demo": "DemoConfig"}
"""`grpo config NAME`: the config class each command reads (eval, plan and plot read
train's; reproduce demo's)."""


def _cmd_config(args) -> None:
    keys = [k for k in config_keys(getattr(grpo.config, CONFIGS[args.name])) if k.key.startswith(args.prefix)]
    if not keys:
        raise UserError(f"grpo config {args.name}: no key starts with {args.prefix!r}")
    print(format_config_keys(keys, full=args.full))


def _cmd_convert(args) -> None:
    print(f"wrote {convert_gguf(args.gguf, args.out_dir)} (load it with model.path=DIR or --model DIR)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_, example in [
            ("train", _cmd_train, "GRPO training (no arguments: the built-in default)",
             "grpo.beta=0.0 train.steps=20"),
            ("sft", _cmd_sft, "supervised fine-tuning until held-out accuracy plateaus", "sft.max_steps=500"),
            ("demo", _cmd_demo, "SFT warm start then GRPO on the built-in task, before/after",
             "rl.grpo.beta=0.0")]:
        sp = sub.add_parser(name, help=help_)
        add_config_arguments(sp, overrides_help=f"section.key=value overrides, e.g. {example} "
                                                f"(every key: grpo config {name})")
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        sp.add_argument("--overwrite", action="store_true",
                        help="replace the run the output directory holds (without it, such a directory is "
                             "refused)")
        if name in ("train", "sft"):
            sp.add_argument("--resume", metavar="DIR", default=None,
                            help="continue the run in DIR from its newest checkpoint (its config.yaml is the "
                                 "config)")
        sp.set_defaults(fn=fn)

    build_eval_parser(sub)
    build_plan_parser(sub)
    sp = sub.add_parser("reproduce",
                        help="SFT, then GRPO (vs more SFT at equal compute), PPO, RFT, iterative GRPO, "
                                          "over seeds -> results.md")
    add_config_arguments(sp, "YAML config (as `grpo demo`'s: output_dir, sft, rl)",
                         "section.key=value overrides, e.g. rl.train.steps=30 (every key: grpo config demo)")
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    sp.add_argument("--n", type=int, default=16, help="samples per held-out problem for pass@k / maj@k")
    sp.add_argument("--k", default="1,2,4,8,16", help="comma-separated k")
    sp.add_argument("--methods", default="grpo,grpo_process,ppo,rft,iterative",
                    help="comma-separated methods: grpo, grpo_process, ppo, rft, iterative (from the SFT "
                         "model), grpo_base (GRPO from the base model), sft_more (SFT continued for GRPO's "
                         "training time)")
    sp.add_argument("--sample-prompts", type=int, default=None,
                    help="sample n completions on the first this many test problems only (greedy: all of "
                         "them)")
    sp.add_argument("--seeds", type=int, default=1, help="train and evaluate everything with this many seeds")
    sp.add_argument("--first-seed", type=int, default=0, metavar="K",
                    help="train seeds K .. K + --seeds - 1 (default 0): adds seeds to a grid whose first "
                         "seeds ran elsewhere (each seed's results.json rows are those the full grid gives)")
    sp.add_argument("--jobs", type=int, default=1,
                    help="training processes at a time (each gets cores / jobs threads)")
    sp.add_argument("--docs", default=None,
                    help="also copy results.md and its plots into this directory (e.g. docs)")
    sp.add_argument("--sft", default=None, metavar="DIR",
                    help="reuse the SFT models of an earlier `grpo reproduce` output (or, with one seed, a "
                         "`grpo sft` run)")
    sp.add_argument("--reuse", action="store_true",
                    help="keep the finished runs and evaluations already in output_dir that have this "
                         "configuration and starting model, resume stopped runs (SFT and RL) from their "
                         "checkpoints; train the rest")
    sp.add_argument("--ood", default=None, metavar="FILE[,FILE...]",
                    help="out-of-distribution test sets (JSONL or Parquet, in the task's format): every "
                         "model is also scored greedy on all of their problems (strict and lenient too); no "
                         "training job reads them. With --reuse on a finished grid only these are evaluated")
    sp.set_defaults(fn=_cmd_reproduce)
    sp = sub.add_parser("plot",
                        help="redraw a run's training.png, or compare several runs' curves in one PNG")
    sp.add_argument("--config", "-c", default=None,
                    help="a `grpo train` YAML config: plot the run in its train.output_dir (when no RUN_DIR "
                         "is given)")
    sp.add_argument("items", nargs="*", metavar="RUN_DIR | section.key=value",
                    help="grpo output directories (with metrics.jsonl); or overrides of the config "
                         "(train.output_dir=runs/a); none: the config's run (default runs/grpo)")
    sp.add_argument("--out", default=None,
                    help="the PNG to write (needed for several runs; one run: RUN_DIR/training.png)")
    sp.add_argument("--labels", default=None,
                    help="comma-separated legend labels, one per run (default: the paths)")
    sp.set_defaults(fn=_cmd_plot, quiet=True)
    sp = sub.add_parser("convert",
                        help="a GGUF model file -> a Hugging Face directory (safetensors, tokenizer)")
    sp.add_argument("gguf", metavar="FILE.gguf",
                    help="the GGUF file (quantized weights are dequantized to float32)")
    sp.add_argument("out_dir", metavar="OUT_DIR", help="the directory to write (must not hold a model yet)")
    sp.set_defaults(fn=_cmd_convert, quiet=True)
    sp = sub.add_parser("config", help="list every key of a command's config: type, default, one-line doc")
    sp.add_argument("name", nargs="?", default="train", choices=list(CONFIGS),
                    help="whose config: train (also read by eval, plan, plot), sft, or demo (also "
                         "reproduce's)")
    sp.add_argument("prefix", nargs="?", default="",
                    help="only the keys that start with this, e.g. grpo. or rl.train.")
    sp.add_argument("--full", action="store_true", help="each key's whole docstring, not its first sentence")
    sp.set_defaults(fn=_cmd_config, quiet=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # reproduce names the command that continues it when a signal stops it
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        # a write past `ulimit -f` then fails with EFBIG, reported in one line, instead of killing the run
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    quiet_libraries()  # our own progress bar is the one a user watches; the libraries' bars and notices go
    try:
        args.fn(args)
    except UserError as e:
        print(f"grpo: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `grpo config | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except KeyboardInterrupt as e:  # a TrainingInterrupted says at which step and where the checkpoint is
        print(f"grpo: {str(e) or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)  # the shell's convention: 130 = SIGINT (2), 143 = SIGTERM (15)
    return 0


def entry() -> None:
    """`grpo` and `python -m grpo`: `main`, then exit with its status.

    A rank of a torchrun job leaves through `os._exit` once everything is written and flushed: under
    `train.strategy=fsdp`, torch's DTensor caches keep the device mesh, and through it the gloo or nccl
    process group, alive after `destroy_process_group`, and its threads then met the interpreter's
    teardown ("terminate called without an active exception", SIGABRT, after training had finished and
    saved: torchrun then reported the job failed). Seen here on CPU, 2 ranks: 1 of ~36 runs.
    """
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    entry()
