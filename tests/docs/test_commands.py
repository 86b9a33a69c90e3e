"""Every command README.md and docs/*.md show runs in a test, or is marked as needing an AWS account.

The commands are read from the markdown: each line of a ```bash block (continuations and quoted
newlines joined, `cd` applied to the lines after it) and each inline `make ...`, `python ...`,
`npx ...`, `pip ...` or `aws ...` span. Each one must be

- marked in the docs: a trailing `# needs an AWS account...`, or that comment as the first line of
  its block (every line of the block needs the account);
- run here (RUN): this file runs the doc's own text, with at most a few arguments that keep it
  short;
- covered (COVERED): a named test runs the same command or what it runs; the test must exist;
- or out of reach for a stated reason (ELSEWHERE): the whole suite, a release upload, a package
  not yet on PyPI.

An inline mention of a command a block shows in full counts as that command.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"#\s*needs an AWS account\b")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
INLINE_PROGRAMS = re.compile(r"^(make|python|\.venv/bin/python|\.venv/bin/pytest|npx|pip|aws|[A-Z_]+=\S+ npx) ")


@dataclass(frozen=True)
class Command:
    doc: str  # file name, for messages
    text: str  # as shown, without its trailing comment
    marked: bool  # needs an AWS account, says the doc
    inline: bool
    cwd: str = "."  # relative to the checkout, from a `cd` earlier in the block

    @property
    def normal(self) -> str:
        """The command with the interpreter's path dropped: what the tables below match."""
        text = re.sub(r"(?<![\w/.])(\.\./)?\.venv/bin/(python|pytest)\b", r"\2", self.text)
        return " ".join(text.split())


def _strip_comment(text: str) -> str:
    """The command without a trailing `# ...` outside quotes."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=False)
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        list(lexer)
    except ValueError:
        return text
    # shlex drops the comment; find where it began (the first # outside quotes after a space).
    quote = None
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1].isspace()):
            return text[:index].rstrip()
    return text.rstrip()


def _block_commands(doc: str, body: str) -> list[Command]:
    lines = body.splitlines()
    whole_block = bool(lines) and bool(MARKER.match(lines[0].strip()))
    commands, pending, cwd = [], "", "."
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        text = _strip_comment(pending).replace("\\\n", " ")
        marked = whole_block or bool(MARKER.search(pending.splitlines()[-1]))
        if text.startswith("cd "):
            cwd = str(Path(cwd) / text[3:].strip())
        else:
            commands.append(Command(doc, text, marked, inline=False, cwd=cwd))
        pending = ""
    assert not pending, f"{doc}: unfinished command in a bash block: {pending!r}"
    return commands


def doc_commands() -> list[Command]:
    commands = []
    for path in DOCS:
        text = path.read_text()
        for block in FENCE.finditer(text):
            if block[1] in ("bash", "sh", "shell"):
                commands += _block_commands(path.name, block[2])
        for span in INLINE.finditer(FENCE.sub("", text)):
            words = " ".join(span[1].split())
            if INLINE_PROGRAMS.match(words):
                commands.append(Command(path.name, words, MARKER.search(words) is not None, inline=True))
    return commands


# --- what each command is --------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Run here: the doc's text through bash, plus ``extra`` arguments that keep it short."""

    pattern: str
    extra: str = ""
    expect: str = ""  # a line of its output
    slow: bool = False
    quiet_node: bool = False  # checked with no JSII_* variable set, as a newcomer runs it


RUN = {
    "demo help": Run(r"python -m batch_celery_local --help", expect="usage: python -m batch_celery_local"),
    "filler help": Run(r"python fill-batch-queue.py --help", expect="usage: fill-batch-queue.py"),
    "simulator, scaler rows": Run(r"python -m bench\.scaling --policy scaler", "--scenario burst-4",
                                  expect="burst-4"),
    "simulator sweep": Run(r"python -m bench\.scaling --sweep", "--scenario ramp", expect="ramp"),
    "simulator with the idle stack": Run(r"python -m bench\.scaling --cost", "--scenario burst-4",
                                         expect="burst-4", slow=True),
    "simulator, all of it (make bench)": Run(r"python -m bench\.scaling", "--scenario trickle --policy scaler",
                                             expect="trickle"),
    # One synth serves the three forms the docs show (the flags add output, the synth is the same).
    "idle stack prices": Run(r"python -m bench\.prices( --markdown| --sources)?", "--markdown --sources",
                             expect="total a month", slow=True),
    "worker cost": Run(r"python -m bench\.worker", "--tasks 10 --prefetch 1 --no-features",
                       expect="prefetch 1", slow=True),
    "policy matrix": Run(r"python -m tests\.infra\.policy_evaluation", slow=True),
    "synth with -c, quiet on Node.js 20": Run(
        r"JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 npx cdk synth --quiet -c .*", slow=True, quiet_node=True),
}

# pattern -> (test file, test name, why that test covers it)
COVERED = {
    r"make demo( DEMO_ARGS=--plain)?": ("tests/local/test_demo.py",
        "test_two_bursts_on_two_pools_scale_up_and_in_with_every_task_on_its_own_pools_workers",
        "runs `python -m batch_celery_local --plain`, what `make demo` runs, to its end"),
    r"make demo DEMO_ARGS=\"--task-module .*": ("tests/local/test_demo.py",
        "test_the_demo_runs_your_own_task_module", "the demo with a task module of its own"),
    r"make demo DEMO_ARGS=--schedule": ("tests/local/test_demo_schedule.py",
        "test_the_demo_fires_a_schedule_and_a_worker_runs_its_task",
        "runs `python -m batch_celery_local --plain --schedule`, what the target runs, to its end"),
    r"make demo DEMO_ARGS=\"--idle-seconds 300\"": ("tests/examples/test_django_app.py",
        "test_a_failing_django_tasks_reason_is_on_the_demos_screen_and_in_status",
        "a producer pointed at a running demo's run file, endpoint and dummy credentials"),
    r"(run\(\)|export AWS_ENDPOINT_URL=|PYTHONPATH=batch_celery_container python -c ).*": (
        "tests/examples/test_django_app.py",
        "test_a_failing_django_tasks_reason_is_on_the_demos_screen_and_in_status",
        "the same producer environment (AWS_ENDPOINT_URL, testing keys, BATCH_CELERY_OUTPUTS = the run file)"),
    r"make synth": ("tests/infra/test_cli.py", "test_cdk_synth_writes_the_template_without_credentials",
        "`npx cdk synth --no-notices --quiet`, the target's command, without credentials"),
    r"make reliability": ("tests/reliability/test_reliability.py", "test_sigkilled_workers_lose_no_task",
        "the scenarios' short forms; the full run takes about ten minutes"),
    r"python -m batch_celery status --local": ("tests/local/test_status.py",
        "test_status_local_prints_the_run", "status --local against a local run"),
    r"python -m batch_celery doctor --local": ("tests/local/test_doctor.py",
        "test_local_probe_comes_back_from_a_real_worker_of_each_pool", "doctor --local against a local run"),
    r"python -m pip wheel --no-deps -w dist \. batch_celery_container": ("tests/packaging/test_wheels.py",
        "test_both_distributions_carry_the_one_version", "its `wheels` fixture builds both wheels this way"),
    r"pip install path/to/batch-celery": ("tests/packaging/test_wheels.py",
        "test_bare_cdk_app_outside_the_checkout_synthesizes_with_the_installed_construct",
        "installs the construct from the checkout into a fresh venv outside it"),
}

# pattern -> why no test runs it
ELSEWHERE = {
    r"make test": "the whole suite: CI runs it, and every test in it is one of its parts",
    r"make test-fast": "the suite without the tests marked slow: what `make test` runs, less",
    r"make bench": "python -m bench.scaling and python -m bench.worker, each run above",
    r"pytest tests/infra( --snapshot-update)?|pytest -k NAME|python -m pytest tests/packaging -n 0":
        "a part of the suite: pytest itself",
    r"pip install batch-celery(-worker)?": "installs from PyPI once the release is published",
    r"pip install \"batch-celery @ git\+URL@TAG\"": "a placeholder for your repository's URL and tag",
    r"python -m twine upload dist/\*": "a release: uploads to PyPI with the maintainer's credentials",
}

# Inline names of a tool rather than a command to copy, and the aws CLI, which always talks to an
# account; the docs show each full command a reader runs in a block, marked or covered.
REFERENCES = (
    r"npx cdk( \.\.\.)?", r"npx cdk (bootstrap|deploy|destroy)", r"AWS_PROFILE=\.\.\. npx cdk synth", r"aws .*",
)


def _match(table, command: Command):
    return [key for key in table if re.fullmatch(key if isinstance(key, str) else key, command.normal)]


def classify(command: Command, blocks: dict[str, str]) -> str:
    """'aws', 'run:<name>', 'covered:<pattern>', 'elsewhere:<pattern>' or 'reference'; '' if none."""
    if command.marked:
        return "aws"
    runs = [name for name, run in RUN.items() if re.fullmatch(run.pattern, command.normal)]
    covered, elsewhere = _match(COVERED, command), _match(ELSEWHERE, command)
    assert len(runs) + len(covered) + len(elsewhere) <= 1, (command, runs, covered, elsewhere)
    if runs:
        return f"run:{runs[0]}"
    if covered:
        return f"covered:{covered[0]}"
    if elsewhere:
        return f"elsewhere:{elsewhere[0]}"
    if command.inline and command.normal in blocks:
        return blocks[command.normal]
    if command.inline and any(re.fullmatch(p, command.normal) for p in REFERENCES):
        return "reference"
    return ""


def _classified() -> list[tuple[Command, str]]:
    commands = doc_commands()
    blocks: dict[str, str] = {}
    for command in commands:
        if not command.inline:
            blocks.setdefault(command.normal, classify(command, {}))
    return [(command, classify(command, blocks)) for command in commands]


def test_every_command_shown_runs_in_a_test_or_needs_an_aws_account() -> None:
    unclassified = [f"{c.doc}: {c.text}" for c, kind in _classified() if not kind]
    assert not unclassified, (
        "commands the docs show that no test runs and no marker explains; run them in "
        "tests/docs/test_commands.py, name the test that does, or end them with `# needs an AWS account`:\n"
        + "\n".join(unclassified))


def test_the_docs_show_commands_and_the_tables_name_only_commands_they_show() -> None:
    kinds = {kind for _, kind in _classified()}
    assert {"aws", "reference"} <= kinds
    stale = ([f"run:{name}" for name in RUN] + [f"covered:{p}" for p in COVERED] + [f"elsewhere:{p}" for p in ELSEWHERE])
    assert [entry for entry in stale if entry not in kinds] == []


def test_commands_that_need_aws_are_marked_one_way() -> None:
    # A reader scanning a block sees the same words wherever an account is needed.
    for path in DOCS:
        for block in FENCE.finditer(path.read_text()):
            for line in block[2].splitlines():
                if re.search(r"AWS account", line) and "#" in line:
                    assert MARKER.search(line), f"{path.name}: {line!r}"


@pytest.mark.parametrize("pattern", list(COVERED))
def test_the_covering_test_exists(pattern: str) -> None:
    path, name, _why = COVERED[pattern]
    assert re.search(rf"^def {re.escape(name)}\(", (REPO / path).read_text(), re.M), f"{path}::{name} is gone"


@pytest.mark.parametrize("target, runs", [
    ("demo", "python -m batch_celery_local"),
    ("synth", "npx cdk synth --no-notices --quiet"),
    ("reliability", "python -m bench.reliability"),
    ("bench", "python -m bench.worker"),
])
def test_make_targets_run_what_their_covering_tests_run(target: str, runs: str) -> None:
    # `make -n` prints the recipe without running it (nor installing anything).
    result = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert runs in result.stdout.replace(".venv/bin/python", "python"), result.stdout


def _run_params():
    commands = {}
    for command, kind in _classified():
        if kind.startswith("run:") and not command.inline:
            commands.setdefault(kind[4:], command)
        elif kind.startswith("run:"):
            commands.setdefault(kind[4:], command)
    for name, run in RUN.items():
        marks = [pytest.mark.slow] if run.slow else []
        yield pytest.param(name, commands.get(name), id=name, marks=marks)


@pytest.mark.parametrize("name, command", list(_run_params()))
def test_command_runs_as_shown(name: str, command: Command | None, tmp_path: Path) -> None:
    assert command is not None, f"no doc shows the command {name!r} any more: drop it from RUN"
    run = RUN[name]
    # The venv's python first on the PATH: the docs write `python` as well as `.venv/bin/python`.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(REPO)
    text = f"{command.text} {run.extra}".strip()
    if run.quiet_node:
        if shutil.which("npx") is None:
            pytest.skip("needs Node's npx (make install)")
        env = {k: v for k, v in env.items() if not k.startswith("JSII_")}
        env.update(HOME=str(tmp_path), npm_config_cache=str(tmp_path / ".npm"), CDK_DISABLE_VERSION_CHECK="1")
        text += f" --no-notices --output {shlex.quote(str(tmp_path / 'cdk.out'))}"
    result = subprocess.run(["bash", "-c", text], cwd=REPO / command.cwd, env=env, capture_output=True,
                            text=True, timeout=280)
    assert result.returncode == 0, (text, result.stdout[-2000:], result.stderr[-3000:])
    assert run.expect in result.stdout, (text, result.stdout[-3000:])
    if run.quiet_node:
        # Node.js 20's end-of-life banner is 11 lines of "!!", relayed by jsii as Python bytes.
        assert "!!" not in result.stderr and "b'" not in result.stderr, result.stderr[-3000:]
        assert (tmp_path / "cdk.out" / "BatchCelery.template.json").exists()


def test_the_quoted_django_settings_line_is_the_files() -> None:
    doc = (REPO / "docs" / "sending-tasks.md").read_text()
    quoted = re.search(r"`mysite/settings\.py` keeps `([^`]+)`", doc)
    assert quoted, "docs/sending-tasks.md no longer quotes mysite/settings.py"
    assert quoted[1] in (REPO / "examples" / "django-app" / "mysite" / "settings.py").read_text()
