"""Pre-training data: file lists of audio or precomputed log-mel `.npy` files, mixed by repetition, cropped to units."""

import csv
from pathlib import Path

import numpy as np
import torch

from ..audio import decode_audio
from ..data import AUDIO_EXTENSIONS
from ..models.resp_m2d import RespM2DFeatureExtractor


def raw_log_mel_extractor(config):
    """The model's front end without normalization: `log(mel + eps)`, for storing and for computing statistics."""
    extractor = RespM2DFeatureExtractor.from_model_config(config)
    extractor.mean, extractor.std = 0.0, 1.0
    return extractor


def read_source(spec):
    """
    Paths of one source: `list.csv` (a `path` column, relative to the CSV), a folder of audio or `.npy` files, each
    optionally followed by `:N` to repeat it N times (the paper's "AudioSet + Resp x N" mixtures).
    """
    head, separator, tail = str(spec).rpartition(":")
    location, repeat = (Path(head), int(tail)) if separator and tail.isdigit() else (Path(spec), 1)
    if location.is_dir():
        paths = sorted(p for p in location.rglob("*") if p.suffix.lower() in (*AUDIO_EXTENSIONS, ".npy"))
    elif location.suffix == ".csv" and location.is_file():
        with open(location, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "path" not in rows[0]:
            raise ValueError(f"{location} has no 'path' column (found {list(rows[0])}).")
        paths = [(location.parent / row["path"]).resolve() for row in rows]
    else:
        raise FileNotFoundError(f"Pre-training source not found: {location} (a .csv file list or a folder).")
    if not paths:
        raise ValueError(f"Pre-training source {location} lists no audio or .npy files.")
    return [str(path) for path in paths] * repeat


class LogMelUnits(torch.utils.data.Dataset):
    """
    Normalized log-mel crops of the unit size (n_mels x unit frames). The crop position depends only on
    (seed, epoch, index), so an interrupted run resumes on exactly the same data.
    """

    def __init__(self, paths, config, seed=0):
        self.paths = list(paths)
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.extractor = raw_log_mel_extractor(config)

    def __len__(self):
        return len(self.paths)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def log_mel(self, path):
        """Raw log-mel (n_mels, frames) of an audio file, or a stored `.npy`."""
        if path.endswith(".npy"):
            array = np.load(path)
            if array.ndim != 2 or array.shape[0] != self.config.num_mel_bins:
                raise ValueError(f"{path} holds shape {array.shape}, expected ({self.config.num_mel_bins}, frames).")
            return torch.from_numpy(array.astype(np.float32))
        audio = decode_audio(path, self.extractor.sampling_rate, downmix=True)
        return self.extractor(audio, sampling_rate=self.extractor.sampling_rate)["input_features"][0]

    def __getitem__(self, index):
        features = (self.log_mel(self.paths[index]) - self.config.norm_mean) / self.config.norm_std
        frames = self.config.unit_frames
        if features.shape[1] < frames:
            return torch.nn.functional.pad(features, (0, frames - features.shape[1]))
        generator = np.random.default_rng([self.seed, self.epoch, index])
        start = int(generator.integers(0, features.shape[1] - frames + 1))
        return features[:, start : start + frames]


def norm_stats_from_sample(paths, config, count=1000, seed=0):
    """Mean and std of the raw log-mel of up to `count` randomly chosen files."""
    dataset = LogMelUnits(paths, config)
    chosen = np.random.default_rng(seed).permutation(len(paths))[:count]
    values = torch.cat([dataset.log_mel(dataset.paths[i]).flatten() for i in chosen])
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
