"""The README is a user manual that runs as written: every command of its shell blocks (and of
attn_lightning/bench/README.md's) composes against the config it reads, each value of a sweep
too, or names a command that exists; every Python block parses; the set-up commands are those
CI runs; the layout names only paths that exist; and the page stays a manual (at most 600
lines, no commit hashes, no history)."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf

from attn_lightning import compare
from attn_lightning.bench.__main__ import available as bench_commands
from attn_lightning.config import CONFIG_DIR
from attn_lightning.config.entry_point import refuse_appended_keys
from attn_lightning.config.schema import AnalyzeConfig, EvalConfig, SampleConfig, TrainConfig

README = REPO_ROOT / "README.md"
BENCH_README = REPO_ROOT / "attn_lightning" / "bench" / "README.md"
MAX_LINES = 600
SHELL = ("bash", "sh", "console")

# A Hydra command -> the config it composes and the schema of that config's top-level keys.
HYDRA_COMMANDS: dict[str, tuple[str, type | None]] = {
    "attn_lightning": ("train", TrainConfig),
    "attn_lightning.sample": ("sample", SampleConfig),
    "attn_lightning.eval": ("eval", EvalConfig),
    "attn_lightning.analyze": ("analyze", AnalyzeConfig),
    "attn_lightning.check": ("check", None),
}
CONSOLE_SCRIPTS = {
    "attn-lightning": "attn_lightning",
    "attn-sample": "attn_lightning.sample",
    "attn-eval": "attn_lightning.eval",
    "attn-analyze": "attn_lightning.analyze",
    "attn-check": "attn_lightning.check",
    "attn-compare": "attn_lightning.compare",
    "attn-bench": "attn_lightning.bench",
}
# Without the `sweep` extra, Hydra has no configs for these: their option is checked to exist
# in conf/ and the override is left out of the composition; hydra.launcher.* and
# hydra.sweeper.* keys are left out too.
PLUGIN_GROUPS = ("hydra/launcher", "hparams_search")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


SWEEP_EXTRA = all(
    installed(f"hydra_plugins.{name}")
    for name in ("hydra_joblib_launcher", "hydra_submitit_launcher", "hydra_optuna_sweeper")
)

# A commit hash: 7-40 hex digits with a letter among them, or 7-12 decimal digits (git's short
# hashes; a longer run of digits is a number, such as the copy task's example).
COMMIT_HASH = re.compile(r"\b(?:\d{7,12}|(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40})\b")
HISTORY = ("session", "round 2", "round 3", "before/after", "tried and dropped", "the issue's")
TEST_COUNT = re.compile(r"\b\d+ (passed|skipped|deselected)\b")


class ReadmeError(Exception):
    """A README command, block or path that does not hold."""


# --- the README's blocks and commands --------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", text, re.M | re.S)


def shell_trouble(line: str) -> str | None:
    """What a shell would do to the line other than pass it on: `${` expanded (outside single
    quotes); `(` `)` a syntax error, `[` `]` a glob, `<` `>` a redirection and `~name` a home
    dir (outside any quotes). None if nothing."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
            elif quote == '"' and line.startswith("${", i):
                return "${ in double quotes"
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return None  # a comment
        elif line.startswith("${", i) or char in "()[]<>":
            return f"unquoted {char}"
        elif char == "~" and (i == 0 or line[i - 1].isspace()) and line[i + 1 : i + 2].strip("/"):
            return "unquoted ~ before a name"  # a user's home in bash, an error in zsh
    return None


def shell_lines(block: str, console: bool = False) -> list[str]:
    """The command lines of a shell block, continuation lines joined; in a console block only
    the `$ ` lines, without the prompt."""
    lines = block.replace("\\\n", " ").splitlines()
    if console:
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if line.strip()]


def shell_commands(line: str) -> list[list[str]]:
    """The commands of a line as argv lists: the comment dropped, `&&`/`;`/`|` chains split,
    leading VAR=value assignments dropped."""
    trouble = shell_trouble(line)
    if trouble:
        raise ReadmeError(f"{line}: {trouble}; quote it as the shell should pass it")
    commands = []
    argv: list[str] = []
    for token in [*shlex.split(line, comments=True), "&&"]:
        if token in ("&&", "||", ";", "|"):
            while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
                argv.pop(0)
            if argv:
                commands.append(argv)
            argv = []
        else:
            argv.append(token)
    return commands


def project_command(argv: list[str]) -> tuple[str, list[str]] | None:
    """(module, arguments) of a `python -m attn_lightning...` or `attn-*` command; None for
    any other program."""
    if argv[0] in ("python", "python3") and argv[1:2] == ["-m"] and len(argv) > 2:
        if argv[2].split(".")[0] == "attn_lightning":
            return argv[2], argv[3:]
        return None
    if argv[0].startswith("attn-"):
        if argv[0] not in CONSOLE_SCRIPTS:
            raise ReadmeError(f"{argv[0]}: no such console script")
        return CONSOLE_SCRIPTS[argv[0]], argv[1:]
    return None


PROJECT_COMMAND = re.compile(r"(^|[\s;&|])(python3? -m attn_lightning|attn-)")


def readme_command_lines(text: str) -> list[str]:
    """The lines of the README's shell blocks that run a command of this project."""
    return [
        line
        for lang, body in fenced_blocks(text)
        if lang in SHELL
        for line in shell_lines(body, console=lang == "console")
        if PROJECT_COMMAND.search(line.split(" #")[0])
    ]


# --- checking one command --------------------------------------------------------------------


def check_command(argv: list[str]) -> None:
    """Raise ReadmeError unless the command would start as written."""
    found = project_command(argv)
    if found is None:
        raise ReadmeError(f"{shlex.join(argv)}: not a command of this project")
    module, args = found
    if module in HYDRA_COMMANDS:
        check_hydra_command(*HYDRA_COMMANDS[module], args)
    elif module == "attn_lightning.compare":
        try:
            compare.parse_args(args)
        except SystemExit as exit_:
            raise ReadmeError(f"attn_lightning.compare refuses {args}") from exit_
    elif module == "attn_lightning.bench":
        if not args or args[0] not in bench_commands():
            raise ReadmeError(f"attn_lightning.bench {args[:1]}: choose from {bench_commands()}")
    else:
        raise ReadmeError(f"python -m {module}: no such command")


def plugin_override(override: Override) -> bool:
    """Whether the override needs a plugin of the `sweep` extra that is not installed; its
    option, if it names one, must exist in conf/."""
    if SWEEP_EXTRA:
        return False
    key = override.key_or_group
    if key in PLUGIN_GROUPS:
        option = Path(CONFIG_DIR, key, f"{override.value()}.yaml")
        if not option.is_file():
            raise ReadmeError(f"{override.input_line}: no {option.relative_to(CONFIG_DIR)}")
        return True
    return key.startswith(("hydra.launcher.", "hydra.sweeper."))


def check_hydra_command(config_name: str, schema: type | None, args: list[str]) -> None:
    """Hydra's flags parse, and the overrides compose against `config_name`: once, or under
    -m once per value of each sweep (the other sweeps at their first value)."""
    try:
        parsed = get_args_parser().parse_args(args)
    except SystemExit as exit_:
        raise ReadmeError(f"Hydra's command line refuses {args}") from exit_
    if parsed.shell_completion or parsed.help or parsed.hydra_help or parsed.info:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except Exception as error:
        raise ReadmeError(f"{parsed.overrides}: {error}") from error
    overrides = [o for o in overrides if not plugin_override(o)]
    fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
    sweeps = [o for o in overrides if o.is_sweep_override()]
    if sweeps and not parsed.multirun:
        raise ReadmeError(f"{sweeps[0].input_line}: a sweep needs -m")
    runs = [fixed]
    if sweeps:
        values = {id(s): list(s.sweep_string_iterator()) for s in sweeps}
        runs = [
            [
                *fixed,
                *(f"{o.get_key_element()}={values[id(o)][0]}" for o in sweeps if o is not s),
                f"{s.get_key_element()}={value}",
            ]
            for s in sweeps
            for value in values[id(s)]
        ]
    for run in runs:
        try:
            with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
                cfg = compose(config_name, overrides=run, return_hydra_config=True)
            if schema is not None:
                keys = OmegaConf.create({key: None for key in cfg if key != "hydra"})
                refuse_appended_keys(keys, schema, config_name)
        except Exception as error:
            raise ReadmeError(f"{config_name} {run}: {error}") from error


# --- the page as a manual --------------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The text of a `## heading` section, up to the next `## `."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def layout_paths(layout_block: str) -> list[Path]:
    """Paths named by a layout tree: each line's names (before a run of 2+ spaces), nested by
    indentation of two spaces under the last directory (a name ending in /) above them."""
    paths: list[Path] = []
    parents: list[tuple[int, Path]] = []
    for line in layout_block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        names = re.split(r"\s{2,}", line.strip())[0].split()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        base = parents[-1][1] if parents else Path()
        for name in names:
            paths.append(base / name)
            if name.endswith("/"):
                parents.append((indent, base / name))
    return paths


def missing_paths(paths: list[Path]) -> list[str]:
    return [str(p) for p in paths if not (REPO_ROOT / p).exists()]


def normalise(code: str) -> str:
    return " ".join(code.split())


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


COMMAND_LINES = readme_command_lines(README.read_text(encoding="utf-8"))
BENCH_COMMAND_LINES = readme_command_lines(BENCH_README.read_text(encoding="utf-8"))


def test_the_readmes_have_commands_to_check() -> None:
    assert len(COMMAND_LINES) >= 40, COMMAND_LINES
    assert len(BENCH_COMMAND_LINES) >= 10, BENCH_COMMAND_LINES


@pytest.mark.parametrize(
    "line",
    COMMAND_LINES + BENCH_COMMAND_LINES,
    ids=[line[:90] for line in COMMAND_LINES + BENCH_COMMAND_LINES],
)
def test_a_readme_command_runs_as_written(line: str) -> None:
    commands = [argv for argv in shell_commands(line) if project_command(argv) is not None]
    assert commands, line
    for argv in commands:
        check_command(argv)


def test_python_blocks_parse(readme: str) -> None:
    blocks = [body for lang, body in fenced_blocks(readme) if lang == "python"]
    assert blocks
    for body in blocks:
        ast.parse(body)


def test_the_python_api_example_runs(readme: str) -> None:
    """The first Python block of the Python API section builds a model and generates."""
    api = section(readme, "Python API")
    (body, *_) = [body for lang, body in fenced_blocks(api) if lang == "python"]
    namespace: dict = {}
    exec(compile(body, "README.md (Python API)", "exec"), namespace)
    assert namespace["out"].shape == (2, 40)


def test_setup_commands_are_those_ci_runs(readme: str) -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    commands = [
        line.strip()
        for line in ci
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd ", "export "))
    ]
    assert len(commands) == 3, commands
    setup = section(readme, "Set-up")
    lines = {line.strip() for lang, body in fenced_blocks(setup) for line in body.splitlines()}
    for command in commands:
        assert command in lines, f"README's Set-up lacks CI's command: {command}"


def test_the_readme_is_at_most_600_lines(readme: str) -> None:
    assert len(readme.splitlines()) <= MAX_LINES


def test_the_readme_has_no_commit_hash_and_no_history(readme: str) -> None:
    assert COMMIT_HASH.findall(readme) == []
    lowered = readme.lower()
    assert [word for word in HISTORY if word in lowered] == []
    assert TEST_COUNT.findall(readme) == []


def test_the_layout_names_only_paths_that_exist(readme: str) -> None:
    (block,) = [body for lang, body in fenced_blocks(section(readme, "Layout")) if not lang]
    paths = layout_paths(block)
    assert Path("attn_lightning/attention/registry.py") in paths
    assert missing_paths(paths) == []


def test_the_layout_names_every_package(readme: str) -> None:
    (block,) = [body for lang, body in fenced_blocks(section(readme, "Layout")) if not lang]
    named = set(layout_paths(block))
    packages = [
        i.parent.relative_to(REPO_ROOT) for i in REPO_ROOT.glob("attn_lightning/*/__init__.py")
    ]
    assert packages
    assert [str(p) for p in packages if p not in named] == []


def test_the_linear_attention_shown_is_the_file(readme: str) -> None:
    (body,) = [
        body
        for lang, body in fenced_blocks(section(readme, "Bring your own attention"))
        if lang == "python" and "class LinearAttention" in body
    ]
    source = (REPO_ROOT / "attn_lightning" / "attention" / "linear.py").read_text()
    assert normalise(body) in normalise(source)


def test_the_console_scripts_are_the_packages() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert set(pyproject["project"]["scripts"]) == set(CONSOLE_SCRIPTS)


def test_the_bench_readme_names_every_benchmark() -> None:
    bench_readme = BENCH_README.read_text(encoding="utf-8")
    for name in bench_commands():
        assert f"\n## {name}\n" in bench_readme, name


# --- every check above can fail --------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "python -m attn_lightning model.n_layr=4",  # a misspelt key
        "python -m attn_lightning attention=vanila",  # no such option
        "python -m attn_lightning model.pos_embedding=lerned",  # not an accepted value
        "python -m attn_lightning +max_step=10",  # a key nothing reads
        "python -m attn_lightning -m attention=vanilla,lnear",  # a sweep's second value
        "python -m attn_lightning -m seed=1,2 'attention.window=choice(8,16)'",  # not vanilla's
        "python -m attn_lightning attention=vanilla,linear",  # a sweep without -m
        "python -m attn_lightning --cfgg job",  # no such flag
        "python -m attn_lightning hydra/launcher=paralel",  # no such launcher
        "python -m attn_lightning 'ckpt_path=outputs/<date>/last.ckpt'",  # not an override
        "python -m attn_lightning.sample ckpt_path=x.ckpt temprature=0",
        "python -m attn_lightning.eval ckpts=x 'lenghts=[64]'",
        "python -m attn_lightning.analyze ckpt_path=x ablation.enable=false",
        "python -m attn_lightning.check attention=lnear",
        "python -m attn_lightning.compare",  # needs a dir
        "python -m attn_lightning.bench kernel",
        "python -m attn_lightning.nosuch x=1",
        "attn-nosuch x=1",
        "attn-sample ckpt_path=x.ckpt prompt_fil=p.txt",
    ],
)
def test_a_wrong_command_fails(command: str) -> None:
    with pytest.raises(ReadmeError):
        for argv in shell_commands(command):
            check_command(argv)


@pytest.mark.parametrize(
    "line",
    [
        "python -m attn_lightning hydra.run.dir=outputs/${oc.env:SLURM_JOB_ID}",  # expanded
        'python -m attn_lightning "hydra.run.dir=outputs/${oc.env:SLURM_JOB_ID}"',
        "python -m attn_lightning.eval ckpts=[outputs/a,outputs/b]",  # a glob
        "python -m attn_lightning -m attention.window=choice(8,16)",  # a syntax error
        "python -m attn_lightning.sample ckpt_path=outputs/<date>/last.ckpt",  # a redirection
        "python -m attn_lightning ~callbacks.text_sample",  # zsh: no such user
    ],
)
def test_a_line_the_shell_would_change_fails(line: str) -> None:
    with pytest.raises(ReadmeError):
        shell_commands(line)
    assert shell_trouble("python -m attn_lightning 'a=${x}' \"b=[1]\"  # nanoGPT's (GPU)") is None


def test_commands_are_found_in_chains_continuations_and_console_blocks() -> None:
    text = (
        "```bash\npip install x && OMP_NUM_THREADS=1 python -m attn_lightning \\\n"
        "    seed=2  # a comment\ntensorboard --logdir outputs  # python -m attn_lightning\n```\n"
        "```console\n$ attn-eval ckpts=x\noutput line, attn-sample\n```\n"
    )
    lines = readme_command_lines(text)
    assert len(lines) == 2
    assert shell_commands(lines[0]) == [
        ["pip", "install", "x"],
        ["python", "-m", "attn_lightning", "seed=2"],
    ]
    assert shell_commands(lines[1]) == [["attn-eval", "ckpts=x"]]


def test_the_manual_checks_find_what_they_forbid() -> None:
    found = COMMIT_HASH.findall("at 9966313, a51f28c and 1ab1892c0ffee0, not 3141592653589793")
    assert found == ["9966313", "a51f28c", "1ab1892c0ffee0"]
    assert COMMIT_HASH.findall("defaced, 2000 steps, 1,115,394 bytes") == []
    assert TEST_COUNT.findall("951 passed, 14 skipped")
    tree = "conf/  configs\nattn_lightning/\n  train.py  train\n  nosuch/  x\n    gone.py  y\n"
    paths = layout_paths(tree)
    assert Path("attn_lightning/nosuch/gone.py") in paths
    assert missing_paths(paths) == ["attn_lightning/nosuch", "attn_lightning/nosuch/gone.py"]
    assert normalise("def f(x):\n    return x  + 1") in normalise("def f(x): return x + 1")
    assert normalise("return x + 1") not in normalise("return F.elu(x).add_(1)")
