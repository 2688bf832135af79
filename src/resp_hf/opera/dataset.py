"""Turning an OPERA checkout into a `DatasetDict` for one task: rows, manifest check, validation, audio checks."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value

from ..models.resp_m2d.audio_utils_resp_m2d import load_audio, sound_info
from .files import SHOWN, OperaDataError
from .registry import get_task

TARGET_SAMPLING_RATE = 16000
SPLIT_ORDER = ("train", "validation", "test")


@dataclass
class BuildReport:
    """What a build used and left out."""

    task_id: str
    rows: int = 0  # rows the metadata gives, before recordings are left out
    missing: list = field(default_factory=list)
    unreadable: dict = field(default_factory=dict)
    left_out: dict = field(default_factory=dict)  # {split: recordings left out}
    notes: list = field(default_factory=list)

    def left_out_note(self):
        """How many recordings were left out (missing or unreadable audio), per split; None when none were."""
        if not self.left_out:
            return None
        counts = ", ".join(f"{split} {count}" for split, count in self.left_out.items())
        total = sum(self.left_out.values())
        return f"{self.task_id}: left out {total} of {self.rows} recordings, missing or unreadable ({counts})."

    def summary(self, dataset):
        """Split sizes and label counts as a Markdown table, plus what was left out."""
        label_feature = next(iter(dataset.values())).features["label"]
        names = label_feature.names if isinstance(label_feature, ClassLabel) else None
        header = "| split | rows | " + (" | ".join(names) if names else "label mean | label range") + " |"
        lines = [header, "|---" * (header.count("|") - 1) + "|"]
        for split, part in dataset.items():
            labels = np.asarray(part["label"])
            if names:
                counts = [str(int((labels == i).sum())) for i in range(len(names))]
            else:
                counts = [f"{labels.mean():.3f}", f"{labels.min():.3f}-{labels.max():.3f}"] if len(labels) else ["", ""]
            lines.append(f"| {split} | {len(labels)} | " + " | ".join(counts) + " |")
        if self.missing:
            lines.append(f"\nLeft out {len(self.missing)} missing audio files, e.g. {', '.join(self.missing[:SHOWN])}")
        for path, error in self.unreadable.items():
            lines.append(f"Left out unreadable file {path}: {error}")
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def check_root(opera_root):
    root = Path(opera_root)
    if not root.is_dir():
        raise FileNotFoundError(f"OPERA root not found: {root}")
    return root


def check_recordings(root, paths, report):
    """
    Decodes every recording in full at its own rate (no resampling), as the benchmark will (channels averaged, like
    OPERA's `librosa.load`): `{path: error}` for those that cannot be used (not audio, truncated, empty, NaN or Inf
    samples). Multichannel recordings are named in a note of the `report`.
    """
    problems, multichannel = {}, []
    for path in paths:
        try:
            info = sound_info(root / path, "the file")
            load_audio(root / path, info.samplerate, downmix=True, name="the file")
        except ValueError as error:
            problems[path] = str(error)
            continue
        if info.channels > 1:
            multichannel.append(path)
    if multichannel:
        report.notes.append(
            f"{len(multichannel)} recordings have several channels, averaged when decoded (as OPERA's librosa.load "
            f"does; pass downmix=True to decode_audio_column), e.g. {', '.join(multichannel[:SHOWN])}."
        )
    return problems


def drop_unavailable(rows, root, allow_missing, report):
    """Removes rows whose audio is missing or unreadable, or fails with how many and which, unless allowed."""
    report.missing = [row["path"] for row in rows if not (root / row["path"]).is_file()]
    if report.missing and not allow_missing:
        raise OperaDataError(
            f"{len(report.missing)} of {len(rows)} audio files of {report.task_id} are missing under {root}, e.g. "
            f"{', '.join(report.missing[:SHOWN])}. Download the dataset, or pass allow_missing=True "
            "(--allow-missing) to leave them out."
        )
    missing = set(report.missing)
    present = [row for row in rows if row["path"] not in missing]
    report.unreadable = check_recordings(root, [row["path"] for row in present], report)
    if report.unreadable and not allow_missing:
        details = "; ".join(f"{path}: {error}" for path, error in list(report.unreadable.items())[:SHOWN])
        raise OperaDataError(
            f"{len(report.unreadable)} audio files of {report.task_id} cannot be read: {details}. "
            "Replace them, or pass allow_missing=True (--allow-missing) to leave them out."
        )
    kept = [row for row in present if row["path"] not in report.unreadable]
    report.left_out = left_out_by_split(rows, kept)
    return kept


def left_out_by_split(rows, kept):
    """`{split: rows not kept}` in split order, for the splits that lost any."""
    kept_paths = {row["path"] for row in kept}
    counts = Counter(row["split"] for row in rows if row["path"] not in kept_paths)
    return {split: counts[split] for split in SPLIT_ORDER if counts[split]}


def task_features(task, rows):
    """Features: audio path (cast to `Audio` later), label (ClassLabel or float), path, then the metadata columns."""
    columns = {
        "audio": Value("string"),
        "label": ClassLabel(names=list(task.label_names)) if task.label_names else Value("float32"),
        "path": Value("string"),
    }
    for name in rows[0]:
        if name not in ("audio", "label", "path", "split"):
            columns[name] = metadata_feature([row[name] for row in rows])
    return Features(columns)


def metadata_feature(values):
    present = [value for value in values if value is not None]
    if present and all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in present):
        return Value("int64")
    if present and all(isinstance(value, (int, float, np.number)) and not isinstance(value, bool) for value in present):
        return Value("float64")
    return Value("string")


def to_dataset_dict(task, rows, root):
    """One `Dataset` per split; `audio` holds absolute paths as a path-based `Audio` column (no decoding needed)."""
    features = task_features(task, rows)
    splits = {}
    for split in SPLIT_ORDER:
        part = [row for row in rows if row["split"] == split]
        if part:
            columns = {name: [row[name] for row in part] for name in features if name != "audio"}
            columns["audio"] = [str((root / row["path"]).resolve()) for row in part]
            dataset = Dataset.from_dict(columns, features=features)
            splits[split] = dataset.cast_column("audio", Audio(sampling_rate=TARGET_SAMPLING_RATE))
    return DatasetDict(splits)


def build_task(task_id, opera_root, allow_missing=False, return_report=False):
    """
    Builds an OPERA task as a `DatasetDict` (`train`/`validation`/`test`, or a `fold` column for leave-one-subject-out
    tasks) with a path-based `audio` column (16 kHz target), `label`, the original relative `path`, a subject id and
    the metadata the source has.

    Labels and splits follow OPERA: derived from the dataset's metadata and, where the checkout holds OPERA's committed
    manifest, checked against it sample for sample (a disagreement is an error). Missing or unreadable audio files are
    an error that names them, unless `allow_missing=True` leaves them out (they are listed in the report).

    Returns the `DatasetDict`, or `(DatasetDict, BuildReport)` with `return_report=True`.
    """
    task = get_task(task_id)
    root = check_root(opera_root)
    report = BuildReport(task.id)
    rows = task.builder(task, root, report)
    report.rows = len(rows)
    rows = drop_unavailable(rows, root, allow_missing, report)
    if not rows:
        raise OperaDataError(f"No audio of {task.id} is available under {root}.")
    dataset = to_dataset_dict(task, rows, root)
    return (dataset, report) if return_report else dataset
