"""The ICBHI 2017 respiratory-cycle task: every annotated cycle as a row, on the official 60/40 split.

An ICBHI folder holds `ICBHI_final_database/` (920 recordings `<patient>_<index>_<chest location>_<mode>_<device>.wav`
with annotation files of the same name: one cycle per line, `start  end  crackles  wheezes`, seconds and 0/1 flags)
and `ICBHI_challenge_train_test.txt` (`<recording>  train|test`, the official split by recording). Labels follow
the challenge: normal (no flag), crackle, wheeze, both; the 2-class label is normal / abnormal.
"""

from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel, Features, Value

from ..opera.files import read_text
from .segments import carve_validation, files_by_stem, readable_segments, recording_duration, rows_to_splits

LABELS = ("normal", "crackle", "wheeze", "both")
BINARY_LABELS = ("normal", "abnormal")
SPLIT_FILE = "ICBHI_challenge_train_test.txt"
DATABASE_FOLDER = "ICBHI_final_database"
OFFICIAL_SPLITS = ("train", "test")
# The database paper (Rocha et al., "An open access database for the evaluation of respiratory sound classification
# algorithms", Physiol. Meas. 2019) and the challenge split file: recordings, cycles per label and per split.
OFFICIAL_COUNTS = {
    "recordings": 920,
    "cycles": 6898,
    "normal": 3642,
    "crackle": 1864,
    "wheeze": 886,
    "both": 506,
    "train": 4142,
    "test": 2756,
}
CHEST_LOCATIONS = {
    "Tc": "trachea",
    "Al": "anterior left",
    "Ar": "anterior right",
    "Pl": "posterior left",
    "Pr": "posterior right",
    "Ll": "lateral left",
    "Lr": "lateral right",
}
DEVICES = ("AKGC417L", "LittC2SE", "Litt3200", "Meditron")
VALIDATION_SEED = 1337
VALIDATION_FRACTION = 0.2

FEATURES = Features(
    {
        "path": Value("string"),
        "start": Value("float64"),
        "end": Value("float64"),
        "label": ClassLabel(names=list(LABELS)),
        "label_2class": ClassLabel(names=list(BINARY_LABELS)),
        "crackles": Value("int8"),
        "wheezes": Value("int8"),
        "patient": Value("string"),
        "recording": Value("string"),
        "cycle": Value("int32"),
        "chest_location": Value("string"),
        "acquisition_mode": Value("string"),
        "device": Value("string"),
    }
)


class IcbhiDataError(ValueError):
    """The ICBHI folder or one of its files does not have the expected content."""


@dataclass
class IcbhiReport:
    """What a build read and produced: counts per split and label, and every cycle it clipped or left out."""

    recordings: int = 0
    listed: int = 0  # recordings the split file names (more than `recordings` in a partial copy)
    counts: dict = field(default_factory=dict)  # {split: {label: cycles}}
    clipped: list = field(default_factory=list)  # "recording cycle N: ends at X s, the file at Y s"
    skipped: list = field(default_factory=list)  # "recording cycle N: reason"
    validation_patients: list = field(default_factory=list)
    validation_seed: int = VALIDATION_SEED

    def totals(self):
        """Cycles per label and per split over all splits, plus the number of recordings and cycles."""
        per_label = {name: sum(split.get(name, 0) for split in self.counts.values()) for name in LABELS}
        per_split = {split: sum(counts.values()) for split, counts in self.counts.items()}
        return {"recordings": self.recordings, "cycles": sum(per_label.values()), **per_label, **per_split}

    def __str__(self):
        lines = [f"ICBHI cycles: {self.recordings} recordings"]
        if self.listed > self.recordings < OFFICIAL_COUNTS["recordings"]:  # the split file names one .wav-less extra
            lines[0] += f" of the split file's {self.listed} (a partial copy: the others are not on disk)"
        for split, counts in self.counts.items():
            detail = ", ".join(f"{counts.get(name, 0)} {name}" for name in LABELS)
            lines.append(f"  {split}: {sum(counts.values())} cycles ({detail})")
        if self.validation_patients:
            lines.append(f"  validation patients (seed {self.validation_seed}): {', '.join(self.validation_patients)}")
        lines += [f"  clipped at the end of the file: {item}" for item in self.clipped]
        lines += [f"  left out: {item}" for item in self.skipped]
        return "\n".join(lines)


def locate(root):
    """`(database folder, split file)` of an ICBHI folder (or of the database folder itself, split file inside)."""
    root = Path(root)
    database = (root / DATABASE_FOLDER if (root / DATABASE_FOLDER).is_dir() else root).resolve()
    if not database.is_dir():
        raise FileNotFoundError(f"ICBHI folder not found: {root}")
    for candidate in (root / SPLIT_FILE, database / SPLIT_FILE):
        if candidate.is_file():
            return database, candidate
    raise FileNotFoundError(
        f"No {SPLIT_FILE} in {root} or {database}: download it from the ICBHI 2017 challenge page "
        "(https://bhichallenge.med.auth.gr) or pass split_file=."
    )


def read_split_file(path):
    """`{recording: "train" | "test"}` from the official split file; malformed or repeated lines are errors."""
    splits = {}
    for number, line in enumerate(read_text(path, IcbhiDataError).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in OFFICIAL_SPLITS:
            raise IcbhiDataError(f"{path} line {number}: expected '<recording> train|test', got {line!r}.")
        if parts[0] in splits:
            raise IcbhiDataError(f"{path} line {number}: recording {parts[0]} is listed twice.")
        splits[parts[0]] = parts[1]
    return splits


def parse_recording_name(name):
    """Patient, recording index, chest location, acquisition mode and device from an ICBHI file name."""
    parts = name.split("_")
    if len(parts) != 5 or parts[2] not in CHEST_LOCATIONS or parts[3] not in ("sc", "mc"):
        raise IcbhiDataError(
            f"{name} is not an ICBHI recording name (<patient>_<index>_<chest location>_<sc|mc>_<device>)."
        )
    return {
        "patient": parts[0],
        "chest_location": parts[2],
        "acquisition_mode": parts[3],
        "device": parts[4],
    }


def read_cycles(path):
    """`[(start, end, crackles, wheezes)]` from an annotation file; a malformed line, or none, is an error naming it."""
    cycles = []
    for number, line in enumerate(read_text(path, IcbhiDataError).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            start, end, crackles, wheezes = float(parts[0]), float(parts[1]), int(parts[2]), int(parts[3])
        except (ValueError, IndexError):
            message = f"{path} line {number}: expected 'start end crackles wheezes', got {line!r}."
            raise IcbhiDataError(message) from None
        if len(parts) != 4 or crackles not in (0, 1) or wheezes not in (0, 1):
            raise IcbhiDataError(f"{path} line {number}: expected 'start end 0|1 0|1', got {line!r}.")
        cycles.append((start, end, crackles, wheezes))
    if not cycles:
        raise IcbhiDataError(f"{path} holds no cycles: expected one 'start end crackles wheezes' line per cycle.")
    return cycles


def cycle_label(crackles, wheezes):
    """Index into `LABELS`: normal 0, crackle 1, wheeze 2, both 3."""
    return crackles + 2 * wheezes


def recording_files(database: Path, splits: dict, split_file: Path) -> dict:
    """
    `{recording: (audio path, annotation path)}` of the recordings in `database` (`.wav` in any case). A recording
    not in the split file, or one of the split file's recordings with only one of its two files, is an error naming it.
    """
    audio = files_by_stem(database, ".wav", IcbhiDataError)
    unlisted = [name for name in audio if name not in splits]
    if unlisted:
        raise IcbhiDataError(
            f"{len(unlisted)} recording(s) in {database} are not in the split file {split_file}, e.g. {unlisted[:3]}; "
            "use the official ICBHI_challenge_train_test.txt."
        )
    annotations = {
        name: path for name, path in files_by_stem(database, ".txt", IcbhiDataError).items() if name in splits
    }
    alone = sorted(set(audio) ^ set(annotations))
    if alone:
        missing = [f"{name}.txt" if name in audio else f"{name}.wav" for name in alone]
        raise IcbhiDataError(
            f"Every ICBHI recording needs its .wav and .txt files: {database} lacks {len(missing)} file(s), "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}."
        )
    if not audio:
        raise FileNotFoundError(f"No .wav recordings in {database}.")
    return {name: (audio[name], annotations[name]) for name in sorted(audio)}


def recording_rows(
    recording: str, audio_path: Path, annotation_path: Path, split: str, report: IcbhiReport, skip_invalid: bool
) -> list:
    """The rows of one recording's cycles; clipped and (with `skip_invalid`) left-out cycles go to `report`."""
    cycles = read_cycles(annotation_path)
    duration = recording_duration(audio_path, "ICBHI")
    metadata = parse_recording_name(recording)
    times = [(start, end) for start, end, _, _ in cycles]
    rows = []
    for index in readable_segments(times, duration, recording, "cycle", skip_invalid, IcbhiDataError, report):
        start, end, crackles, wheezes = cycles[index]
        label = cycle_label(crackles, wheezes)
        rows.append(
            {
                "path": str(audio_path),
                "start": start,
                "end": end,
                "label": label,
                "label_2class": int(label > 0),
                "crackles": crackles,
                "wheezes": wheezes,
                "recording": recording,
                "cycle": index,
                **metadata,
                "split": split,
            }
        )
    return rows


def build_icbhi_cycles(
    root,
    split_file=None,
    validation_fraction=VALIDATION_FRACTION,
    seed=VALIDATION_SEED,
    skip_invalid=False,
):
    """
    The ICBHI cycle task as a `DatasetDict` (`train`, `validation` unless `validation_fraction` is 0, `test`) and an
    `IcbhiReport`.

    Every cycle of every recording in the split file becomes one row: `path`, `start`, `end` (seconds), `label`
    (normal / crackle / wheeze / both), `label_2class` (normal / abnormal), `crackles`, `wheezes`, `patient`,
    `recording`, `cycle` (line index in the annotation file), `chest_location`, `acquisition_mode`, `device`.
    The recordings on disk are used (a partial copy builds a partial task); one not in the split file, or without
    its annotation or audio, is an error, as are an empty annotation file and a truncated, unreadable or
    multichannel recording. A cycle of zero length, starting after the end of its file or repeating an earlier
    cycle's times is an error naming it, or with `skip_invalid` left out and listed in the report; a cycle ending
    after the file is kept (read up to the end, as the recipe does) and listed in the report. Decode rows with
    `decode_segments`.
    """
    database, default_split_file = locate(root)
    split_file = split_file or default_split_file
    splits = read_split_file(split_file)
    files = recording_files(database, splits, split_file)
    report = IcbhiReport(validation_seed=seed)
    rows = []
    for recording, (audio_path, annotation_path) in files.items():
        rows += recording_rows(recording, audio_path, annotation_path, splits[recording], report, skip_invalid)
    report.recordings, report.listed = len(files), len(splits)
    if validation_fraction:
        report.validation_patients = carve_validation(rows, validation_fraction, seed, "ICBHI")
    dataset, report.counts = rows_to_splits(rows, FEATURES, ("train", "validation", "test"))
    return dataset, report


def compare_with_official(report):
    """
    Differences between a full build's counts and the official ones (`OFFICIAL_COUNTS`), as lines; an empty list
    when they agree. Validation cycles count as training cycles (they come from the official train split).
    """
    totals = report.totals()
    totals["train"] = totals.get("train", 0) + totals.pop("validation", 0)
    return [
        f"{key}: {totals.get(key, 0)} built, {expected} official"
        for key, expected in OFFICIAL_COUNTS.items()
        if totals.get(key, 0) != expected
    ]


def check_official_counts(report):
    """Raises IcbhiDataError when a build of the full database (920 recordings) differs from the official counts."""
    if report.recordings != OFFICIAL_COUNTS["recordings"]:
        return False  # a partial copy: nothing to compare
    differences = compare_with_official(report)
    if differences:
        raise IcbhiDataError("The build differs from the official ICBHI counts: " + "; ".join(differences) + ".")
    return True


__all__ = [
    "BINARY_LABELS",
    "LABELS",
    "OFFICIAL_COUNTS",
    "IcbhiDataError",
    "IcbhiReport",
    "build_icbhi_cycles",
    "check_official_counts",
    "compare_with_official",
]
