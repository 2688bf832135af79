"""Helpers shared by the OPERA task builders: required files, OPERA's manifests, OPERA's validation carve-out."""

import csv
import io
import math
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np

from ..splits import seeded_split

SHOWN = 5
# OPERA's linear evaluation (src/benchmark/linear_eval.py) carves validation sets with this sklearn seed
# (`random_state=1337`; `seeded_split`'s default "RandomState" stream draws the same rows).
OPERA_VALIDATION_SEED = 1337


class OperaDataError(ValueError):
    """The OPERA checkout lacks something a task needs, or disagrees with OPERA's committed manifest."""


def require(root, *relative_paths):
    """Fails with the list of metadata files a task needs but the checkout lacks."""
    missing = [path for path in relative_paths if not (root / path).exists()]
    if missing:
        raise OperaDataError(
            f"The OPERA checkout at {root} lacks {', '.join(missing)}. Download the dataset and place it as OPERA's "
            "datasets/<name>/README.md describes (see `resp-hf opera list` for sources)."
        )


def load_manifest(root, relative_paths):
    """
    OPERA's committed task arrays (aligned by index; the first holds audio paths relative to the root, each checked
    with `check_inside`), or None when the checkout has none of them.
    """
    if not relative_paths:
        return None
    present = [(root / path).is_file() for path in relative_paths]
    if not any(present):
        return None
    if not all(present):
        missing = [path for path, ok in zip(relative_paths, present) if not ok]
        raise OperaDataError(f"OPERA's manifest at {root} is incomplete: {', '.join(missing)} missing.")
    arrays = [load_list(root / path) for path in relative_paths]
    if len({len(array) for array in arrays}) != 1:
        raise OperaDataError(f"OPERA's manifest arrays {relative_paths} have different lengths.")
    for path in arrays[0]:
        check_inside(path, root / relative_paths[0])
    check_unique(root / relative_paths[0], arrays[0], "path")
    return arrays


def load_list(path):
    """A 1-D `.npy` array (OPERA's file lists, labels and splits) as a list; any other shape is an error naming it."""
    array = load_array(path)
    if array.ndim != 1:
        raise OperaDataError(
            f"{path} holds an array of shape {array.shape}; OPERA's lists are 1-D (one value per recording). "
            "Replace it with the file from OPERA's repository."
        )
    return array.tolist()


def read_split_lists(root, lists, folder=None):
    """
    `{entry: split}` from OPERA's per-split lists (`{split: path relative to the root}`; with `folder`, the entries are
    file names in it, checked with `check_inside`). An entry listed twice, in one list or in two, is an error naming
    the files and the entry: a recording belongs to one split.
    """
    split_of, source = {}, {}
    for split, relative in lists.items():
        path = root / relative
        entries = load_list(path)
        check_unique(path, entries, "entry")
        for entry in entries:
            if entry in source:
                raise OperaDataError(
                    f"{path}: entry {entry!r} is also listed in {source[entry]}; a recording belongs to one split. "
                    "The lists are damaged or edited: use the files from OPERA's repository."
                )
            if folder is not None:
                check_inside(f"{folder}/{entry}", path)
            split_of[entry], source[entry] = split, path
    return split_of


def check_inside(path, source):
    """
    `path`, a path relative to the OPERA root read from `source` (a file, or a file and line); an absolute path, or one
    whose `..` steps climb out of the root, is an error naming both. Checked on the text, so symbolic links inside the
    checkout (e.g. a dataset folder on another disk) keep working.
    """
    normal = os.path.normpath(path) if isinstance(path, str) else ""
    if not normal or os.path.isabs(normal) or normal.split(os.sep)[0] == os.pardir:
        raise OperaDataError(
            f"{source}: entry {path!r} is not a path inside the OPERA checkout; refusing to read files outside it. "
            "Use the file as OPERA or the dataset distributes it."
        )
    return path


def check_unique(path, ids, what):
    """Refuses metadata that lists an id twice: it would double that id's rows, or keep one of them unnoticed."""
    counts = Counter(ids)
    repeated = next((key for key in ids if counts[key] > 1), None)
    if repeated is not None:
        raise OperaDataError(
            f"{path}: {what} {repeated!r} is listed {counts[repeated]} times; each must appear once. The file is "
            "damaged or edited: remove the repeated rows, or use the file as the dataset distributes it."
        )


# The only globals a pickled numpy array of strings or numbers needs: the array, its dtype and numpy scalars.
SAFE_NUMPY_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{
        (module, name): getattr(np._core.multiarray, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
}


class NumpyArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays of strings and numbers; any other class or function in the stream is refused."""

    def find_class(self, module, name):
        if (module, name) not in SAFE_NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a numpy array of strings never needs")
        return SAFE_NUMPY_GLOBALS[module, name]


def load_array(path):
    """
    A `.npy` array without running code from it: plain arrays load with `allow_pickle=False`; object arrays (OPERA
    saved some uuid lists that way) are unpickled by `NumpyArrayUnpickler` and must hold only strings and numbers.
    """
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise OperaDataError(f"{path} is not a readable .npy array ({error}).") from error
        return load_object_array(path)
    except (OSError, EOFError) as error:
        raise OperaDataError(f"{path} is not a readable .npy array ({error}).") from error
    if not isinstance(array, np.ndarray):  # np.load opens a .npz archive whatever the file is called
        array.close()
        raise OperaDataError(
            f"{path} is a .npz archive, not a .npy array; replace it with the file from OPERA's repository."
        )
    return array


def load_object_array(path):
    """An object `.npy` array of strings and numbers, unpickled with `NumpyArrayUnpickler`."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            read_header[version](handle)
            array = NumpyArrayUnpickler(io.BytesIO(handle.read())).load()
    except Exception as error:  # a hostile or damaged stream fails in many ways; none may escape unnamed
        raise OperaDataError(
            f"{path} holds a pickled object that resp_hf refuses to load ({error}); OPERA's array files hold "
            "only strings and numbers. Replace it with the file from OPERA's repository."
        ) from error
    elements = array.ravel().tolist() if isinstance(array, np.ndarray) else None
    if elements is None or not all(isinstance(item, (str, int, float)) for item in elements):
        raise OperaDataError(
            f"{path} is not a numpy array of strings and numbers; replace it with the file from OPERA's repository."
        )
    return array


def read_csv_rows(path, delimiter=",", required=()):
    """
    Rows of a CSV file as dicts, each with its line number under `"_row"` (a UTF-8 byte-order mark and surrounding
    spaces in names are dropped). Undecodable text, a `required` column missing or repeated, or a row that is empty or
    has more or fewer fields than the header is an error naming the file and line.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                raise OperaDataError(
                    f"{path}: no column {', '.join(map(repr, missing))} (its header has {header}); use the file as "
                    "the dataset distributes it."
                )
            repeated = [name for name in required if header.count(name) > 1]
            if repeated:
                raise OperaDataError(
                    f"{path}: the header names the column {repeated[0]!r} {header.count(repeated[0])} times, so its "
                    "values are ambiguous; use the file as the dataset distributes it."
                )
            columns = len(set(reader.fieldnames or []))  # DictReader keeps one value per distinct name
            rows = []
            for row in reader:
                extra = row.pop(None, [])  # DictReader's place for fields beyond the header; missing ones are None
                values = [value for value in row.values() if value is not None]
                if len(values) != columns or extra:
                    problem = f"{len(values) + len(extra)} fields where the header has {columns}"
                    raise damaged_row(path, reader.line_num, problem, delimiter)
                if not any(value.strip() for value in values):
                    raise damaged_row(path, reader.line_num, "no values", delimiter)
                rows.append({key.strip(): value.strip() for key, value in row.items()} | {"_row": reader.line_num})
            return rows
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from error
    except csv.Error as error:
        raise OperaDataError(f"{path} is not a readable CSV file ({error}).") from error


def damaged_row(path, line, problem, delimiter):
    return OperaDataError(
        f"{path}, line {line}: {problem} ({delimiter!r}-separated); the file is damaged or truncated: fix or remove "
        "that row, or use the file as the dataset distributes it."
    )


def not_utf8(path, error, error_type=OperaDataError):
    return error_type(f"{path} is not UTF-8 text ({error}); use the file as the dataset distributes it.")


def read_text(path, error_type=OperaDataError):
    """
    The UTF-8 text of a metadata file, without a leading byte-order mark; undecodable bytes, or a folder in its place,
    are an `error_type` naming it.
    """
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise not_utf8(path, error, error_type) from error
    except IsADirectoryError:
        raise error_type(f"{path} is a folder where a text file is expected.") from None


def parse_value(where, value, convert, expected):
    """`convert(value)`, or an error naming `where` the value is (file, line or index, column) and what was expected."""
    try:
        return convert(value)
    except (TypeError, ValueError, IndexError, KeyError):
        raise OperaDataError(
            f"{where}: {value!r} is not {expected}; fix it, or use the file as OPERA or the dataset distributes it."
        ) from None


def parse_field(path, line, column, value, convert, expected):
    """`convert(value)`, or an error naming the file, line, column and value and what was `expected`."""
    return parse_value(f"{path}, line {line}, column {column!r}", value, convert, expected)


def one_of(*values):
    """A `parse_value` converter that accepts only `values`."""
    return {value: value for value in values}.__getitem__


def optional_number(value):
    """A finite number, or None where the source leaves the value blank (empty or `NA`)."""
    if value in ("", "NA"):
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def read_tab_table(path, min_fields=1):
    """Whitespace-separated text table (ICBHI metadata) as `(line number, fields)` pairs, blank lines skipped."""
    lines = read_text(path).splitlines()
    table = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if fields and len(fields) < min_fields:
            raise OperaDataError(
                f"{path}, line {number}: {len(fields)} field(s) where {min_fields} are needed ({line.strip()!r})."
            )
        if fields:
            table.append((number, fields))
    return table


def check_against_manifest(task_id, derived, manifest):
    """
    Compares derived `(path, label, split)` triples with OPERA's, in OPERA's order. Any difference is an error that
    shows examples, so a build never silently departs from the benchmark.
    """
    derived_by_path = {path: (label, split) for path, label, split in derived}
    manifest_paths = [path for path, _, _ in manifest]
    only_derived = sorted(set(derived_by_path) - set(manifest_paths))
    only_manifest = sorted(set(manifest_paths) - set(derived_by_path))
    different = [
        f"{path}: ours {derived_by_path[path]}, OPERA {(label, split)}"
        for path, label, split in manifest
        if path in derived_by_path and derived_by_path[path] != (label, split)
    ]
    problems = []
    if only_derived:
        problems.append(f"{len(only_derived)} files not in OPERA's manifest, e.g. {only_derived[:SHOWN]}")
    if only_manifest:
        problems.append(f"{len(only_manifest)} manifest files not derived, e.g. {only_manifest[:SHOWN]}")
    if different:
        problems.append(f"{len(different)} label/split differences, e.g. {different[:SHOWN]}")
    if problems:
        raise OperaDataError(
            f"{task_id}: the metadata in this checkout does not reproduce OPERA's committed manifest: "
            + "; ".join(problems)
        )


def carve_validation(task, rows):
    """
    Moves a stratified, seeded fraction of the train rows to validation, like OPERA, with the fraction and seed of the
    task's protocol (`resp-hf opera protocol`); which rows go depends on the order of `rows`, which must be the order
    OPERA passes them to sklearn. Returns `rows`.
    """
    from .protocol import get_protocol  # imported here: the protocol module imports the registry, which imports us

    protocol = get_protocol(task.id)
    fraction, seed = protocol.validation_fraction, protocol.validation_seed
    train = [row for row in rows if row["split"] == "train"]
    labels = [row["label"] for row in train]
    check_stratifiable(task, labels)
    action = "carve OPERA's validation set from the train split"
    _, held_out = opera_split(task, action, len(train), fraction, seed, labels)
    for index in held_out:
        train[index]["split"] = "validation"
    return rows


def opera_split(task, action, count, fraction, seed, labels):
    """
    `seeded_split` of `count` rows stratified by `labels`; a split that cannot be made (e.g. a class with a single row)
    is an error naming the task and the `action` that failed.
    """
    try:
        return seeded_split(count, fraction, seed, stratify=labels)
    except ValueError as error:
        raise OperaDataError(f"{task.id}: cannot {action}: {error}") from error


def check_stratifiable(task, labels):
    """A stratified split needs training rows, and at least two of each class."""
    if not labels:
        raise OperaDataError(
            f"{task.id}: the train split is empty, so no validation set can be carved from it. Check that the "
            "checkout holds the dataset's audio and metadata (see `resp-hf opera list --opera-root`)."
        )
    counts = Counter(labels)
    single = [task.label_names[label] for label in sorted(counts) if counts[label] < 2]
    if single:
        raise OperaDataError(
            f"{task.id}: the train split has a single {' / '.join(single)} row, too few for OPERA's stratified "
            "validation carve-out. Add the missing recordings."
        )
