"""
Output folders and files that later runs read: an earlier run's folder is never reused by accident, and what is
written appears whole (temp then rename) with the modes the user's umask gives.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def check_output_folder(path, overwrite=False, option="--overwrite"):
    """Refuses an output that is a file, or a non-empty folder unless `overwrite` (the command's `option`) is set."""
    path = Path(path)
    if path.is_file():
        raise ValueError(f"The output {path} is an existing file; give a folder name instead.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(
            f"The output folder {path} is not empty (an earlier run's output?). Choose another folder, or pass "
            f"{option} to replace it."
        )


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


def write_text_atomically(path, text):
    with atomic_file(path) as temporary:
        temporary.write_text(text)
