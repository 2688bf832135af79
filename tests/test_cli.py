"""The `resp-hf` command line: one-line errors with exit status 2, tracebacks on request, missing extras named."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import OPERA, REPO_ROOT

import resp_hf.cards
from resp_hf.cli import main as cli_main


def one_line_error(capsys, command):
    """The stderr of a failed command, checked to be a single `resp-hf COMMAND: error: ...` line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"resp-hf {command}: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["convert", "{tmp}/absent.pth", "{tmp}/out", "--name", "m2d_vit_base-80x608p16x16p16k"], "absent.pth"),
        (["push", "{tmp}", "org/x"], "config.json"),
        (["card", "{tmp}", "--results", "{tmp}/results.json"], "README.md"),
        (["benchmark", "--model", "{tmp}", "--output", "{tmp}/out"], "Nothing to evaluate"),
        (["opera", "list", "--opera-root", "{tmp}/no-opera"], "no-opera"),
        (["finetune", "--model_name_or_path", "{tmp}", "--dataset", "{tmp}/gone", "--output_dir", "{tmp}/o"], "gone"),
    ],
)
def test_errors_of_use_are_one_line_with_exit_2_and_a_traceback_on_request(arguments, expected, tmp_path, capsys):
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    assert cli_main(arguments) == 2
    assert expected in one_line_error(capsys, arguments[0])
    with pytest.raises((ValueError, OSError)):
        cli_main(["--traceback", *arguments])


def test_a_multi_line_message_is_printed_on_one_line(tmp_path, capsys, monkeypatch):
    def fail(folder, results):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(resp_hf.cards, "add_benchmark_results", fail)
    assert cli_main(["card", str(tmp_path), "--results", "r.json"]) == 2
    assert one_line_error(capsys, "card") == "resp-hf card: error: first line second line"


@pytest.mark.parametrize(
    "bug",
    [
        KeyError("model"),
        IndexError("list index out of range"),
        TypeError("bad operand"),
        AttributeError("'NoneType' object has no attribute 'shape'"),
        RuntimeError("shape mismatch"),
        ModuleNotFoundError("x", name="x"),
    ],
)
def test_bugs_keep_their_traceback(bug, tmp_path, monkeypatch, capsys):
    def fail(folder, results):
        raise bug

    monkeypatch.setattr(resp_hf.cards, "add_benchmark_results", fail)
    with pytest.raises(type(bug)):
        cli_main(["card", str(tmp_path), "--results", "r.json"])
    assert "error:" not in capsys.readouterr().err  # no one-line message in front of the traceback


INTERNAL_KEY_ERROR = """
import sys
import resp_hf.cards
from resp_hf.cli import main

def add_benchmark_results(folder, results):
    return {}["model-index"]  # a bug deep in the library

resp_hf.cards.add_benchmark_results = add_benchmark_results
sys.exit(main(sys.argv[1:]))
"""


def test_an_internal_key_error_exits_with_its_traceback_not_a_one_line_error(tmp_path):
    command = [sys.executable, "-c", INTERNAL_KEY_ERROR, "card", str(tmp_path), "--results", "results.json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'model-index'" in result.stderr
    assert "error:" not in result.stderr


@pytest.mark.parametrize(
    "results, expected",
    [
        ({}, "results.json is not a benchmark's results.json (no 'results' list of rows)."),
        ([1, 2], "results.json is not a benchmark's results.json (no 'results' list of rows)."),
        ({"results": [{"task": "T7", "final_layer": True}]}, "results.json: result row 1 lacks task_name, layer,"),
    ],
)
def test_a_results_file_of_the_wrong_shape_is_an_error_of_use(results, expected, tmp_path, capsys):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert cli_main(["card", str(tmp_path), "--results", str(tmp_path / "results.json")]) == 2
    assert expected in one_line_error(capsys, "card")


@pytest.mark.parametrize("content", [b"", b"not json", "{}".encode("utf-16")])
def test_a_results_file_that_is_not_json_text_is_named(content, tmp_path, capsys):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    (tmp_path / "results.json").write_bytes(content)
    assert cli_main(["card", str(tmp_path), "--results", str(tmp_path / "results.json")]) == 2
    message = one_line_error(capsys, "card")
    assert f"{tmp_path / 'results.json'} is not a benchmark's results.json: it is not JSON text" in message


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["convert"], "resp-hf convert: error: the following arguments are required: checkpoint"),
        (
            ["convert", "a"],
            "resp-hf convert: error: the following arguments are required: output_dir (or --output_dir)",
        ),
        (["convert", "a", "b", "--output_dir", "c"], "resp-hf convert: error: output_dir given twice: b and c"),
        (["convert", "a", "b", "--bogus"], "resp-hf: error: unrecognized arguments: --bogus"),
        (
            ["benchmark"],
            "resp-hf benchmark: error: the following arguments are required: --model_name_or_path, --output_dir",
        ),
        (
            ["tasks", "benchmark", "--model", "m", "--output", "o", "--batch_size", "0"],
            "argument --batch_size: must be",
        ),
        (
            ["pretrain", "--data", "x.csv", "--output-dir", "run", "--init", "s", "--epochs", "x"],
            "argument --epochs: inv",
        ),
        (["finetune", "--bogus"], "resp-hf finetune: error: "),
        (["finetune", "--model_name_or_path", "m", "--dataset", "d", "--lora_rank", "four"], "--lora_rank"),
        (["pretrain", "--data", "x.csv", "--output-dir", "run"], "resp-hf pretrain: error: the following arguments"),
        (["pretrain", "--recipe", "m2d"], "resp-hf pretrain: error: argument --recipe: invalid choice: 'm2d'"),
    ],
)
def test_usage_mistakes_are_one_line_with_exit_2(arguments, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(arguments)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "--help" in lines[0], lines


TRAIN_EXTRAS = ["datasets", "sklearn", "accelerate", "matplotlib", "openpyxl", "tensorboard"]


def run_without(modules, commands, cwd):
    """Runs the `resp-hf` commands in a fresh interpreter where `modules` cannot be imported: exit codes, stderr."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_MODULES, json.dumps(modules), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


WITHOUT_MODULES = """
import contextlib, io, json, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None  # as if not installed
from resp_hf.cli import main
outcomes = []
for arguments in json.loads(sys.argv[2]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = main(arguments)
        except SystemExit as exit:
            code = exit.code
    outcomes.append({"code": code, "stderr": stderr.getvalue()})
print(json.dumps(outcomes))
"""


def test_commands_that_need_the_train_extra_say_how_to_install_it(tmp_path):
    commands = [
        ["opera", "list"],
        ["finetune", "--help"],
        ["benchmark", "--model", str(tmp_path), "--output", str(tmp_path / "out"), "--dataset", str(tmp_path)],
        ["logmel", str(tmp_path), str(tmp_path / "out")],
        ["pretrain", "--help"],
        ["push", str(tmp_path), "org/x"],  # a core command: its own error, not a missing extra
    ]
    *outcomes, push = run_without(TRAIN_EXTRAS, commands, tmp_path)
    assert push["code"] == 2 and "has no config.json" in push["stderr"]
    for command, outcome in zip(commands, outcomes):
        lines = outcome["stderr"].strip().splitlines()
        assert outcome["code"] == 2 and len(lines) == 1, (command, outcome)
        assert lines[0].startswith(f"resp-hf {command[0]}: error: this command needs the 'train' extra")
        assert lines[0].endswith('pip install "resp-hf[train]"')


def test_lora_without_peft_says_how_to_install_it(tmp_path):
    command = ["finetune", "--model_name_or_path", "m", "--dataset", "d", "--lora_rank", "4"]
    [outcome] = run_without(["peft"], [command], tmp_path)
    message = outcome["stderr"].strip()
    assert outcome["code"] == 2 and len(message.splitlines()) == 1
    assert message.startswith("resp-hf finetune: error: this command needs the 'peft' extra (")
    assert message.endswith('pip install "resp-hf[peft]"')


def test_the_training_script_is_the_command_with_its_error_handling(tmp_path):
    result = subprocess.run(
        [sys.executable, REPO_ROOT / "training" / "finetune.py", "--model_name_or_path", tmp_path, "--dataset", "./x"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "resp-hf finetune: error: Dataset not found: ./x is not a folder (a Hub dataset name has no such prefix)."
    ]


def test_library_messages_name_the_flag_not_the_python_argument(tmp_path, capsys):
    opera = tmp_path / "OPERA"
    shutil.copytree(OPERA, opera, ignore=shutil.ignore_patterns("*.wav"))  # metadata only: every recording missing
    code = cli_main(["opera", "build", "T10", "--opera-root", str(opera), "--output", str(tmp_path / "t10")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "pass --allow-missing to leave them out" in error and "allow_missing=True" not in error
