"""The `gptray eval` command: HellaSwag and perplexity of a checkpoint, over a Ray Data actor pool, to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from gptray.cli.common import EXIT_OK, add_command, load_experiment, log, print_mlflow_address


def register(commands) -> None:
    sub = add_command(commands, "eval", "evaluate a checkpoint: HellaSwag, perplexity, lm-evaluation-harness tasks",
                      """\
        Evaluate a checkpoint (a checkpoint directory, a run directory's latest, or by default out_dir/name's)
        on eval.tasks, with the tokenizer its run used:
          hellaswag   completion style: acc (lowest total loss of an ending) and acc_norm (lowest loss per
                      token), from the official hellaswag_val.jsonl, a local path or URL (eval.hellaswag;
                      by default the public URL, downloaded once to ~/.cache/gptray/eval)
          perplexity  loss, perplexity and bits per byte (bpb: compares across tokenizers) over the token
                      dataset's eval.split (the checkpoint's run's dataset unless eval.dataset_dir), or
                      over --text files: sliding windows of eval.max_length tokens every eval.stride
          any other   an lm-evaluation-harness task, group or tag (arc_easy, piqa, lambada_openai, …;
                      lm_eval/hellaswag for the harness's HellaSwag), run on gptray's own model with
                      eval.num_fewshot and eval.limit; local task YAMLs from eval.harness_include. Its
                      metrics are eval/lm_eval/<task>/<measure>; its results JSON goes to MLflow too

        Examples are scored by a Ray Data actor pool (map_batches with one model per actor: one per GPU,
        else one per CPU but one); --local scores them in this process instead. Results print as a
        table and go to MLflow: to --run, else to the training run recorded beside the checkpoint, else
        to a new run in tracking.experiment; metrics are eval/<task>/<metric> at the checkpoint's step.

        examples:
          gptray eval --checkpoint runs/quickstart --task perplexity
          gptray model import --hf openai-community/gpt2 --out checkpoints/gpt2
          gptray eval --checkpoint checkpoints/gpt2 --task hellaswag     # acc_norm 0.2955 for GPT-2 124M
          gptray eval --checkpoint checkpoints/gpt2 --text book.txt eval.max_length=1024 eval.stride=512
          gptray eval --checkpoint checkpoints/gpt2 --task lm_eval/hellaswag --task lambada_openai""")
    sub.add_argument("--checkpoint", metavar="PATH", help="checkpoint or run directory (default: out_dir/name)")
    sub.add_argument("--task", action="append", metavar="TASK",
                     help="hellaswag, perplexity or an lm-evaluation-harness task; repeat for several (default: "
                          "eval.tasks, or perplexity with --text)")
    sub.add_argument("--text", action="append", metavar="FILE", help="perplexity over this text file (repeatable)")
    sub.add_argument("--hellaswag", metavar="PATH_OR_URL", help="hellaswag_val.jsonl (default: eval.hellaswag)")
    sub.add_argument("--limit", type=int, metavar="N", help="at most N examples or windows per task")
    sub.add_argument("--num-fewshot", type=int, metavar="K",
                     help="harness tasks: K examples before each question (default: eval.num_fewshot, else the "
                          "task's own)")
    sub.add_argument("--include", action="append", metavar="DIR",
                     help="a directory of local harness task YAMLs (repeatable; default: eval.harness_include)")
    sub.add_argument("--local", action="store_true", help="score in this process, without Ray")
    sub.add_argument("--run", metavar="RUN_ID", help="MLflow run to log to (default: the checkpoint's training run)")
    sub.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    sub.add_argument("--output", metavar="FILE.json", help="also write the results, per example, as JSON")
    sub.set_defaults(handler=cmd_eval)


def cmd_eval(args) -> int:
    from gptray.eval.evaluate import evaluate_checkpoint
    from gptray.eval.report import format_table, log_report

    # The options are shorthands for eval.* settings; key=value overrides beat them.
    options = {"eval.tasks": args.task or (["perplexity"] if args.text else None), "eval.text_files": args.text,
               "eval.hellaswag": args.hellaswag, "eval.limit": args.limit, "eval.num_fewshot": args.num_fewshot,
               "eval.harness_include": args.include,
               "eval.distributed": False if args.local else None}
    config = load_experiment(args, settings={key: value for key, value in options.items() if value is not None})
    report = evaluate_checkpoint(args.checkpoint or config.run_dir, config)
    print(f"checkpoint {report.checkpoint} (step {report.step})")
    width = max(len(t.label) for t in report.tasks)
    for task in report.tasks:
        print(f"{task.label:<{width}}  {task.description}; {task.seconds:.1f} s on {task.workers}")
        for note in task.notes:
            print(f"{'':<{width}}  note: {note}")
    print()
    print(format_table(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report.to_dict(details=True), indent=1) + "\n")
        print(f"\nresults    {args.output}")
    if not args.no_track and config.tracking.enabled:
        target = log_report(report, config, args.run)
        kind = "new run" if target.created else "run"
        print(f"MLflow     {kind} {target.run_id} at {target.tracking_uri}")
        print_mlflow_address(target.tracking_uri, target.run_id)
    elif args.run:
        log.warning("--run %s ignored: tracking is off", args.run)
    return EXIT_OK
