"""The documentation stays true to the CLI: every ``ddbench`` command shown in README.md and
docs/*.md is accepted, and every relative link in them leads somewhere.

A command is a line of a fenced code block that starts with ``ddbench``, ``$ ddbench`` or
``.venv/bin/ddbench`` (after optional ``VAR=value`` assignments or an ``&&``), with its
backslash-continued lines joined. ``run`` and ``experts`` are run in-process with
``--dry-run``: they pass when they exit 0 or stop at the one-line error about data this
machine does not have (the tests run offline, without MNIST or CIFAR). Every other
subcommand is parsed in full (arguments, options and their values, without running it) and
its ``--help`` is shown. A usage error (unknown command or option, an invalid value, a
missing or extra argument) means the documentation drifted from the CLI, and fails.

Placeholders in documented commands are replaced through ``PLACEHOLDERS`` below; a token
that looks like a placeholder (an upper-case word) but is not in the table fails the test,
so a new one is added there rather than silently skipped.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ddbench.cli import cli
from ddbench.errors import DDBenchError

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 320

#: commands run as a dry run; every other subcommand is parsed and shows its --help
DRY_RUN = {"run", "experts"}

#: placeholders of the documented commands -> what the test puts in their place
#: ({data}: a data root with no datasets in it; {tmp}: the test's folder). A value of None
#: drops the token ("ddbench run ... --jobs 4": the other options are the reader's own).
PLACEHOLDERS: dict[str, str | None] = {
    "...": None,
    "DATA": "{data}",
    "HOST": "127.0.0.1",
    "DIR": "{tmp}/dir",
    "PATH": "{data}/imagefolder",
    "RUN": "1a2b",
    "STORE": "{tmp}/store.sqlite",
    "FILE": "{tmp}/file.json",
}

#: repository folders that documented commands name by relative path (sweep files,
#: baselines); the test runs in a temporary folder, with these linked into it
REPO_PATHS = ["sweeps", "results/baselines"]

#: the one error a dry run may stop at: data that is not on this machine
MISSING_DATA = re.compile(
    r"no files in|not found|does not exist|no such file|put them there|--download|"
    r"no (train|test)/ folder|missing",
    re.IGNORECASE,
)

PROMPT = re.compile(
    r"^(?:\$\s+)?(?P<env>(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*)(?:\.venv/bin/)?ddbench(?:\s+(?P<args>.*))?$"
)
FENCE = re.compile(r"^\s*(```|~~~)")
PLACEHOLDER_LIKE = re.compile(r"(?<![A-Za-z0-9_$])([A-Z][A-Z0-9_]{2,})(?![A-Za-z0-9_])")


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line of the first place it is shown
    text: str  # the command as documented, continuations joined
    env: tuple[tuple[str, str], ...]
    args: tuple[str, ...]  # shlex-split, comments dropped, placeholders not yet replaced

    @property
    def subcommand(self) -> str:
        return self.args[0] if self.args else ""


def _logical_lines(path: Path):
    """(line number, text) of each line inside fenced code blocks, continuations joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def documented_commands() -> list[DocCommand]:
    found: dict[tuple, DocCommand] = {}
    for path in DOCS:
        for number, line in _logical_lines(path):
            for part in line.split("&&"):
                m = PROMPT.match(part.strip())
                if not m:
                    continue
                env = tuple(tuple(a.split("=", 1)) for a in m["env"].split())
                args = tuple(shlex.split(m["args"] or "", comments=True))
                text = " ".join(part.strip().split("#", 1)[0].split())
                where = f"{path.relative_to(REPO)}:{number}"
                # near-identical commands (the same words) run once
                found.setdefault(args, DocCommand(where, text, env, args))
    return list(found.values())


COMMANDS = documented_commands()


def _id(cmd: DocCommand) -> str:
    text = cmd.text if len(cmd.text) <= 70 else cmd.text[:67] + "..."
    return f"{cmd.where} {text}"


def substitute(args: tuple[str, ...], data: Path, tmp: Path) -> list[str]:
    out = []
    for token in args:
        if token in PLACEHOLDERS and PLACEHOLDERS[token] is None:
            continue
        for word in PLACEHOLDER_LIKE.findall(token):
            if word not in PLACEHOLDERS:
                raise AssertionError(
                    f"{token!r} looks like a placeholder ({word}): add it to PLACEHOLDERS "
                    "in tests/test_docs_commands.py with what the test should use instead")
            token = re.sub(rf"(?<![A-Za-z0-9_$]){word}(?![A-Za-z0-9_])", PLACEHOLDERS[word], token)
        out.append(token.format(data=data, tmp=tmp))
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The conftest already made tmp_path the working directory; link the repository
    folders the commands name and keep any environment a command changes to this test."""
    for rel in REPO_PATHS:
        link = tmp_path / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO / rel, target_is_directory=True)
    saved = dict(os.environ)
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)


def _has(args: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def _usage_error(exc: BaseException | None) -> str | None:
    if isinstance(exc, click.UsageError):
        return exc.format_message()
    return None


@pytest.mark.parametrize("cmd", COMMANDS, ids=[_id(c) for c in COMMANDS])
def test_documented_command_is_accepted(cmd: DocCommand, workdir, monkeypatch):
    data = workdir / "data"
    data.mkdir()
    for name, value in cmd.env:
        monkeypatch.setenv(name, value)
    args = substitute(cmd.args, data, workdir)
    assert args, f"{cmd.where}: `{cmd.text}` names no subcommand"
    where = f"{cmd.where}: `{cmd.text}`"
    runner = CliRunner()

    if args[0] in DRY_RUN:
        if args[0] == "run" and not _has(args, "--store"):
            args += ["--store", str(workdir / "store" / "ddbench.sqlite")]
        if not _has(args, "--data-root"):
            args += ["--data-root", str(data)]
        args += ["--dry-run"]
        result = runner.invoke(cli, args, prog_name="ddbench", obj={"argv": args}, standalone_mode=False)
        usage = _usage_error(result.exception)
        assert usage is None, f"{where}: the CLI refuses it: {usage}"
        if isinstance(result.exception, DDBenchError):
            message = str(result.exception)
            assert MISSING_DATA.search(message), f"{where}: {message}"
            return
        assert result.exception is None, f"{where}: {result.exception!r}\n{result.output}"
        assert result.exit_code == 0, f"{where}: exit {result.exit_code}\n{result.output}"
        return

    # parse in full (types, choices, arguments) without running it ...
    command = cli.get_command(click.Context(cli), args[0])
    assert command is not None, f"{where}: no such command {args[0]!r}"
    try:
        with click.Context(cli, info_name="ddbench") as parent:
            command.make_context(args[0], list(args[1:]), parent=parent)
    except click.UsageError as exc:
        pytest.fail(f"{where}: the CLI refuses it: {exc.format_message()}")
    # ... and show its help
    result = runner.invoke(cli, [*args, "--help"], prog_name="ddbench", standalone_mode=False)
    usage = _usage_error(result.exception)
    assert usage is None, f"{where}: the CLI refuses it: {usage}"
    assert result.exception is None and result.exit_code == 0, f"{where}: {result.output}"
    assert "Usage: ddbench " + args[0] in result.output


def test_the_docs_show_commands():
    """The extraction itself works: the README's tour has commands of several kinds."""
    subcommands = {c.subcommand for c in COMMANDS}
    assert {"run", "report", "check"} <= subcommands, subcommands


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material into docs/"


# --- links -------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)  # inline HTML
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if inside:
            continue
        found.update(ANCHOR.findall(line))
        m = HEADING.match(line)
        if m:
            base = slug(m[2])
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path):
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if inside:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
        for m in LINK.finditer(line):
            yield number, m[1] or m[2]


LINKS = [(path, number, target) for path in DOCS for number, target in links(path)
         if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not checked


@pytest.mark.parametrize("path,number,target", LINKS,
                         ids=[f"{p.relative_to(REPO)}:{n} {t}" for p, n, t in LINKS])
def test_relative_link_leads_somewhere(path: Path, number: int, target: str):
    where = f"{path.relative_to(REPO)}:{number}: ({target})"
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    assert dest.exists(), f"{where}: {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{where}: no heading or anchor #{anchor} in {dest.relative_to(REPO)}"


def test_links_are_found():
    assert any(t.startswith("docs/") for p, _, t in LINKS if p.name == "README.md")
