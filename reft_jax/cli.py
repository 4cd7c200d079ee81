"""The `reft-jax` command.

    reft-jax SUBCOMMAND [--config FILE] [--workdir DIR] [--config.a.b=value ...]

--config is an ml_collections config file (a Python file with get_config(); default configs/demo.py;
FILE:ARG passes ARG to get_config) and --config.a.b=value overrides one field. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import signal
import sys
import traceback
from pathlib import Path

from reft_jax.config.files import DEMO_CONFIG, load_config
from reft_jax.runtime import malloc

SUBCOMMANDS = {
    "run": "the whole pipeline: teacher, filter, student, the no-defence baseline, evaluation, report and plots",
    "train-teacher": "train the Ref-Teacher from the base model (writes WORKDIR/teacher/)",
    "filter": "score the user data (or your own, --data FILE) with the teacher (writes WORKDIR/filter/)",
    "finetune": "finetune the base model on the kept user data, distilling the teacher (writes WORKDIR/student/)",
    "evaluate": "harmful score and finetune accuracy of the trained methods, filter metrics (WORKDIR/eval/)",
    "export": "write the student (LoRA merged) as a Hugging Face folder, or its LoRA adapter as a PEFT folder "
              "(--adapter), to --out DIR",
    "attack": "GCG adversarial suffixes against a method's model (eval.gcg; writes WORKDIR/attack/METHOD/)",
    "bench": "time the student and teacher steps in JAX and PyTorch (writes WORKDIR/bench.json)",
    "serve": "serve the teacher's filter over HTTP: OpenAI's /v1/moderations, /v1/filter for files, /healthz, "
             "/metrics (pip install 'reft-jax[serve]')",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reft-jax", description="Refusal-Teacher guided safe LLM finetuning in JAX.",
        epilog="Every subcommand takes --config FILE, --workdir DIR and --config.a.b=value overrides.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=str(DEMO_CONFIG),
                       help="ml_collections config file (default: configs/demo.py)")
        p.add_argument("--workdir", required=name != "serve", help="directory of the run's outputs and checkpoints (one command "
                                                        "at a time: a second one on it stops and names the first)")
        p.add_argument("--debug", action="store_true", help="print an error's traceback before its one line")
        if name in ("run", "filter", "finetune"):
            p.add_argument("--data", metavar="FILE",
                           help="your own user data (JSON/JSONL/CSV/TSV/Parquet: instruction/input/output, "
                                "prompt/completion, prompt/response or chat `messages`; an optional `harmful` "
                                "label), used as it is instead of the config's poisoned mixture")
        if name == "finetune":
            p.add_argument("--kept", metavar="FILE",
                           help="finetune on every row of FILE as it is: a filter's kept.jsonl, reviewed by a person "
                                "(a warning names rows the filter did not score or scored above tau)")
            p.add_argument("--strict", action="store_true",
                           help="with --kept: refuse rows the filter did not score or scored above tau")
        if name in ("run", "train-teacher", "finetune"):
            p.add_argument("--force", action="store_true",
                           help="redo the stage(s) from scratch, each previous folder kept aside until the new one is "
                                "whole (without it, a stage done or begun from other inputs stops the run)")
        if name == "export":
            p.add_argument("--out", required=True, help="output folder: new, empty or a previous export of the same "
                                                        "kind, replaced whole")
            p.add_argument("--force", action="store_true", help="replace a folder that is not such an export, whole")
            p.add_argument("--adapter", action="store_true",
                           help="write the LoRA adapter as a PEFT folder instead of the merged model")
            p.add_argument("--filter", action="store_true",
                           help="write the teacher's filter as a bundle that `serve --filter` and reft_jax.Filter read")
        if name == "serve":
            from reft_jax.serve.server import add_arguments

            add_arguments(p)
        if name in ("export", "attack"):
            p.add_argument("--method", default="ref_teacher",
                           help="which method's model (default: ref_teacher)"
                                + ("; or base_model / teacher" if name == "attack" else ""))
    return parser


def _unraisable(info) -> None:
    """TensorStore's callbacks into an asyncio loop Orbax already closed (after a failed checkpoint write) print
    'Event loop is closed' tracebacks that say nothing to a user: the failure itself is reported once."""
    if not (isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed"):
        sys.__unraisablehook__(info)


def _sigterm(signum, frame):
    """SIGTERM outside a training loop (which checkpoints first: train.loop): stop now; the stage is redone."""
    from reft_jax.errors import Preempted

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: another SIGTERM must not turn 75 into 143
    raise Preempted("SIGTERM outside a training step (nothing to checkpoint; the stage is redone)")


def main(argv: list[str] | None = None) -> int:
    """The command; argv None: this process's own command line. The `reft-jax` command (or `python -m
    reft_jax.cli`) first restarts itself on tcmalloc; a script or a notebook that calls main() is never restarted."""
    command = Path(sys.argv[0])
    if argv is None and (command.name == "reft-jax" or command.resolve() == Path(__file__).resolve()):
        malloc.run_on_tcmalloc()
    args, overrides = _parser().parse_known_args(argv)
    sys.unraisablehook = _unraisable
    from reft_jax.errors import Interrupted, Preempted, ReftError

    previous = signal.signal(signal.SIGTERM, _sigterm)  # a preempted process exits PREEMPTED_EXIT, which launchers requeue

    try:
        return _run(args, overrides)
    except ReftError as e:
        if args.debug:
            traceback.print_exc()
        print(f"reft-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # Ctrl-C in a training stage: checkpointed at the step it was in
        print(f"reft-jax {args.command}: {e}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except KeyboardInterrupt:  # Ctrl-C elsewhere: a stage being redone is back as it was (runtime.atomic)
        if args.debug:
            traceback.print_exc()
        print(f"reft-jax {args.command}: interrupted; run the same command again to go on (a training stage goes "
              "on from its last checkpoint)", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Preempted as e:  # SIGTERM (a scheduler's preemption): checkpointed; the same command goes on
        # The process is on its way out with 75: srun, seeing the first task exit 75, sends SIGTERM to the rest
        # (--kill-on-bad-exit), which must not make them exit 143 instead (the job would fail, not requeue).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"reft-jax {args.command}: {e}; run the same command again to go on", file=sys.stderr)
        return PREEMPTED_EXIT
    except OSError as e:  # a workdir a user can fix: read-only, not a folder, full, over a file size limit
        if e.errno not in _WORKDIR_ERRNOS:
            raise
        # Orbax's other write tasks fail alike; asyncio logs each one when it is collected at exit
        logging.getLogger("asyncio").disabled = True
        print(f"reft-jax {args.command}: error: {e.filename or args.workdir}: {e.strerror}; free space or use "
              "a writable --workdir, then run the same command again (it goes on from the last checkpoint)",
              file=sys.stderr)
        return 2
    finally:
        if signal.getsignal(signal.SIGTERM) is _sigterm:  # not preempted: the caller's handler back
            signal.signal(signal.SIGTERM, previous)


PREEMPTED_EXIT = 75  # EX_TEMPFAIL; launch/common.sh requeues a job on it
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
_WORKDIR_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _run(args, overrides) -> int:
    from reft_jax.config.schema import RunConfig
    from reft_jax.config.typed import replace

    cfg = RunConfig.of(load_config(args.config, overrides))  # the edge: typed and validated from here on
    own = getattr(args, "kept", None) or getattr(args, "data", None)
    if own:  # the user's own file is the user data, every row as it is
        cfg = replace(replace(cfg, "data.user.source", own), "data.user.mix", "none")
        cfg = replace(cfg, "data.user.filtered", bool(getattr(args, "kept", None)))
        cfg = replace(cfg, "data.user.strict", bool(getattr(args, "strict", False)))
        if not any(o.startswith("--config.data.eval.task_source=") for o in overrides):
            cfg = replace(cfg, "data.eval.task_source", "")  # no accuracy on a task the user did not give
    if args.command == "bench":  # each framework runs in its own process: no JAX backend in this one
        from reft_jax.bench import markdown, run_bench

        report = run_bench(cfg, Path(args.workdir))
        print(markdown(report), file=sys.stderr)
        print(json.dumps(report, indent=2))
        return 0
    if args.command == "serve":  # one process; its own SIGTERM handling (a graceful stop)
        from reft_jax.serve.server import serve

        return serve(cfg, args)
    from reft_jax.runtime import parallel

    parallel.initialize_distributed(cfg.distributed)
    import jax

    from reft_jax import pipeline, stages
    from reft_jax.experiment.context import RunContext
    from reft_jax.experiment.export import export
    from reft_jax.experiment.methods import METHODS
    from reft_jax.stages import attack, evaluate

    if jax.process_index() == 0:
        print(f"reft-jax {args.command}: {jax.process_count()} process(es), {jax.device_count()} "
              f"{jax.devices()[0].platform} device(s)", flush=True)
    ctx = RunContext.create(cfg, args.workdir)
    method = METHODS["ref_teacher"]  # the stage commands are Ref-Teacher's

    def train(stage: str, what: str) -> None:  # a finished stage is not redone (a requeued job skips it)
        folder = stages.STAGES[stage].path(ctx.workdir)
        if not args.force and stages.STAGES[stage].marker(ctx.workdir).exists():
            stages.check_inputs(ctx, stage)
            print(f"{what} done in {folder} (--force redoes it)")
        else:
            print(f"{what} written to {stages.run_stage(stage, ctx, force=args.force)}")

    if args.command == "train-teacher":
        train("teacher", "teacher")
    elif args.command == "filter":  # scoring again is cheap: the command always rescores (e.g. another --data)
        print(json.dumps(stages.run_stage(stages.FILTERS[method.filter].stage, ctx, force=True), indent=2))
    elif args.command == "finetune":
        train(method.stage, "student")
    elif args.command == "evaluate":
        print(json.dumps(_summary(evaluate.run(ctx)), indent=2))
    elif args.command == "run":
        print(json.dumps(_summary(pipeline.run(ctx, force=args.force)), indent=2))
        print(f"report written to {ctx.workdir.root / 'report.md'}")
    elif args.command == "attack":
        report = attack.run(ctx, args.method)
        print(json.dumps({k: v for k, v in report.items() if k != "prompts"}, indent=2))
        print(f"attack report written to {ctx.workdir.attack(args.method) / 'report.json'}")
    elif args.command == "export" and args.filter:
        from reft_jax.serve import bundle

        print(f"filter bundle written to {bundle.write_bundle(ctx, Path(args.out), force=args.force)}")
    elif args.command == "export":
        print(f"exported to {export(ctx, Path(args.out), args.method, adapter=args.adapter, force=args.force)}")
    return 0


def _summary(report: dict) -> dict:
    """The report without the example answers, for the terminal."""
    methods = {k: {f: v for f, v in m.items() if f != "examples"} for k, m in report["methods"].items()}
    return {**report, "methods": methods}


if __name__ == "__main__":
    sys.exit(main())
