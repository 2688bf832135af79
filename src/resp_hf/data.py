"""Building Hugging Face datasets from folders of labelled recordings and from saved datasets."""

from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
SPLIT_NAMES = ("train", "validation", "test")


def is_hidden(path):
    """Hidden files and folders (`.ipynb_checkpoints`, macOS `._name.wav` resource forks) are not data."""
    return path.name.startswith(".")


def visible_entries(folder: Path) -> list:
    """The files and folders directly in `folder`, hidden ones left out, sorted."""
    return sorted(path for path in folder.iterdir() if not is_hidden(path))


def refuse_unplaced(folder: Path, unplaced: list, expected: str) -> None:
    """An error naming the entries of `folder` that are not what it should hold (`expected`), if there are any."""
    if unplaced:
        names = ", ".join(path.name for path in unplaced[:5]) + (", ..." if len(unplaced) > 5 else "")
        raise ValueError(
            f"{folder} holds {len(unplaced)} item(s) that are not {expected}: {names}. Move them out of the dataset "
            "folder."
        )


def class_files(folder: Path, extensions: tuple) -> list:
    """The audio files under a class folder (in subfolders too; hidden ones left out); any other file is an error."""
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    refuse_unplaced(folder, [path for path in files if path.suffix.lower() not in extensions], "audio files it reads")
    if not files:
        raise ValueError(f"Class folder {folder} holds no audio files ({', '.join(extensions)}).")
    return files


def folder_split(root, extensions=AUDIO_EXTENSIONS):
    """A split from `root/<class name>/**/<audio file>`: an `audio` path column and a `label` ClassLabel."""
    entries = visible_entries(root)
    classes = [path.name for path in entries if path.is_dir()]
    if not classes:
        raise ValueError(f"{root} has no class subfolders: expected {root}/<class name>/<audio files>.")
    refuse_unplaced(root, [path for path in entries if not path.is_dir()], "class folders")
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = class_files(root / name, extensions)
        paths += [str(path) for path in files]
        labels += [index] * len(files)
    return Dataset.from_dict({"audio": paths, "label": labels}).cast_column("label", ClassLabel(names=classes))


def load_audio_folder(root, extensions=AUDIO_EXTENSIONS):
    """
    A `DatasetDict` from a folder of labelled recordings: `root/<class>/<files>` gives a `train` split, and
    `root/{train,validation,test}/<class>/<files>` gives those splits (their class names must agree). No audio is
    decoded: the `audio` column holds file paths, read later with soundfile (torchcodec is not needed). Hidden files
    and folders are left out; anything else that is not an audio file of `extensions` in a class folder (a loose
    file, a class folder beside the split folders, another file type) is an error naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Audio folder not found: {root}")
    split_dirs = {name: root / name for name in SPLIT_NAMES if (root / name).is_dir()}
    if not split_dirs:
        return DatasetDict({"train": folder_split(root, extensions)})
    others = [path for path in visible_entries(root) if path not in split_dirs.values()]
    refuse_unplaced(root, others, f"split folders ({', '.join(SPLIT_NAMES)})")
    splits = DatasetDict({name: folder_split(path, extensions) for name, path in split_dirs.items()})
    names = {name: split.features["label"].names for name, split in splits.items()}
    if len({tuple(v) for v in names.values()}) > 1:
        raise ValueError(f"The splits of {root} have different class folders: {names}.")
    return splits


def is_saved_dataset(path):
    """Whether `path` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file())


def load_any_dataset(source):
    """A `DatasetDict` from a `save_to_disk` folder, a folder of labelled recordings, or a Hub dataset name."""
    path = Path(source)
    if is_saved_dataset(path):
        dataset = load_from_disk(str(path))
        return dataset if isinstance(dataset, DatasetDict) else DatasetDict({"train": dataset})
    if path.is_dir():
        return load_audio_folder(path)
    if path.exists() or str(source).startswith((".", "/", "~")) or path.expanduser().exists():
        raise FileNotFoundError(f"Dataset not found: {source} is not a folder (a Hub dataset name has no such prefix).")
    return load_dataset(source)
