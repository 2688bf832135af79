"""OPERA's linear probe on frozen embeddings, trained with the Hugging Face Trainer."""

import copy
import tempfile
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_callback import PrinterCallback

from ..metrics import build_compute_metrics
from ..opera import ProbeProtocol

L2_STRENGTH = 1e-5
INIT_STD = 0.01


class LinearProbeConfig(PretrainedConfig):
    """A linear layer on clip embeddings, with OPERA's L2 penalty on its parameters."""

    model_type = "resp_linear_probe"

    def __init__(
        self, input_size=3840, num_labels=2, l2_strength=L2_STRENGTH, target_mean=0.0, target_std=1.0, **kwargs
    ):
        self.input_size = input_size
        self.l2_strength = l2_strength
        self.target_mean = target_mean
        self.target_std = target_std
        super().__init__(num_labels=num_labels, **kwargs)


class LinearProbe(PreTrainedModel):
    """
    OPERA's `LinearHead` (classification) and `LinearHeadR` (regression): cross-entropy, or MSE in target units with the
    layer predicting standardized targets, plus `l2_strength` times the sum of squares of the weight and bias.
    """

    config_class = LinearProbeConfig
    main_input_name = "features"

    def __init__(self, config):
        super().__init__(config)
        self.linear = nn.Linear(config.input_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):  # OPERA's weights_init
            init.normal_(module.weight, mean=0.0, std=INIT_STD)
            init.zeros_(module.bias)

    def l2_penalty(self):
        return self.config.l2_strength * (self.linear.weight.square().sum() + self.linear.bias.square().sum())

    def forward(self, features, labels=None, **kwargs):
        logits = self.linear(features)
        if self.config.problem_type == "regression":
            logits = logits * self.config.target_std + self.config.target_mean
        loss = None
        if labels is not None:
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits, labels.long())
            loss = loss + self.l2_penalty()
        return SequenceClassifierOutput(loss=loss, logits=logits)


class EmbeddingDataset(torch.utils.data.Dataset):
    def __init__(self, features, labels):
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.labels = torch.as_tensor(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"features": self.features[index], "labels": self.labels[index]}


class KeepBestEpoch(TrainerCallback):
    """
    Keeps the weights of the best validation epoch among those OPERA checkpoints (every `checkpoint_every`-th epoch:
    Lightning's `ModelCheckpoint(every_n_epochs=n)` saves after epochs n, 2n, ...; the first on ties), and stops
    training like Lightning's `EarlyStopping` when `patience` epochs in a row fail to improve on the best value by
    `min_delta` (or the metric is not finite). Epochs are numbered from 1.
    """

    def __init__(self, metric, greater_is_better, checkpoint_every=1, patience=None, min_delta=0.0):
        self.metric = f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.checkpoint_every = checkpoint_every
        self.patience = patience
        self.min_delta = min_delta
        self.best_value = None
        self.best_epoch = None
        self.best_state = None
        self.history = []
        self.stopping_best = None  # EarlyStopping's own best, over every epoch
        self.epochs_without_improvement = 0

    def improves(self, value, reference, margin=0.0):
        if reference is None:
            return True
        return value > reference + margin if self.greater_is_better else value < reference - margin

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = metrics.get(self.metric, float("nan"))
        self.history.append(value)
        epoch = len(self.history)
        if epoch % self.checkpoint_every == 0 and np.isfinite(value) and self.improves(value, self.best_value):
            self.best_value, self.best_epoch = value, epoch
            self.best_state = copy.deepcopy(model.state_dict())
        if self.patience is not None:
            self.check_early_stopping(value, control)

    def check_early_stopping(self, value, control):
        if not np.isfinite(value):
            control.should_training_stop = True
        elif self.improves(value, self.stopping_best, self.min_delta):
            self.stopping_best, self.epochs_without_improvement = value, 0
        else:
            self.epochs_without_improvement += 1
            control.should_training_stop = self.epochs_without_improvement >= self.patience


@dataclass(frozen=True)
class EmbeddedSplit:
    """Clip embeddings `(rows, size)` and their labels: class indices, or float targets for regression."""

    features: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ProbeData:
    """What a linear head learns from, is selected on and is scored on, and what kind of labels they carry."""

    train: EmbeddedSplit
    validation: EmbeddedSplit
    test: EmbeddedSplit
    problem_type: str  # "single_label_classification" or "regression"
    num_labels: int


class ProbeResult(NamedTuple):
    test_logits: np.ndarray
    best_epoch: int
    validation_history: list[float]  # the validation metric after each epoch


def train_linear_probe(data: ProbeData, protocol: ProbeProtocol, seed: int) -> ProbeResult:
    """
    Trains a linear head on `data` with a task's `ProbeProtocol` (see `resp_hf.opera.protocol`): Adam at
    `learning_rate`, multiplied by `lr_decay` after every epoch, gradient clipping at `max_grad_norm`, the L2 penalty,
    `epochs` epochs with early stopping when the protocol has it, and the head of the best validation AUROC (lowest MAE
    for regression) among the epochs OPERA checkpoints. `seed` sets the head initialization and the shuffling.
    """
    protocol.check_epochs(protocol.epochs)
    regression = data.problem_type == "regression"
    train_labels = np.asarray(data.train.labels, dtype=np.float32 if regression else np.int64)
    model = new_linear_probe(data, train_labels, protocol, seed)
    keep_best = KeepBestEpoch(
        "mae" if regression else "auroc",
        greater_is_better=not regression,
        checkpoint_every=protocol.checkpoint_every,
        patience=protocol.early_stopping_patience,
        min_delta=protocol.early_stopping_min_delta,
    )
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(
            model=model,
            args=training_arguments(output_dir, protocol, seed),
            train_dataset=EmbeddingDataset(data.train.features, train_labels),
            eval_dataset=EmbeddingDataset(data.validation.features, data.validation.labels),
            compute_metrics=build_compute_metrics(data.problem_type),
            optimizers=decaying_adam(model, protocol, steps_per_epoch=-(-len(train_labels) // protocol.batch_size)),
            callbacks=[keep_best],
        )
        trainer.remove_callback(PrinterCallback)  # no per-epoch metric printing: a run trains hundreds of heads
        trainer.train()
        if keep_best.best_state is None:
            raise ValueError(
                f"{protocol.task}: the validation metric was undefined at every checkpointed epoch (a validation split "
                "with one class?)."
            )
        model.load_state_dict(keep_best.best_state)
        test_logits = trainer.predict(EmbeddingDataset(data.test.features, data.test.labels)).predictions
    return ProbeResult(test_logits, keep_best.best_epoch, keep_best.history)


def new_linear_probe(data, train_labels, protocol, seed):
    """A head initialized from `seed`; for regression it predicts targets standardized by the training targets."""
    regression = data.problem_type == "regression"
    config = LinearProbeConfig(
        input_size=data.train.features.shape[1],
        num_labels=data.num_labels,
        l2_strength=protocol.l2_strength,
        problem_type=data.problem_type,
        target_mean=float(train_labels.mean()) if regression else 0.0,
        target_std=float(train_labels.std() or 1.0) if regression else 1.0,
    )
    torch.manual_seed(seed)
    return LinearProbe(config)


def decaying_adam(model, protocol, steps_per_epoch):
    """OPERA's optimizer: Adam at the protocol's learning rate, multiplied by `lr_decay` after every epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=protocol.learning_rate)
    decay = protocol.lr_decay
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay ** (step // steps_per_epoch))
    return optimizer, schedule


def training_arguments(output_dir, protocol, seed):
    """One evaluation per epoch, nothing saved or logged (the best head is kept in memory by `KeepBestEpoch`)."""
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=protocol.epochs,
        per_device_train_batch_size=protocol.batch_size,
        per_device_eval_batch_size=1024,
        max_grad_norm=protocol.max_grad_norm,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
