"""The plain Transformers recipe: dataset.map(feature_extractor), a stock collator and a stock Trainer."""

import numpy as np
import pytest
import torch
from conftest import noise, tiny_config
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

from resp_hf import RespM2DFeatureExtractor, RespM2DForAudioClassification

SECONDS = [0.7, 1.3, 0.4, 1.0, 0.9, 0.5]


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return RespM2DForAudioClassification(tiny_config(num_labels=2))


def audio_dataset():
    clips = [{"array": noise(seconds, seed=i), "sampling_rate": 16000} for i, seconds in enumerate(SECONDS)]
    return Dataset.from_dict({"audio": clips, "label": [i % 2 for i in range(len(clips))]})


def train(model, dataset, collator, tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=2, learning_rate=1e-3,
        report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    before = model.classifier.weight.detach().clone()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    assert not torch.equal(model.classifier.weight, before)


def test_variable_length_clips_train_with_data_collator_with_padding(classifier, tmp_path):
    extractor = RespM2DFeatureExtractor.from_model_config(classifier.config)
    dataset = audio_dataset().map(
        lambda audio: extractor(audio, padding=False, return_tensors=None),
        input_columns="audio", batched=True, remove_columns=["audio"],
    )  # fmt: skip
    collator = DataCollatorWithPadding(extractor)
    batch = collator([dataset[i] for i in range(3)])
    expected = extractor([noise(seconds, seed=i) for i, seconds in enumerate(SECONDS[:3])], sampling_rate=16000)
    torch.testing.assert_close(batch["input_features"], expected["input_features"], atol=1e-6, rtol=0)
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert batch["labels"].tolist() == [0, 1, 0]
    train(classifier, dataset, collator, tmp_path)


def test_fixed_length_clips_train_with_default_data_collator(classifier, tmp_path):
    extractor = RespM2DFeatureExtractor.from_model_config(classifier.config)
    dataset = audio_dataset().map(
        lambda audio: extractor(audio, padding="max_length", max_length=16000, truncation=True, return_tensors=None),
        input_columns="audio", batched=True, remove_columns=["audio"],
    )  # fmt: skip
    batch = default_data_collator([dataset[i] for i in range(3)])
    assert batch["input_features"].shape == (3, 80, extractor.num_frames(16000))
    clipped = [min(int(seconds * 16000), 16000) for seconds in SECONDS[:3]]
    assert batch["attention_mask"].sum(-1).tolist() == [extractor.num_frames(samples) for samples in clipped]
    train(classifier, dataset, default_data_collator, tmp_path)
