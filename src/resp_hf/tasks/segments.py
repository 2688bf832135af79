"""Annotated segments (respiratory cycles, events) of recordings: decoding, fixed-length windows, validation splits.

Both the ICBHI cycle task and the SPRSound event tasks store a segment as `path`, `start` and `end` (seconds);
`decode_segments` adds an `audio` column, decoded on access with the package's soundfile + soxr reader.
"""

import math
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, DatasetDict

from ..audio import check_sampling_rate, decode_audio
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
        if not self.seconds > 0:
            raise ValueError(f"The window length must be positive, got {self.seconds} seconds.")


def segment_problem(start, end, duration):
    """
    Why a segment of a `duration`-second file cannot be read (None when it can): a time that is not a finite,
    non-negative number, zero or negative length, or starting after the file ends. One ending after the file is
    readable (clipped to the file).
    """
    if not (math.isfinite(start) and math.isfinite(end) and start >= 0):
        return f"times must be finite and non-negative ({start} to {end} s)"
    if end <= start:
        return f"zero or negative length ({start} to {end} s)"
    if start >= duration:
        return f"starts at {start} s, after the end of the file ({duration:.3f} s)"
    return None


def segment_clipping(end, duration):
    """How a readable segment ending after its `duration`-second file is clipped (None when it is not)."""
    return f"ends at {end} s, the file at {duration:.3f} s" if end > duration else None


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

    def __call__(self, batch: dict) -> dict:
        audio = []
        for path, start, end in zip(batch["path"], batch["start"], batch["end"]):
            segment = decode_audio({"path": path, "start": start, "end": end}, self.sampling_rate, downmix=True)
            if self.window is not None:
                segment = fit_segment(segment, self.sampling_rate, self.window)
            audio.append({"array": segment, "sampling_rate": self.sampling_rate, "path": path})
        return {**batch, "audio": audio}


def decode_segments(dataset, sampling_rate=16000, window=None):
    """
    Returns `dataset` (a `Dataset` or `DatasetDict` with `path`, `start`, `end` columns) with an `audio` column
    decoded on access: `{"array": float32 mono, "sampling_rate", "path"}`, fitted to `window` when one is given.
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    if isinstance(dataset, DatasetDict):
        return DatasetDict({name: decode_segments(split, sampling_rate, window) for name, split in dataset.items()})
    missing = [column for column in ("path", "start", "end") if column not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset lacks the segment column(s) {missing}; it has {dataset.column_names}.")
    return dataset.with_transform(SegmentDecoder(sampling_rate, window))


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
    "rows_to_splits",
    "segment_clipping",
    "segment_problem",
]
