"""
Pre-training data: file lists of audio or precomputed log-mel `.npy` files and Hugging Face datasets, mixed by
repetition, cropped to units.
"""

import csv
from pathlib import Path

import numpy as np
import torch
from datasets import Audio

from ..audio import decode_audio
from ..data import AUDIO_EXTENSIONS, is_saved_dataset, load_any_dataset
from ..models.resp_m2d import RespM2DFeatureExtractor


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
    depends only on (seed, epoch, index), so an interrupted run resumes on exactly the same data.
    """

    def __init__(self, items, config, seed=0):
        self.items = list(items)
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.extractor = raw_log_mel_extractor(config)

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def log_mel(self, item):
        """Raw log-mel (n_mels, frames) of an audio file, a stored `.npy`, or a `(dataset, row)` pair."""
        if isinstance(item, tuple):
            dataset, row = item
            audio = decode_audio(dataset[row][dataset.column_names[0]], self.extractor.sampling_rate, downmix=True)
        elif item.endswith(".npy"):
            array = np.load(item)
            if array.ndim != 2 or array.shape[0] != self.config.num_mel_bins:
                raise ValueError(f"{item} holds shape {array.shape}, expected ({self.config.num_mel_bins}, frames).")
            return torch.from_numpy(array.astype(np.float32))
        else:
            audio = decode_audio(item, self.extractor.sampling_rate, downmix=True)
        return self.extractor(audio, sampling_rate=self.extractor.sampling_rate)["input_features"][0]

    def __getitem__(self, index):
        features = (self.log_mel(self.items[index]) - self.config.norm_mean) / self.config.norm_std
        frames = self.config.unit_frames
        if features.shape[1] < frames:
            return torch.nn.functional.pad(features, (0, frames - features.shape[1]))
        generator = np.random.default_rng([self.seed, self.epoch, index])
        start = int(generator.integers(0, features.shape[1] - frames + 1))
        return features[:, start : start + frames]


def norm_stats_from_sample(items, config, count=1000, seed=0):
    """Mean and std of the raw log-mel of up to `count` randomly chosen items (see `read_source`)."""
    dataset = LogMelUnits(items, config)
    chosen = np.random.default_rng(seed).permutation(len(items))[:count]
    values = torch.cat([dataset.log_mel(dataset.items[i]).flatten() for i in chosen])
    return float(values.mean()), float(values.std())


def precompute_log_mels(input_dir, output_dir, config, progress=True):
    """Writes the raw log-mel of every audio file under `input_dir` as `.npy` plus a `files.csv` list to train on."""
    from tqdm.auto import tqdm

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    audio = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not audio:
        raise ValueError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) under {input_dir}.")
    dataset = LogMelUnits([], config)
    written = []
    for path in tqdm(audio, desc="Log-mel", disable=not progress):
        target = output_dir / path.relative_to(input_dir).with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, dataset.log_mel(str(path)).numpy().astype(np.float32))
        written.append(target.relative_to(output_dir))
    with open(output_dir / "files.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path"])
        writer.writerows([[str(path)] for path in written])
    return output_dir / "files.csv"
