"""Publishing converted or fine-tuned folders to the Hugging Face Hub."""

import json
import logging
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

from . import cards
from .models.resp_m2d import RespM2DFeatureExtractor, RespM2DForAudioClassification, RespM2DModel

logger = logging.getLogger(__name__)


# Uploaded as they are, next to the model: a fine-tuned folder's test results and LoRA adapters (with the head).
PUBLISHED_EXTRAS = ("results.json", "adapter")


def read_config(folder) -> dict:
    """The folder's config.json as a dict; a clear error naming the file when it is missing or not a JSON object."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a saved resp_hf model folder.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}): the folder is damaged.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds a {type(config).__name__}, not a JSON object: the folder is damaged.")
    return config


def load_folder_model(folder):
    """The model saved in `folder`: a classifier if its config says so, else the encoder."""
    architectures = read_config(folder).get("architectures") or []
    model_class = RespM2DForAudioClassification if "RespM2DForAudioClassification" in architectures else RespM2DModel
    return model_class.from_pretrained(folder)


def stage_folder(folder, staging_dir, name) -> list[str]:
    """
    Writes model, feature extractor (checked against the model's config), remote code, card (the folder's own card,
    else a fresh one) and `PUBLISHED_EXTRAS` for upload; the card keeps the local placeholder for the repo id, and a
    fresh card is titled `name`. Raises if `folder` is not a saved resp_hf model. Returns what is not uploaded.
    """
    folder, staging_dir = Path(folder), Path(staging_dir)
    model = load_folder_model(folder)
    feature_extractor = RespM2DFeatureExtractor.from_pretrained(folder)
    feature_extractor.check_matches(model.config)
    model.save_pretrained(staging_dir)
    feature_extractor.save_pretrained(staging_dir)
    card_path = folder / "README.md"
    if card_path.is_file():
        card = card_path.read_text(encoding="utf-8")
    elif isinstance(model, RespM2DForAudioClassification):
        card = cards.classifier_card(model.config, base_model="unknown", dataset_name="unknown", results={}, name=name)
    else:
        card = cards.encoder_card(model.config, source_name="unknown", sha256="unknown", name=name)
    cards.write_card(staging_dir, card)
    for extra in PUBLISHED_EXTRAS:
        source = folder / extra
        if source.is_dir():
            shutil.copytree(source, staging_dir / extra)
        elif source.is_file():
            shutil.copyfile(source, staging_dir / extra)
    return sorted(entry.name for entry in folder.iterdir() if not (staging_dir / entry.name).exists())


def push_folder(folder, repo_id, private=False, token=None, commit_message="Upload resp_hf model"):
    """
    Uploads a resp_hf folder to `repo_id` in one commit: `config.json` (with `auto_map`), `model.safetensors`,
    `preprocessor_config.json`, the remote-code files, `README.md` and, when present, `results.json` and `adapter/`;
    anything else (e.g. Trainer's `checkpoints/`) is named in a warning. The folder is checked before the repository
    is created. Returns the commit info.
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging_dir:
        left_out = stage_folder(folder, staging_dir, name=repo_id)
        if left_out:
            logger.warning(f"Not uploaded from {folder}: {', '.join(left_out)} (not part of a published model).")
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        card = cards.card_for_repo((Path(staging_dir) / "README.md").read_text(encoding="utf-8"), repo_id)
        cards.write_card(staging_dir, card)
        return api.upload_folder(repo_id=repo_id, folder_path=staging_dir, commit_message=commit_message)
