"""The README and docs/ stay true: every `wsloc …` command in a shell block parses with the
CLI's own parser (and a `train` command's config and overrides resolve), every Python block
compiles and imports only names that exist, and every relative link points at a file (and a
heading) that exists."""

from __future__ import annotations

import importlib
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from wsloc.cli import build_parser
from wsloc.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)\s*\n(.*?)^```\s*$", re.M | re.S)


def _blocks(page: Path, languages: set[str]):
    for match in FENCE.finditer(page.read_text()):
        if match.group(1) in languages:
            yield match.group(2)


def _shell_lines(block: str):
    """Logical lines of a shell block: backslash continuations joined, comments dropped."""
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            yield words


def wsloc_commands(words: list[str]) -> list[list[str]]:
    """The argument lists given to wsloc in one shell line: `wsloc ARGS`,
    `.venv/bin/wsloc ARGS`, `python -m wsloc.cli ARGS`, `torchrun ... -m wsloc.cli ARGS`,
    each segment of `a && b` on its own."""
    commands, segment = [], []
    for word in [*words, "&&"]:
        if word not in ("&&", "||", ";", "|"):
            segment.append(word)
            continue
        for i, w in enumerate(segment):
            if w == "wsloc" or w.endswith("/wsloc"):
                commands.append(segment[i + 1:])
                break
            if w == "wsloc.cli" and i > 0 and segment[i - 1] == "-m":
                commands.append(segment[i + 1:])
                break
        segment = []
    return commands


def _all_commands():
    for page in PAGES:
        for block in _blocks(page, SHELL):
            for words in _shell_lines(block):
                for argv in wsloc_commands(words):
                    name = f"{page.relative_to(ROOT)}: wsloc {' '.join(argv)}"
                    yield pytest.param(argv, id=name[:120])


COMMANDS = list(_all_commands())


def test_the_commands_are_found():
    readme = [c for c in COMMANDS if c.id.startswith("README.md")]
    assert len(readme) >= 15, [c.id for c in readme]
    assert wsloc_commands(shlex.split(
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/wsloc train a=1"
    )) == [["train", "a=1"]]
    assert wsloc_commands(shlex.split(
        "torchrun --nproc_per_node 4 -m wsloc.cli train --config x")) == [
        ["train", "--config", "x"]]


@pytest.mark.parametrize("argv", COMMANDS)
def test_command_parses(argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_info:
        pytest.fail(f"`wsloc {' '.join(argv)}` does not parse (exit {exit_info.code})")
    if argv and argv[0] == "train" and not args.resume:
        load_config(args.config, args.overrides)  # unknown keys and bad values raise


def test_parser_rejects_a_wrong_command():
    """The check above can fail: a misspelt option does not parse."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["heatmap", "--checkpoint", "x.pt", "f.png", "--outt", "o"])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile_and_import(page):
    for block in _blocks(page, {"python"}):
        tree = compile(block, f"{page.name} python block", "exec", flags=0x400)  # ast only
        for node in __import__("ast").walk(tree):
            if type(node).__name__ == "ImportFrom" and node.module.startswith("wsloc"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{page.name}: {node.module}.{alias.name}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = "".join(ch for ch in text if ch in " -" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_slug_rule():
    assert _slug("Results: the demo on the synthetic set") == (
        "results-the-demo-on-the-synthetic-set")
    assert _slug("Pooling ops — `wsloc.ops`") == "pooling-ops--wslocops"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = FENCE.sub("", page.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: link to {target}: no such heading"


def _subparser(parser, names: list[str]):
    for name in names:
        (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        parser = action.choices[name]
    return parser


def test_synopsis_options_exist():
    """docs/README.md's synopsis names only options its command has."""
    (block,) = _blocks(ROOT / "docs" / "README.md", {"text"})
    checked, names = 0, []
    for line in block.splitlines():
        words = line.split("#")[0].split()
        if words and words[0] == "wsloc":
            names = [w for w in words[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
            if names and names[0] != "bench":
                names = names[:1]
        sub = _subparser(build_parser(), names) if names else build_parser()
        options = {o for a in sub._actions for o in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line):
            assert flag in options, f"synopsis: wsloc {' '.join(names)} has no {flag}"
            checked += 1
    assert checked >= 30
