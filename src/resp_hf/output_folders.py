"""
Output folders and files that later runs read: an earlier run's folder is never reused by accident, and what is
written appears whole (temp then rename) with the modes the user's umask gives.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def check_output_folder(
    path: str | Path,
    overwrite: bool = False,
    option: str | None = "--overwrite",
    name: str = "The output",
    may_hold: tuple[str, ...] = (),
    inputs: tuple[str | Path | None, ...] = (),
    replaced: bool = False,
) -> None:
    """
    Refuses an output that is a file, that is or holds one of the run's `inputs` (replacing it would delete them), or
    a folder holding anything but `may_hold` (entries a new run reuses) unless `overwrite` is set. `option` is how
    the command's user sets it (None: the command cannot replace a folder) and `name` how the message calls the
    output (e.g. the command's option). `replaced`: the run writes the folder whole with `atomic_folder`, which
    refuses one holding the current folder; checked here too, so that the run fails before its work, not after.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path} is a file; pass a folder instead.")
    check_holds_no_input(path, inputs, name)
    if replaced:
        check_holds_no_current_folder(path)
    held = sorted(entry.name for entry in path.iterdir() if entry.name not in may_hold) if path.is_dir() else []
    if held and not overwrite:
        listing = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        fix = f"pass {option} to replace it, or choose another folder" if option else "choose another folder"
        raise ValueError(f"The output folder {path} is not empty; it already holds {listing}: {fix}.")


def check_holds_no_input(path: Path, inputs: tuple[str | Path | None, ...], name: str = "The output") -> None:
    """Refuses an output folder that is, or lies above, one of `inputs` (links resolved): replacing it deletes them."""
    for item in filter(None, inputs):
        if is_within(item, path):
            raise ValueError(f"{name} {path} is or holds the input {item}: choose another folder.")


def check_outside_inputs(path: str | Path, inputs: tuple, name: str = "The output") -> None:
    """Refuses an output that lies inside one of `inputs` that is a folder (links resolved): it would mix with them."""
    for item in inputs:
        if isinstance(item, (str, Path)) and Path(item).is_dir() and is_within(path, item):
            raise ValueError(f"{name} {path} lies inside the input folder {item}: choose a folder outside it.")


def check_holds_no_current_folder(path: Path) -> None:
    """Refuses a folder to be replaced that is, or lies above, the current folder (links resolved)."""
    if is_within(os.getcwd(), path):
        raise ValueError(f"The output {path} is or holds the current folder, which replacing it would remove.")


def is_within(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies under it (links resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def remove_outputs(folder: str | Path, names: tuple[str, ...]) -> None:
    """Removes an earlier run's outputs `names` (files or folders) from `folder`, so none is taken for the new run's."""
    for name in names:
        path = Path(folder) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def umask_mode(directory=False):
    """The mode a new file (0o666) or folder (0o777) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def apply_umask(root):
    """Gives `root` and everything under it the umask's modes (temp files and folders are created private)."""
    root = Path(root)
    root.chmod(umask_mode(directory=root.is_dir()))
    if root.is_dir():
        for path in root.rglob("*"):
            if not path.is_symlink():
                path.chmod(umask_mode(directory=path.is_dir()))


@contextlib.contextmanager
def atomic_folder(path):
    """
    Yields a temporary sibling folder to write into; on success it replaces `path` (an earlier folder there is
    removed only then), on failure it is deleted and `path` is left as it was.
    """
    path = Path(path)
    check_holds_no_current_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield temporary
        apply_umask(temporary)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            path.rename(old / path.name)
            temporary.rename(path)
            shutil.rmtree(old)
        else:
            temporary.rename(path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary sibling path to write; it replaces `path` once the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        apply_umask(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Writes `text` (UTF-8) so that readers see the old file or the whole new one."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def save_npz(path: str | Path, **arrays) -> None:
    """`numpy.savez` of `arrays`, written atomically (see `atomic_file`)."""
    with atomic_file(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
