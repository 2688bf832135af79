"""`resp-hf opera list | build | push`."""

import json
from pathlib import Path

from datasets import load_from_disk

from ..output_folders import atomic_folder, check_output_folder
from .dataset import BuildReport, build_task, check_root
from .files import OperaDataError, read_text
from .registry import TASKS, get_task

TASK_FILE = "opera_task.json"


def task_status(task, root):
    """Whether a task can be built from `root`: how many of its audio files are there, or what is missing."""
    try:
        rows = task.builder(task, check_root(root), BuildReport(task.id))
    except (OperaDataError, FileNotFoundError) as error:
        return "no: " + str(error).split(". ")[0].replace(f"The OPERA checkout at {root} ", "")
    present = sum((Path(root) / row["path"]).is_file() for row in rows)
    if present == len(rows):
        return f"yes ({present} files)"
    return f"{'partial' if present else 'no audio'} ({present}/{len(rows)} files)"


def format_table(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def list_tasks(opera_root=None):
    """The registry as a text table; with `opera_root`, which tasks can be built from it."""
    header = ["task", "name", "dataset", "modality", "type", "metric", "license", "redistributable"]
    if opera_root is not None:
        check_root(opera_root)
    rows = []
    for task in TASKS.values():
        kind = f"{task.task_type} ({task.num_labels})" if task.label_names else task.task_type
        row = [
            task.id,
            task.name,
            task.dataset,
            task.modality,
            kind,
            task.metric.split(" ")[0],
            task.license,
            "yes" if task.redistributable else "no",
        ]
        if opera_root is not None:
            row.append(task_status(task, Path(opera_root)))
        rows.append(row)
    if opera_root is not None:
        header.append(f"buildable from {opera_root}")
    return format_table(header, rows)


def build_and_save(task_id, opera_root, output, allow_missing=False, overwrite=False):
    """
    Builds a task and saves it with `save_to_disk` plus `opera_task.json`, into a temporary sibling folder that then
    replaces `output` (so a failed build leaves an earlier one intact); returns the summary text.
    """
    task = get_task(task_id)
    check_output_folder(output, overwrite, option="overwrite=True (--overwrite)", inputs=(opera_root,), replaced=True)
    dataset, report = build_task(task.id, opera_root, allow_missing=allow_missing, return_report=True)
    with atomic_folder(output) as folder:
        write_task_folder(folder, task, dataset, report)
    return f"{task.id} ({task.name}) saved to {output}\n\n{report.summary(dataset)}"


def write_task_folder(folder, task, dataset, report):
    """The saved DatasetDict and its `opera_task.json` description."""
    dataset.save_to_disk(str(folder))
    description = {
        "task": task.id,
        "name": task.name,
        "dataset": task.dataset,
        "target": task.target,
        "metric": task.metric,
        "split_protocol": task.split_protocol,
        "validation": task.validation,
        "license": task.license,
        "download": task.download,
        "redistributable": task.redistributable,
        "missing_audio": report.missing,
        "unreadable_audio": report.unreadable,
        "notes": report.notes,
    }
    (folder / TASK_FILE).write_text(json.dumps(description, indent=2))


# The keys of `opera_task.json` that `push_built_task` reads, and their types.
PUSH_KEYS = {"task": str, "dataset": str, "license": str, "redistributable": bool}


def read_task_file(folder):
    """A built task's `opera_task.json`; no file, bad JSON, or a key missing or mistyped is an error naming it."""
    task_file = Path(folder) / TASK_FILE
    if not task_file.is_file():
        raise FileNotFoundError(f"{folder} has no {TASK_FILE}: build it with `resp-hf opera build` first.")
    try:
        description = json.loads(read_text(task_file))
    except json.JSONDecodeError as error:
        raise OperaDataError(f"{task_file} is not valid JSON ({error}); rebuild the task.") from None
    if not isinstance(description, dict):
        raise OperaDataError(f"{task_file} holds a JSON {type(description).__name__}, not an object; rebuild the task.")
    wrong = [key for key, kind in PUSH_KEYS.items() if not isinstance(description.get(key), kind)]
    if wrong:
        expected = ", ".join(f"{key!r} ({PUSH_KEYS[key].__name__})" for key in wrong)
        raise OperaDataError(f"{task_file}: {expected} missing or of another type; rebuild the task.")
    return description


def push_built_task(folder, repo_id, confirm_license=False, private=False):
    """Pushes a saved task with `DatasetDict.push_to_hub`; datasets that may not be redistributed need confirmation."""
    description = read_task_file(folder)
    if not description["redistributable"] and not confirm_license:
        raise PermissionError(
            f"{description['task']} ({description['dataset']}) is shared under '{description['license']}' and may "
            "not be redistributed. Push only to a private repository you are allowed to share it in, and confirm with "
            "--confirm-license."
        )
    dataset = load_from_disk(str(folder))
    dataset.push_to_hub(repo_id, private=private or not description["redistributable"])
    return f"Pushed {description['task']} to {repo_id} (license: {description['license']})."
