"""The SPRSound (SJTU Paediatric Respiratory Sound Database) challenge tasks, from the release layout.

The release (github.com/SJTU-YONGFU-RESEARCH-GRP/SPRSound) pairs each `.wav` with a `.json` of the same name:
`{"record_annotation": "Normal" | "CAS" | "DAS" | "CAS & DAS" | "Poor Quality", "event_annotation": [{"start": "784",
"end": "2652", "type": "Normal"}, ...]}` (times in milliseconds, as strings or numbers). File names are
`<patient>_<age>_<gender 0 male | 1 female>_<location p1-p4>_<recording number>`. Official splits (BioCAS 2022 and
2023 challenges): `train2022_json` (or `train_json`) with `train2022_wav` (`train_wav`); the 2022 test set's
`inter_test_json` and `intra_test_json` with `test2022_wav` (`test_wav`); the 2023 test set `test2023_json` with
`test2023_wav`. The 2023 challenge trains on the 2022 training set.

Tasks (README "Main Tasks"): 1-1 event normal / adventitious, 1-2 the seven event types, 2-1 record normal / poor
quality / adventitious, 2-2 record normal / poor quality / CAS / DAS / CAS & DAS. Class orders follow the challenge's
starter code (`scripts/test.py`), Normal first. Scores: `resp_hf.metrics.sprsound_scores`.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel, Features, Value

from ..opera.files import read_text
from .segments import carve_validation, files_by_stem, readable_segments, recording_duration, rows_to_splits

EVENT_TYPES = ("Normal", "Rhonchi", "Wheeze", "Stridor", "Coarse Crackle", "Fine Crackle", "Wheeze+Crackle")
RECORD_TYPES = ("Normal", "Poor Quality", "CAS", "DAS", "CAS & DAS")
TASK_LABELS = {
    "event_binary": ("Normal", "Adventitious"),  # Task 1-1
    "event_multiclass": EVENT_TYPES,  # Task 1-2
    "record_ternary": ("Normal", "Poor Quality", "Adventitious"),  # Task 2-1
    "record_multiclass": RECORD_TYPES,  # Task 2-2
}
# Official split -> (annotation folder names, audio folder names), newest release layout first.
SPLIT_FOLDERS = {
    "train": (("train2022_json", "train_json"), ("train2022_wav", "train_wav")),
    "inter_test_2022": (("inter_test_json",), ("test2022_wav", "test_wav")),
    "intra_test_2022": (("intra_test_json",), ("test2022_wav", "test_wav")),
    "test_2023": (("test2023_json",), ("test2023_wav",)),
}
VALIDATION_SEED = 1337
VALIDATION_FRACTION = 0.2


class SprsoundDataError(ValueError):
    """The SPRSound folder or one of its files does not have the expected content."""


@dataclass
class SprsoundReport:
    """Rows per split and label, the events clipped at the end of their file and those left out (`skip_invalid`)."""

    task: str
    counts: dict = field(default_factory=dict)
    clipped: list = field(default_factory=list)  # "file event N: ends at X s, the file at Y s"
    skipped: list = field(default_factory=list)  # "file event N: reason"
    validation_patients: list = field(default_factory=list)

    def __str__(self):
        lines = [f"SPRSound {self.task}:"]
        for split, counts in self.counts.items():
            detail = ", ".join(f"{count} {name}" for name, count in counts.items())
            lines.append(f"  {split}: {sum(counts.values())} ({detail})")
        lines += [f"  clipped at the end of the file: {item}" for item in self.clipped]
        lines += [f"  left out: {item}" for item in self.skipped]
        return "\n".join(lines)


def task_features(task):
    return Features(
        {
            "path": Value("string"),
            "start": Value("float64"),
            "end": Value("float64"),
            "label": ClassLabel(names=list(TASK_LABELS[task])),
            "patient": Value("string"),
            "age": Value("float64"),
            "gender": Value("string"),
            "location": Value("string"),
            "recording": Value("string"),
            "event": Value("int32"),
            "event_type": Value("string"),
            "record_annotation": Value("string"),
        }
    )


def parse_name(stem, path):
    """Patient, age, gender and location from a SPRSound file name."""
    parts = stem.split("_")
    try:
        age = float(parts[1])
    except (IndexError, ValueError):
        age = math.nan
    if len(parts) != 5 or not (math.isfinite(age) and age >= 0) or parts[2] not in ("0", "1"):
        raise SprsoundDataError(f"{path}: not a SPRSound name (<patient>_<age>_<0|1>_<location>_<number>).")
    return {"patient": parts[0], "age": age, "gender": "male" if parts[2] == "0" else "female", "location": parts[3]}


def not_json(constant):
    """`json.loads`'s `parse_constant`: NaN and Infinity are not JSON, though Python's parser accepts them."""
    raise ValueError(f"{constant} is not a JSON value")


def read_time(value) -> float:
    """Seconds from a JSON time in milliseconds: a number or a string holding one (`true` is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"time {value!r} is not a number")
    return float(value) / 1000


def read_event(event):
    """`(start s, end s, type)` of one JSON event (times in milliseconds, checked by `segment_problem`)."""
    start, end = read_time(event["start"]), read_time(event["end"])
    if not isinstance(event["type"], str):
        raise TypeError(f"type {event['type']!r} is not a string")
    return start, end, event["type"]


def read_annotation(path):
    """`(record annotation, [(start s, end s, type)])` from one JSON file; unknown labels are errors naming it."""
    text = read_text(path, SprsoundDataError)
    try:
        content = json.loads(text, parse_constant=not_json)
        record = content.get("record_annotation", content.get("recording_annotation"))
        events = [read_event(event) for event in content["event_annotation"]]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as error:
        raise SprsoundDataError(
            f"{path}: expected {{'record_annotation': ..., 'event_annotation': [{{'start', 'end', 'type'}}]}} "
            f"({error})."
        ) from None
    if record not in RECORD_TYPES:
        raise SprsoundDataError(f"{path}: unknown record annotation {record!r}; expected one of {list(RECORD_TYPES)}.")
    unknown = sorted({kind for _, _, kind in events} - set(EVENT_TYPES))
    if unknown:
        raise SprsoundDataError(f"{path}: unknown event type(s) {unknown}; expected {list(EVENT_TYPES)}.")
    return record, events


def task_label(task, record, event_type=None):
    """The class index of an event or record in `task`."""
    if task == "event_binary":
        return int(event_type != "Normal")
    if task == "event_multiclass":
        return EVENT_TYPES.index(event_type)
    if task == "record_ternary":
        return {"Normal": 0, "Poor Quality": 1}.get(record, 2)
    return RECORD_TYPES.index(record)


def find_folders(root, names):
    """Folders under `root` (or `root` itself) whose name is in `names`, in `names` order."""
    found = [path for path in [root, *root.rglob("*")] if path.is_dir() and path.name in names]
    return sorted(found, key=lambda path: (names.index(path.name), str(path)))


def single_folder(root: Path, names: tuple, split: str) -> Path | None:
    """
    The folder under `root` named one of `names` for `split` (None when there is none). Copies of one folder (same
    file names and sizes: the official repository holds `BioCAS2022/` and `releases/BioCAS2022/`) count as one, the
    first is read; folders that differ are an error naming them.
    """
    found = find_folders(root, names)
    listings = {tuple(sorted((path.name, path.stat().st_size) for path in folder.iterdir())) for folder in found}
    if len(listings) > 1:
        raise SprsoundDataError(
            f"{len(found)} different folders under {root} could hold the {split} split: "
            f"{[str(path) for path in found]}; keep one."
        )
    return found[0] if found else None


def split_files(root: Path, split: str, json_folder: Path, audio: dict) -> list:
    """
    `[(split, json path, wav path)]` of the annotations in `json_folder`, with `audio` the split's `{stem: wav path}`;
    one without its audio is an error.
    """
    wav_names = SPLIT_FOLDERS[split][1]
    files = []
    for annotation in sorted(json_folder.glob("*.json")):
        if annotation.stem not in audio:
            raise FileNotFoundError(
                f"No audio for {annotation}: expected {annotation.stem}.wav in one of {list(wav_names)} under {root}."
            )
        files.append((split, annotation, audio[annotation.stem].resolve()))
    return files


def check_each_recording_once(files: list) -> None:
    """A recording (file name) annotated in two official splits, or twice, is an error naming both annotations."""
    seen = {}
    for split, annotation, _ in files:
        if annotation.stem in seen:
            other_split, other = seen[annotation.stem]
            raise SprsoundDataError(
                f"{other} ({other_split}) and {annotation} ({split}) annotate the same recording "
                f"{annotation.stem}: a recording belongs to one split; remove one of them."
            )
        seen[annotation.stem] = split, annotation


def check_every_recording_annotated(files: list, audio_by_folder: dict) -> None:
    """A `.wav` of the release's audio folders (`{folder: {stem: path}}`) that no annotation names is an error."""
    annotated = {audio for _, _, audio in files}
    for folder, audio in sorted(audio_by_folder.items()):
        alone = [path for path in audio.values() if path.resolve() not in annotated]
        if alone:
            raise SprsoundDataError(
                f"{len(alone)} recording(s) in {folder} have no annotation, e.g. {[path.name for path in alone[:3]]}: "
                "expected a .json of the same name in the split's annotation folder."
            )


def release_files(root: Path) -> list:
    """
    `[(split, json path, wav path)]` of every official split the release at `root` holds. Two folders for one split,
    a recording in two splits, an annotation without audio or audio without annotation are errors naming them.
    """
    folders = {
        split: (single_folder(root, json_names, split), single_folder(root, wav_names, split))
        for split, (json_names, wav_names) in SPLIT_FOLDERS.items()
    }
    audio_by_folder = {  # each audio folder listed once (the 2022 test splits share one)
        folder: files_by_stem(folder, ".wav", SprsoundDataError) for _, folder in folders.values() if folder
    }
    files = []
    for split, (json_folder, wav_folder) in folders.items():
        if json_folder:
            files += split_files(root, split, json_folder, audio_by_folder.get(wav_folder, {}))
    check_each_recording_once(files)
    check_every_recording_annotated(files, audio_by_folder)
    return files


def recording_rows(task, annotation, audio, split, report, skip_invalid):
    """The rows of one recording: one per event for event tasks, one for the record for record tasks."""
    record, events = read_annotation(annotation)
    duration = recording_duration(audio, "SPRSound")
    base = {
        "path": str(audio),
        "recording": annotation.stem,
        "record_annotation": record,
        "split": split,
        **parse_name(annotation.stem, annotation),
    }
    if task.startswith("record"):
        label = task_label(task, record)
        return [{**base, "start": 0.0, "end": duration, "event": -1, "event_type": "", "label": label}]
    times = [(start, end) for start, end, _ in events]
    rows = []
    for index in readable_segments(times, duration, annotation.name, "event", skip_invalid, SprsoundDataError, report):
        start, end, kind = events[index]
        label = task_label(task, record, kind)
        rows.append({**base, "start": start, "end": end, "event": index, "event_type": kind, "label": label})
    return rows


def build_sprsound(
    root,
    task="event_binary",
    validation_fraction=VALIDATION_FRACTION,
    seed=VALIDATION_SEED,
    skip_invalid=False,
):
    """
    One SPRSound task as a `DatasetDict` (`train`, `validation` unless `validation_fraction` is 0, and each official
    test split the release holds: `inter_test_2022`, `intra_test_2022`, `test_2023`) and a `SprsoundReport`.

    Rows have `path`, `start`, `end` (seconds; the whole file for record tasks), `label`, `patient`, `age`, `gender`,
    `location`, `recording`, `event` (index in the JSON, -1 for records), `event_type` and `record_annotation`.
    The validation split holds a seeded random set of training patients (none of them left in train). The checks of
    `release_files` apply; a truncated, unreadable or multichannel recording is an error naming it. An event whose
    times `segment_problem` refuses or repeat an earlier event's is an error naming it, or with `skip_invalid` left
    out and listed in the report.
    """
    if task not in TASK_LABELS:
        raise ValueError(f"Unknown SPRSound task {task!r}; expected one of {list(TASK_LABELS)}.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SPRSound folder not found: {root}")
    report = SprsoundReport(task)
    rows = []
    for split, annotation, audio in release_files(root):
        rows += recording_rows(task, annotation, audio, split, report, skip_invalid)
    if not any(row["split"] == "train" for row in rows):
        raise FileNotFoundError(f"No SPRSound training annotations under {root}: expected a train2022_json folder.")
    if validation_fraction:
        report.validation_patients = carve_validation(rows, validation_fraction, seed, "SPRSound")
    split_names = ("train", "validation", *list(SPLIT_FOLDERS)[1:])
    dataset, report.counts = rows_to_splits(rows, task_features(task), split_names)
    return dataset, report


__all__ = ["EVENT_TYPES", "RECORD_TYPES", "TASK_LABELS", "SprsoundDataError", "build_sprsound"]
