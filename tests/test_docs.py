"""README.md and docs/*.md against the code they describe. A lecturer runs the docs' commands
and snippets as written, so a renamed option, function or test leaves them stale: each check
here reads the docs as text and asks the code itself (the parser, the modules, tests/)."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from cnnzoo.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"\bcnnzoo (data export|data info|models|predict|convert|transfer|train"
                     r"|compare|evaluate|segment|demo)\b([^`\n]*)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, `data export` and `data info` under those names."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out[f"{prefix} {name}".strip()] = sub
                    walk(sub, f"{prefix} {name}")

    walk(build_parser(), "")
    return out


def _texts() -> list[tuple[str, str]]:
    """(where, text) of every doc, a shell line continued with `\\` joined to the next, and of
    every command's --help, which points to other commands' options too."""
    texts = [(p.name, re.sub(r"\\\n\s*", " ", p.read_text())) for p in DOCS]
    for command, parser in _parsers().items():
        texts.append((f"cnnzoo {command} --help", parser.format_help()))
    return texts


def test_every_option_a_shown_command_passes_is_one_that_command_has(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no help line broken inside a command
    options = {command: {o for a in parser._actions for o in a.option_strings}
               for command, parser in _parsers().items()}
    stale, checked = [], 0
    for where, text in _texts():
        for m in COMMAND.finditer(text):
            command, rest = m.group(1), m.group(2).split("#")[0]  # a shell comment is prose
            for option in OPTION.findall(rest):
                checked += 1
                if option not in options[command]:
                    line = text[:m.start()].count("\n") + 1
                    stale.append(f"{where}:{line}: cnnzoo {command} has no {option}")
    assert checked > 150, checked  # the pattern still finds the docs' commands
    assert not stale, "\n".join(stale)


def _resolve(dotted: str) -> object:
    """The object `cnnzoo.a.b.C` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


# A backticked name that is all of its span: `cnnzoo.models.taps.StageTaps`, or one relative to
# the package, `engine.loop.tta_forward` (not `data.source`, a field of bundle.json).
NAME = re.compile(r"`((?:cnnzoo|engine|models|segmentation|transfer|weights|commands)"
                  r"(?:\.[A-Za-z_]\w*)+)`")


def test_every_module_or_function_the_docs_name_exists():
    names = {n for p in DOCS for n in NAME.findall(p.read_text())}
    assert len(names) > 15, names
    missing = []
    for name in sorted(names):
        full = name if name.startswith("cnnzoo.") else f"cnnzoo.{name}"
        try:
            _resolve(full)
        except (ImportError, AttributeError) as e:
            missing.append(f"{name}: {e}")
    assert not missing, "\n".join(missing)


def test_every_test_the_docs_cite_exists():
    source = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    cited = {n for p in DOCS for n in re.findall(r"`(test_\w+)`", p.read_text())}
    assert len(cited) > 10, cited
    assert not [n for n in sorted(cited) if f"def {n}(" not in source]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(doc):
    def slug(heading: str) -> str:  # GitHub's: lower case, punctuation dropped, spaces to -
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    def anchors(path: Path) -> set[str]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no '#' comments
        return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}

    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists() or (anchor and anchor not in anchors(target)):
            broken.append(link)
    assert not broken, broken


def test_the_command_list_says_what_evaluate_scores(capsys):
    """README's table: `cnnzoo evaluate CHECKPOINT` (or `--bundle DIR`); `cnnzoo --help` said
    'evaluate a checkpoint on a data set', so a transfer bundle seemed not to be scored there."""
    from cnnzoo.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = " ".join(capsys.readouterr().out.split())
    said = listed[listed.index("evaluate "):listed.index(" compare ")]
    assert "checkpoint" in said and "bundle" in said, said
