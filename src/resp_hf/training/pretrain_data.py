"""
Pre-training data: file lists of audio or precomputed log-mel `.npy` files and Hugging Face datasets, mixed by
repetition, cropped to units.
"""

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import torch
from datasets import Audio

from ..audio import decode_audio
from ..data import AUDIO_EXTENSIONS, is_saved_dataset, load_any_dataset
from ..models.resp_m2d import RespM2DFeatureExtractor
from ..output_folders import atomic_file, atomic_folder, check_output_folder, check_outside_inputs

# More zero-padding than this (seconds) is a mistake: M2D pads to 6.1 s, and each padded clip is held in memory.
MAX_MIN_SECONDS = 600


def raw_log_mel_extractor(config):
    """The model's front end without normalization: `log(mel + eps)`, for storing and for computing statistics."""
    extractor = RespM2DFeatureExtractor.from_model_config(config)
    extractor.mean, extractor.std = 0.0, 1.0
    return extractor


def parse_source(spec):
    """Splits `SOURCE[:N]` into (SOURCE, N)."""
    head, separator, tail = str(spec).rpartition(":")
    source, repeat = (head, int(tail)) if separator and tail.isdigit() else (str(spec), 1)
    if repeat < 1:
        raise ValueError(f"Pre-training source {spec!r}: the repetition count must be at least 1.")
    return source, repeat


def is_dataset(source):
    return source.startswith("hf:") or is_saved_dataset(Path(source))


def read_source(spec, audio_column="audio"):
    """
    Items of one pre-training source, optionally followed by `:N` to repeat it N times (the paper's
    "AudioSet + Resp x N" mixtures):

    - `list.csv` (a `path` column, relative to the CSV) or a folder of audio or `.npy` files: file paths;
    - a `save_to_disk` dataset folder or `hf:<Hub dataset id>`, optionally with `@SPLIT` (default `train`):
      `(dataset, row)` pairs whose `audio_column` is decoded with soundfile when read.
    """
    source, repeat = parse_source(spec)
    name, separator, split = source.rpartition("@")
    if separator and is_dataset(name):
        items = dataset_rows(name.removeprefix("hf:"), split, audio_column)
    elif is_dataset(source):
        items = dataset_rows(source.removeprefix("hf:"), "train", audio_column)
    else:
        items = file_paths(Path(source))
    if not items:
        raise ValueError(f"Pre-training source {source} holds no audio.")
    return items * repeat


def file_paths(location):
    """Audio and `.npy` paths of a CSV file list or a folder."""
    if location.is_dir():
        return sorted(str(p) for p in location.rglob("*") if p.suffix.lower() in (*AUDIO_EXTENSIONS, ".npy"))
    if location.suffix == ".csv" and location.is_file():
        with open(location, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "path" not in rows[0]:
            raise ValueError(f"{location} has no 'path' column (found {list(rows[0])}).")
        return [str((location.parent / row["path"]).resolve()) for row in rows]
    raise FileNotFoundError(
        f"Pre-training source not found: {location} (a .csv file list, a folder, a saved dataset or hf:<dataset>)."
    )


def listed_files(location):
    """The paths of a CSV file list or a folder (`file_paths`), refused when the list names files that do not exist."""
    paths = file_paths(location)
    missing = [(number, path) for number, path in enumerate(paths, start=2) if not Path(path).is_file()]
    if missing:
        number, path = missing[0]
        raise FileNotFoundError(
            f"{location} lists {len(missing)} files that do not exist (first: line {number}, {path}); remove them or "
            "fix their paths."
        )
    return paths


def dataset_rows(name, split, audio_column):
    """`(dataset, row)` pairs of one split of a dataset, its audio column kept undecoded (no torchcodec needed)."""
    splits = load_any_dataset(name)
    if split not in splits:
        raise ValueError(f"Dataset {name} has no split {split!r}; its splits: {list(splits)}. Choose one with @SPLIT.")
    dataset = splits[split]
    if audio_column not in dataset.column_names:
        raise ValueError(
            f"Dataset {name} ({split}) has no column {audio_column!r}; its columns: {dataset.column_names}. "
            "Name the audio column with --audio-column."
        )
    dataset = dataset.select_columns([audio_column])
    if isinstance(dataset.features[audio_column], Audio):
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    return [(dataset, row) for row in range(len(dataset))]


class LogMelUnits(torch.utils.data.Dataset):
    """
    Normalized log-mel crops of the unit size (n_mels x unit frames) of `items` from `read_source`. The crop position
    depends only on (seed, epoch, index), so an interrupted run resumes on exactly the same data. Audio shorter than
    `min_seconds` is zero-padded before the log-mel (M2D's `wav_to_lms.py` pads to 6.1 s).
    """

    def __init__(self, items, config, seed=0, min_seconds=0.0):
        self.items = list(items)
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.min_seconds = check_min_seconds(min_seconds)
        self.extractor = raw_log_mel_extractor(config)

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def log_mel(self, item):
        """Raw log-mel (n_mels, frames) of an audio file, a stored `.npy`, or a `(dataset, row)` pair."""
        rate = self.extractor.sampling_rate
        if isinstance(item, tuple):
            dataset, row = item
            audio = decode_audio(dataset[row][dataset.column_names[0]], rate, downmix=True)
        elif item.endswith(".npy"):
            return read_log_mel_file(item, self.config.num_mel_bins)
        else:
            audio = decode_audio(item, rate, downmix=True)
        audio = pad_to_seconds(audio, self.min_seconds, rate)
        return self.extractor(audio, sampling_rate=rate)["input_features"][0]

    def __getitem__(self, index):
        generator = np.random.default_rng([self.seed, self.epoch, index])
        crop = random_crop(self.log_mel(self.items[index]), self.config.unit_frames, generator)
        return (crop - self.config.norm_mean) / self.config.norm_std


def read_log_mel_file(path: str, num_mel_bins: int) -> torch.Tensor:
    """
    A stored raw log-mel (num_mel_bins, frames) as float32, never unpickled; a file that is not a whole `.npy` array of
    that shape holding finite floating-point values is refused, naming it.
    """
    try:
        with open(path, "rb") as handle:
            array = np.lib.format.read_array(handle, allow_pickle=False)
    except ValueError as error:  # truncated, not a .npy file, or an object array (which only pickle can read)
        raise ValueError(f"{path} is not a readable .npy log-mel: {error}") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path} holds {array.dtype} values, expected a floating-point log-mel.")
    if array.ndim != 2 or array.shape[0] != num_mel_bins or array.shape[1] == 0:
        raise ValueError(f"{path} holds shape {array.shape}, expected ({num_mel_bins}, frames).")
    with np.errstate(over="ignore"):  # float64 values beyond float32's range become Inf, refused next
        values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{path} holds NaN or Inf values: the log-mel is damaged; compute it again.")
    return torch.from_numpy(values)


def check_min_seconds(seconds):
    """`seconds` of zero-padding to at least, if it is a finite number from 0 to `MAX_MIN_SECONDS`."""
    is_number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    if not (is_number and 0 <= seconds <= MAX_MIN_SECONDS):
        raise ValueError(f"min_seconds must be a number from 0 to {MAX_MIN_SECONDS} (M2D: 6.1), got {seconds!r}.")
    return float(seconds)


def min_seconds_argument(text):
    """The `--min_seconds` option's type (`resp-hf logmel` and `resp-hf pretrain`)."""
    try:
        return check_min_seconds(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def pad_to_seconds(audio, seconds, sampling_rate):
    """`audio` zero-padded at the end to at least `seconds`."""
    missing = int(sampling_rate * seconds) - audio.shape[-1]
    return np.pad(audio, (0, missing)) if missing > 0 else audio


def random_crop(features, frames, generator):
    """
    A random `frames`-long window of a raw log-mel, zero-padded at the end when shorter (M2D's `complete_audio`: the
    start is drawn from 0 .. length - frames - 1, and padding comes before normalization).
    """
    length = features.shape[1]
    if length < frames:
        return torch.nn.functional.pad(features, (0, frames - length))
    start = int(generator.integers(0, length - frames)) if length > frames else 0
    return features[:, start : start + frames]


def norm_stats_from_crops(dataset, count=5000, seed=0):
    """
    Mean and std of the raw log-mel over `count` random unit-size crops, as M2D computes them at the start of
    training (audio_dataset.py: items drawn with replacement, one random crop each, std + float32 eps).
    """
    generator = np.random.default_rng(seed)
    total, total_squares, values = 0.0, 0.0, 0
    for index in generator.integers(0, len(dataset), size=count):
        crop = random_crop(dataset.log_mel(dataset.items[index]), dataset.config.unit_frames, generator).double()
        total += float(crop.sum())
        total_squares += float((crop**2).sum())
        values += crop.numel()
    mean = total / values
    variance = (total_squares - values * mean**2) / (values - 1)  # unbiased, as torch.std
    return mean, float(np.sqrt(max(variance, 0.0))) + float(torch.finfo().eps)


def precompute_log_mels(input_dir, output_dir, config, progress=True, min_seconds=0.0, overwrite=False):
    """
    Writes the raw log-mel of every audio file under `input_dir` as `.npy` plus a `files.csv` list to train on. The
    folder appears whole once every file is written; a non-empty `output_dir` is replaced only with `overwrite`.
    """
    from tqdm.auto import tqdm

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    dataset = LogMelUnits([], config, min_seconds=min_seconds)  # checks min_seconds before anything is read
    check_output_folder(output_dir, overwrite, inputs=(input_dir,), replaced=True)
    check_outside_inputs(output_dir, (input_dir,))  # its files.csv and .npy files would pass for part of the audio
    audio = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not audio:
        raise ValueError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) under {input_dir}.")
    written = []
    with atomic_folder(output_dir) as folder:
        for path in tqdm(audio, desc="Log-mel", disable=not progress):
            relative = path.relative_to(input_dir).with_suffix(".npy")
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            np.save(folder / relative, dataset.log_mel(str(path)).numpy().astype(np.float32))
            written.append(relative)
        write_file_list(folder / "files.csv", written)
    return output_dir / "files.csv"


def write_file_list(path, paths):
    """A CSV file list (one `path` column) that `read_source` reads, written atomically."""
    with atomic_file(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path"])
        writer.writerows([[str(item)] for item in paths])
    return path


# The M2D+Resp paper's further pre-training data (Interspeech 2025), counted in entries of its file lists.
PAPER_COUNTS = {
    "icbhi_train": 539,  # ICBHI 2017 training recordings (the official split lists 540; one has no recording)
    "icbhi": 539 * 6,
    "hf_lung": 3839,
    "coughvid": 7054,
    "respiratory": 14127,
    "respiratory_repeated": 409683,
    "audioset": 2005132,
    "mixture": 2414815,
}
ICBHI_SPLIT_FILE = "ICBHI_challenge_train_test.txt"
COUGHVID_METADATA = "metadata_compiled.csv"


def icbhi_training_recordings(folder):
    """
    The `.wav` of every recording the official split (`ICBHI_challenge_train_test.txt`, in `folder` or its parent)
    marks `train`, and the names it lists without a recording.
    """
    folder = Path(folder)
    split_files = [path / ICBHI_SPLIT_FILE for path in (folder, folder.parent) if (path / ICBHI_SPLIT_FILE).is_file()]
    if not split_files:
        raise FileNotFoundError(f"{ICBHI_SPLIT_FILE} (ICBHI's official split) is not in {folder} or its parent folder.")
    found, missing = [], []
    for number, line in enumerate(split_files[0].read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("train", "test"):
            raise ValueError(f"{split_files[0]}, line {number}: expected '<recording>\\t<train|test>', got {line!r}.")
        if fields[1] == "train":
            path = folder / f"{fields[0]}.wav"
            (found if path.is_file() else missing).append(path)
    return found, missing


def folder_recordings(folder):
    """Every audio file under `folder`, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Folder not found: {folder}.")
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in AUDIO_EXTENSIONS)


def check_cough_threshold(threshold):
    """Refuses a `cough_detected` threshold that would keep no recording or compare with nothing (NaN)."""
    if not 0 <= threshold < 1:
        raise ValueError(f"--cough_threshold must be at least 0 and below 1 (paper: 0.95), got {threshold}.")


def coughvid_recordings(folder, threshold=0.95):
    """
    CoughVID recordings whose `cough_detected` score (in `metadata_compiled.csv`) is above `threshold`. A row without
    a score (an empty field) is left out; a score that is not a number from 0 to 1, or a uuid listed twice, is refused.
    """
    folder = Path(folder)
    metadata = folder / COUGHVID_METADATA
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} (CoughVID's metadata with the cough_detected scores) not found.")
    with open(metadata, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"uuid", "cough_detected"} <= set(rows[0]):
        raise ValueError(f"{metadata} has no 'uuid' and 'cough_detected' columns (found {list(rows[0])}).")
    audio = {path.stem: path for path in folder_recordings(folder)}
    chosen, missing, first_line = [], [], {}
    for number, row in enumerate(rows, start=2):
        uuid = row["uuid"]
        if uuid in first_line:
            raise ValueError(
                f"{metadata}, line {number}: uuid {uuid} is listed again (first on line {first_line[uuid]})."
            )
        first_line[uuid] = number
        score = cough_score(row["cough_detected"], metadata, number)
        if score > threshold and uuid in audio:
            chosen.append(audio[uuid])
        elif score > threshold:
            missing.append(uuid)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} CoughVID recordings with cough_detected > {threshold} have no audio file in {folder} "
            f"(first: {missing[0]}); convert them all (e.g. .webm to .wav) before building the list."
        )
    return chosen


def cough_score(text, metadata, number):
    """The `cough_detected` field of line `number` of `metadata`: NaN when it is empty, else a score from 0 to 1."""
    if not text:
        return math.nan
    try:
        score = float(text)
    except ValueError:
        score = math.nan  # refused next
    if not 0 <= score <= 1:
        raise ValueError(f"{metadata}, line {number}: cough_detected is {text!r}, not a score from 0 to 1.")
    return score


def build_pretraining_lists(
    output_dir,
    icbhi,
    hf_lung,
    coughvid,
    audioset=None,
    icbhi_repeat=6,
    respiratory_repeat=29,
    cough_threshold=0.95,
    overwrite=False,
):
    """
    Writes the paper's respiratory list `respiratory.csv` (ICBHI's training recordings x `icbhi_repeat`, HF_Lung,
    CoughVID above `cough_threshold`) and, given an AudioSet list or folder, `mixture.csv`: AudioSet plus the
    respiratory list x `respiratory_repeat`. Returns the counts and notes.
    """
    output_dir = Path(output_dir)
    check_cough_threshold(cough_threshold)
    check_output_folder(output_dir, overwrite, inputs=(icbhi, hf_lung, coughvid, audioset), replaced=True)
    icbhi_train, icbhi_missing = icbhi_training_recordings(icbhi)
    parts = {
        "icbhi_train": icbhi_train,
        "icbhi": icbhi_train * icbhi_repeat,
        "hf_lung": folder_recordings(hf_lung),
        "coughvid": coughvid_recordings(coughvid, cough_threshold),
    }
    respiratory = parts["icbhi"] + parts["hf_lung"] + parts["coughvid"]
    counts = {name: len(items) for name, items in parts.items()}
    counts |= {"respiratory": len(respiratory), "respiratory_repeated": len(respiratory) * respiratory_repeat}
    notes = []
    if icbhi_missing:  # the official split names 921 recordings; the database holds 920
        missing = ", ".join(path.stem for path in icbhi_missing)
        notes.append(f"ICBHI's split lists {len(icbhi_missing)} training recordings with no .wav: {missing}")
    if audioset:
        audioset_items = listed_files(Path(audioset))
        counts |= {"audioset": len(audioset_items), "mixture": len(audioset_items) + counts["respiratory_repeated"]}
    with atomic_folder(output_dir) as folder:
        write_file_list(folder / "respiratory.csv", [path.resolve() for path in respiratory])
        if audioset:
            mixture = audioset_items + [str(path.resolve()) for path in respiratory] * respiratory_repeat
            write_file_list(folder / "mixture.csv", mixture)
    return counts, notes


def pretraining_lists_report(output_dir, counts, notes):
    """The counts next to the paper's, one line each."""
    lines = [f"Wrote {Path(output_dir) / 'respiratory.csv'}" + (" and mixture.csv" if "mixture" in counts else "")]
    width = max(map(len, counts))
    for name, count in counts.items():
        lines.append(f"  {name:<{width}}  {count:>9,}   (paper: {PAPER_COUNTS[name]:,})")
    return "\n".join(lines + [f"  note: {note}" for note in notes])
