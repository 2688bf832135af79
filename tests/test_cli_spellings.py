"""
One spelling per concept on every `resp-hf` command (the Trainer's: `--model_name_or_path`, `--output_dir`,
`--num_train_epochs`, ...), with every earlier spelling and each option's dashed/underscored twin still accepted.
"""

import argparse
import dataclasses
import re
import shlex

import pytest
from conftest import REPO_ROOT
from transformers import TrainingArguments

from resp_hf.cli import PositionalOrOption, build_parser
from resp_hf.cli import main as cli_main
from resp_hf.training import finetune, pretrain


def command_parsers(parser=None, path=()):
    """`{command path: parser}` of every `resp-hf` command, `finetune` and `pretrain` with their own parsers."""
    parser = parser or build_parser()
    parsers = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                parsers |= command_parsers(subparser, (*path, name))
    if not parsers and path:
        parsers[path] = {"finetune": finetune.build_parser, "pretrain": pretrain.build_parser}.get(
            path[0], lambda: parser
        )()
    return parsers


COMMANDS = command_parsers()
TRAINER_FIELDS = {field.name for field in dataclasses.fields(TrainingArguments)}


def options(parser):
    return [action for action in parser._actions if action.option_strings and action.dest != "help"]


def parses(parser, arguments):
    """The namespace `arguments` parse to, or None when the parser refuses them."""
    try:
        namespace, _ = parser.parse_known_args(arguments)
    except SystemExit:
        return None
    return namespace


def required_arguments(parser, leave_out):
    """The least a command needs besides `leave_out`'s value: its required positionals and options, with values."""
    arguments = []
    for action in parser._actions:
        if action.dest in (leave_out.dest, "help"):
            continue
        if not action.option_strings and (action.nargs is None or isinstance(action, PositionalOrOption)):
            arguments.append("1")
        elif action.option_strings and action.required:
            arguments += [action.option_strings[0], str(action.choices[0]) if action.choices else "1"]
    return arguments


def value_for(parser, action):
    """Arguments that give `action`, by its canonical spelling, a value other than the one without it."""
    required = required_arguments(parser, action)
    default = parser.get_default(action.dest)  # the first of the actions that share its dest sets it
    candidates = [[str(choice)] for choice in action.choices or ()] + [
        ["3"],
        ["0.5"],
        ["true"],
        ["false"],
        ["x"],
        ["{}"],
        [],
    ]
    for value in candidates:
        namespace = parses(parser, [*required, action.option_strings[0], *value])
        if namespace is not None and getattr(namespace, action.dest) != default:
            return value
    return None


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_spelling_of_an_option_parses_to_the_canonical_value(path, capsys):
    parser = COMMANDS[path]
    for action in options(parser):
        value = value_for(parser, action)
        if value is None:  # some TrainingArguments fields (dict-typed, ...) take no value on any command line
            assert action.dest in TRAINER_FIELDS, (path, action.option_strings)
            continue
        required = required_arguments(parser, action)
        canonical = getattr(parses(parser, [*required, action.option_strings[0], *value]), action.dest)
        for spelling in action.option_strings[1:]:
            assert getattr(parses(parser, [*required, spelling, *value]), action.dest) == canonical, (path, spelling)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_has_its_dashed_and_underscored_twin(path):
    for action in options(COMMANDS[path]):
        for spelling in action.option_strings:
            if spelling.startswith("--"):
                assert "--" + spelling[2:].replace("-", "_") in action.option_strings, (path, spelling)
                assert "--" + spelling[2:].replace("_", "-") in action.option_strings, (path, spelling)


@pytest.mark.parametrize("path", [path for path in COMMANDS if path[0] not in ("finetune", "pretrain")], ids=" ".join)
def test_canonical_spellings_are_underscored_and_name_the_value(path):
    """The canonical spelling is the value's name (`args.output_dir` comes from `--output_dir`) on every command."""
    for action in options(COMMANDS[path]):
        assert action.option_strings[0] == f"--{action.dest}", (path, action.option_strings)


# The spellings of earlier versions: each must still be accepted, as an alias of today's canonical spelling.
EARLIER_SPELLINGS = {
    ("convert",): {"--overwrite": "--overwrite_output_dir", "--no-card": "--no_card"},
    ("push",): {"--message": "--commit_message"},
    ("opera", "list"): {"--opera-root": "--opera_root"},
    ("opera", "build"): {
        "--output": "--output_dir",
        "--overwrite": "--overwrite_output_dir",
        "--opera-root": "--opera_root",
        "--allow-missing": "--allow_missing",
    },
    ("opera", "push"): {"--confirm-license": "--confirm_license"},
    ("benchmark",): {
        "--model": "--model_name_or_path",
        "--output": "--output_dir",
        "--opera-root": "--opera_root",
        "--epochs": "--num_train_epochs",
        "--batch-size": "--batch_size",
        "--allow-missing": "--allow_missing",
        "--cache-dir": "--cache_dir",
        "--overwrite": "--overwrite_output_dir",
    },
    ("tasks", "list"): {"--opera-root": "--opera_root", "--icbhi-root": "--icbhi_root"},
    ("tasks", "build"): {
        "--output": "--output_dir",
        "--overwrite": "--overwrite_output_dir",
        "--sprsound-root": "--sprsound_root",
        "--validation-fraction": "--validation_fraction",
        "--validation-seed": "--validation_seed",
        "--split-file": "--split_file",
        "--skip-invalid-cycles": "--skip_invalid_cycles",
    },
    ("tasks", "benchmark"): {
        "--model": "--model_name_or_path",
        "--output": "--output_dir",
        "--epochs": "--num_train_epochs",
        "--batch-size": "--per_device_train_batch_size",
        "--learning-rate": "--learning_rate",
        "--overwrite": "--overwrite_output_dir",
    },
    ("logmel",): {
        "--model": "--model_name_or_path",
        "--min-seconds": "--min_seconds",
        "--overwrite": "--overwrite_output_dir",
    },
    ("pretrain-data",): {
        "--hf-lung": "--hf_lung",
        "--output": "--output_dir",
        "--icbhi-repeat": "--icbhi_repeat",
        "--cough-threshold": "--cough_threshold",
        "--overwrite": "--overwrite_output_dir",
    },
    ("export", "onnx"): {"--overwrite": "--overwrite_output_dir"},
    ("finetune",): {"--overwrite": "--overwrite_output_dir", "--output-dir": "--output_dir"},
    ("pretrain",): {
        "--init": "--model_name_or_path",
        "--data": "--dataset",
        "--output-dir": "--output_dir",
        "--encoder-config": "--encoder_config",
        "--audio-column": "--audio_column",
        "--norm-stats": "--norm_stats",
        "--norm-stats-crops": "--norm_stats_crops",
        "--min-seconds": "--min_seconds",
        "--predictor-width": "--predictor_width",
        "--epochs": "--num_train_epochs",
        "--max-steps": "--max_steps",
        "--batch-size": "--per_device_train_batch_size",
        "--gradient-accumulation-steps": "--gradient_accumulation_steps",
        "--effective-batch-size": "--effective_batch_size",
        "--base-lr": "--base_lr",
        "--warmup-epochs": "--warmup_epochs",
        "--clip-grad": "--max_grad_norm",
        "--weight-decay": "--weight_decay",
        "--mask-ratio": "--mask_ratio",
        "--ema-start": "--ema_start",
        "--mixed-precision": "--mixed_precision",
        "--cpu": "--use_cpu",
        "--num-workers": "--dataloader_num_workers",
        "--save-every": "--save_steps",
        "--log-every": "--logging_steps",
        "--resume": "--resume_from_checkpoint",
        "--overwrite": "--overwrite_output_dir",
        "--no-progress": "--disable_tqdm",
    },
}


@pytest.mark.parametrize("path", EARLIER_SPELLINGS, ids=" ".join)
def test_earlier_spellings_are_aliases_of_the_canonical_ones(path):
    spellings = {option: action for action in options(COMMANDS[path]) for option in action.option_strings}
    for earlier, canonical in EARLIER_SPELLINGS[path].items():
        assert spellings[earlier] is spellings[canonical], (path, earlier)
        assert spellings[earlier].option_strings[0] == canonical, (path, earlier)


def positional_outputs():
    return [
        (path, action)
        for path, parser in COMMANDS.items()
        for action in parser._actions
        if isinstance(action, PositionalOrOption) and not action.option_strings
    ]


def test_commands_with_a_positional_output_folder_also_take_the_canonical_option():
    assert {path for path, _ in positional_outputs()} == {("convert",), ("logmel",), ("export", "onnx"), ("space",)}
    for path, action in positional_outputs():
        parser = COMMANDS[path]
        inputs = [argument for argument in required_arguments(parser, action) if not argument.startswith("--")]
        as_positional = parser.parse_args([*inputs, "out"])
        as_option = parser.parse_args([*inputs, f"--{action.dest}", "out"])
        assert vars(as_positional) == vars(as_option) and as_option.output_dir == "out", path


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_names_each_option_by_its_canonical_spelling(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*path, "--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for action in options(COMMANDS[path]):
        canonical = action.option_strings[0]
        entry = [line for line in lines if line.strip().split(" ")[0].rstrip(",") == canonical]
        assert entry, (path, canonical)
        # The earlier spellings are listed after the canonical one, in the same entry.
        for earlier, spelling in EARLIER_SPELLINGS.get(path, {}).items():
            if spelling == canonical and earlier.replace("-", "_") != canonical.replace("-", "_"):
                assert earlier in entry[0], (path, earlier)


def test_an_abbreviation_that_worked_before_still_works():
    """`--out` matches `--output_dir`, `--output-dir` and `--output`: spellings of one option, not an ambiguity."""
    args, _ = build_parser().parse_known_args(["benchmark", "--mod", "m", "--out", "o", "--overwrite"])
    assert (args.model_name_or_path, args.output_dir, args.overwrite_output_dir) == ("m", "o", True)


def readme_commands():
    """The `resp-hf` command lines of the README's bash blocks (continuation lines joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.DOTALL)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    lines = [re.sub(r"^accelerate launch -m resp_hf\.training\.pretrain", "resp-hf pretrain", line) for line in lines]
    return [shlex.split(line)[1:] for line in lines if line.startswith("resp-hf ")]


def test_every_readme_command_parses_with_nothing_left_over():
    commands = readme_commands()
    assert len(commands) >= 20
    for arguments in commands:
        path = tuple(arguments[:2]) if tuple(arguments[:2]) in COMMANDS else tuple(arguments[:1])
        _, rest = COMMANDS[path].parse_known_args(arguments[len(path) :])
        assert rest == [], arguments
