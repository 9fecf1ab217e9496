"""The pipeline commands: tokenize, pretrain, finetune, generate, quickstart, config."""

from __future__ import annotations

import sys
import textwrap
import time

import yaml

from gptray.cli.common import EXIT_OK, add_command, load_experiment, log, print_mlflow_address
from gptray.core.errors import ConfigError


def register(commands) -> None:
    sub = add_command(commands, "tokenize", "tokenize corpora into Parquet token shards (Ray Data)", """\
        Read data.sources (local or s3:// / gs:// txt/jsonl/json/parquet files, also .gz/.zst compressed,
        directories, globs, Hugging Face datasets, named corpora from `gptray data list`), tokenize them
        with data.tokenizer in a Ray Data job (the plan's read tasks as a Datasource, a map_batches tokenize
        operator and a shard-writing Datasink, fused into one Ray task per read task), append <|endoftext|>
        after every document, split documents into train/val by a seeded content hash, write each source's
        documents as often as its weight says, each read task its own Parquet token shards, and write
        manifest.json to data.dataset_dir (a local path or a URI). Bad input is skipped and counted in the
        manifest (--strict stops at the first).
        Rerunning reuses a finished identical dataset after verifying its shards, and resumes an
        interrupted one: read tasks whose shards verify are kept, only the rest run again.
        A data.tokenizer directory (or tokenizer.json) that does not exist yet is learned from
        data.sources first, with the tokenizer.* settings, as `gptray tokenizer train` does.""")
    sub.add_argument("--overwrite", action="store_true",
                     help="replace a different token dataset (or unfinished job) already in data.dataset_dir")
    sub.add_argument("--strict", action="store_true",
                     help="stop with an error (exit 3) at the first bad input instead of skipping and counting it "
                          "(same as data.strict=true)")
    sub.set_defaults(handler=cmd_tokenize)

    sub = add_command(commands, "pretrain", "train a GPT on token shards with Ray Train (DDP)", """\
        Train the configured model on data.dataset_dir with ray.num_workers Ray Train workers under DDP
        (gloo on CPU, NCCL on GPU), logging to MLflow from rank 0. Checkpoints go to out_dir/name;
        launching the same run again resumes from its latest checkpoint. checkpoint.resume_from=CHECKPOINT
        starts a new run from another run's checkpoint (all of its state), e.g. to decay a
        schedule.name=wsd run's stable phase to a new train.max_steps. The training recipe:
        optimizer.name=adamw|muon, schedule.name=cosine|linear|wsd, train.z_loss=COEF.""")
    sub.add_argument("--no-sample", action="store_true", help="do not generate a sample after training")
    sub.set_defaults(handler=cmd_pretrain)

    sub = add_command(commands, "finetune", "fine-tune a gptray or Hugging Face GPT-2 checkpoint (Ray Train)", """\
        Continue training from train.init_from (a gptray checkpoint or run directory, a Hugging Face GPT-2
        directory, or hf:NAME) on data.dataset_dir: the same Ray Train engine, checkpoints and MLflow
        logging as pretrain. The model keeps the base's architecture; train.recipe defaults to
        `finetune` (lr 5e-5, warmup 5% of the steps, batch 32, dropout 0.1). Tokenize prompt/completion
        jsonl with data.sources[i].prompt_field set, and the loss leaves out the prompt tokens. The base
        is only read; relaunching the run resumes from its own latest checkpoint.""")
    sub.add_argument("--init-from", metavar="CHECKPOINT",
                     help="the base model (same as train.init_from=CHECKPOINT)")
    sub.add_argument("--no-sample", action="store_true", help="do not generate a sample after training")
    sub.set_defaults(handler=cmd_finetune)

    sub = add_command(commands, "generate", "generate text from a checkpoint (KV cache; sampling or beam search)", """\
        Load a checkpoint (a checkpoint directory, a run directory, or by default the latest checkpoint
        of out_dir/name) and continue prompts, decoding with a KV cache. Several --prompt options (and
        --num-samples) run as one batch; --interactive reads prompts from stdin, one per line.

        Decoding is set by generate.* overrides:
          temperature=0 greedy; otherwise sampling, after repetition_penalty, top_k and top_p
          num_beams=N    beam search (deterministic), ranked with length_penalty
          stop_at_eot=true, stop=[...]   end a sequence at <|endoftext|> or at a stop string (cut there)
          seed=S         the i-th sequence of a batch samples with seed S + i (reproducible)

        examples:
          gptray generate --checkpoint runs/quickstart --prompt "ROMEO:" generate.temperature=0.7 generate.top_p=0.9
          gptray generate --checkpoint checkpoints/gpt2 --prompt "Hello" --prompt "The sky" generate.num_beams=4
          echo "JULIET:" | gptray generate --checkpoint runs/quickstart --interactive""")
    sub.add_argument("--checkpoint", metavar="PATH", help="checkpoint or run directory (default: out_dir/name)")
    sub.add_argument("--prompt", action="append", metavar="TEXT",
                     help="text to continue; repeat for a batch (default: generate.prompt)")
    sub.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples per prompt (default 1)")
    sub.add_argument("--interactive", action="store_true",
                     help="read prompts from stdin, one per line, until end of input or a line ':quit'")
    sub.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (default: a GPU if there is one)")
    sub.set_defaults(handler=cmd_generate)

    sub = add_command(commands, "quickstart", "tokenize, train, track and sample end to end on local defaults", """\
        The whole pipeline on one machine: learn data.tokenizer from the corpus if it does not
        exist yet (by default an 8,192-token byte-level BPE of tinyshakespeare, under data/tokenizers),
        tokenize tinyshakespeare with it, train the nano GPT for train.max_steps steps (1,800) on a
        local Ray cluster with 2 CPU workers under DDP, log to MLflow (SQLite under out_dir), and
        print where the run is and a generated sample. Run again, it reuses what exists.
        data.tokenizer=gpt2 data.dataset_dir=data/tinyshakespeare trains with GPT-2's tokenizer.""")
    sub.set_defaults(handler=cmd_quickstart)

    sub = add_command(commands, "config", "print the resolved config (validates it; runs nothing)", """\
        Print the config a command would run with, after defaults, presets, overrides and path
        resolution, as YAML. Nothing is downloaded: a fine-tuning base named hf:NAME must be in the
        local Hugging Face cache (`gptray finetune` reads its config.json from the Hub).""")
    sub.set_defaults(handler=cmd_config)


def cmd_config(args) -> int:
    print(yaml.safe_dump(load_experiment(args, hub=False).to_dict(), sort_keys=False), end="")
    return EXIT_OK


def cmd_tokenize(args) -> int:
    from gptray.data.tokenize_job import tokenize_corpus

    config = load_experiment(args)
    _learn_missing_tokenizer(config)
    result = tokenize_corpus(config, overwrite=args.overwrite, strict=True if args.strict else None)
    _track_tokenize(config, result)
    _print_dataset(result)
    return EXIT_OK


def _track_tokenize(config, result) -> None:
    """The job's MLflow run (tracking.enabled), for a dataset written now; a reused one has its run already."""
    if config.tracking.enabled and not result.reused:
        from gptray.tracking.tokenize_run import log_tokenize_run

        log_tokenize_run(config, result.request, result.manifest, result.dataset_dir, result.seconds,
                         result.tasks, result.kept_tasks)


def cmd_pretrain(args) -> int:
    from gptray.train.pretrain import pretrain

    config = load_experiment(args)
    result = pretrain(config, sample=not args.no_sample)
    _print_run(config, result)
    return EXIT_OK


def cmd_finetune(args) -> int:
    from gptray.train.finetune import finetune_run_config
    from gptray.train.pretrain import pretrain

    config = finetune_run_config(args.config, args.overrides, args.init_from)
    result = pretrain(config, sample=not args.no_sample)
    _print_run(config, result)
    return EXIT_OK


def cmd_generate(args) -> int:
    from gptray.generation import checkpoint_tokenizer, load_model, resolve_device

    config = load_experiment(args)
    if args.num_samples < 1:
        raise ConfigError("--num-samples", f"must be at least 1 (got {args.num_samples})")
    if args.interactive and args.prompt:
        raise ConfigError("--interactive", "reads its prompts from stdin: leave out --prompt")
    if args.num_samples > 1 and (config.generate.num_beams > 1 or config.generate.temperature == 0):
        log.warning("--num-samples %d with deterministic decoding (greedy or beam search) repeats one result",
                    args.num_samples)
    model, checkpoint = load_model(args.checkpoint or config.run_dir, resolve_device(args.device))
    tokenizer = checkpoint_tokenizer(checkpoint, config.data.tokenizer)
    log.info("generating from %s (%s parameters, %s) on %s", checkpoint, f"{model.num_parameters():,}",
             describe_decoding(config.generate), next(model.parameters()).device)
    if args.interactive:
        return _interactive(model, tokenizer, config.generate, args.num_samples)
    _generate_batch(model, tokenizer, config.generate, args.prompt or [config.generate.prompt], args.num_samples)
    return EXIT_OK


def describe_decoding(g) -> str:
    if g.num_beams > 1:
        how = f"beam search over {g.num_beams} beams"
    elif g.temperature == 0:
        how = "greedy"
    else:
        how = f"sampling at temperature {g.temperature}"
        how += "".join(f", {name} {value}" for name, value in (("top_k", g.top_k), ("top_p", g.top_p)) if value)
    if g.repetition_penalty != 1:
        how += f", repetition penalty {g.repetition_penalty}"
    return how + ("" if g.use_cache else ", no KV cache")


def _generate_batch(model, tokenizer, settings, prompts: list[str], num_samples: int) -> None:
    """Every prompt × sample as one batch; a single sequence streams its text as it is generated."""
    from gptray.generation import TextStream, encode_prompt, generate_texts

    for prompt in prompts:  # a prompt the model cannot read is refused before anything is written
        encode_prompt(tokenizer, prompt, model.config.vocab_size)
    rows = [p for p in prompts for _ in range(num_samples)]
    stream = TextStream(tokenizer, settings) if len(rows) == 1 and settings.num_beams == 1 else None
    if stream is not None:
        print(rows[0], end="", flush=True)
    completions = generate_texts(model, tokenizer, settings, rows, on_token=stream)
    if stream is not None:
        stream.finish(completions[0])
        return
    for i, (prompt, completion) in enumerate(zip(rows, completions)):
        parts = []
        if len(prompts) > 1:
            parts.append(f"prompt {i // num_samples + 1}")
        if num_samples > 1:
            parts.append(f"sample {i % num_samples + 1}")
        if settings.num_beams == 1 and settings.temperature > 0:
            parts.append(f"seed {settings.seed + i}")
        if parts:
            print(f"--- {', '.join(parts)} ---")
        print(prompt + completion.text)


def _interactive(model, tokenizer, settings, num_samples: int) -> int:
    """A prompt loop on stdin: each line is a prompt; results go to stdout as they are generated."""
    tty = sys.stdin.isatty()
    print("interactive: type a prompt and press Enter (':quit' or end of input to leave)", file=sys.stderr)
    count = 0
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.rstrip("\n") == ":quit":
            break
        prompt = line.rstrip("\n")
        if not prompt.strip():
            continue
        try:
            _generate_batch(model, tokenizer, settings, [prompt], num_samples)
            count += 1
        except ConfigError as exc:  # a prompt the model cannot read: say so and take the next one
            print(f"gptray generate: error: {exc}", file=sys.stderr)
    print(f"interactive: {count} prompt(s) answered", file=sys.stderr)
    return EXIT_OK


def cmd_quickstart(args) -> int:
    from gptray.data.tokenize_job import tokenize_corpus
    from gptray.train.pretrain import pretrain

    started = time.monotonic()
    config = load_experiment(args)
    log.info("quickstart 1/2: tokenize %s", ", ".join(s.describe() for s in config.data.sources))
    _learn_missing_tokenizer(config)
    dataset = tokenize_corpus(config)
    _track_tokenize(config, dataset)
    log.info("quickstart 2/2: pretrain %s on %d Ray Train worker(s)", config.model.preset or "custom model",
             config.ray.num_workers)
    result = pretrain(config)
    print()
    _print_dataset(dataset)
    _print_run(config, result)
    print(f"quickstart finished in {time.monotonic() - started:.0f} s")
    return EXIT_OK


def _learn_missing_tokenizer(config) -> None:
    """A data.tokenizer directory or tokenizer.json that does not exist yet is learned from the corpus first."""
    from gptray.cli.tokenizer_commands import print_learned
    from gptray.data.bpe_training import learn_missing_tokenizer

    learned = learn_missing_tokenizer(config)
    if learned is not None:
        print_learned(learned)


def _print_dataset(result) -> None:
    m = result.manifest
    train, val = m.split_info("train"), m.split_info("val")
    if result.reused:
        state = "reused: shards verified"
    elif result.resumed_from_task is not None:
        state = (f"resumed: {result.kept_tasks} of {result.tasks} read task(s) kept, the rest done "
                 f"in {result.seconds:.0f} s")
    else:
        state = f"written in {result.seconds:.0f} s"
    print(f"dataset    {result.dataset_dir} ({state})")
    print(f"           {m.documents:,} documents, {m.tokens:,} tokens: train {train.tokens:,} in "
          f"{len(train.shards)} shard(s), val {val.tokens:,} in {len(val.shards)} shard(s)")
    if len(m.sources) > 1:
        shares = ", ".join(f"{s.description} {s.share:.1%}" for s in m.sources)
        print(f"           sources: {shares}")
    if m.problems.total():
        print(f"           skipped or repaired input: {m.problems.counts} (gptray data inspect shows where)")


def _print_run(config, result) -> None:
    metrics = result.metrics
    print(f"run        {result.run_dir}")
    if result.final_step == result.start_step and result.start_step > 0:
        print(f"           already at step {result.final_step}; nothing trained (raise train.max_steps to continue)")
    else:
        print(f"           steps {result.start_step} → {result.final_step} in {result.seconds:.0f} s")
    print(f"checkpoint {result.checkpoint}")
    if "train_loss" in metrics:
        line = f"loss       train {metrics['train_loss']:.4f}"
        if "val_loss" in metrics:
            line += f", val {metrics['val_loss']:.4f}"
        if "val_bpb" in metrics:
            line += f" ({metrics['val_bpb']:.4f} bits per byte)"
        print(line)
    if result.mlflow_run_id:
        experiment = config.tracking.experiment
        print(f"MLflow     run {result.mlflow_run_id} (experiment {experiment!r}) at {result.tracking_uri}")
        print_mlflow_address(result.tracking_uri, result.mlflow_run_id, result.mlflow_experiment_id)
    if result.sample is not None:
        print(f"sample     (prompt {config.generate.prompt!r}, temperature {config.generate.temperature}):")
        print(textwrap.indent(config.generate.prompt + result.sample, "    ").rstrip())
    print(f"generate   gptray generate --checkpoint {result.run_dir} --prompt \"ROMEO:\"")
