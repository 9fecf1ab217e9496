"""The `gptray checkpoint` commands: consolidate a sharded checkpoint into whole files."""

from __future__ import annotations

from gptray.cli.common import EXIT_OK, add_command, log


def register(commands) -> None:
    parser = add_command(commands, "checkpoint", "work with checkpoints: consolidate a sharded one", """\
        Checkpoints come in two formats (checkpoint.format): whole, model.pt and optimizer.pt
        written by rank 0; and sharded, one torch.distributed.checkpoint file per rank, the default
        under FSDP. generate, eval, model export and fine-tuning's init_from read both.""", config=False)
    sub = parser.add_subparsers(dest="checkpoint_command", metavar="SUBCOMMAND", required=True)

    cmd = add_command(sub, "consolidate", "write a sharded checkpoint as whole files (model.pt)", """\
        Read a sharded checkpoint (or a run directory's latest checkpoint), local or on an object store,
        and write a whole one: model.pt (and with --optimizer, optimizer.pt and the fp16 scaler), with
        state.json and config.yaml, all loadable with torch.load(weights_only=True). This process holds
        the whole model (and optimizer) in memory. With --optimizer the result resumes like any whole
        checkpoint.

        example:
          gptray checkpoint consolidate runs/big --out whole/big
          python -c "import torch; print(len(torch.load('whole/big/model.pt', weights_only=True)))" """,
                      config=False)
    cmd.add_argument("checkpoint", metavar="PATH", help="sharded checkpoint, or run directory (its latest)")
    cmd.add_argument("--out", metavar="DIR",
                     help="directory to write (default: CHECKPOINT.whole beside a local checkpoint, else here)")
    cmd.add_argument("--optimizer", action="store_true", help="also write optimizer.pt, so the result can resume")
    cmd.add_argument("--overwrite", action="store_true", help="replace what is already in --out")
    cmd.set_defaults(handler=cmd_consolidate)


def cmd_consolidate(args) -> int:
    from gptray.train.consolidate import consolidate_checkpoint

    log.info("consolidating %s", args.checkpoint)
    result = consolidate_checkpoint(args.checkpoint, args.out, optimizer=args.optimizer, overwrite=args.overwrite)
    print(f"checkpoint {result.source} (step {result.step}, sharded)")
    for name, size in result.files.items():
        print(f"wrote      {result.out / name} ({size:,} bytes)")
    print(f"generate   gptray generate --checkpoint {result.out} --prompt \"Hello\"")
    return EXIT_OK
