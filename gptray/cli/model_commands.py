"""The `gptray model` commands: list presets, import from and export to Hugging Face GPT-2."""

from __future__ import annotations

from gptray.cli.common import EXIT_OK, add_command, log
from gptray.core.tables import text_table


def register(commands) -> None:
    parser = add_command(commands, "model", "list model presets; import/export Hugging Face GPT-2", """\
        The model zoo: list the presets (GPT-2, GPT-3 and CPU-sized shapes) with their parameter counts
        and paper training recipes, import a Hugging Face GPT-2 as a gptray checkpoint, and export a
        checkpoint as a directory that transformers.GPT2LMHeadModel.from_pretrained loads.""", config=False)
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    cmd = add_command(sub, "list", "list presets with shapes, parameter counts and paper recipes", """\
        Print every preset: layers, heads, head width, model width, context, parameters (counted on the
        meta device, nothing is allocated), and where a paper gives them, its peak learning rate and
        batch size in tokens. Aliases follow the table.""", config=False)
    cmd.add_argument("--markdown", action="store_true", help="print a Markdown table")
    cmd.set_defaults(handler=cmd_list)

    cmd = add_command(sub, "import", "import a Hugging Face GPT-2 as a gptray checkpoint", """\
        Read a Hugging Face GPT-2 (config.json with model.safetensors or pytorch_model.bin, sharded or
        not) from a local directory, or by hub name (e.g. openai-community/gpt2) where the hub or a
        local hub cache is reachable, and write it as a gptray checkpoint directory: model.pt,
        state.json, config.yaml, and import.json recording where it came from. Models gptray would
        compute differently (another activation, unscaled attention, cross-attention) are refused.

        example:
          gptray model import --hf ./gpt2-hf --out checkpoints/gpt2
          gptray generate --checkpoint checkpoints/gpt2 --prompt "Hello" """, config=False)
    cmd.add_argument("--hf", required=True, metavar="DIR_OR_NAME", help="Hugging Face model directory or hub name")
    cmd.add_argument("--out", required=True, metavar="CHECKPOINT_DIR", help="checkpoint directory to write")
    cmd.add_argument("--revision", help="hub revision (branch, tag or commit) when --hf is a hub name")
    cmd.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    cmd.set_defaults(handler=cmd_import)

    cmd = add_command(sub, "export", "export a checkpoint as a Hugging Face GPT-2 directory", """\
        Write config.json and model.safetensors (fp32) that transformers.GPT2LMHeadModel.from_pretrained
        loads, with the same outputs; and the run's tokenizer, which transformers.AutoTokenizer loads:
        vocab.json and merges.txt for GPT-2's (data.tokenizer=gpt2), tokenizer.json for a Hugging Face
        tokenizer (a trained BPE, a tokenizer.json, hf:NAME).

        Works for the variants GPT-2 can express: LayerNorm, GELU MLP, learned positions, dense causal
        attention without document masking, n_head × head_dim = n_embd. Untied heads and bias-free
        models are fine (a bias-free model is written with zero biases). Other variants are refused,
        naming each config field GPT-2 cannot express.

        example:
          gptray model export --checkpoint runs/quickstart --out hf/quickstart""", config=False)
    cmd.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint or run directory (its latest)")
    cmd.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    cmd.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
    cmd.set_defaults(handler=cmd_export)


def preset_rows() -> list[dict]:
    from gptray.config import ModelConfig
    from gptray.config.presets import PRESETS, training_recipe
    from gptray.model import count_parameters

    rows = []
    for name in PRESETS:
        config = ModelConfig(preset=name).resolved()
        recipe = training_recipe(name)
        rows.append(dict(
            preset=name, layers=config.n_layer, heads=config.n_head, head=config.head_dim, width=config.n_embd,
            context=config.block_size, parameters=f"{count_parameters(config):,}",
            lr=f"{recipe.lr:.1e}" if recipe and recipe.lr else "-",
            batch_tokens=f"{recipe.batch_tokens:,}" if recipe and recipe.batch_tokens else "-",
        ))
    return rows


def cmd_list(args) -> int:
    from gptray.config.presets import PRESET_ALIASES

    rows = preset_rows()
    headers = dict(preset="preset", layers="layers", heads="heads", head="head", width="width", context="context",
                   parameters="parameters", lr="paper lr", batch_tokens="batch tokens")
    print(text_table(list(headers.values()), [[row[k] for k in headers] for row in rows],
                       align="l" + "r" * (len(headers) - 1), markdown=args.markdown))
    print()
    print("aliases: " + ", ".join(f"{alias} = {name}" for alias, name in PRESET_ALIASES.items()))
    return EXIT_OK


def cmd_import(args) -> int:
    from gptray.interop.huggingface import import_hf_checkpoint

    log.info("reading Hugging Face GPT-2 from %s", args.hf)
    imported, out = import_hf_checkpoint(args.hf, args.out, revision=args.revision, overwrite=args.overwrite)
    config = imported.model.config
    print(f"imported   {args.hf} ({imported.directory}: {', '.join(imported.weights)})")
    print(f"model      {config.preset or 'custom GPT-2'}: {config.n_layer} layers, {config.n_head} heads, "
          f"width {config.n_embd}, context {config.block_size}, vocabulary {config.vocab_size}, "
          f"{imported.model.num_parameters():,} parameters")
    for note in imported.notes:
        print(f"note       {note}")
    print(f"checkpoint {out}")
    print(f"generate   gptray generate --checkpoint {out} --prompt \"Hello\"")
    return EXIT_OK


def cmd_export(args) -> int:
    from gptray.interop.huggingface import export_checkpoint

    log.info("exporting %s as a Hugging Face GPT-2", args.checkpoint)
    result = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"checkpoint {result.checkpoint}")
    for path in result.files:
        print(f"wrote      {path}")
    for note in result.notes:
        print(f"note       {note}")
    out = str(result.files[0].parent)
    print(f"load       transformers.GPT2LMHeadModel.from_pretrained({out!r})")
    if any(path.name == "vocab.json" for path in result.files):
        print(f"           transformers.AutoTokenizer.from_pretrained({out!r})")
    return EXIT_OK
