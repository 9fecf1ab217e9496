"""The research commands: sweep (Ray Tune ablations), compare (statistics from MLflow), plot (one run)."""

from __future__ import annotations

import sys
from pathlib import Path

from gptray.cli.common import EXIT_INTERRUPTED, EXIT_OK, add_command, log, print_mlflow_address
from gptray.core.errors import ConfigError

EXIT_TRIALS_FAILED = 5  # some trials failed: the sweep finished, the rest are compared


def register(commands) -> None:
    sub = add_command(commands, "sweep", "run an ablation sweep with Ray Tune (each trial a Ray Train run)", """\
        Expand the sweep file's axes × seeds into trials (all validated first), run them with Ray Tune
        (each trial a TorchTrainer run with the base config plus its axis values), track them in MLflow
        as child runs of one sweep run, then compare them: a summary table, plots and per-run exports
        in out_dir/<name>/compare, also attached to the sweep run. Launching the same sweep again
        resumes it: finished trials are kept, interrupted ones continue from their checkpoints.
        Overrides apply to the base run config, or to the sweep section with a sweep. prefix
        (sweep.seeds=[0,1]).""")
    sub.add_argument("--dry-run", action="store_true", help="list the trials and their configs, run nothing")
    sub.set_defaults(handler=cmd_sweep)

    sub = add_command(commands, "compare", "compare runs from MLflow: statistics across seeds, tables, plots", """\
        Group runs by their sweep axis values and report the chosen metric across seeds: mean, std,
        95% confidence interval, and the difference to the baseline group with Welch's t-test p-value.
        Runs come from a sweep (name or parent run id), an experiment, or run ids. With --config, the
        tracking URI (and, for a sweep file, the sweep) come from that config.""")
    sub.add_argument("--sweep", metavar="NAME_OR_RUN_ID", help="a sweep's name or its parent run id")
    sub.add_argument("--experiment", metavar="NAME", help="every run of an MLflow experiment")
    sub.add_argument("--runs", nargs="+", metavar="RUN_ID", help="these runs")
    sub.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: the config's)")
    sub.add_argument("--metric", help="best_val_loss (default), final_val_loss, best_val_bpb, final_val_bpb "
                                      "(bits per byte: compares runs with different tokenizers), final_train_loss, "
                                      "best_train_loss, or an evaluation's eval/<task>/<measure> (its latest value: "
                                      "eval/hellaswag/acc_norm, eval/lm_eval/arc_easy/acc)")
    sub.add_argument("--baseline", metavar="GROUP", help="the group others are compared with (default: the sweep's)")
    sub.add_argument("--format", choices=["table", "markdown", "csv", "json"], default="table",
                     help="how the comparison is printed (default: table)")
    sub.add_argument("--plot", metavar="DIR", help="write summaries, PNG plots and results.{jsonl,csv} to DIR "
                                                     "(and attach them to the sweep run)")
    sub.add_argument("--export", metavar="FILE", help="write one row per run to FILE (.jsonl or .csv)")
    sub.set_defaults(handler=cmd_compare)

    sub = add_command(commands, "plot", "draw one run's loss and learning-rate curves from MLflow (PNG + CSV)",
                      """\
        Read a run's metric histories from MLflow and write curves.png (train and val loss; learning
        rate) and metrics.csv (every metric by step). RUN is an MLflow run id or a run directory
        (its mlflow_run.json names the run and the tracking store). Every training run does this
        by itself at its end; this command redraws it at any time, also for a run still going.""",
                      config=False)
    sub.add_argument("run", metavar="RUN", help="an MLflow run id, or a run directory (out_dir/name)")
    sub.add_argument("--tracking-uri", metavar="URI",
                     help="MLflow tracking URI (default: the run directory's, else sqlite:///runs/mlflow.db)")
    sub.add_argument("--out", metavar="DIR", help="where to write (default: RUN/plots for a run directory, "
                                                   "else ./plots-<run id>)")
    sub.add_argument("--no-log", action="store_true", help="do not attach the files to the MLflow run")
    sub.set_defaults(handler=cmd_plot)


def _sweep_file(args):
    from gptray.tune.spec import load_sweep

    if args.config is None:
        raise ConfigError("--config", "give the sweep file, e.g. --config configs/sweeps/norm.yaml")
    return load_sweep(args.config, args.overrides)


def cmd_sweep(args) -> int:
    from gptray.tracking.compare import format_summary
    from gptray.tracking.report import compare, write_report
    from gptray.tune.runner import run_sweep

    sweep = _sweep_file(args)
    if args.dry_run:
        print(f"sweep {sweep.base.name}: {len(sweep.trials)} trial(s) in {sweep.directory}, "
              f"baseline {sweep.baseline()!r}")
        for trial in sweep.trials:
            train = trial.config.train
            steps = "steps set by budget_flops once its dataset exists" if sweep.spec.budget_flops is not None \
                and trial.config.model.vocab_size is None else f"{train.max_steps} steps" if train.epochs is None \
                else f"{train.epochs:g} epochs"
            print(f"  {trial.name:32} {trial.label:24} seed {trial.seed:<4} {steps} × "
                  f"{train.batch_size * train.effective_seq_len(trial.config.model):,} tokens")
        return EXIT_OK
    outcome = run_sweep(sweep)
    done = outcome.count("finished") + outcome.count("stopped")
    if outcome.interrupted:
        print(f"interrupted: {done} of {len(outcome.trials)} trial(s) finished, {outcome.count('interrupted')} "
              f"interrupted, {outcome.count('not started')} not started; launch the same sweep again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"sweep      {sweep.base.name}: {done} of {len(outcome.trials)} trial(s) finished, in {outcome.directory}")
    for trial in outcome.failed():
        print(f"  failed   {trial.name}: {trial.error}")
    if outcome.parent_run_id:
        comparison = compare(outcome.tracking_uri, sweep=outcome.parent_run_id)
        files = write_report(outcome.tracking_uri, comparison, Path(outcome.directory) / "compare")
        print(f"MLflow     sweep run {outcome.parent_run_id} at {outcome.tracking_uri}")
        print_mlflow_address(outcome.tracking_uri, outcome.parent_run_id)
        print(f"report     {Path(files[0]).parent} (attached to the sweep run)\n")
        print(format_summary(comparison.summaries, comparison.metric, "table"), end="")
    return EXIT_TRIALS_FAILED if outcome.failed() else EXIT_OK


def cmd_compare(args) -> int:
    from gptray.tracking.compare import format_summary, write_export
    from gptray.tracking.report import compare, write_report
    from gptray.tune.spec import run_or_sweep_config

    base, sweep_name = run_or_sweep_config(args.config, args.overrides)
    sweep, tracking_uri = args.sweep or sweep_name, args.tracking_uri
    tracking_uri = tracking_uri or base.tracking_uri()
    if not (sweep or args.experiment or args.runs):
        raise ConfigError("--sweep", "name a sweep (--sweep or a sweep --config), --experiment or --runs")
    log.info("comparing runs from %s", tracking_uri)
    comparison = compare(tracking_uri, sweep=sweep, experiment=args.experiment, run_ids=args.runs,
                         metric=args.metric, baseline=args.baseline)
    sys.stdout.write(format_summary(comparison.summaries, comparison.metric, args.format))
    if args.export:
        write_export(comparison.records, args.export)
        log.info("wrote %s", args.export)
    if args.plot:
        files = write_report(tracking_uri, comparison, args.plot)
        log.info("wrote %d file(s) to %s%s", len(files), args.plot,
                 " and attached them to the sweep run" if comparison.info.get("parent_run_id") else "")
    return EXIT_OK


def cmd_plot(args) -> int:
    from gptray.config import load_config
    from gptray.tracking.report import plot_run

    for path in plot_run(args.run, args.tracking_uri, args.out, attach=not args.no_log,
                         default_tracking_uri=load_config(None).tracking_uri()):
        print(path)
    return EXIT_OK
