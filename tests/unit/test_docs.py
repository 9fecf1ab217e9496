"""Docs that cannot go stale: the reference pages equal what the code generates, and every `gptray …` command,
option and config key the docs and configs show exists in today's CLI and config schema."""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
import yaml

from gptray.cli.common import EXIT_CODES_HELP
from gptray.cli.reference import PAGES, REGENERATE, CliCommand, cli_commands, config_keys, config_sections, moved_keys
from gptray.config.loader import coerce
from gptray.core.errors import ConfigError, GptrayError

REPO = Path(__file__).resolve().parents[2]
MARKDOWN = sorted({REPO / "README.md", REPO / "ARCHITECTURE.md", REPO / "BENCHMARKS.md", REPO / "cluster" / "README.md",
                   *(REPO / "docs").rglob("*.md")})
YAML_FILES = sorted((REPO / "configs").rglob("*.yaml"))
GENERATED = {REPO / name for name in PAGES}

# Keys the docs show on purpose although no config has them: the error they give is the point.
NOT_KEYS_ON_PURPOSE = {"train.lrr"}  # README: what a misspelt key prints
# Dotted names in code spans that begin like a config section but are APIs or modules, not keys.
RAY_APIS = {"init", "get", "put", "wait", "remote", "train", "data", "tune", "timeline", "shutdown", "util",
            "cluster_utils"}
FILE_SUFFIXES = {"pt", "json", "jsonl", "yaml", "yml", "py", "bin", "safetensors", "txt", "md", "parquet", "db", "csv",
                 "png", "gz", "zst"}
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console", "zsh"}


@dataclass
class Code:
    """Code from a doc: a fenced block's text, an inline span, or a YAML file's comment, and where it starts."""

    path: Path
    line: int
    text: str
    lang: str  # a fence's language; "inline" for a span; "comment" for a YAML comment

    def where(self, offset: int = 0) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line + offset}"


def markdown_code(path: Path) -> list[Code]:
    """Fenced blocks (with their language) and the inline code spans outside them."""
    found, fence, block, start, lang = [], None, [], 0, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if fence is None and (match := re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)):
            fence, block, start, lang = match.group(1), [], number + 1, match.group(2).lower()
        elif fence is not None and stripped.startswith(fence):
            found.append(Code(path, start, "\n".join(block), lang))
            fence = None
        elif fence is not None:
            block.append(line)
        else:
            found += [Code(path, number, span.group(2), "inline") for span in re.finditer(r"(`+)(.+?)\1", line)]
    return found


def yaml_comment_code(path: Path) -> list[Code]:
    """A YAML file's comments that are commands (`#   gptray sweep …`) or hold code spans."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "#" not in line:
            continue
        comment = line.split("#", 1)[1].strip()
        if re.match(r"(\$ )?(gptray|python -m gptray|ray job submit)\s+[\w-]+(\s|$)", comment):
            found.append(Code(path, number, comment, "comment"))
        found += [Code(path, number, span.group(2), "inline") for span in re.finditer(r"(`+)(.+?)\1", comment)]
    return found


def shell_commands(code: Code) -> list[tuple[int, list[str]]]:
    """The simple commands in code, as (line offset, words): quotes and backslash-newlines joined, comments
    dropped, split at newlines, `;`, `|` and `&`. Quotes span lines only in shell blocks (elsewhere an
    apostrophe in output is prose)."""
    commands, words, word, quote, line, first_line = [], [], "", None, 0, 0
    multiline = code.lang in SHELL_BLOCKS
    text, i = code.text, 0

    def end_word():
        nonlocal word
        if word:
            words.append(word)
        word = ""

    def end_command():
        nonlocal words, first_line
        end_word()
        if words:
            commands.append((first_line, words))
        words, first_line = [], line

    while i < len(text):
        char = text[i]
        if quote:
            if char == quote:
                quote = None
            elif char == "\n" and not multiline:
                quote = None
                line += 1
                end_command()
            else:
                line += char == "\n"
                word += char
        elif char == "\\" and text[i + 1:i + 2] == "\n":
            line += 1
            i += 1
        elif char in "'\"":
            quote = char
        elif char == "#" and not word:
            while i + 1 < len(text) and text[i + 1] != "\n":
                i += 1
        elif char == "\n" or char in ";|&":
            end_command()
            if char == "\n":
                line += 1
                first_line = line
        elif char.isspace():
            end_word()
        else:
            if not word and not words:
                first_line = line
            word += char
        i += 1
    end_command()
    return commands


def is_placeholder(word: str) -> bool:
    """DIR, NAME, <run>, …, [key=value ...]: words that stand for what a user types."""
    word = word.strip("[]")
    return (word in ("", "...", "…", "key=value") or "…" in word or word.startswith(("<", "$", "{"))
            or re.fullmatch(r"[A-Z][A-Z0-9_]*", word) is not None)


class Checker:
    """Checks commands and keys against the CLI and the config schema, collecting what does not exist."""

    def __init__(self):
        self.root: CliCommand = cli_commands()
        self.keys = config_keys()
        self.sections = {section.key for section in config_sections()} | {"sweep"}
        self.top = {key.split(".")[0].split("[")[0] for key in self.keys} | self.sections
        self.moved = moved_keys()
        self.errors: list[str] = []
        self.commands_checked = 0

    # ---- config keys ----

    def key_error(self, key: str, value: str | None = None) -> str | None:
        """Why `key` (dotted; list items as .N, [N] or [i]) is not a config key, or None if it is."""
        normal = re.sub(r"\.(\d+)(?=\.|$)", "[i]", re.sub(r"\[[^\]]*\]", "[i]", key))
        if key in NOT_KEYS_ON_PURPOSE:
            return None
        if normal in self.moved:
            return f"{key} has moved to {self.moved[normal]}"
        if "*" in normal:
            return None if any(fnmatch.fnmatch(k, normal) for k in self.keys) else f"{key} matches no config key"
        if normal in self.sections or normal.removesuffix("[i]") in self.sections:
            return None
        if normal not in self.keys:
            if normal.startswith("sweep.axes."):
                return None
            close = difflib.get_close_matches(normal, list(self.keys) + list(self.moved), n=1)
            return f"unknown config key {key}" + (f" (did you mean {close[0]}?)" if close else "")
        if value is not None and self._choice(self.keys[normal].type) and self._written_out(value):
            try:
                coerce(self.keys[normal].type, yaml.safe_load(value), key)
            except ConfigError as exc:
                return f"{key}={value}: {exc.message}"
        return None

    @staticmethod
    def _choice(tp) -> bool:
        """Whether a key takes one of a few values (a Literal or a bool): where a doc's value goes stale."""
        return tp is bool or any(get_origin(arg) is Literal or arg is bool for arg in (tp, *get_args(tp)))

    @staticmethod
    def _written_out(value: str) -> bool:
        """A value as a user types it, not a placeholder or a list of alternatives (cosine|wsd)."""
        return re.fullmatch(r"[\w.+-]+", value) is not None and not is_placeholder(value)

    def looks_like_key(self, word: str) -> bool:
        """Whether a dotted word names a config key rather than a file (model.pt), a module or a Ray API."""
        parts = re.split(r"[.\[]", word)
        if len(parts) < 2 or parts[0] not in self.top or "." not in word:
            return False
        if parts[-1] in FILE_SUFFIXES or (parts[0] == "ray" and parts[1] in RAY_APIS):
            return False
        return not ((REPO / "gptray" / parts[0] / f"{parts[1]}.py").is_file()
                    or (REPO / "gptray" / parts[0] / parts[1]).is_dir())

    def check_key(self, where: str, key: str, value: str | None = None) -> None:
        if (error := self.key_error(key, value)) is not None:
            self.errors.append(f"{where}: {error}")

    # ---- commands ----

    def check_command(self, where: str, words: list[str]) -> None:
        """`words` start after `gptray`: the subcommands, then options, overrides and positionals."""
        self.commands_checked += 1
        words = [word.strip("[]") for word in words]  # [--out DIR]: an optional part, shown as usage shows it
        command, i = self.root, 0
        while command.subcommands and i < len(words):
            word = words[i]
            if word.startswith("-"):
                i += self._check_option(where, command, words, i)
                continue
            if is_placeholder(word):
                return
            sub = next((c for c in command.subcommands if c.path[-1] == word), None)
            if sub is None:
                names = ", ".join(c.path[-1] for c in command.subcommands)
                self.errors.append(f"{where}: `{command.name} {word}`: no such command (there are: {names})")
                return
            command, i = sub, i + 1
        while i < len(words):
            word = words[i]
            if is_placeholder(word) or not word:
                i += 1
            elif word.startswith("-") and not re.fullmatch(r"-[\d.]+", word):
                i += self._check_option(where, command, words, i)
            elif re.match(r"[A-Za-z_][\w.\[\]]*=", word):
                key, value = word.split("=", 1)
                if not command.takes_overrides:
                    self.errors.append(f"{where}: `{command.name}` takes no key=value overrides (got {word})")
                else:
                    self.check_key(where, key, value)
                i += 1
            else:
                i += 1

    def _check_option(self, where: str, command: CliCommand, words: list[str], i: int) -> int:
        """Check the option at words[i]; return how many words it takes (itself and its value)."""
        name = words[i].split("=", 1)[0]
        if name in ("-h", "--help"):
            return 1
        option = command.option(name) or self.root.option(name)
        if option is None:
            flags = ", ".join(n for o in command.options for n in o.names)
            self.errors.append(f"{where}: `{command.name}` has no option {name} (it has: {flags})")
            return 1
        return 2 if option.takes_value and "=" not in words[i] else 1

    # ---- whole files ----

    def check_code(self, code: Code) -> None:
        for offset, words in shell_commands(code):
            where = code.where(offset)
            for i, word in enumerate(words):
                if word == "gptray" and i + 1 < len(words) and not words[i + 1].endswith(":"):
                    self.check_command(where, words[i + 1:])
                    break
            else:  # key=value words outside a gptray command (pipelines' entrypoints take them too)
                for word in words:
                    if "=" in word and self.looks_like_key(word.split("=", 1)[0]):
                        self.check_key(where, *word.split("=", 1))
        if code.lang == "inline" and code.path not in GENERATED:
            match = re.fullmatch(r"([a-z_]+(?:\.[\w*]+|\[[^\]]*\])+)(?:(=|:\s)(.*))?", code.text.strip())
            if match and self.looks_like_key(match.group(1)):
                self.check_key(code.where(), match.group(1), match.group(3) if match.group(2) == "=" else None)
        if code.lang in ("yaml", "yml"):
            self.check_yaml(code.where(), code.text, code.line)

    def check_yaml(self, where: str, text: str, first_line: int = 1) -> None:
        """The keys of a YAML run config or sweep file (other YAML, such as Ray cluster files, is left alone)."""
        try:
            node = yaml.compose(text)
        except yaml.YAMLError as exc:
            self.errors.append(f"{where}: not valid YAML: {exc}")
            return
        if not isinstance(node, yaml.MappingNode):
            return
        top = {key.value for key, _ in node.value}
        if not top & (self.sections | {"base"}):
            return
        file = where.rsplit(":", 1)[0]
        self._check_mapping(file, node, "", first_line)

    def _check_mapping(self, file: str, node: yaml.MappingNode, prefix: str, first_line: int) -> None:
        for key_node, value in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            where = f"{file}:{first_line + key_node.start_mark.line}"
            if key == "base":
                continue
            if key == "sweep.axes" and isinstance(value, yaml.MappingNode):
                self._check_axes(file, value, first_line)
                continue
            if (error := self.key_error(key)) is not None:
                self.errors.append(f"{where}: {error}")
                continue
            normal = re.sub(r"\[[^\]]*\]", "[i]", key)
            if isinstance(value, yaml.MappingNode) and normal in self.sections:
                self._check_mapping(file, value, key, first_line)
            elif isinstance(value, yaml.SequenceNode) and f"{normal}[i]" in self.sections:
                for item in value.value:
                    if isinstance(item, yaml.MappingNode):
                        self._check_mapping(file, item, f"{key}[i]", first_line)

    def _check_axes(self, file: str, axes: yaml.MappingNode, first_line: int) -> None:
        """A sweep axis is a config key with values, or a name with bundles of {key: value}."""
        for name, values in axes.value:
            where = f"{file}:{first_line + name.start_mark.line}"
            if "." in name.value:
                self.check_key(where, name.value)
            elif isinstance(values, yaml.MappingNode):
                for _, bundle in values.value:
                    if isinstance(bundle, yaml.MappingNode):
                        for key, _ in bundle.value:
                            self.check_key(f"{file}:{first_line + key.start_mark.line}", key.value)


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker()


@pytest.mark.parametrize("name", sorted(PAGES))
def test_reference_pages_are_what_the_code_generates(name):
    committed = (REPO / name).read_text() if (REPO / name).is_file() else ""
    generated = PAGES[name]()
    diff = "".join(list(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                             f"{name} (committed)", f"{name} (from the code)"))[:40])
    assert committed == generated, f"{name} is stale: run `{REGENERATE}` and commit it\n{diff}"


def test_every_config_key_is_documented_where_it_is_declared():
    undocumented = [key.key for key in config_keys().values() if not (key.doc or key.see)]
    assert not undocumented, f"add a comment above or beside each field of {undocumented}, then `{REGENERATE}`"


def test_every_command_and_option_has_help(checker):
    missing = [f"{command.name} {option.invocation}".strip() for command in checker.root.walk()
               for option in command.options if not option.help]
    missing += [command.name for command in checker.root.walk() if command.path and not command.help]
    assert not missing, f"give these help= text (it is their line in --help and in docs/reference/cli.md): {missing}"


def test_every_exit_code_is_in_the_help():
    codes = {cls.exit_code for cls in _subclasses(GptrayError)}
    listed = {int(code) for code in re.findall(r"^\s+(\d+)\s", EXIT_CODES_HELP, re.MULTILINE)}
    assert codes <= listed, f"gptray/cli/common.py EXIT_CODES_HELP lacks exit codes {sorted(codes - listed)}"


def _subclasses(cls: type) -> set[type]:
    return {cls} | {sub for direct in cls.__subclasses__() for sub in _subclasses(direct)}


def test_docs_show_only_commands_options_and_keys_that_exist(checker):
    checker.errors, checker.commands_checked = [], 0
    for path in MARKDOWN:
        for code in markdown_code(path):
            checker.check_code(code)
    for path in YAML_FILES:
        for code in yaml_comment_code(path):
            checker.check_code(code)
        checker.check_yaml(f"{path.relative_to(REPO)}:1", path.read_text())
    assert checker.commands_checked > 100  # the docs' commands were found (the parser has not gone blind)
    assert not checker.errors, "docs that no longer match the code:\n" + "\n".join(checker.errors)


@pytest.mark.parametrize("text, error", [
    ("gptray pretrain --config c.yaml train.max_steps=5 \\\n  optimizer.lr=1e-3", None),
    ("gptray pretrian train.max_steps=5", "no such command"),
    ("gptray generate --checkpoint runs/x --promt hi", "no option --promt"),
    ("gptray pretrain train.lr=1e-3", "has moved to optimizer.lr"),
    ("gptray pretrain train.spike.windw=4", "did you mean train.spike.window"),
    ("gptray pretrain train.precision=bf17", "train.precision=bf17"),
    ("gptray data inspect DIR --samples 1 train.max_steps=5", "takes no key=value overrides"),
    ("gptray data list", None),
    ("gptray model export --checkpoint <run> --out hf/x", None),
    ("gptray pretrain data.sources.0.text_unit=line data.sources[0].path=x", None),
    ("gptray pretrain data.sources.0.txt_unit=line", "unknown config key"),
    ("ray job submit -- python -m gptray sweep --config x.yaml --dry-run", None),
    ("gptray generate --prompt \"two\nlines\" generate.top_k=5", None),
])
def test_the_checker_finds_what_is_wrong(checker, text, error):
    checker.errors = []
    checker.check_code(Code(REPO / "README.md", 1, text, "bash"))
    if error is None:
        assert checker.errors == []
    else:
        assert len(checker.errors) == 1 and error in checker.errors[0], checker.errors


def test_the_checker_reads_yaml_configs_and_sweep_axes(checker):
    checker.errors = []
    checker.check_yaml("x.yaml:1", "train:\n  max_step: 5\nsweep:\n  axes:\n    model.nrm: [a]\n"
                                   "    arch:\n      small: {model.preset: nano, train.recpe: gpt2}\n")
    assert [e.split(": ", 1)[0] for e in checker.errors] == ["x.yaml:2", "x.yaml:5", "x.yaml:7"], checker.errors


# Commands that take a second and touch nothing: the docs' examples of them are run as they are written.
RUNNABLE = (["config"], ["model", "list"], ["data", "list"])


def runnable_examples() -> list[tuple[str, list[str]]]:
    """The docs' `gptray config …`, `gptray model list` and `gptray data list` commands, each once."""
    found: dict[tuple[str, ...], str] = {}
    for path in MARKDOWN:
        if path in GENERATED:
            continue
        for code in markdown_code(path):
            for offset, words in shell_commands(code):
                if "gptray" in words:
                    args = words[words.index("gptray") + 1:]
                    if any(args[:len(r)] == r for r in RUNNABLE) and not any(map(is_placeholder, args)):
                        found.setdefault(tuple(args), code.where(offset))
    return [(where, list(args)) for args, where in found.items()]


@pytest.mark.parametrize("where, args", runnable_examples(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_the_docs_quick_examples_run_as_written(where, args, tmp_path, monkeypatch, capsys):
    from gptray.cli.main import main

    monkeypatch.chdir(tmp_path)  # relative paths in the examples resolve here: nothing is written into the checkout
    expected = 2 if any(arg.split("=")[0] in NOT_KEYS_ON_PURPOSE for arg in args) else 0  # README shows its error
    code = main(args)
    out = capsys.readouterr()
    assert code == expected, f"{where}: `gptray {' '.join(args)}` exited {code}:\n{out.err[-2000:]}"
