"""Annotated segments (respiratory cycles, events) of recordings: the checks of their files, decoding, fixed-length
windows, validation splits.

Both the ICBHI cycle task and the SPRSound event tasks store a segment as `path`, `start` and `end` (seconds);
`decode_segments` adds an `audio` column, decoded on access with the package's soundfile + soxr reader.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from ..audio import check_sampling_rate, check_window_seconds, decode_audio, segment_problem
from ..models.resp_m2d.audio_utils_resp_m2d import check_not_truncated, sound_info
from ..splits import seeded_split

PAD_MODES = ("repeat", "zero")


@dataclass(frozen=True)
class SegmentWindow:
    """
    The fixed-length input rule of the ICBHI cycle recipe (Patch-Mix, `util/icbhi_util.py`
    `cut_pad_sample_torchaudio`, taken from SCL's `dataset.py`; also used by M2D's `app/icbhi_sprs`): a segment longer
    than `seconds` keeps its first `seconds`; a shorter one is repeated end to end and cut to `seconds` (`repeat`,
    then a linear fade-out over the last 1/16 s) or centred in zeros (`zero`). Defaults: 8 s, `repeat`.
    """

    seconds: float = 8.0
    pad: str = "repeat"
    fade_out_fraction: float = 1 / 16  # seconds of fade-out as a fraction of one second (1/16 s in the recipe)

    def __post_init__(self):
        if self.pad not in PAD_MODES:
            raise ValueError(f"Unknown pad mode {self.pad!r}; expected one of {list(PAD_MODES)}.")
        check_window_seconds(self.seconds)


def segment_problems(times: list, duration: float, noun: str) -> dict:
    """
    `{index: why}` for the `(start, end)` segments of one file that cannot be read (`segment_problem`) or repeat the
    times of an earlier segment (the later copy is the problem); `noun` names a segment ("cycle", "event").
    """
    problems, first_index = {}, {}
    for index, (start, end) in enumerate(times):
        problem = segment_problem(start, end, duration)
        if problem is None and (start, end) in first_index:
            problem = f"repeats {noun} {first_index[start, end]} ({start} to {end} s)"
        if problem:
            problems[index] = problem
        first_index.setdefault((start, end), index)
    return problems


def segment_clipping(end, duration):
    """How a readable segment ending after its `duration`-second file is clipped (None when it is not)."""
    return f"ends at {end} s, the file at {duration:.3f} s" if end > duration else None


def readable_segments(
    times: list, duration: float, where: str, noun: str, skip_invalid: bool, error_type: type, report
) -> list:
    """
    The indices of the `(start, end)` segments of one `duration`-second file to keep (`where` names the file in
    messages, `noun` a segment). One that `segment_problems` refuses is an error of `error_type` naming it, or with
    `skip_invalid` left out and listed in `report.skipped`; one ending after the file is kept and listed in
    `report.clipped`.
    """
    problems = segment_problems(times, duration, noun)
    described = [f"{where} {noun} {index}: {problem}" for index, problem in problems.items()]
    if described and not skip_invalid:
        raise error_type(
            f"{len(described)} {noun}(s) cannot be read: {'; '.join(described)}. Fix the annotation file(s) or pass "
            "skip_invalid=True (--skip-invalid-cycles) to leave them out; they are then listed in the report."
        )
    report.skipped += described
    kept = [index for index in range(len(times)) if index not in problems]
    for index in kept:
        clipping = segment_clipping(times[index][1], duration)
        if clipping:
            report.clipped.append(f"{where} {noun} {index}: {clipping}")
    return kept


def files_by_stem(folder: Path, suffix: str, error_type: type) -> dict:
    """
    `{stem: path}` of the files in `folder` ending in `suffix` in any case (`.wav`, `.WAV`); two files of one stem are
    an error naming both.
    """
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != suffix or not path.is_file():
            continue
        if path.stem in found:
            raise error_type(f"{found[path.stem]} and {path} are the same recording: keep one.")
        found[path.stem] = path
    return found


def recording_duration(path: Path, dataset: str) -> float:
    """
    The duration in seconds of a mono recording of `dataset`, from its header. A file that holds less audio than its
    header says, cannot be read, holds no audio or has several channels (the releases are mono) is an error naming it.
    """
    with open(path, "rb") as stream:
        check_not_truncated(stream, str(path))
        info = sound_info(stream, str(path))
    if info.frames == 0:
        raise ValueError(f"{path} holds no audio; re-copy it from the {dataset} release.")
    if info.channels != 1:
        raise ValueError(
            f"{path} has {info.channels} channels, but the {dataset} recordings are mono: replace it with the mono "
            "original (the build does not average channels)."
        )
    return info.frames / info.samplerate


def fit_segment(audio, sampling_rate, window):
    """Crops or pads one segment to `window.seconds` with `window.pad` (see `SegmentWindow`)."""
    target = int(window.seconds * sampling_rate)
    if len(audio) > target:
        return audio[:target].copy()
    if window.pad == "zero":
        padded = np.zeros(target, dtype=np.float32)
        offset = (target - len(audio)) // 2
        padded[offset : offset + len(audio)] = audio
        return padded
    repeated = np.tile(audio, math.ceil(target / len(audio)))[:target].astype(np.float32)
    fade_length = int(sampling_rate * window.fade_out_fraction)
    if fade_length:
        repeated[target - fade_length :] *= np.linspace(1.0, 0.0, fade_length, dtype=np.float32)
    return repeated


@dataclass(frozen=True)
class SegmentDecoder:
    """
    The `with_transform` function of `decode_segments`: adds the decoded (and fitted) `audio` of each row's segment.

    A class rather than a closure, for the reason given in `resp_hf.audio.AudioColumnDecoder`.
    """

    sampling_rate: int
    window: SegmentWindow | None
    downmix: bool = False

    def __call__(self, batch: dict) -> dict:
        audio = []
        for path, start, end in zip(batch["path"], batch["start"], batch["end"]):
            segment = decode_audio({"path": path, "start": start, "end": end}, self.sampling_rate, self.downmix)
            if self.window is not None:
                segment = fit_segment(segment, self.sampling_rate, self.window)
            audio.append({"array": segment, "sampling_rate": self.sampling_rate, "path": path})
        return {**batch, "audio": audio}


def decode_segments(
    dataset: Dataset | DatasetDict,
    sampling_rate: int = 16000,
    window: SegmentWindow | None = None,
    downmix: bool = False,
) -> Dataset | DatasetDict:
    """
    Returns `dataset` (a `Dataset` or `DatasetDict` with `path`, `start`, `end` columns) with an `audio` column
    decoded on access: `{"array": float32 mono, "sampling_rate", "path"}`, fitted to `window` when one is given.
    A multichannel recording is an error unless `downmix=True` (its channels are then averaged); bounds that
    `segment_problem` refuses are an error naming the file.
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {name: decode_segments(split, sampling_rate, window, downmix) for name, split in dataset.items()}
        )
    missing = [column for column in ("path", "start", "end") if column not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset lacks the segment column(s) {missing}; it has {dataset.column_names}.")
    return dataset.with_transform(SegmentDecoder(sampling_rate, window, downmix))


def carve_validation(rows, fraction, seed, dataset_name):
    """
    Moves the rows of a seeded random set of training patients from split `train` to `validation`, so that no
    validation patient has training rows: patients are shuffled with `numpy.random.default_rng(seed)` and taken until
    their rows reach `fraction` of the training rows (at least one patient stays in train; see
    `resp_hf.splits.seeded_split`). Returns the chosen patients, sorted.
    """
    train = [row for row in rows if row["split"] == "train"]
    patients = [row["patient"] for row in train]
    try:
        _, held_out = seeded_split(len(train), fraction, seed, groups=patients, generator="default_rng")
    except ValueError as error:
        raise ValueError(
            f"The {dataset_name} training split has {len(set(patients))} patient(s) and no patient-disjoint validation "
            f"split of fraction {fraction}: {error} Pass validation_fraction=0 (--validation-fraction 0) to build "
            "without it."
        ) from error
    for index in held_out:
        train[index]["split"] = "validation"
    return sorted({train[index]["patient"] for index in held_out})


def rows_to_splits(rows, features, split_names):
    """`(DatasetDict, {split: {label name: rows}})` from row dicts with a `split` key; empty splits are left out."""
    names = features["label"].names
    dataset, counts = DatasetDict(), {}
    for split in split_names:
        split_rows = [row for row in rows if row["split"] == split]
        if not split_rows:
            continue
        columns = {key: [row[key] for row in split_rows] for key in features}
        dataset[split] = Dataset.from_dict(columns, features=features)
        counts[split] = {name: sum(row["label"] == index for row in split_rows) for index, name in enumerate(names)}
    return dataset, counts


__all__ = [
    "SegmentWindow",
    "carve_validation",
    "decode_segments",
    "fit_segment",
    "readable_segments",
    "rows_to_splits",
    "segment_clipping",
    "segment_problem",
    "segment_problems",
]
