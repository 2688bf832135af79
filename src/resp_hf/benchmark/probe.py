"""OPERA's linear probe on frozen embeddings, trained with the Hugging Face Trainer."""

import copy
import tempfile

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_callback import PrinterCallback

from ..evaluate import build_compute_metrics

LEARNING_RATE = 1e-4
EPOCH_DECAY = 0.97
L2_STRENGTH = 1e-5
MAX_GRAD_NORM = 1.0
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
    """Keeps the weights of the epoch with the best validation metric (the first on ties), like OPERA's checkpoint."""

    def __init__(self, metric, greater_is_better):
        self.metric = f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.best_value = None
        self.best_epoch = None
        self.best_state = None
        self.history = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = metrics.get(self.metric, float("nan"))
        self.history.append(value)
        if np.isnan(value):
            return
        better = self.best_value is None or (
            value > self.best_value if self.greater_is_better else value < self.best_value
        )
        if better:
            self.best_value, self.best_epoch = value, len(self.history)
            self.best_state = copy.deepcopy(model.state_dict())


def train_linear_probe(
    train, validation, test, problem_type, num_labels, seed, epochs=64, batch_size=32, l2_strength=L2_STRENGTH
):
    """
    Trains a linear head on `(features, labels)` pairs with OPERA's recipe: Adam at 1e-4 multiplied by 0.97 every
    epoch, gradient clipping at 1.0, `epochs` epochs, and the epoch with the best validation AUROC (lowest MAE for
    regression) kept. `seed` sets the head initialization and the shuffling.

    Returns `(test_logits, best_epoch, validation_history)`.
    """
    regression = problem_type == "regression"
    train_labels = np.asarray(train[1], dtype=np.float32 if regression else np.int64)
    config = LinearProbeConfig(
        input_size=train[0].shape[1],
        num_labels=num_labels,
        l2_strength=l2_strength,
        problem_type=problem_type,
        target_mean=float(train_labels.mean()) if regression else 0.0,
        target_std=float(train_labels.std() or 1.0) if regression else 1.0,
    )
    torch.manual_seed(seed)
    model = LinearProbe(config)
    keep_best = KeepBestEpoch("mae" if regression else "auroc", greater_is_better=not regression)
    steps_per_epoch = -(-len(train_labels) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: EPOCH_DECAY ** (step // steps_per_epoch))
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=1024,
            max_grad_norm=MAX_GRAD_NORM,
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            seed=seed,
            data_seed=seed,
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=EmbeddingDataset(train[0], train_labels),
            eval_dataset=EmbeddingDataset(*validation),
            compute_metrics=build_compute_metrics(problem_type),
            optimizers=(optimizer, schedule),
            callbacks=[keep_best],
        )
        trainer.remove_callback(PrinterCallback)  # no per-epoch metric printing: a run trains hundreds of heads
        trainer.train()
        if keep_best.best_state is None:
            raise ValueError("The validation metric was undefined in every epoch (a validation split with one class?).")
        model.load_state_dict(keep_best.best_state)
        test_logits = trainer.predict(EmbeddingDataset(*test)).predictions
    return test_logits, keep_best.best_epoch, keep_best.history
