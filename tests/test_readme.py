"""README runs as written: every `specdec` command in its code blocks parses (argument level,
nothing loads), every script and path it names exists, and every relative link resolves, in
README and docs/."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from specdec import cli

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
FOLDERS = ("src/", "benchmarks/", "docs/", "examples/", "tests/", ".ci/")


class Parsed(BaseException):
    """Raised once a command's arguments parsed: nothing after parsing runs."""


def code_lines(text: str) -> list[str]:
    """Lines of the bash code blocks, continuation lines joined, comments dropped."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.split(" # ")[0].strip() for line in joined.splitlines() if line.strip()]
    return lines


def specdec_commands(text: str) -> list[list[str]]:
    """The argv of every `specdec ...` in the code blocks (pipes, `&` and env assignments cut)."""
    commands = []
    for line in code_lines(text):
        if not re.search(r"(?:^|[|&;]\s*|=\S+\s+)specdec\s", line):
            continue  # not a specdec command (a curl body may hold half a quotation)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        while "specdec" in tokens:
            start = tokens.index("specdec") + 1
            end = next((i for i in range(start, len(tokens)) if tokens[i] in ("|", "&", ";",
                                                                             "&&")), len(tokens))
            commands.append(tokens[start:end])
            tokens = tokens[end:]
    return commands


README_COMMANDS = specdec_commands(README.read_text())


def test_readme_has_the_setup_and_test_commands_ci_runs():
    lines = code_lines(README.read_text())
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('python3 -m pip install torch==2.13.0 -e ".[dev]"', "python3 -m pytest -q"):
        assert command in lines and command in ci
    assert len(README.read_text().splitlines()) <= 220  # a user's page, not a notebook


@pytest.mark.parametrize("argv", README_COMMANDS, ids=" ".join)
def test_readme_command_parses(argv, monkeypatch):
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    assert argv[0] in cli.COMMANDS, argv
    with pytest.raises(Parsed):
        cli.main(argv)


def test_readme_lists_every_command_kind():
    assert {"generate", "chat", "serve", "bench", "models", "doctor"} <= \
        {argv[0] for argv in README_COMMANDS}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_paths_and_links_exist(page):
    text = page.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):  # markdown links
        if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
            missing.append(target)
    for name in re.findall(r"`([^`\s]+)`", text):  # `path/in/the/repo` named in prose
        name = name.rstrip(".,:;")
        named = name.startswith(FOLDERS) and not any(c in name for c in "*<{")
        if named and not (ROOT / name).exists():
            missing.append(name)
    for line in code_lines(text):  # scripts a code block runs
        for script in re.findall(r"(?:python3?|bash) ((?:\S+/)?\S+\.(?:py|sh))", line):
            if not (ROOT / script).exists():
                missing.append(script)
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


SOURCE = ROOT / "src" / "specdec"


def code_map() -> set[tuple[str, str]]:
    """(package, module) for every module README's code map names ('' for src/specdec's own).
    `src/specdec/ NAMES` and `  package/ NAMES` start a package, deeper lines go on, and a
    label up to a colon (`running models:`) is not a name."""
    match = re.search(r"## Code map.*?```\n(.*?)```", README.read_text(), flags=re.S)
    assert match, "README has no code map"
    named: set[tuple[str, str]] = set()
    package = None
    for line in match.group(1).splitlines():
        head = re.match(r"src/specdec/|  (\w+)/|\s{3,}", line)
        if head is None:
            package = None  # the folders beside src/
            continue
        if not head.group(0).isspace():
            package = head.group(1) or ""
        if package is not None:
            named |= {(package, name) for name in line[head.end():].rsplit(":", 1)[-1].split()}
    return named


def test_readme_code_map_names_every_module_and_only_modules():
    """So the map stays true: a module added, moved or removed changes the README too."""
    modules = {("/".join(path.relative_to(SOURCE).parts[:-1]), path.stem)
               for path in SOURCE.rglob("*.py") if path.name != "__init__.py"}
    named = code_map()
    assert not modules - named, f"README's code map leaves out {sorted(modules - named)}"
    assert not named - modules, f"README's code map names no module: {sorted(named - modules)}"


def test_architecture_page_names_modules_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:\w+/)?\w+\.py)`", text))
    assert len(named) > 20  # the walk-through names the files that do each line
    missing = sorted(name for name in named if not (SOURCE / name).exists())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
