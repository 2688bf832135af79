"""
OPERA's per-task linear-evaluation protocol, as one object per task that `resp-hf opera protocol` prints and the
benchmark runs.

Every value was read in OPERA's `src/benchmark/linear_eval.py` at the commit that the paper's plugin pins
(nttcslab/eval-audio-repr `plugin/OPERA`: evelyn0414/OPERA 3622310e667afb8aa40169050b4dd45de75946a2), and in
`src/model/models_eval.py` (`LinearHead`, `LinearHeadR`) for the optimizer; `sources` names the place for each.
"""

from dataclasses import asdict, dataclass, field

from .registry import get_task

OPERA_COMMIT = "3622310e667afb8aa40169050b4dd45de75946a2"
LINEAR_EVAL = f"OPERA@{OPERA_COMMIT[:7]} src/benchmark/linear_eval.py"
MODELS_EVAL = f"OPERA@{OPERA_COMMIT[:7]} src/model/models_eval.py"
PLUGIN = "nttcslab/eval-audio-repr plugin/OPERA (evar_opera_diff.patch: EVAR's WavDataset, random_crop=True)"
FIVE_SEEDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class ProbeProtocol:
    """
    How one task is probed: the data and its splits, then the linear head's training (Adam, a learning rate multiplied
    by `lr_decay` after every epoch, gradient clipping), the epochs at which the head may be kept (`checkpoint_every`),
    optional early stopping, the seeds whose test scores are averaged, and how clips are fitted to `seconds`.

    `validation_fraction` and `validation_seed` carve validation out of the training rows (for leave-one-subject-out
    tasks, out of each fold's training rows; stratified for classification); None when the task has its own list.
    `sources` says where in OPERA (or the paper's plugin) each value comes from.
    """

    task: str
    name: str
    data: str
    label_rule: str
    split: str
    validation: str
    metric: str
    monitor: str
    epochs: int
    batch_size: int
    learning_rate: float = 1e-4
    lr_decay: float = 0.97
    optimizer: str = "Adam"
    max_grad_norm: float = 1.0
    l2_strength: float = 1e-5
    checkpoint_every: int = 1
    early_stopping_patience: int = None
    early_stopping_min_delta: float = 0.0
    seeds: tuple = FIVE_SEEDS
    spread: str = "seeds"  # what the reported ± is taken over: "seeds" or "folds"
    validation_fraction: float = None
    validation_seed: int = None
    crop: str = "random"
    seconds: float = 10.0
    sources: dict = field(default_factory=dict, compare=False)

    def check_epochs(self, epochs):
        """Fails when `epochs` ends before the first epoch OPERA checkpoints, so that no head could be kept."""
        if epochs < self.checkpoint_every:
            raise ValueError(
                f"{self.task}: {epochs} epoch(s) never reach OPERA's first checkpoint (every {self.checkpoint_every} "
                "epochs), so no head could be kept; train for more epochs."
            )

    def to_dict(self):
        """The protocol as JSON-ready values (seeds as a list)."""
        return asdict(self) | {"seeds": list(self.seeds)}

    def describe(self):
        """The protocol as aligned `field  value    [source]` lines."""
        values = self.to_dict()
        sources = values.pop("sources")
        width = max(len(name) for name in values)
        lines = [f"OPERA protocol of {self.task} ({self.name})"]
        for name, value in values.items():
            source = sources.get(name)
            lines.append(f"  {name.ljust(width)}  {value}" + (f"    [{source}]" if source else ""))
        return "\n".join(lines)


def common_sources(function, call):
    """Where the values every task shares come from; `function` is the task's `linear_evaluation_*`."""
    return {
        "validation": f"{LINEAR_EVAL} {function}",
        "metric": f"{MODELS_EVAL} LinearHead / LinearHeadR test_step",
        "monitor": f"{LINEAR_EVAL} {function}: ModelCheckpoint(monitor=...)",
        "epochs": f"{LINEAR_EVAL} __main__: {call}",
        "batch_size": f"{LINEAR_EVAL} __main__: {call}",
        "learning_rate": f"{MODELS_EVAL} LinearHead(R)(lr=1e-4): linear_eval never passes lr to the head",
        "lr_decay": f"{LINEAR_EVAL} DecayLearningRate(weight=0.97), called at every train epoch end",
        "optimizer": f"{MODELS_EVAL} configure_optimizers: torch.optim.Adam",
        "max_grad_norm": f"{LINEAR_EVAL} {function}: pl.Trainer(gradient_clip_val=1.0)",
        "l2_strength": f"{LINEAR_EVAL} __main__: --l2_strength default 1e-5",
        "checkpoint_every": f"{LINEAR_EVAL} {function}: ModelCheckpoint (every epoch unless every_n_epochs)",
        "seeds": f"{LINEAR_EVAL} __main__: seeds range(args.n_run), n_run=5",
        "spread": f"{LINEAR_EVAL} __main__: np.std over the runs",
        "crop": f"{PLUGIN}: a 10-s window at a random start (np.random.randint(len - unit))",
        "seconds": f"{PLUGIN}: extract_evar_feature(input_sec=10)",
    }


def classification(task_id, function, call, epochs, batch_size, **overrides):
    """A classification task's protocol: five seeds, best validation AUROC kept."""
    task = get_task(task_id)
    sources = common_sources(function, call) | overrides.pop("sources", {})
    return ProbeProtocol(
        task=task.id,
        name=task.name,
        data=f"{task.dataset}, {task.modality}" + (f" (manifest: {', '.join(task.manifest)})" if task.manifest else ""),
        label_rule=task.target + (f"; classes {list(task.label_names)}" if task.label_names else ""),
        split=task.split_protocol,
        validation=task.validation,
        metric=task.metric,
        monitor="validation AUROC, highest (valid_auc, mode=max)",
        epochs=epochs,
        batch_size=batch_size,
        sources=sources,
        **overrides,
    )


def leave_one_out(task_id, function, call, **overrides):
    """A regression task's protocol: one run with seed 0, leave-one-subject-out, ± over the folds."""
    task = get_task(task_id)
    sources = common_sources(function, call) | {
        "seeds": f"{LINEAR_EVAL} __main__ (LOOCV): np.random.seed(0), torch.manual_seed(0), one run",
        "spread": f"{LINEAR_EVAL} __main__ (LOOCV): np.std(maes) over the folds of that run",
        "l2_strength": f"{LINEAR_EVAL} __main__ (LOOCV): {call}",
        "monitor": f"{LINEAR_EVAL} {function}: ModelCheckpoint(monitor='valid_MAE', mode='min')",
    }
    return ProbeProtocol(
        task=task.id,
        name=task.name,
        data=f"{task.dataset}, {task.modality}",
        label_rule=task.target,
        split=task.split_protocol,
        validation=task.validation,
        metric=task.metric,
        monitor="validation MAE, lowest (valid_MAE, mode=min)",
        epochs=64,
        batch_size=64,
        l2_strength=1e-1,
        seeds=(0,),
        spread="folds",
        validation_seed=42,
        sources=sources | overrides.pop("sources", {}),
        **overrides,
    )


def _protocols():
    protocols = [
        *(
            classification(task_id, "linear_evaluation_coviduk", "coviduk: epochs=64, batch_size=64", 64, 64)
            for task_id in ("T1", "T2")
        ),
        *(
            classification(
                task_id,
                "linear_evaluation_covid19sounds",
                "covid19sounds: function defaults epochs=64, batch_size=64",
                64,
                64,
            )
            for task_id in ("T3", "T4")
        ),
        *(
            classification(task_id, "linear_evaluation_coughvid", f"{name}: epochs=64, batch_size=64", 64, 64)
            for task_id, name in (("T5", "coughvidcovid"), ("T6", "coughvidsex"))
        ),
        classification(
            "T7",
            "linear_evaluation_icbhidisease",
            "icbhidisease: epochs=64, batch_size=32",
            64,
            32,
            validation_fraction=0.2,
            validation_seed=1337,
        ),
        *(
            classification(
                task_id,
                "linear_evaluation_coswara",
                f"{name}: epochs=64, batch_size=32",
                64,
                32,
                validation_fraction=0.2,
                validation_seed=1337,
            )
            for task_id, name in (("T8", "coswarasmoker"), ("T9", "coswarasex"))
        ),
        classification(
            "T10",
            "linear_evaluation_kauh",
            "kauh: epochs=50, batch_size=32",
            50,
            32,
            checkpoint_every=5,
            validation_fraction=0.1,
            validation_seed=1337,
            sources={"checkpoint_every": f"{LINEAR_EVAL} linear_evaluation_kauh: ModelCheckpoint(every_n_epochs=5)"},
        ),
        classification("T11", "linear_evaluation_copd", "copd: epochs=64, batch_size default 32", 64, 32),
        classification(
            "T12",
            "linear_evaluation_ssbpr",
            "snoring: epochs=32, batch_size default 64",
            32,
            64,
            checkpoint_every=3,
            sources={"checkpoint_every": f"{LINEAR_EVAL} linear_evaluation_ssbpr: ModelCheckpoint(every_n_epochs=3)"},
        ),
        *(
            leave_one_out(
                f"T{number}",
                "linear_evaluation_mmlung",
                "spirometry: l2_strength=1e-1, epochs=64, batch_size=64 (its lr=1e-1 never reaches the head)",
                checkpoint_every=3,
                early_stopping_patience=5,
                early_stopping_min_delta=0.001,
                validation_fraction=0.11,
                sources={
                    "checkpoint_every": f"{LINEAR_EVAL} linear_evaluation_mmlung: ModelCheckpoint(every_n_epochs=3)",
                    "early_stopping_patience": f"{LINEAR_EVAL} linear_evaluation_mmlung: EarlyStopping(monitor="
                    "'valid_MAE', min_delta=0.001, patience=5, mode='min')",
                    "early_stopping_min_delta": f"{LINEAR_EVAL} linear_evaluation_mmlung: "
                    "EarlyStopping(min_delta=0.001)",
                    "validation_fraction": f"{LINEAR_EVAL} linear_evaluation_mmlung: train_test_split(test_size=0.11, "
                    "random_state=42)",
                    "validation_seed": f"{LINEAR_EVAL} linear_evaluation_mmlung: random_state=42",
                },
            )
            for number in range(13, 19)
        ),
        leave_one_out(
            "T19",
            "linear_evaluation_nosemic",
            "rr: l2_strength=1e-1, epochs=64, batch_size=64, lr=1e-4",
            validation_fraction=0.2,
            sources={
                "validation_fraction": f"{LINEAR_EVAL} linear_evaluation_nosemic: train_test_split(test_size=0.2, "
                "random_state=42)",
                "validation_seed": f"{LINEAR_EVAL} linear_evaluation_nosemic: random_state=42",
            },
        ),
    ]
    return {protocol.task: protocol for protocol in protocols}


PROTOCOLS = _protocols()


def get_protocol(task_id) -> ProbeProtocol:
    """The protocol of an OPERA task, by id (`"T7"`) or name (`"icbhi_copd"`)."""
    return PROTOCOLS[get_task(task_id).id]
