"""`resp-hf tasks list | build`: every task the package builds (OPERA's and the cycle/event tasks)."""

from pathlib import Path

from ..opera import TASKS as OPERA_TASKS
from ..opera.commands import build_and_save as build_opera_task
from ..opera.commands import format_table, task_status
from ..output_folders import atomic_folder, check_output_folder
from .finetune_benchmark import TASKS, TaskBenchmarkSettings, build_task_dataset, check_options_apply, get_task
from .icbhi import OFFICIAL_COUNTS, IcbhiDataError, locate
from .segments import files_by_stem
from .sprsound import SPLIT_FOLDERS, find_folders

SOURCES = {
    "icbhi": (
        "ICBHI 2017 (https://bhichallenge.med.auth.gr): ICBHI_final_database/ + ICBHI_challenge_train_test.txt",
        "CC0 (as listed by OPERA); free for research",
    ),
    "sprsound": (
        "SPRSound (https://github.com/SJTU-YONGFU-RESEARCH-GRP/SPRSound): *_wav/ + *_json/ folders",
        "CC BY 4.0 (IEEE DataPort challenge pages)",
    ),
}
DESCRIPTIONS = {
    "icbhi-4class": "ICBHI cycles: normal / crackle / wheeze / both (Sp, Se, Score)",
    "icbhi-2class": "ICBHI cycles: normal / abnormal (Sp, Se, Score)",
    "sprsound-1-1": "SPRSound events: normal / adventitious (challenge Task 1-1)",
    "sprsound-1-2": "SPRSound events: 7 types (Task 1-2)",
    "sprsound-2-1": "SPRSound records: normal / poor quality / adventitious (Task 2-1)",
    "sprsound-2-2": "SPRSound records: normal / poor quality / CAS / DAS / CAS & DAS (Task 2-2)",
}


def data_status(dataset, root):
    """Whether `root` holds the data of `dataset` ("icbhi" or "sprsound"), in words."""
    if root is None:
        return "–"
    try:
        if dataset == "icbhi":
            database, _ = locate(root)
            count = len(files_by_stem(database, ".wav", IcbhiDataError))
            full = " (full database)" if count == OFFICIAL_COUNTS["recordings"] else ""
            return f"yes ({count} recordings{full})" if count else "no: no .wav recordings"
        folders = {split: find_folders(Path(root), names) for split, (names, _) in SPLIT_FOLDERS.items()}
        present = [split for split, found in folders.items() if found]
        return f"yes ({', '.join(present)})" if "train" in present else "no: no train2022_json folder"
    except (FileNotFoundError, IcbhiDataError) as error:
        return f"no: {str(error).split(':')[0]}"


def list_all_tasks(opera_root=None, icbhi_root=None, sprsound_root=None):
    """The OPERA tasks and the cycle/event tasks as one table, with whether the given folders can build them."""
    header = ["task", "what", "license", "buildable"]
    rows = []
    for task in OPERA_TASKS.values():
        status = task_status(task, Path(opera_root)) if opera_root else "–"
        rows.append([task.id, f"OPERA {task.name} ({task.metric.split(' ')[0]})", task.license, status])
    roots = {"icbhi": icbhi_root, "sprsound": sprsound_root}
    for name, task in TASKS.items():
        status = data_status(task.dataset, roots[task.dataset])
        rows.append([name, DESCRIPTIONS[name], SOURCES[task.dataset][1], status])
    footer = "\nData: " + "; ".join(source for source, _ in SOURCES.values())
    return format_table(header, rows) + footer


def build_and_save_task(
    name,
    output,
    opera_root=None,
    icbhi_root=None,
    sprsound_root=None,
    settings=None,
    skip_invalid=False,
    overwrite=False,
):
    """
    Builds one task (an OPERA id or a cycle/event task) and saves it with `save_to_disk` into `output`, which must be
    empty unless `overwrite`; returns a report text. Options that do not apply to the task are refused.
    """
    settings = settings or TaskBenchmarkSettings()
    if name.upper() in OPERA_TASKS or name in {task.name for task in OPERA_TASKS.values()}:
        check_options_apply([name], {"opera"}, settings, skip_invalid)
        if opera_root is None:
            raise ValueError(f"{name} is an OPERA task: pass --opera-root.")
        return build_opera_task(name, opera_root, output, overwrite=overwrite)
    task = get_task(name)
    check_options_apply([name], {task.dataset}, settings, skip_invalid)
    inputs = (icbhi_root, sprsound_root)
    # before reading anything
    check_output_folder(output, overwrite, option="overwrite=True (--overwrite)", inputs=inputs, replaced=True)
    dataset, report = build_task_dataset(task, {"icbhi": icbhi_root, "sprsound": sprsound_root}, settings, skip_invalid)
    with atomic_folder(output) as folder:
        dataset.save_to_disk(str(folder))
    return f"{report}\nSaved {name} to {output} (columns: {', '.join(dataset[next(iter(dataset))].column_names)})."


__all__ = ["build_and_save_task", "list_all_tasks"]
