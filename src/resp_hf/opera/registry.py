"""The 19 OPERA downstream tasks: what they predict, from which data, and how OPERA splits and scores them."""

from dataclasses import dataclass, field

from . import task_rows


@dataclass(frozen=True)
class OperaTask:
    """
    A task of the linear-probe benchmark, in OPERA's terms: one of OPERA's 19 tasks (`builder` turns an OPERA checkout
    into its rows, see `resp_hf.opera.task_rows`), or a DatasetDict saved on disk, which the benchmark describes the
    same way (`resp_hf.linear_probe.runner.saved_dataset_task`) and which has no license, source or builder here.
    """

    id: str
    name: str
    dataset: str
    modality: str
    target: str
    task_type: str  # "binary", "multiclass" or "regression"
    label_names: tuple
    metric: str  # "AUROC", "AUROC (macro one-vs-rest)" or "MAE"
    split_protocol: str
    validation: str
    license: str = ""
    download: str = ""
    redistributable: bool = False
    manifest: tuple = ()  # OPERA's committed task files, relative to the OPERA root
    builder: object = field(default=None, repr=False, compare=False)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 1

    @property
    def problem_type(self) -> str:
        """The `problem_type` of a Transformers head: "regression" or "single_label_classification"."""
        return "regression" if self.task_type == "regression" else "single_label_classification"

    @property
    def metric_name(self) -> str:
        """The metric without its qualifier, as results files record it: "AUROC" or "MAE"."""
        return self.metric.split(" ")[0]


UK_COVID = dict(
    dataset="UK COVID-19 Vocal Audio",
    target="COVID-19 PCR test result (positive = 1)",
    task_type="binary",
    label_names=("negative", "positive"),
    metric="AUROC",
    split_protocol="fixed train/val/test file lists (datasets/covidUK/*_files_downsample.npy)",
    validation="OPERA's val list",
    license="Open Government Licence v3.0",
    download="https://zenodo.org/records/10043978",
    redistributable=True,
)
COVID19_SOUNDS = dict(
    dataset="COVID-19 Sounds",
    target="respiratory symptoms (COVID-19 Sounds task 1, symptomatic = 1)",
    task_type="binary",
    label_names=("asymptomatic", "symptomatic"),
    metric="AUROC",
    split_protocol="fixed train/val/test from data_0426_en_task1.csv; train downsampled to every 5th row",
    validation="OPERA's val split",
    license="data transfer agreement, on request",
    download="https://covid-19-sounds.org/blog/neurips_dataset",
    redistributable=False,
)
COUGHVID = dict(
    dataset="CoughVID",
    modality="cough",
    task_type="binary",
    metric="AUROC",
    split_protocol="OPERA's train, val and gender-test uuid lists (datasets/coughvid/*_uuids.npy); others unused",
    validation="OPERA's val list",
    license="CC BY 4.0",
    download="https://zenodo.org/records/4048312",
    redistributable=True,
)
COSWARA = dict(
    dataset="Coswara",
    modality="shallow cough",
    task_type="binary",
    metric="AUROC",
    split_protocol="random 80/20 train/test, stratified, seed 1337 (as committed in cough_aligned_train_test_split_*)",
    validation="20% of train, stratified, seed 1337 (OPERA linear_eval)",
    license="CC BY 4.0",
    download="https://github.com/iiscleap/Coswara-Data",
    redistributable=True,
)
MMLUNG = dict(
    dataset="MMlung",
    task_type="regression",
    label_names=(),
    metric="MAE",
    split_protocol="leave-one-subject-out over the 40 participants (fold column)",
    validation=(
        "11% of the training rows of each fold, random, seed 42; early stopping (patience 5) and the best of the "
        "checkpoints kept every 3 epochs on the validation MAE"
    ),
    license="custom (research and education use), on request",
    download="https://github.com/MohammedMosuily/mmlung (request from the authors)",
    redistributable=False,
)


def _tasks():
    uk = [
        OperaTask(
            id="T1",
            name="coviduk_exhalation",
            modality="exhalation",
            **UK_COVID,
            builder=task_rows.coviduk,
            manifest=task_rows.COVIDUK_MANIFEST["exhalation"],
        ),
        OperaTask(
            id="T2",
            name="coviduk_cough",
            modality="cough",
            **UK_COVID,
            builder=task_rows.coviduk,
            manifest=task_rows.COVIDUK_MANIFEST["cough"],
        ),
    ]
    covid19_sounds = [
        OperaTask(
            id=f"T{number}",
            name=f"covid19sounds_{modality}",
            modality=modality,
            **COVID19_SOUNDS,
            builder=task_rows.covid19sounds,
            manifest=task_rows.COVID19_SOUNDS_MANIFEST[modality],
        )
        for number, modality in ((3, "breath"), (4, "cough"))
    ]
    coughvid = [
        OperaTask(
            id="T5",
            name="coughvid_covid",
            target="COVID-19 status (COVID-19 = 1, healthy = 0)",
            label_names=("healthy", "COVID-19"),
            **COUGHVID,
            builder=task_rows.coughvid,
            manifest=task_rows.COUGHVID_MANIFEST["covid"],
        ),
        OperaTask(
            id="T6",
            name="coughvid_sex",
            target="sex (female = 1)",
            label_names=("male", "female"),
            **COUGHVID,
            builder=task_rows.coughvid,
            manifest=task_rows.COUGHVID_MANIFEST["gender"],
        ),
    ]
    icbhi = OperaTask(
        id="T7",
        name="icbhi_copd",
        dataset="ICBHI 2017",
        modality="lung sounds",
        target="COPD vs healthy (patient diagnosis)",
        task_type="binary",
        label_names=("healthy", "COPD"),
        metric="AUROC",
        split_protocol="official ICBHI challenge train/test (not patient-disjoint)",
        validation="20% of train, stratified, seed 1337 (OPERA linear_eval)",
        license="CC0 (free for research)",
        download="https://bhichallenge.med.auth.gr",
        redistributable=True,
        manifest=task_rows.ICBHI_MANIFEST,
        builder=task_rows.icbhi,
    )
    coswara = [
        OperaTask(
            id="T8",
            name="coswara_smoker",
            target="smoker (yes = 1)",
            label_names=("non-smoker", "smoker"),
            **COSWARA,
            builder=task_rows.coswara,
            manifest=task_rows.COSWARA_MANIFEST["smoker"],
        ),
        OperaTask(
            id="T9",
            name="coswara_sex",
            target="sex (female = 1)",
            label_names=("male", "female"),
            **COSWARA,
            builder=task_rows.coswara,
            manifest=task_rows.COSWARA_MANIFEST["sex"],
        ),
    ]
    kauh = OperaTask(
        id="T10",
        name="kauh_obstructive",
        dataset="KAUH",
        modality="lung sounds",
        target="healthy vs obstructive disease (asthma or COPD = 1)",
        task_type="binary",
        label_names=("healthy", "asthma_or_copd"),
        metric="AUROC",
        split_protocol="OPERA's committed train/test assignment (train_test_split.npy; its 'val' rows are test data)",
        validation="10% of train, stratified, seed 1337 (OPERA linear_eval)",
        license="CC BY 4.0",
        download="https://data.mendeley.com/datasets/jwyy9np4gv/3",
        redistributable=True,
        manifest=task_rows.KAUH_MANIFEST,
        builder=task_rows.kauh,
    )
    copd = OperaTask(
        id="T11",
        name="respiratorytr_copd",
        dataset="Respiratory@TR",
        modality="lung sounds",
        target="COPD severity (GOLD 0-4)",
        task_type="multiclass",
        label_names=("COPD0", "COPD1", "COPD2", "COPD3", "COPD4"),
        metric="AUROC (macro one-vs-rest)",
        split_protocol="patient-wise train/val/test: 20% test, then 20% of the rest val (stratified, seed 1337)",
        validation="OPERA's val split",
        license="CC BY 4.0",
        download="https://data.mendeley.com/datasets/p9z4h98s6j/1",
        redistributable=True,
        manifest=task_rows.COPD_MANIFEST,
        builder=task_rows.respiratory_tr,
    )
    ssbpr = OperaTask(
        id="T12",
        name="ssbpr_position",
        dataset="SSBPR",
        modality="snoring",
        target="body position during snoring (5 classes, prone excluded)",
        task_type="multiclass",
        label_names=("supine", "supine_left_head", "supine_right_head", "left_side", "right_side"),
        metric="AUROC (macro one-vs-rest)",
        split_protocol="random file-level 60/20/20: 20% test, then 25% of the rest val (stratified, seed 42)",
        validation="as in the split protocol",
        license="CC BY 4.0, on request",
        download="https://github.com/xiaoli1996/SSBPR",
        redistributable=False,
        manifest=task_rows.SSBPR_MANIFEST,
        builder=task_rows.ssbpr,
    )
    mmlung = [
        OperaTask(
            id=f"T{13 + 3 * m + t}",
            name=f"mmlung_{modality_name}_{target_name.lower().replace('/', '_')}",
            modality=modality_label,
            target=f"{target_name} from spirometry",
            **MMLUNG,
            builder=task_rows.mmlung,
        )
        for m, (modality_name, modality_label) in enumerate((("breath", "deep breath"), ("vowel", 'vowel "o"')))
        for t, target_name in enumerate(("FVC", "FEV1", "FEV1/FVC"))
    ]
    nosemic = OperaTask(
        id="T19",
        name="nosemic_rr",
        dataset="NoseMic",
        modality="nasal breath",
        target="respiratory rate (bpm)",
        task_type="regression",
        label_names=(),
        metric="MAE",
        split_protocol="leave-one-subject-out over subjects 4-14 and 17-21 (fold column; other subjects train only)",
        validation="20% of the training rows of each fold, random, seed 42",
        license="custom, on request",
        download="contact the NoseMic authors (see OPERA)",
        redistributable=False,
        builder=task_rows.nosemic,
    )
    tasks = [*uk, *covid19_sounds, *coughvid, icbhi, *coswara, kauh, copd, ssbpr, *mmlung, nosemic]
    return {task.id: task for task in tasks}


TASKS = _tasks()


def get_task(task_id) -> OperaTask:
    """The task with this id (`"T7"`, case-insensitive) or name (`"icbhi_copd"`)."""
    key = str(task_id).strip()
    for task in TASKS.values():
        if key.upper() == task.id or key == task.name:
            return task
    raise ValueError(f"Unknown OPERA task {task_id!r}; known: {', '.join(TASKS)} (see `resp-hf opera list`).")
