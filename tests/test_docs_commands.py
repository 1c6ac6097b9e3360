"""The documentation stays true to the CLI: every ``ddbench`` command shown in README.md and
docs/*.md is accepted, every relative link in the project's Markdown leads somewhere, and the
README stays a front door.

A documented command is a line of a fenced code block that starts with ``ddbench``,
``$ ddbench`` or ``.venv/bin/ddbench`` (after optional ``VAR=value`` assignments, or after
an ``&&``), with its backslash-continued lines joined. ``run`` and ``experts`` run in-process
with ``--dry-run`` added: they pass when they exit 0 or stop at the one-line error about a
dataset or released file that is not on this machine (the tests run offline, without MNIST
or CIFAR). Every other subcommand is parsed in full (its arguments, options and their
values, without running it) and then shown with ``--help``. A usage error (an unknown
command or option, an invalid value, a missing or extra argument) means the documentation
drifted from the CLI: fix the document.

Placeholders in documented commands get stand-ins from ``PLACEHOLDERS``; a token that looks
like one (an upper-case word) but is not in the table fails, so a new placeholder is added
there rather than skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
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

#: subcommands run as a dry run; every other one is parsed and shows its --help
DRY_RUN = {"run", "experts"}

#: placeholder -> stand-in ({data}: an empty data root; {tmp}: the test's folder, also its
#: working directory). None drops the token: in "ddbench run ... --jobs 4" the dots stand
#: for the reader's own options.
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
#: baselines), linked into the temporary working directory
REPO_PATHS = ["sweeps", "results/baselines"]

#: the errors a dry run may stop at: data or a released set that is not on this machine, or an
#: optional extra (ray, submitit, mlflow, wandb) that is not installed where the tests run
MISSING_DATA = re.compile(
    r"^dataset '[^']+': (no files in .*put them there or pass --download|folder .* does not exist)"
    r"|^method 'file:[^']+': \S+ does not exist$"
    r"|^(executor|tracker) '[^']+' needs the .* package.*pip install 'ddbench\[\w+\]'$"
)

FENCE = re.compile(r"^\s*(```|~~~)")
PROMPT = re.compile(
    r"^(?:\$\s+)?(?P<env>(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*)(?:\.venv/bin/)?ddbench(?:\s+(?P<args>.*))?$"
)
PLACEHOLDER_LIKE = re.compile(r"(?<![A-Za-z0-9_$])[A-Z][A-Z0-9_]{2,}(?![A-Za-z0-9_])")


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line where it is first shown
    text: str  # as documented, continuations joined, comment dropped
    env: tuple[tuple[str, str], ...]
    args: tuple[str, ...]  # shlex-split; placeholders not yet replaced

    @property
    def id(self) -> str:
        text = self.text if len(self.text) <= 70 else self.text[:67] + "..."
        return f"{self.where} {text}"


def fenced_lines(path: Path):
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
        for number, line in fenced_lines(path):
            for part in line.split("&&"):
                m = PROMPT.match(part.strip())
                if not m:
                    continue
                env = tuple(tuple(a.split("=", 1)) for a in m["env"].split())
                args = tuple(shlex.split(m["args"] or "", comments=True))
                text = " ".join([*(f"{k}={v}" for k, v in env), "ddbench", shlex.join(args)]).rstrip()
                # the same words (dropped placeholders aside) run once, named after the first
                same = (env, tuple(a for a in args if PLACEHOLDERS.get(a, a) is not None))
                found.setdefault(same, DocCommand(f"{path.relative_to(REPO)}:{number}", text, env, args))
    return list(found.values())


COMMANDS = documented_commands()


def substitute(args: tuple[str, ...], data: Path, tmp: Path) -> list[str]:
    out = []
    for token in args:
        if token in PLACEHOLDERS and PLACEHOLDERS[token] is None:
            continue
        for word in set(PLACEHOLDER_LIKE.findall(token)):
            assert word in PLACEHOLDERS, (
                f"{token!r} looks like a placeholder ({word}): add it to PLACEHOLDERS in "
                "tests/test_docs_commands.py with what the test should use instead")
            token = re.sub(rf"(?<![A-Za-z0-9_$]){word}(?![A-Za-z0-9_])", PLACEHOLDERS[word], token)
        out.append(token.format(data=data, tmp=tmp))
    return out


@pytest.fixture
def workdir(tmp_path):
    """tmp_path is already the working directory (conftest): link in the repository folders
    the commands name, and give back any environment variable a command sets."""
    for rel in REPO_PATHS:
        link = tmp_path / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO / rel, target_is_directory=True)
    (tmp_path / "data").mkdir()
    saved = dict(os.environ)
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)


def _given(args: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def _dry_run(args: list[str], where: str, tmp: Path) -> None:
    if args[0] == "run" and not _given(args, "--store"):
        args += ["--store", str(tmp / "store" / "ddbench.sqlite")]
    if not _given(args, "--data-root"):
        args += ["--data-root", str(tmp / "data")]
    args += ["--dry-run"]
    result = CliRunner().invoke(cli, args, prog_name="ddbench", obj={"argv": args}, standalone_mode=False)
    exc = result.exception
    if isinstance(exc, click.UsageError):
        pytest.fail(f"{where}: the CLI refuses it: {exc.format_message()}")
    if isinstance(exc, DDBenchError):
        message = str(exc)
        assert MISSING_DATA.search(message) and "\n" not in message, f"{where}: {message}"
        return
    assert exc is None, f"{where}: {exc!r}\n{result.output}"
    assert result.exit_code == 0, f"{where}: exit {result.exit_code}\n{result.output}"


def _parse_and_help(args: list[str], where: str) -> None:
    root = click.Context(cli, info_name="ddbench")
    command = cli.get_command(root, args[0])
    assert command is not None, f"{where}: no such command {args[0]!r}"
    try:  # everything click checks (types, choices, arguments), without running the command
        with root:
            command.make_context(args[0], list(args[1:]), parent=root)
    except click.UsageError as exc:
        pytest.fail(f"{where}: the CLI refuses it: {exc.format_message()}")
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name="ddbench", standalone_mode=False)
    if isinstance(result.exception, click.UsageError):
        pytest.fail(f"{where}: the CLI refuses it: {result.exception.format_message()}")
    assert result.exception is None and result.exit_code == 0, f"{where}: {result.output}"
    assert f"Usage: ddbench {args[0]}" in result.output, result.output


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_documented_command_is_accepted(cmd: DocCommand, workdir, monkeypatch):
    for name, value in cmd.env:
        monkeypatch.setenv(name, value)
    args = substitute(cmd.args, workdir / "data", workdir)
    where = f"{cmd.where}: `{cmd.text}`"
    assert args, f"{where}: names no subcommand"
    if args[0] in DRY_RUN:
        _dry_run(args, where, workdir)
    else:
        _parse_and_help(args, where)


def test_the_docs_show_commands_of_every_kind():
    """The extraction itself works: a broken pattern would leave nothing to check."""
    shown = {c.args[0] for c in COMMANDS if c.args}
    assert {"run", "report", "compare", "check", "list", "export", "import", "bench"} <= shown, shown


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move reference material into docs/"


# --- links -----------------------------------------------------------------------------------

#: every Markdown file of the project (the docs and the READMEs of its folders)
MARKDOWN = sorted(
    p for p in {*DOCS, *REPO.glob("*/README.md"), *REPO.glob("*/*/README.md")}
    if not any(part.startswith(".") for part in p.relative_to(REPO).parts)
)

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than
    hyphens and underscores removed, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose(path: Path):
    """(line number, line) outside fenced code blocks."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield number, line


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose(path):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if m:
            base = slug(m[2])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path):
    for number, line in prose(path):
        for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):  # code spans hold no links
            target = m[1]
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto: ...
                yield number, target


LINKS = [(path, number, target) for path in MARKDOWN for number, target in relative_links(path)]


@pytest.mark.parametrize("path,number,target", LINKS,
                         ids=[f"{p.relative_to(REPO)}:{n} {t}" for p, n, t in LINKS])
def test_relative_link_leads_somewhere(path: Path, number: int, target: str):
    where = f"{path.relative_to(REPO)}:{number}: ({target})"
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    assert dest.exists(), f"{where}: {os.path.relpath(dest, REPO)} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{where}: no heading or anchor #{anchor} in {dest.relative_to(REPO)}"


def test_the_readme_links_every_docs_page():
    linked = {(REPO / t.partition("#")[0]).resolve() for p, _, t in LINKS if p.name == "README.md" and p.parent == REPO}
    missing = [p.name for p in DOCS[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


# --- module paths ----------------------------------------------------------------------------

CODE_SPAN = re.compile(r"`([^`]+)`")
FILE_PATH = re.compile(r"ddbench/[\w/]*(?:\.py|/)?")
DOTTED = re.compile(r"ddbench(?:\.[A-Za-z_]\w*)+")
PACKAGE = REPO / "ddbench"


def _spans(path: Path):
    for number, line in prose(path):
        for span in CODE_SPAN.findall(line):
            yield number, span.split("(")[0].strip()


def _resolves(dotted: str) -> bool:
    """A dotted name is a module of the tree (a file, not an old name kept for plugins)
    followed by attributes that are not modules."""
    import ddbench

    moved = ddbench._moved(dotted)  # a 0.1 module name, still importable for plugins
    if moved and importlib.util.find_spec(moved) is not None:
        return True
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:i])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            break
    else:
        return False
    obj = importlib.import_module(".".join(parts[:i]))
    for attr in parts[i:]:
        obj = getattr(obj, attr, None)
        if obj is None or inspect.ismodule(obj):
            return False
    return True


def test_module_paths_in_the_docs_exist():
    """`ddbench/x/y.py` and `ddbench.x.y.Name` in the docs name what the tree has."""
    wrong = []
    for path in DOCS:
        for number, span in _spans(path):
            where = f"{path.relative_to(REPO)}:{number}"
            if FILE_PATH.fullmatch(span) and not (REPO / span).exists():
                wrong.append(f"{where}: {span} does not exist")
            elif DOTTED.fullmatch(span) and not _resolves(span):
                wrong.append(f"{where}: {span} is not a module or name of the tree")
    assert not wrong, "\n".join(wrong)


def _section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_readme_layout_lists_every_package_and_module():
    layout = _section(REPO / "README.md", "Layout of the code")
    listed_packages = set(re.findall(r"^- `(\w+)/`", layout, re.MULTILINE))
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert listed_packages == packages, (
        f"README 'Layout of the code': packages not listed {sorted(packages - listed_packages)}, "
        f"listed but absent {sorted(listed_packages - packages)}")
    top = layout[layout.index("Top-level modules:"):]
    listed_modules = {m for m in re.findall(r"`(\w+)`", top) if (PACKAGE / f"{m}.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "version"}
    assert listed_modules == modules, (
        f"README 'Top-level modules': not listed {sorted(modules - listed_modules)}")


def test_the_development_layout_names_files_that_exist():
    layout = _section(REPO / "docs" / "development.md", "Project layout")
    wrong = []
    bullets = [b for block in layout.split("\n\n") for b in re.split(r"\n(?=- )", block) if b.startswith("- ")]
    for bullet in bullets:
        m = re.match(r"- `(\w+)/`", bullet)
        where = PACKAGE / m[1] if m else PACKAGE
        for name in re.findall(r"`(\w+\.py)`", bullet):
            found = list(where.rglob(name)) if m else [PACKAGE / name]
            if not any(f.is_file() for f in found):
                wrong.append(f"{name} is not in {where.relative_to(REPO)}/")
    assert not wrong, "docs/development.md 'Project layout':\n" + "\n".join(wrong)
