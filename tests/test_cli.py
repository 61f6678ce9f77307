"""The ``fieldkit`` CLI through click's runner and, for the console script itself, real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from fieldkit import __version__
from fieldkit.cli import BUILTIN_COMMANDS, cli, graph_options
from fieldkit.graph import Graph
from fieldkit.plugins import get_host, hookimpl
from fieldkit.plugins.manager import ALLOW_ENV

GOOD = """\
fields:
  teacher: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}
  guided: {type: guidance, field: teacher, w: 3.0}
  init: {type: fieldkit.mmdit, config: {sample_size: [2, 2], patch_size: 1, hidden: 8, heads: 2, depth: 1}}
routes:
  t2i:
    field: guided
    data: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}
student: {init: init}
"""

BAD = """\
fields:
  teacher: {type: gaussian_mixture, classes: 3, shape: [1]}
  g: {type: guidanse, field: teacher}
"""

FIELDKIT = Path(sys.executable).parent / "fieldkit"


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), prog_name="fieldkit")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def test_help_describes_the_tool_with_examples_and_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    out = result.stdout
    assert "on-policy distillation of flow-matching image models" in out
    assert "Examples:" in out and "fieldkit validate graph.yaml --set run.lr=1e-4" in out
    for name in ("plugins", "schema", "validate", "--debug", "--version"):
        assert name in out
    assert invoke("-h").stdout == out


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fieldkit, version {__version__}"


def test_plugins_lists_fieldkit_and_its_types():
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "fieldkit" in result.stdout and "guidance" in result.stdout and "gaussian_mixture" in result.stdout
    assert f"{ALLOW_ENV}=''" in result.stdout


def test_plugins_json_is_machine_readable():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [p["name"] for p in data["plugins"]] == ["fieldkit"]
    builtin = data["plugins"][0]
    assert "fieldkit_register_operators" in builtin["hooks"]
    assert set(builtin["types"]["router"]) == {"hard", "soft"}
    assert data["failures"] == [] and data["problems"] == []
    assert data["load_plugins"] == ""


def test_plugins_shows_installed_plugins_and_the_broken_one_by_name(use_plugins):
    use_plugins(None)
    data = json.loads(invoke("plugins", "--json").stdout)
    example = next(p for p in data["plugins"] if p["name"] == "example")
    assert example["version"] == "0.1.0"
    assert example["types"]["source"] == ["example.constant"]
    assert example["types"]["command"] == ["example-hello"]
    assert {"name": "broken", "stage": "import"}.items() <= data["failures"][0].items()
    assert data["load_plugins"] is None
    table = invoke("plugins")
    assert table.exit_code == 0
    assert "example.negate" in table.stdout
    assert "failed: broken (import): RuntimeError" in table.stdout


def test_plugins_table_and_json_show_duplicate_type_problems():
    class Duplicate:
        @hookimpl
        def fieldkit_register_sources(self, register):
            register("gaussian_mixture", lambda params, ctx: None)

    host = get_host()
    host.register(Duplicate(), "dup")
    try:
        table = invoke("plugins").stdout
        data = json.loads(invoke("plugins", "--json").stdout)
    finally:
        host.unregister("dup")
    problem = (
        "source 'gaussian_mixture' from plugin 'dup' is ignored: plugin 'fieldkit' registered that name first"
    )
    assert data["problems"] == [problem]
    assert "problem: source 'gaussian_mixture' from plugin 'dup' is ignored" in table


def test_a_graph_error_notes_plugins_that_failed_to_load(use_plugins, tmp_path):
    use_plugins(None)
    path = tmp_path / "g.yaml"
    path.write_text("fields:\n  c: {type: example.constnat, value: 1}\n")
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert "did you mean 'example.constant'?" in result.stderr
    assert "note: some plugins failed to load (broken); see `fieldkit plugins`" in result.stderr


def test_validate_prints_a_summary(good):
    result = invoke("validate", str(good))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"valid: {good}" in out
    assert "teacher" in out and "gaussian_mixture" in out and "guidance" in out
    assert "t2i" in out
    assert "router: hard (granularity=update)" in out
    assert "method: danceopd (" in out
    assert result.stderr == ""


def test_validate_applies_overrides(good):
    result = invoke("validate", str(good), "--set", "router.type=soft", "--set", "run.steps=3")
    assert result.exit_code == 0, result.output
    assert "router: soft" in result.stdout


@pytest.mark.parametrize("debug", [False, True])
def test_validate_bad_graph_is_one_message_and_exit_2(bad, debug):
    result = invoke(*(["--debug"] if debug else []), "validate", str(bad))
    assert result.exit_code == 2
    assert result.stdout == ""
    err = result.stderr
    assert [line for line in err.splitlines() if line.startswith("Error:")] == [err.splitlines()[-2]]
    assert f"Error: {bad}:3: fields.g.type: unknown source or operator type 'guidanse'" in err
    assert "hint: fix the graph" in err
    assert ("Traceback (most recent call last)" in err) is debug


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "run.steps"], "--set 'run.steps': expected KEY.PATH=VALUE"),
        (["--set", "run.steps=lots"], "(--set run.steps=lots): run.steps: Input should be a valid integer"),
    ],
)
def test_validate_bad_override_is_one_message(good, args, expected):
    result = invoke("validate", str(good), *args)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_missing_file(tmp_path):
    result = invoke("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "nope.yaml: no such graph file" in result.stderr


def test_a_bad_graph_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(BAD)
    Path("good.yaml").write_text(GOOD)
    assert invoke("validate", "bad.yaml").exit_code == 2
    assert invoke("validate", "good.yaml", "--set", "run.steps=x").exit_code == 2
    assert invoke("validate", "good.yaml").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "good.yaml"]


def test_usage_errors_keep_clicks_own_handling():
    missing = invoke("validate")
    assert missing.exit_code == 2
    assert "Missing argument 'GRAPH'" in missing.stderr
    unknown = invoke("distil")
    assert unknown.exit_code == 2
    assert "No such command 'distil'" in unknown.stderr


class BoomPlugin:
    """Adds a command that fails with an unexpected (non-fieldkit) error."""

    @hookimpl
    def fieldkit_register_commands(self, cli):
        @cli.command()
        def boom() -> None:
            """Divide by zero."""
            print(1 / 0)


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_exits_1_with_a_hint(debug):
    host = get_host()
    host.register(BoomPlugin(), "boom")
    try:
        result = invoke(*(["--debug"] if debug else []), "boom")
    finally:
        host.unregister("boom")
    assert result.exit_code == 1
    assert "Error: unexpected ZeroDivisionError: division by zero" in result.stderr
    assert ("rerun with `fieldkit --debug" in result.stderr) is not debug
    assert ("Traceback (most recent call last)" in result.stderr) is debug


def test_a_plugin_whose_command_hook_raises_is_reported_not_fatal():
    class Raises:
        @hookimpl
        def fieldkit_register_commands(self, cli):
            raise RuntimeError("cannot add commands")

    host = get_host()
    host.register(Raises(), "raises")
    try:
        assert invoke("--help").exit_code == 0
        data = json.loads(invoke("plugins", "--json").stdout)
    finally:
        host.unregister("raises")
    [failure] = data["failures"]
    assert failure["name"] == "raises" and failure["stage"] == "register commands"
    assert "RuntimeError: cannot add commands" in failure["error"]


def test_graph_options_give_every_command_graph_and_set(tmp_path, monkeypatch):
    @click.command()
    @graph_options
    @click.option("--steps-only", is_flag=True)
    def show(graph: Graph, steps_only: bool) -> None:
        click.echo(f"{graph.name} {graph.spec.run.steps} {steps_only}")

    monkeypatch.chdir(tmp_path)
    Path("g.yaml").write_text(GOOD)
    runner = CliRunner()
    result = runner.invoke(show, ["g.yaml", "--set", "run.steps=4", "--steps-only"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "g 4 True\n"
    usage = runner.invoke(show, ["--help"]).stdout
    assert "Usage: show [OPTIONS] GRAPH" in usage and "--set KEY.PATH=VALUE" in usage


def test_schema_is_a_valid_json_schema_naming_every_registered_type(tmp_path, good):
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    consts = {
        (d["properties"]["type"].get("const"), d["properties"]["type"]["description"].split()[0])
        for d in schema["$defs"].values()
        if "type" in d.get("properties", {}) and "const" in d["properties"]["type"]
    }
    for reg in get_host().registry:
        assert (reg.name, reg.kind) in consts

    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(good.read_text()))
    for broken in (
        "fields:\n  t: {type: guidanse}\n",
        "fields:\n  t: {type: gaussian_mixture, classes: 3, shape: [1], colour: 1}\n",
        "fields:\n  t: {type: gaussian_mixture, shape: [1]}\n",
        "fields:\n  t: {type: toward_source}\nrouter: {type: hard, granularity: 1}\n",
        "fields:\n  1t: {type: gaussian_mixture, classes: 3, shape: [1]}\n",
        "fields: {}\n",
    ):
        assert not validator.is_valid(yaml.safe_load(broken)), broken

    out = tmp_path / "schemas" / "graph.schema.json"
    written = invoke("schema", "--output", str(out))
    assert written.exit_code == 0
    assert json.loads(out.read_text()) == schema
    assert written.stdout == ""
    assert list(out.parent.iterdir()) == [out]


def test_schema_rewrites_its_own_file_but_never_a_users(tmp_path):
    own = tmp_path / "graph.schema.json"
    assert invoke("schema", "-o", str(own)).exit_code == 0
    own.write_text(own.read_text().replace('"type"', '"type" ', 1))  # an older schema: rewritten
    assert invoke("schema", "-o", str(own)).exit_code == 0
    assert own.read_text() == invoke("schema").stdout
    for name, text in (("notes.txt", "my notes\n"), ("other.json", '{"title": "not ours"}'), ("a.json", "{")):
        theirs = tmp_path / name
        theirs.write_text(text)
        refused = invoke("schema", "-o", str(theirs))
        assert refused.exit_code == 2, name
        assert "is not a graph schema fieldkit wrote; nothing was written" in refused.output
        assert "choose another path" in refused.output and "Traceback" not in refused.output
        assert theirs.read_text() == text


def test_schema_includes_plugin_types(use_plugins):
    use_plugins("example")
    schema = json.loads(invoke("schema").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate({"fields": {"c": {"type": "example.constant", "value": 0.5}}})
    assert not validator.is_valid({"fields": {"c": {"type": "example.constant", "value": "high"}}})


def test_the_example_plugins_command_appears_and_runs(use_plugins):
    use_plugins("example")
    assert "example-hello" in invoke("--help").stdout
    result = invoke("example-hello", "--value", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello from fieldkit-plugin-example: one Euler step from noise lands on 2.000\n"


# -- the console script in a real process -------------------------------------------------------------------


def run_fieldkit(*args: str, site: Path | None = None, allow: str | None = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (ALLOW_ENV, "PYTHONPATH")}
    if allow is not None:
        env[ALLOW_ENV] = allow
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [str(FIELDKIT), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_console_script_lists_installed_plugins(plugin_site):
    proc = run_fieldkit("plugins", "--json", site=plugin_site, allow=None)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = [p["name"] for p in data["plugins"]]
    assert names[0] == "fieldkit" and "example" in names
    assert "broken" in [f["name"] for f in data["failures"]]


def test_console_script_bad_graph_is_one_message_and_exit_2(bad):
    proc = run_fieldkit("validate", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"Error: {bad}:3: fields.g.type: unknown source or operator type 'guidanse'")
    assert lines[1:] == ["  hint: fix the graph and run `fieldkit validate` again"]


def test_importing_the_cli_is_fast_and_loads_no_plugin_or_diffusers():
    code = (
        "import sys, fieldkit.cli\n"
        "heavy = ('diffusers', 'transformers', 'fieldkit.builtin', 'fieldkit.distill')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_the_cli_and_graph_validation_start_without_torch(good):
    """`fieldkit --help` and `fieldkit validate` import no torch (benchmarks/cli_startup.py times them)."""
    code = (
        "import sys\n"
        "import fieldkit.cli\n"
        "from fieldkit import load_graph\n"
        "from fieldkit.graph.readiness import check_trainable\n"
        "from fieldkit.plugins.manager import get_host\n"
        "host = get_host()\n"
        "host.registry, host.commands()\n"
        f"check_trainable(load_graph({str(good)!r}))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'accelerate') if m in sys.modules))\n"
    )
    # The plugins fieldkit ships (a test plugin installed beside them imports torch, as a user's may).
    env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": "digits,sd3,zimage"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == "[]", done.stderr


def test_validate_reports_what_training_needs_with_file_and_line(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "fields:\n"
        "  teacher: {type: fieldkit.checkpoint, path: models/teacher}\n"
        "routes:\n"
        "  t2i: {field: teacher, data: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}}\n"
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert f"{path}:1: the graph has no 'student' section" in result.stderr
    assert f"{path}:2: fields.teacher.path: no such file or folder: {tmp_path / 'models' / 'teacher'}" in (
        result.stderr
    )
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    result = invoke("validate", str(path), "--set", "student.init=teacher")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("key", "meant"),
    [("run.learning_rate", "lr"), ("run.lr_warmup_steps", "warmup_steps"), ("run.stpes", "steps")],
)
def test_an_unknown_key_gets_a_did_you_mean(good, key, meant):
    result = invoke("validate", str(good), "--set", f"{key}=1")
    assert result.exit_code == 2
    assert f"unknown key {key.split('.')[-1]!r}; did you mean {meant!r}?" in result.stderr


def test_the_readme_lists_every_command_of_the_cli():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("```", 2)[1]
    listed = {line.split()[1] for line in block.splitlines() if line.startswith("fieldkit ")}
    assert listed == {command.name for command in BUILTIN_COMMANDS}


def test_the_console_script_turns_the_hub_libraries_progress_bars_off():
    code = (
        "import os, sys\n"
        "os.environ.pop('HF_HUB_DISABLE_PROGRESS_BARS', None)\n"
        "sys.argv = ['fieldkit', '--version']\n"
        "from fieldkit.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "from huggingface_hub.utils import are_progress_bars_disabled\n"
        "print(are_progress_bars_disabled())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "True"


@pytest.mark.parametrize("entry", ["main()", "cli(prog_name='fieldkit')"])
def test_the_console_script_freezes_the_heap_at_exit_and_only_then(entry):
    """main() leaves the teardown's collections nothing to traverse (benchmarks/exit_cost.py); the click
    group alone, and main() itself until the interpreter exits, leave gc as it was."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('at exit', gc.get_freeze_count() > 0))\n"
        "sys.argv = ['fieldkit', '--version']\n"
        "from fieldkit.cli import cli, main\n"
        f"try:\n    {entry}\nexcept SystemExit:\n    pass\n"
        "print('after the command', gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    frozen_at_exit = entry == "main()"
    assert done.stdout.splitlines()[-2:] == ["after the command False", f"at exit {frozen_at_exit}"]


def test_validate_build_catches_a_shape_mismatch_with_the_route_line(tmp_path):
    model = "{sample_size: [4, 4], patch_size: 2, hidden: 8, heads: 2, depth: 1, num_classes: 3}"
    path = tmp_path / "g.yaml"
    path.write_text(
        "fields:\n"
        "  teacher: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}\n"
        f"  init: {{type: fieldkit.mmdit, config: {model}}}\n"
        "routes:\n"
        "  t2i:\n"
        "    field: teacher\n"
        "    data: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}\n"
        "student: {init: init}\n"
    )
    assert invoke("validate", str(path)).exit_code == 0  # without --build the shapes are not looked at
    result = invoke("validate", str(path), "--build")
    assert result.exit_code == 2
    err = " ".join(result.stderr.split())
    assert (
        f"{path}:8: student.init: the student (source type 'fieldkit.mmdit', plugin 'fieldkit') failed" in err
    )
    assert f"[2, 1, 2, 2] (route 't2i', whose data shape is [1, 2, 2], {path}:7: routes.t2i.data)" in err
    assert "MMDiT expects x of shape [B, 1, 4, 4]" in err
    fixed = ["--set", "routes.t2i.data.shape=[1, 4, 4]", "--set", "fields.teacher.shape=[1, 4, 4]"]
    assert invoke("validate", str(path), "--build", *fixed).exit_code == 0


def test_validate_build_builds_what_distill_builds_and_says_what(tmp_path):
    path = tmp_path / "g.yaml"
    world = "{type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}"
    model = "{sample_size: [4, 4], patch_size: 2, hidden: 8, heads: 2, depth: 1, num_classes: 3}"
    path.write_text(
        f"fields:\n  teacher: {world}\n  init: {{type: fieldkit.mmdit, config: {model}}}\n"
        f"routes:\n  t2i: {{field: teacher, data: {world}, metrics: [{world}]}}\n"
        "student: {init: init}\nrouter: {type: soft}\nmethod: {type: offpolicy}\nrun: {device: cpu}\n"
    )
    result = invoke("validate", str(path), "--build")
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "built on cpu: router SoftRouter, method" in out and "optimizer AdamW" in out
    assert "t2i: data [1, 4, 4], field teacher, 1 metric(s)" in out
    # A metric for samples of another shape than the route's: plain validate names its line (issue 27.6).
    path.write_text(
        path.read_text().replace(
            "metrics: [{type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}]",
            "metrics: [{type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}]",
        )
    )
    for build in ([], ["--build"]):
        result = invoke("validate", str(path), *build)
        err = " ".join(result.stderr.split())
        assert result.exit_code == 2
        assert f"{path}:5: routes.t2i.metrics.0: scores samples of shape [1, 2, 2], but route 't2i'" in err


def test_help_lists_each_command_with_its_whole_first_sentence():
    class Commands:
        @hookimpl
        def fieldkit_register_commands(self, cli):
            @cli.command(name="zz-pack")
            def pack() -> None:
                """Copy the model folder SRC (e.g. RUN/student) to DST with weights stored as DTYPE, in a long
                sentence that does not fit in one line of help. A second sentence that is not shown."""

    host = get_host()
    host.register(Commands(), "commands")
    try:
        result = invoke("--help")
    finally:
        host.unregister("commands")
    listed = " ".join(result.stdout.partition("zz-pack")[2].split())
    assert listed == (
        "Copy the model folder SRC (e.g. RUN/student) to DST with weights stored as DTYPE, in a long sentence"
        " that does not fit in one line of help."
    )
