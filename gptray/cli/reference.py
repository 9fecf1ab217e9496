"""The reference, read from the code: every config key (type, default, the comment that documents it where it is
declared) and every command and option of `gptray`, as data and as the Markdown of docs/reference/.

Nothing here is written by hand twice: a key's documentation is the comment above or beside its field (a field
with none of its own, directly under one that has a comment block, shares that block: `train.epochs` under
`train.max_steps`), a section's is its class docstring, a command's is its argparse help.
scripts/reference_pages.py writes the pages; tests/unit/test_docs.py fails when they differ from these.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from gptray.cli.common import EXIT_CODES_HELP
from gptray.config.schema import ExperimentConfig
from gptray.config.training import TrainConfig

REGENERATE = "make docs-reference"  # what the pages and the test tell a user to run


@dataclass(frozen=True)
class ConfigKey:
    """One settable key: `train.spike.window`, `data.sources[i].path`."""

    key: str
    type: Any  # the field's resolved type hint
    default: Any  # the default value (a default_factory's product)
    doc: str  # the comment where it is declared; "" when it has none
    see: str | None = None  # the key whose comment block documents this one too


@dataclass(frozen=True)
class ConfigSection:
    """A dataclass of the config at a dotted place ("" for the top level, `data.sources[i]` for list items)."""

    key: str
    cls: type
    doc: str
    keys: tuple[ConfigKey, ...]


def config_sections(root: type = ExperimentConfig, sweep: bool = True) -> list[ConfigSection]:
    """Every section of the run config, parents before their subsections; with `sweep`, the sweep files' own."""
    sections = _sections(root, "")
    if sweep:
        from gptray.tune.spec import SweepConfig  # imports torch: only when the sweep keys are asked for

        sections += _sections(SweepConfig, "sweep")
    return sections


def config_keys(sweep: bool = True) -> dict[str, ConfigKey]:
    """Every leaf key by its dotted name (list items as `[i]`)."""
    return {key.key: key for section in config_sections(sweep=sweep) for key in section.keys}


def moved_keys() -> dict[str, str]:
    """Keys that left `train` when it was split into sections: the old dotted key → its new place."""
    return {f"train.{old}": new for old, new in TrainConfig.MOVED_KEYS.items()}


def section_type(tp: Any) -> type | None:
    """The dataclass a field holds, itself or as its list's items; None for a leaf."""
    if dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (list, tuple) and get_args(tp) and dataclasses.is_dataclass(get_args(tp)[0]):
        return get_args(tp)[0]
    return None


def _sections(cls: type, prefix: str) -> list[ConfigSection]:
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    keys, children = [], []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], _join(prefix, f.name)
        nested = section_type(tp)
        if nested is not None and nested is tp:
            children += _sections(nested, key)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        doc, shared = docs.get(f.name, ("", None))
        keys.append(ConfigKey(key, tp, default, doc, _join(prefix, shared) if shared else None))
        if nested is not None:  # a list of sections: the key itself, then its items' keys
            children += _sections(nested, f"{key}[i]")
    return [ConfigSection(prefix, cls, _class_doc(cls), tuple(keys)), *children]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _class_node(cls: type) -> ast.ClassDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(node, ast.ClassDef)
    return node


def _class_doc(cls: type) -> str:
    """The class's own docstring (a dataclass without one gets a generated signature as __doc__: not a doc)."""
    return inspect.cleandoc(ast.get_docstring(_class_node(cls)) or "")


def _field_docs(cls: type) -> dict[str, tuple[str, str | None]]:
    """Each field's comment, read from the class that declares it: name → (text, the field it shares it with)."""
    docs: dict[str, tuple[str, str | None]] = {}
    for owner in reversed(cls.__mro__):
        if dataclasses.is_dataclass(owner) and "__annotations__" in owner.__dict__:
            docs.update(_declared_docs(owner))
    return docs


def _declared_docs(cls: type) -> dict[str, tuple[str, str | None]]:
    """Comments of the fields `cls` declares: the comment lines right above a field (no blank line between)
    and the comment at its end; a field with neither, directly under a field with a block above it, shares it."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments: dict[int, tuple[str, bool]] = {}  # line → (text, whether the line holds only the comment)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            text = token.string.lstrip("#").strip()
            comments[row] = (text, not lines[row - 1][:col].strip())
    docs: dict[str, tuple[str, str | None]] = {}
    block_of: str | None = None  # the field whose block the next field may share
    last_end = -1
    for node in _class_node(cls).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            last_end, block_of = getattr(node, "end_lineno", -1), None
            continue
        if "ClassVar" in ast.unparse(node.annotation):
            last_end, block_of = node.end_lineno, None
            continue
        name = node.target.id
        above, row = [], node.lineno - 1
        while row in comments and comments[row][1]:
            above.insert(0, comments[row][0])
            row -= 1
        beside = [comments[r][0] for r in range(node.lineno, node.end_lineno + 1)
                  if r in comments and not comments[r][1]]
        text = _joined(" ".join(above), " ".join(beside))
        if text:
            docs[name] = (text, None)
            block_of = name if above else None
        elif block_of is not None and last_end == node.lineno - 1:
            docs[name] = ("", block_of)
        else:
            block_of = None
        last_end = node.end_lineno
    return docs


def _joined(above: str, beside: str) -> str:
    if above and beside:
        return f"{above}{'' if above[-1] in '.:;' else '.'} {beside[0].upper()}{beside[1:]}"
    return above or beside


# ---- the command line ----


@dataclass(frozen=True)
class CliOption:
    """An option or positional argument of a command."""

    names: tuple[str, ...]  # ("--num-samples",), or () for a positional
    invocation: str  # as --help shows it: "--num-samples N", "DIR", "key=value"
    help: str
    takes_value: bool  # whether the option reads the next word as its value

    @property
    def positional(self) -> bool:
        return not self.names


@dataclass(frozen=True)
class CliCommand:
    """A command (`gptray`), subcommand (`gptray data`) or sub-subcommand (`gptray data inspect`)."""

    path: tuple[str, ...]  # () for `gptray` itself
    help: str  # the one line its parent's --help shows
    description: str
    usage: str
    epilog: str
    options: tuple[CliOption, ...]
    subcommands: tuple[CliCommand, ...]

    @property
    def name(self) -> str:
        return " ".join(("gptray", *self.path))

    @property
    def takes_overrides(self) -> bool:
        """Whether it takes trailing `key=value` config overrides."""
        return any(option.positional and option.invocation == "key=value" for option in self.options)

    def walk(self):
        yield self
        for command in self.subcommands:
            yield from command.walk()

    def option(self, name: str) -> CliOption | None:
        return next((option for option in self.options if name in option.names), None)


def cli_commands(parser: argparse.ArgumentParser | None = None) -> CliCommand:
    """The `gptray` command tree, read from its argparse parser."""
    if parser is None:
        from gptray.cli.main import build_parser

        parser = build_parser()
    return _command(parser, (), "")


def _command(parser: argparse.ArgumentParser, path: tuple[str, ...], help: str) -> CliCommand:
    formatter = argparse.HelpFormatter(parser.prog, width=10_000)  # one line, whatever the terminal
    options, subcommands = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            subcommands += [_command(sub, (*path, name), helps.get(name, "")) for name, sub in action.choices.items()]
            continue
        options.append(CliOption(tuple(action.option_strings), formatter._format_action_invocation(action),
                                 formatter._expand_help(action) if action.help else "", action.nargs != 0))
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return CliCommand(path, help, parser.description or "", formatter.format_help().strip(), parser.epilog or "",
                      tuple(options), tuple(subcommands))


# ---- Markdown ----


def config_page() -> str:
    """docs/reference/config.md."""
    out = [
        "# Config reference",
        "",
        _generated_note("the config dataclasses in `gptray/config/` (and `gptray/tune/spec.py` for `sweep`)"),
        "",
        "A run's config is a YAML file (`--config FILE.yaml`) plus dotted `key=value` overrides on the command "
        "line, which win: `train.max_steps=50`, `train.spike.window=64`, `data.sources.0.text_unit=line` (a number "
        "picks a list's item). `gptray config` prints the resolved config a command would use. Every key below "
        "has its type, its default (`null`: filled when the config resolves, as its description says) and the "
        "comment that documents it where it is declared.",
        "",
    ]
    for section in config_sections():
        out += _section_markdown(section)
    out += ["## Keys that moved", "",
            "These lived in `train` before it was split into sections; a config that uses one is refused, naming "
            "its new place (configs saved with checkpoints are read with them moved).", "",
            "| old key | new key |", "|---|---|"]
    out += [f"| `{old}` | `{new}` |" for old, new in moved_keys().items()]
    return "\n".join(out) + "\n"


def _section_markdown(section: ConfigSection) -> list[str]:
    title = f"`{section.key}`" if section.key else "Top level"
    if section.key == "sweep":
        title += " (sweep files only)"
    out = [f"## {title}", ""]
    if section.doc:
        out += [_escape(" ".join(section.doc.split())), ""]
    out += ["| key | type | default | description |", "|---|---|---|---|"]
    for key in section.keys:
        doc = _escape(key.doc) if key.doc else (f"See `{key.see}`." if key.see else "")
        out.append(f"| `{key.key}` | {type_text(key.type)} | {_cell_code(default_text(key.default))} | {doc} |")
    return [*out, ""]


def type_text(tp: Any) -> str:
    """A type hint as a user writes values: `int` or `null`; `cosine` or `wsd`; list of `str`."""
    origin = get_origin(tp)
    if tp is type(None):
        return "`null`"
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(arg) for arg in get_args(tp))
    if origin is Literal:
        return " or ".join(_cell_code(yaml_text(value)) for value in get_args(tp))
    if origin in (list, tuple):
        (item, *_) = get_args(tp) or (Any,)
        if dataclasses.is_dataclass(item):
            return "list of sections (the `[i]` keys below)"
        text = type_text(item)
        return f"list of ({text})" if " or " in text else f"list of {text}"
    if origin is dict:
        return f"mapping of {type_text(get_args(tp)[1]) if get_args(tp) else 'values'}"
    if tp in (list, dict):
        return "list" if tp is list else "mapping"
    if tp is Any:
        return "any"
    return f"`{getattr(tp, '__name__', str(tp))}`"


def default_text(value: Any) -> str:
    """A default as YAML writes it; a list of sections shows the fields its items set."""
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        value = [_set_fields(item) for item in value]
    return yaml_text(value)


def yaml_text(value: Any) -> str:
    """A value as it is written in YAML, on one line ("\\n" as a double-quoted escape)."""
    if isinstance(value, str) and not value.isprintable():
        return json.dumps(value, ensure_ascii=False)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _set_fields(item: Any) -> dict:
    """The fields of a dataclass value that differ from their defaults."""
    blank = type(item)()
    return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)
            if getattr(item, f.name) != getattr(blank, f.name)}


def cli_page() -> str:
    """docs/reference/cli.md."""
    root = cli_commands()
    out = [
        "# Command line reference",
        "",
        _generated_note("the argparse parser in `gptray/cli/`"),
        "",
        _escape(" ".join(root.description.split())),
        "",
        "```text",
        f"usage: {root.usage}",
        "```",
        "",
    ]
    out += _options_markdown(root)
    out += ["Every command's `--help` ends with the exit codes:", "", "```text", root.epilog.rstrip(), "```", "",
            "| command | what it does |", "|---|---|"]
    out += [f"| [`{command.name}`](#{_anchor(command.name)}) | {_escape(command.help)} |"
            for command in root.walk() if command.path]
    out.append("")
    for command in root.walk():
        if command.path:
            out += _command_markdown(command)
    return "\n".join(out).rstrip("\n") + "\n"


def _command_markdown(command: CliCommand) -> list[str]:
    level = "#" * min(len(command.path) + 1, 4)
    out = [f"{level} {command.name}", ""]
    if command.help:
        out += [f"*{_escape(command.help)}*", ""]
    out += ["```text", f"usage: {command.usage}", "```", ""]
    out += _description_markdown(command.description)
    out += _options_markdown(command)
    if command.epilog and command.epilog != EXIT_CODES_HELP:
        out += ["```text", command.epilog.rstrip(), "```", ""]
    return out


def _options_markdown(command: CliCommand) -> list[str]:
    rows = [f"| {_cell_code(option.invocation)} | {_escape(' '.join(option.help.split()))} |"
            for option in command.options]
    if command.subcommands and command.path:  # the root's commands have a table of their own
        rows += [f"| [`{sub.path[-1]}`](#{_anchor(sub.name)}) | {_escape(sub.help)} |" for sub in command.subcommands]
    return ["| argument | meaning |", "|---|---|", *rows, ""] if rows else []


def _description_markdown(description: str) -> list[str]:
    """Paragraphs as text; a paragraph with indented lines (examples, lists) as it is, in a text block."""
    out = []
    for paragraph in re.split(r"\n\s*\n", textwrap.dedent(description).strip()):
        lines = paragraph.splitlines()
        if any(line.startswith(" ") for line in lines[1:]) or all(line.startswith(" ") for line in lines):
            out += ["```text", textwrap.dedent(paragraph), "```", ""]
        elif paragraph.strip():
            out += [_escape(" ".join(paragraph.split())), ""]
    return out


def _anchor(title: str) -> str:
    """The id MkDocs' toc gives a heading (lower case, spaces as '-')."""
    return re.sub(r"[^\w\- ]", "", title.lower()).strip().replace(" ", "-")


def _generated_note(source: str) -> str:
    return (f"<!-- Generated from {source} by scripts/reference_pages.py: do not edit; run `{REGENERATE}`. -->\n"
            f"*Generated from {source}: `{REGENERATE}` rewrites this page, and a test fails when it is stale.*")


def _cell_code(text: str) -> str:
    """Text as a code span that survives a table cell (pipes escaped) and holds backticks."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _escape(text: str) -> str:
    """Prose for Markdown: what would read as emphasis, HTML or a table's cell border is escaped; code spans kept."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = (parts[i].replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")
                    .replace("[", "\\[").replace("<", "&lt;").replace("|", "\\|"))
    return "".join(part if i % 2 == 0 else part.replace("|", "\\|") for i, part in enumerate(parts))


PAGES = {"docs/reference/config.md": config_page, "docs/reference/cli.md": cli_page}
