"""Publishing converted or fine-tuned folders to the Hugging Face Hub."""

import json
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

from . import cards
from .models.resp_m2d import RespM2DFeatureExtractor, RespM2DForAudioClassification, RespM2DModel


def load_folder_model(folder):
    """The model saved in `folder`: a classifier if its config says so, else the encoder."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a saved resp_hf model folder.")
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    model_class = RespM2DForAudioClassification if "RespM2DForAudioClassification" in architectures else RespM2DModel
    return model_class.from_pretrained(folder)


def stage_folder(folder, staging_dir, name):
    """
    Writes model, feature extractor, remote code and card (the folder's own card, else a fresh one) for upload; the
    card keeps the local placeholder for the repo id, and a fresh card is titled `name`. Raises if `folder` is not a
    saved resp_hf model.
    """
    model = load_folder_model(folder)
    model.save_pretrained(staging_dir)
    RespM2DFeatureExtractor.from_pretrained(folder).save_pretrained(staging_dir)
    card_path = Path(folder) / "README.md"
    if card_path.is_file():
        card = card_path.read_text(encoding="utf-8")
    elif isinstance(model, RespM2DForAudioClassification):
        card = cards.classifier_card(model.config, base_model="unknown", dataset_name="unknown", results={}, name=name)
    else:
        card = cards.encoder_card(model.config, source_name="unknown", sha256="unknown", name=name)
    cards.write_card(staging_dir, card)


def push_folder(folder, repo_id, private=False, token=None, commit_message="Upload resp_hf model"):
    """
    Uploads a resp_hf folder to `repo_id` in one commit: `config.json` (with `auto_map`), `model.safetensors`,
    `preprocessor_config.json`, the remote-code files and `README.md`. The folder is checked before the repository
    is created. Returns the commit info.
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging_dir:
        stage_folder(folder, staging_dir, name=repo_id)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        card = cards.card_for_repo((Path(staging_dir) / "README.md").read_text(encoding="utf-8"), repo_id)
        cards.write_card(staging_dir, card)
        return api.upload_folder(repo_id=repo_id, folder_path=staging_dir, commit_message=commit_message)
