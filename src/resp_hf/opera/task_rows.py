"""
The rules that turn an OPERA checkout into task rows, one function per dataset.

Each builder returns rows (dicts) with the audio `path` relative to the OPERA root, `label`, `split` (`train`,
`validation`, `test`; or a `fold` column for leave-one-subject-out tasks), `subject_id` and the metadata the source
has. Labels and splits are derived from the dataset's own metadata with OPERA's rules; where the checkout holds
OPERA's committed manifest (`feature/*_eval/*.npy`), the derived table must equal it, and rows take its order, which
OPERA's seeded validation carve-outs depend on.
"""

from pathlib import Path

import numpy as np

from .files import (
    OPERA_VALIDATION_SEED,
    OperaDataError,
    carve_validation,
    check_against_manifest,
    check_inside,
    check_unique,
    load_array,
    load_list,
    load_manifest,
    one_of,
    opera_split,
    optional_number,
    parse_field,
    parse_value,
    read_csv_rows,
    read_split_lists,
    read_tab_table,
    require,
)

OPERA_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def glob_relative(root, folder, pattern):
    """Sorted paths (relative to the OPERA root, as OPERA writes them) of the files matching `pattern` in `folder`."""
    return sorted(str(path.relative_to(root)) for path in (root / folder).glob(pattern) if path.is_file())


def manifest_splits(root, task, splits, split_names=OPERA_SPLITS):
    """
    The split values of a task manifest (its third array) renamed by `split_names`; any other value is an error naming
    the file, the index and the value.
    """
    source = root / task.manifest[2]
    expected = f"one of {', '.join(map(repr, split_names))}"
    return [
        parse_value(f"{source}, index {index}", str(split), split_names.__getitem__, expected)
        for index, split in enumerate(splits)
    ]


def check_rows_against_manifest(task, root, rows, manifest, split_names=OPERA_SPLITS):
    """Derived rows against OPERA's aligned (path, label, split) arrays; `split_names` names OPERA's split values."""
    paths, labels, splits = manifest
    opera = list(zip(paths, labels, manifest_splits(root, task, splits, split_names)))
    check_against_manifest(task.id, [(row["path"], row["label"], row["split"]) for row in rows], opera)


def as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --- T7: ICBHI 2017 ------------------------------------------------------------------------------------------------

ICBHI_DIR = "datasets/icbhi"
ICBHI_AUDIO = f"{ICBHI_DIR}/ICBHI_final_database"
ICBHI_MANIFEST = tuple(f"feature/icbhidisease_eval/{name}.npy" for name in ("sound_dir_loc", "labels", "split"))
ICBHI_CLASSES = {"Healthy": 0, "COPD": 1}
ICBHI_DIAGNOSES = ("URTI", "Healthy", "Asthma", "COPD", "LRTI", "Bronchiectasis", "Pneumonia", "Bronchiolitis")
# The columns OPERA reads (names as in icbhi_processing.py), each with its converter and what it expects.
ICBHI_DIAGNOSIS = {"class": (one_of(*ICBHI_DIAGNOSES), "an ICBHI diagnosis (" + ", ".join(ICBHI_DIAGNOSES) + ")")}
ICBHI_SPLIT = {"group": (one_of("train", "test"), "train or test")}
ICBHI_DEMOGRAPHICS = {
    "Age": (optional_number, "an age in years or NA"),
    "Sex": ({"M": "M", "F": "F", "NA": None}.__getitem__, "M, F or NA"),
}


def icbhi_table(path, what, columns):
    """
    `{first field: {column: value}}` of an ICBHI metadata table, whose first field (`what`) must not repeat; `columns`
    maps the names of the next fields to `(convert, expected)`: a bad value names the file, line and column.
    """
    table = read_tab_table(path, min_fields=1 + len(columns))
    check_unique(path, [fields[0] for _, fields in table], what)
    return {
        fields[0]: {
            column: parse_field(path, line, column, value, convert, expected)
            for (column, (convert, expected)), value in zip(columns.items(), fields[1:])
        }
        for line, fields in table
    }


def icbhi(task, root, report):
    """Diagnosis per patient and the official challenge train/test split; Healthy and COPD recordings only."""
    require(root, f"{ICBHI_DIR}/ICBHI_Challenge_diagnosis.txt", f"{ICBHI_DIR}/ICBHI_challenge_train_test.txt")
    diagnosis = icbhi_table(root / ICBHI_DIR / "ICBHI_Challenge_diagnosis.txt", "patient", ICBHI_DIAGNOSIS)
    official = icbhi_table(root / ICBHI_DIR / "ICBHI_challenge_train_test.txt", "recording", ICBHI_SPLIT)
    demographics_path = root / ICBHI_DIR / "ICBHI_Challenge_demographic_information.txt"
    demographics = icbhi_table(demographics_path, "patient", ICBHI_DEMOGRAPHICS) if demographics_path.is_file() else {}
    manifest = load_manifest(root, task.manifest)
    paths = manifest[0] if manifest else glob_relative(root, ICBHI_AUDIO, "*.wav")
    if not paths:
        raise OperaDataError(f"No ICBHI recordings under {root / ICBHI_AUDIO} and no OPERA manifest to list them.")
    rows = []
    for path in paths:
        recording = Path(path).stem
        if recording.count("_") != 4:
            raise OperaDataError(
                f"ICBHI recording {path} is not named <patient>_<index>_<location>_<mode>_<device> as ICBHI's are."
            )
        patient, _, location, mode, device = recording.split("_")
        if patient not in diagnosis or recording not in official:
            raise OperaDataError(f"ICBHI metadata has no diagnosis or official split for {recording}.")
        person = demographics.get(patient, {})
        rows.append(
            {
                "path": path,
                "label": diagnosis[patient]["class"],
                "split": official[recording]["group"],
                "subject_id": patient,
                "chest_location": location,
                "acquisition_mode": mode,
                "device": device,
                "age": person.get("Age"),
                "sex": person.get("Sex"),
            }
        )
    if manifest:
        check_against_manifest(task.id, [(r["path"], r["label"], r["split"]) for r in rows], list(zip(*manifest)))
    rows = [row for row in rows if row["label"] in ICBHI_CLASSES]
    for row in rows:
        row["label"] = ICBHI_CLASSES[row["label"]]
    return carve_validation(task, rows)


# --- T10: KAUH -----------------------------------------------------------------------------------------------------

KAUH_AUDIO = "datasets/KAUH/AudioFiles"
KAUH_MANIFEST = tuple(
    f"feature/kauh_eval/{name}.npy" for name in ("sound_dir_loc_subset", "labels_both", "train_test_split")
)
KAUH_SPLITS = {"train": "train", "val": "test", "test": "test"}  # OPERA evaluates its 'val' rows as test data


def kauh_class(file_name):
    """OPERA's class of a KAUH file `<filter>P<id>_<diagnosis>,...`: healthy, asthma, COPD, or None (excluded)."""
    diagnosis = file_name.split(",")[0].split("_")[-1]
    if diagnosis == "N":
        return "healthy"
    if "asthma" in diagnosis or "Asthma" in diagnosis:
        return "asthma"
    if "COPD" in diagnosis:  # case-sensitive, as OPERA: a lower-case "copd" recording is excluded
        return "COPD"
    return None


def kauh_metadata(file_name):
    """Patient, stethoscope filter, diagnosis, sound type, chest location, age and sex from a KAUH file name."""
    stem = Path(file_name).stem
    prefix, rest = stem.split("_", 1)
    fields = [field.strip() for field in rest.split(",")]
    fields += [""] * (5 - len(fields))
    return {
        "subject_id": prefix[2:],
        "stethoscope_filter": prefix[:2],
        "diagnosis": fields[0],
        "sound_type": fields[1],
        "chest_location": fields[2],
        "age": parse_value(f"KAUH recording {file_name!r}, age field", fields[3], optional_number, "an age in years"),
        "sex": fields[4] or None,
    }


def kauh(task, root, report):
    """Labels from the file names (healthy 0, asthma or COPD 1); OPERA's committed split, its 'val' rows as test."""
    manifest = load_manifest(root, task.manifest)
    if manifest is None:
        raise OperaDataError(
            f"T10 needs OPERA's committed KAUH split ({', '.join(task.manifest)}): OPERA drew it once and it cannot "
            "be regenerated. Use an OPERA checkout that includes feature/kauh_eval/."
        )
    paths, classes, splits = manifest
    splits = manifest_splits(root, task, splits, KAUH_SPLITS)
    derived = [(path, kauh_class(Path(path).name), split) for path, split in zip(paths, splits)]
    check_against_manifest(task.id, derived, list(zip(paths, classes, splits)))
    extra = [p for p in glob_relative(root, KAUH_AUDIO, "*.wav") if kauh_class(Path(p).name) and p not in set(paths)]
    if extra:
        raise OperaDataError(
            f"T10: {len(extra)} KAUH recordings qualify by OPERA's rule but are not in its manifest, e.g. {extra[:5]}."
        )
    rows = [
        {
            "path": path,
            "label": int(kauh_class(Path(path).name) != "healthy"),
            "split": split,
            **kauh_metadata(Path(path).name),
        }
        for path, split in zip(paths, splits)
    ]
    report.notes.append("OPERA evaluates KAUH's 'val' rows as test data; they are in the test split here.")
    return carve_validation(task, rows)


# --- T11: Respiratory@TR --------------------------------------------------------------------------------------------

COPD_DIR = "datasets/copd"
COPD_AUDIO = f"{COPD_DIR}/RespiratoryDatabase@TR"
COPD_MANIFEST = tuple(f"feature/copd_eval/{name}.npy" for name in ("sound_dir_loc", "labels", "train_test_split"))


def gold_stage(diagnosis):
    """The GOLD stage 0-4 that ends a Respiratory@TR diagnosis (`COPD3` -> 3)."""
    if diagnosis[:-1] != "COPD" or diagnosis[-1] not in "01234":
        raise ValueError(diagnosis)
    return int(diagnosis[-1])


def patient_id(value):
    """A Respiratory@TR patient id: not empty."""
    if not value:
        raise ValueError(value)
    return value


def respiratory_tr(task, root, report):
    """Severity 0-4 per patient (Labels.csv); patient-wise test 20%, then validation 20% of the rest, seed 1337."""
    require(root, f"{COPD_DIR}/Labels.csv")
    table = root / COPD_DIR / "Labels.csv"
    records = read_csv_rows(table, required=("Patient ID", "Diagnosis"))
    for row in records:
        parse_field(table, row["_row"], "Patient ID", row["Patient ID"], patient_id, "a patient id")
    check_unique(table, [row["Patient ID"] for row in records], "Patient ID")
    severity = {
        row["Patient ID"]: parse_field(table, row["_row"], "Diagnosis", row["Diagnosis"], gold_stage, "COPD0-COPD4")
        for row in records
    }
    ids = list(severity)
    action = f"split the patients of {table} into OPERA's train, validation and test sets"
    rest, test = opera_split(task, action, len(ids), 0.2, OPERA_VALIDATION_SEED, [severity[p] for p in ids])
    rest_ids = [ids[i] for i in rest]
    train, validation = opera_split(
        task, action, len(rest_ids), 0.2, OPERA_VALIDATION_SEED, [severity[p] for p in rest_ids]
    )
    split_of = {rest_ids[i]: "train" for i in train} | {rest_ids[i]: "validation" for i in validation}
    manifest = load_manifest(root, task.manifest)
    paths = manifest[0] if manifest else glob_relative(root, COPD_AUDIO, "*.wav")
    rows = []
    for path in paths:
        name = Path(path).stem
        patient = name[:4]
        if patient not in severity:
            raise OperaDataError(f"Respiratory@TR recording {path} has no diagnosis in Labels.csv.")
        rows.append(
            {
                "path": path,
                "label": severity[patient],
                "split": split_of.get(patient, "test"),
                "subject_id": patient,
                "channel": name[5:],
            }
        )
    if manifest:
        check_rows_against_manifest(task, root, rows, manifest)
    return rows


# --- T5/T6: CoughVID -------------------------------------------------------------------------------------------------

COUGHVID_DIR = "datasets/coughvid"
COUGHVID_MANIFEST = {
    label: tuple(f"feature/coughvid_eval/{name}_{label}.npy" for name in ("sound_dir_loc", "label", "split"))
    for label in ("covid", "gender")
}
# OPERA's label dictionaries (coughvid_processing.py): None leaves a recording out, any other value is an error.
COUGHVID_LABELS = {
    "T5": ("status", {"COVID-19": 1, "healthy": 0, "symptomatic": None, "pnts": None, "Other": None, "": None}),
    "T6": ("gender", {"female": 1, "male": 0, "other": None, "Other": None, "pnts": None, "": None}),
}


def coughvid_path(root, uuid, manifest_paths):
    """`wav/<uuid>.wav`, or `wav/<uuid minus its last character>.wav` as OPERA's conversion named some files."""
    for stem in (uuid, uuid[:-1]):
        path = f"{COUGHVID_DIR}/wav/{stem}.wav"
        if path in manifest_paths or (root / path).is_file():
            return path
    return f"{COUGHVID_DIR}/wav/{uuid}.wav"


def coughvid(task, root, report):
    """Labels from metadata_compiled.csv; OPERA's train and val uuid lists, test = the gender-test list."""
    lists = {
        split: f"{COUGHVID_DIR}/coughvid_{name}_uuids.npy"
        for split, name in (("train", "_train"), ("validation", "_val"), ("test", "gender_test"))
    }
    require(root, f"{COUGHVID_DIR}/metadata_compiled.csv", *lists.values())
    split_of = read_split_lists(root, lists)
    column, mapping = COUGHVID_LABELS[task.id]
    manifest = load_manifest(root, task.manifest)
    manifest_paths = set(manifest[0]) if manifest else set()
    rows = []
    table = root / COUGHVID_DIR / "metadata_compiled.csv"
    records = read_csv_rows(table, required=("uuid", "age", "gender", "status", "cough_detected"))
    check_unique(table, [record["uuid"] for record in records], "uuid")
    for record in records:
        uuid, line = record["uuid"], record["_row"]
        label = parse_field(table, line, column, record[column], mapping.__getitem__, " or ".join(map(repr, mapping)))
        if label is None or uuid not in split_of:
            continue
        rows.append(
            {
                "path": check_inside(coughvid_path(root, uuid, manifest_paths), f"{table}, line {line}"),
                "label": label,
                "split": split_of[uuid],
                "subject_id": uuid,
                "age": parse_field(table, line, "age", record["age"], optional_number, "a number or empty"),
                "gender": record["gender"] or None,
                "status": record["status"] or None,
                "cough_detected": parse_field(
                    table, line, "cough_detected", record["cough_detected"], optional_number, "a number or empty"
                ),
            }
        )
    if manifest:
        check_rows_against_manifest(task, root, rows, manifest)
    return rows


# --- T1/T2: UK COVID-19 ----------------------------------------------------------------------------------------------

COVIDUK_DIR = "datasets/covidUK"
COVIDUK_MANIFEST = {
    modality: tuple(f"feature/coviduk_eval/{name}_{modality}.npy" for name in ("sound_dir_loc", "label", "split"))
    for modality in ("exhalation", "cough")
}
COVIDUK_RESULTS = {"Negative": 0, "Positive": 1}


def coviduk_labels(root, modality, names):
    """
    File name -> COVID-19 test result of the listed `names`, from audio_metadata.csv and participant_metadata.csv, or
    None when the checkout lacks them. As in OPERA, a listed file's result must be Negative or Positive.
    """
    audio, participants = root / COVIDUK_DIR / "audio_metadata.csv", root / COVIDUK_DIR / "participant_metadata.csv"
    if not (audio.is_file() and participants.is_file()):
        return None
    participant_rows = read_csv_rows(participants, required=("participant_identifier", "covid_test_result"))
    check_unique(participants, [row["participant_identifier"] for row in participant_rows], "participant_identifier")
    by_id = {row["participant_identifier"]: row for row in participant_rows}
    column = f"{modality}_file_name"
    listed = [row for row in read_csv_rows(audio, required=("participant_identifier", column)) if row[column] in names]
    check_unique(audio, [row[column] for row in listed], column)
    labels = {}
    for row in listed:
        participant = by_id.get(row["participant_identifier"])
        if participant is not None:
            result, line = participant["covid_test_result"], participant["_row"]
            expected = "Negative or Positive"
            labels[row[column]] = parse_field(
                participants, line, "covid_test_result", result, COVIDUK_RESULTS.__getitem__, expected
            )
    return labels


def coviduk(task, root, report):
    """OPERA's downsampled train/val/test file lists; labels from the participant metadata (or OPERA's manifest)."""
    lists = {
        split: f"{COVIDUK_DIR}/{task.modality}_{name}_files_downsample.npy"
        for split, name in (("train", "training"), ("validation", "val"), ("test", "testing"))
    }
    require(root, *lists.values())
    split_of = read_split_lists(root, lists, folder=f"{COVIDUK_DIR}/audio_selected")
    manifest = load_manifest(root, task.manifest)
    labels = coviduk_labels(root, task.modality, split_of)
    if labels is None:
        if manifest is None:
            raise OperaDataError(
                f"{task.id} needs datasets/covidUK/audio_metadata.csv and participant_metadata.csv "
                "(or OPERA's committed feature/coviduk_eval manifest) for the labels."
            )
        labels = {Path(path).name: label for path, label in zip(manifest[0], manifest[1])}
        report.notes.append("Labels taken from OPERA's manifest: the participant metadata is not in this checkout.")
    order = {Path(path).name: index for index, path in enumerate(manifest[0])} if manifest else {}
    names = sorted(split_of, key=lambda name: (order.get(name, len(order)), name))  # OPERA's order, if known
    rows = [
        {
            "path": f"{COVIDUK_DIR}/audio_selected/{name}",
            "label": labels.get(name),
            "split": split_of[name],
            "subject_id": name.split("_")[0] if "_" in name else None,
        }
        for name in names
    ]
    if manifest:
        check_rows_against_manifest(task, root, rows, manifest)
    missing = [name for name in names if name not in labels]
    if missing:
        raise OperaDataError(f"{task.id}: no COVID-19 test result for {len(missing)} files, e.g. {missing[:5]}.")
    return rows


# --- T8/T9: Coswara ------------------------------------------------------------------------------------------------

COSWARA_MANIFEST = {
    label: (
        f"feature/coswara_eval/cough_aligned_filenames_{label}_w_cough-shallow.npy",
        f"feature/coswara_eval/cough_aligned_{label}_label_cough-shallow.npy",
    )
    for label in ("smoker", "sex")
}
COSWARA_SPLIT = "feature/coswara_eval/cough_aligned_train_test_split_{}_w_cough-shallow.npy"


def coswara(task, root, report):
    """
    OPERA's quality-filtered, cough-aligned file list and labels; a stratified 80/20 split, then 20% of the train part
    (in the shuffled order sklearn returns it, as OPERA passes it on) to validation.
    """
    manifest = load_manifest(root, task.manifest)
    if manifest is None:
        raise OperaDataError(
            f"{task.id} needs OPERA's Coswara file list {task.manifest[0]}: it comes from OPERA's "
            "quality annotations and cough-heavy alignment. Use an OPERA checkout with feature/."
        )
    paths, labels = manifest
    action = f"split the recordings of {task.manifest[0]} into OPERA's train and test sets"
    kept, test = opera_split(task, action, len(paths), 0.2, OPERA_VALIDATION_SEED, labels)
    split = ["train"] * len(paths)
    for index in test:
        split[index] = "test"
    label_name = "smoker" if task.id == "T8" else "sex"
    committed = root / COSWARA_SPLIT.format(label_name)
    if committed.is_file() and load_list(committed) != split:
        raise OperaDataError(f"{task.id}: OPERA's committed split {committed.name} differs from its seeded rule.")
    rows = [
        {
            "path": path,
            "label": label,
            "split": part,
            "subject_id": Path(path).parent.name,
            "recording_date": Path(path).parent.parent.name,
        }
        for path, label, part in zip(paths, labels, split)
    ]
    carve_validation(task, [rows[i] for i in kept])  # OPERA splits the shuffled train part
    return rows


# --- T3/T4: COVID-19 Sounds ------------------------------------------------------------------------------------------

COVID19_SOUNDS_CSV = ("datasets/covid19-sounds/data_0426_en_task1.csv", "datasets/covid/data_0426_en_task1.csv")
COVID19_SOUNDS_AUDIO = "datasets/covid19-sounds/0426_EN_used_task1"
COVID19_SOUNDS_SPLITS = {"0": "train", "1": "validation", "2": "test"}
COVID19_SOUNDS_MANIFEST = {  # where OPERA's covid19sounds_processing.py writes it
    modality: tuple(
        f"feature/covid19sounds_eval/downsampled/{name}.npy"
        for name in (f"sound_dir_loc_{modality}", "labels", "data_split")
    )
    for modality in ("breath", "cough")
}


def label_bit(value):
    """A binary label written as `0` or `1`."""
    if value not in ("0", "1"):
        raise ValueError(value)
    return int(value)


def covid19sounds(task, root, report):
    """Task-1 table: every 5th training row (OPERA's downsampling), then validation, then test."""
    table = next((root / path for path in COVID19_SOUNDS_CSV if (root / path).is_file()), None)
    if table is None:
        raise OperaDataError(
            f"{task.id} needs {COVID19_SOUNDS_CSV[0]} (COVID-19 Sounds is shared on request; see `resp-hf opera list`)."
        )
    column = "Breath filename" if task.modality == "breath" else "Cough filename"
    records = read_csv_rows(table, delimiter=";", required=("Uid", "Folder Name", column, "split", "label"))
    for record in records:
        line = record["_row"]
        parse_field(table, line, "split", record["split"], COVID19_SOUNDS_SPLITS.__getitem__, "0, 1 or 2")
        parse_field(table, line, "label", record["label"], label_bit, "0 or 1")
    by_split = {
        split: [r for r in records if COVID19_SOUNDS_SPLITS.get(r["split"]) == split]
        for split in ("train", "validation", "test")
    }
    ordered = by_split["train"][::5] + by_split["validation"] + by_split["test"]
    rows = []
    for record in ordered:
        user = "form-app-users" if record["Uid"].startswith("2020") else record["Uid"]
        path = f"{COVID19_SOUNDS_AUDIO}/{user}/{record['Folder Name']}/{record[column]}"
        rows.append(
            {
                "path": check_inside(path, f"{table}, line {record['_row']}"),
                "label": int(record["label"]),
                "split": COVID19_SOUNDS_SPLITS[record["split"]],
                "subject_id": record["Uid"],
            }
        )
    manifest = load_manifest(root, task.manifest)
    if manifest:  # OPERA stores this split as 0/1/2
        check_rows_against_manifest(task, root, rows, manifest, COVID19_SOUNDS_SPLITS)
    return rows


# --- T12: SSBPR ------------------------------------------------------------------------------------------------------

SSBPR_DIR = "datasets/SSBPR"
SSBPR_MANIFEST = ("feature/snoring_eval/sound_dir_loc.npy", "feature/snoring_eval/labels.npy")
SSBPR_PRONE = 5


def ssbpr(task, root, report):
    """Position = last character of the file name (prone excluded); random 60/20/20 split, stratified, seed 42."""
    manifest = load_manifest(root, task.manifest)
    paths = manifest[0] if manifest else glob_relative(root, SSBPR_DIR, "*/*/*.wav")
    if not paths:
        raise OperaDataError(f"No SSBPR recordings under {root / SSBPR_DIR} and no OPERA manifest to list them.")
    rows = [
        {
            "path": p,
            "label": int(Path(p).stem[-1]),
            "split": "train",
            "subject_id": Path(p).parent.name,
            "sex_folder": Path(p).parent.parent.name,
        }
        for p in paths
    ]
    rows = [row for row in rows if row["label"] != SSBPR_PRONE]
    if manifest:
        derived = [(r["path"], r["label"], "train") for r in rows]
        check_against_manifest(task.id, derived, [(p, label, "train") for p, label in zip(*manifest)])
    labels = [row["label"] for row in rows]
    action = "split the SSBPR recordings into OPERA's train, validation and test sets"
    rest, test = opera_split(task, action, len(rows), 0.2, 42, labels)
    _, validation = opera_split(task, action, len(rest), 0.25, 42, [labels[i] for i in rest])
    for index in test:
        rows[index]["split"] = "test"
    for index in validation:
        rows[rest[index]]["split"] = "validation"
    return rows


# --- T13-T18: MMlung -------------------------------------------------------------------------------------------------

MMLUNG_DIR = "datasets/mmlung"
MMLUNG_LABELS = "feature/mmlung_eval/label.npy"
MMLUNG_COLUMNS = {"deep breath": "Deep_Breath_file", 'vowel "o"': "O_Single_file"}
MMLUNG_TARGETS = {"FVC": 0, "FEV1": 1, "FEV1/FVC": 2}


def read_xlsx_rows(path, required=()):
    """
    Rows of the first sheet of an .xlsx file as dicts keyed by the header row, each with its sheet row number under
    `"_row"`. A file that is not a workbook, an empty sheet or a missing `required` column is an error naming it.
    """
    from openpyxl import load_workbook

    try:
        sheet = load_workbook(path, read_only=True, data_only=True).worksheets[0]
        cells = sheet.iter_rows(values_only=True)
        rows = [[("" if cell is None else str(cell)).strip() for cell in row] for row in cells]
    except Exception as error:  # zipfile, XML and openpyxl errors of a damaged or renamed file
        raise OperaDataError(
            f"{path} is not a readable .xlsx workbook ({type(error).__name__}: {error}); use the file as the dataset "
            "distributes it."
        ) from error
    if not rows:
        raise OperaDataError(f"{path}: the first sheet is empty; it needs a header row and one row per participant.")
    header = rows[0]
    missing = [name for name in required if name not in header]
    if missing:
        raise OperaDataError(f"{path}: no column {', '.join(map(repr, missing))} (its header has {header}).")
    return [dict(zip(header, row), _row=number) for number, row in enumerate(rows[1:], start=2) if any(row)]


def mmlung(task, root, report):
    """All_path.xlsx rows (one per participant) with OPERA's spirometry targets; one leave-one-out fold per row."""
    require(root, f"{MMLUNG_DIR}/All_path.xlsx", MMLUNG_LABELS)
    column = MMLUNG_COLUMNS[task.modality]
    workbook = root / MMLUNG_DIR / "All_path.xlsx"
    records = read_xlsx_rows(workbook, required=(column,))
    targets = load_array(root / MMLUNG_LABELS)
    if targets.ndim != 2 or targets.shape[1] != len(MMLUNG_TARGETS) or not np.issubdtype(targets.dtype, np.number):
        raise OperaDataError(
            f"{root / MMLUNG_LABELS} holds a {targets.dtype} array of shape {targets.shape}; OPERA's has one row of "
            "numbers (FVC, FEV1, FEV1/FVC) per participant."
        )
    if len(targets) != len(records):
        raise OperaDataError(f"{MMLUNG_LABELS} has {len(targets)} rows but All_path.xlsx has {len(records)}.")
    target = MMLUNG_TARGETS[task.target.split(" ")[0]]
    for record in records:
        if not record[column].startswith("."):
            raise OperaDataError(
                f"{workbook}, row {record['_row']}, column {column!r}: {record[column]!r} is not a path like "
                "'./<folder>/<file>.wav'; fix or remove that row."
            )
        check_inside(MMLUNG_DIR + record[column][1:], f"{workbook}, row {record['_row']}, column {column!r}")
    return [
        {
            "path": MMLUNG_DIR + record[column][1:],
            "label": float(values[target]),
            "split": "train",
            "subject_id": str(index),
            "fold": index,
        }
        for index, (record, values) in enumerate(zip(records, targets))
    ]


# --- T19: NoseMic ----------------------------------------------------------------------------------------------------

NOSEMIC_AUDIO = "datasets/nosemic/audio"
NOSEMIC_TEST_SUBJECTS = ("4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "17", "18", "19", "20", "21")


def nosemic(task, root, report):
    """`<user>_<x>_<y>_<rate>` file names; each listed subject is one leave-one-out fold (others are always train)."""
    require(root, NOSEMIC_AUDIO)
    paths = sorted(str(path.relative_to(root)) for path in (root / NOSEMIC_AUDIO).iterdir() if path.is_file())
    rows = []
    for path in paths:
        fields = Path(path).stem.split("_")
        if len(fields) != 4 or as_float(fields[3]) is None:
            raise OperaDataError(f"NoseMic file {path} is not named <user>_<x>_<y>_<breaths per minute>.")
        rows.append(
            {
                "path": path,
                "label": float(fields[3]),
                "split": "train",
                "subject_id": fields[0],
                "fold": fields[0] if fields[0] in NOSEMIC_TEST_SUBJECTS else None,
            }
        )
    return rows
