"""The `gptray tokenizer` commands: train a byte-level BPE on a config's corpora."""

from __future__ import annotations

from gptray.cli.common import EXIT_OK, add_command, load_experiment


def register(commands) -> None:
    parser = add_command(commands, "tokenizer", "train a tokenizer of your own (byte-level BPE)", """\
        data.tokenizer takes a tiktoken encoding (gpt2), a Hugging Face tokenizer.json (or the
        directory holding one) by path or URI, or hf:NAME for a Hub tokenizer. `train` makes the
        second kind from your own corpora.""", config=False)
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    cmd = add_command(sub, "train", "learn a byte-level BPE from the config's data.sources", """\
        Read the train-split documents of data.sources through the tokenize job's readers (bad
        input is skipped and counted as there), up to tokenizer.max_chars characters taken in
        turns from every source, and learn a byte-level BPE of tokenizer.vocab_size tokens with
        Hugging Face tokenizers (GPT-2's pre-tokenizer; <|endoftext|> is its special token).
        Writes DIR/tokenizer.json. Then tokenize with data.tokenizer=DIR into a new dataset_dir;
        model.vocab_size follows the dataset.

        example:
          gptray tokenizer train tokenizer.vocab_size=4096 --out data/tokenizers/shakespeare-4k
          gptray tokenize data.tokenizer=data/tokenizers/shakespeare-4k data.dataset_dir=data/shakespeare-4k
          gptray pretrain data.tokenizer=data/tokenizers/shakespeare-4k data.dataset_dir=data/shakespeare-4k""")
    cmd.add_argument("--out", metavar="DIR", required=True, help="directory to write tokenizer.json into")
    cmd.add_argument("--overwrite", action="store_true", help="replace DIR/tokenizer.json if it exists")
    cmd.set_defaults(handler=cmd_train)


def cmd_train(args) -> int:
    from gptray.data.bpe_training import train_tokenizer

    config = load_experiment(args)
    result = train_tokenizer(config, args.out, overwrite=args.overwrite)
    print_learned(result)
    directory = str(result.path.parent)
    if "/" not in directory:  # a bare name would read as a tiktoken encoding's
        directory = f"./{directory}"
    print(f"use it     data.tokenizer={directory}")
    return EXIT_OK


def print_learned(result) -> None:
    """What a learned tokenizer (bpe_training.TrainedTokenizer) was learned from, and where it is."""
    sample = "a sample, tokenizer.max_chars" if result.truncated else "all of them"
    print(f"learned    {result.vocab_size:,} tokens from {result.documents:,} documents, "
          f"{result.chars:,} characters ({sample}) in {result.seconds:.1f} s")
    if result.problems.total():
        print(f"skipped    {result.problems.counts}")
    print(f"wrote      {result.path}")
