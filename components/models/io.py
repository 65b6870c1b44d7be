"""Model folders on disk: safetensors + JSON (no pickle), for an `AttributeModel` or an ensemble.

    save_model(model, out_dir, thresholds)     # model.safetensors, config.json, vocab.json, thresholds.json
    load_model(out_dir)                         # AttributeModel, or EnsembleModel for an ensemble folder

An ensemble folder (written by components.evaluation.ensemble_selection.combine_models, or by
`save_extraction_ensemble`) holds its members as ordinary model folders under `members/<name>/`
and their names (and weights) in config.json.
This module sits above both `model.py` and `ensemble.py`, so neither imports the other's loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.models.ensemble import EnsembleModel
from components.models.model import AttributeModel, Vocab, create_model
from components.models.stacking import SIDES, StackedModel
from components.models.tagger import ExtractionEnsemble, ExtractionModel

WEIGHTS, CONFIG, VOCAB, THRESHOLDS = "model.safetensors", "config.json", "vocab.json", "thresholds.json"
MEMBERS = "members"  # an ensemble's (or stacked model's) member folders
STACKER = "stacker.safetensors"


def save_model(
    model: AttributeModel | ExtractionModel,
    out_dir: Path,
    thresholds: dict[str, list[float | None]] | None = None,
    include_encoders: bool = True,
    extra: dict | None = None,
) -> Path:
    """Write weights + config + vocab (+ thresholds). Frozen pretrained encoders need not be
    stored again (`include_encoders=False`): they are rebuilt from their config on load."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    frozen = model.frozen_prefixes() if isinstance(model, ExtractionModel) else ()
    if not include_encoders:
        frozen = ("text_encoder.", "image_encoder.")
    state = {k: v for k, v in state.items() if not k.startswith(frozen)} if frozen else state
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out_dir / WEIGHTS))
    meta = {
        "model": model.config.model_dump(mode="json"),
        "includes_encoders": include_encoders,
        "not_saved": list(frozen),  # frozen pretrained weights, rebuilt from the config on load
        **(extra or {}),
    }
    if isinstance(model, ExtractionModel):
        meta["surface_forms"] = model.surface_forms
        meta["word_aligned"] = model.word_aligned
    (out_dir / CONFIG).write_text(json.dumps(meta, indent=1))
    _write_vocab(model.vocab, out_dir)
    if thresholds is not None:
        (out_dir / THRESHOLDS).write_text(json.dumps(thresholds, indent=1))
    return out_dir


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> AttributeModel | ExtractionModel:
    """A saved model folder -> its model in eval mode (an `EnsembleModel` for an ensemble folder,
    which predicts like an `AttributeModel`; an `ExtractionEnsemble` for one of extraction models)."""
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved attrflow model (no {CONFIG})")
    meta = json.loads((model_dir / CONFIG).read_text())
    if "ensemble" in meta and _task(meta) == "extraction":
        members = [load_model(model_dir / MEMBERS / n, device) for n in meta["ensemble"]["members"]]
        return ExtractionEnsemble(members).to(device).eval()  # type: ignore[arg-type,return-value]
    if "ensemble" in meta:
        return load_ensemble(model_dir, meta, device)  # type: ignore[return-value]
    if "stacked" in meta:
        return load_stacked(model_dir, device)  # type: ignore[return-value]
    vocab = {k: Vocab.model_validate(v) for k, v in json.loads((model_dir / VOCAB).read_text()).items()}
    model = create_model(meta["model"], vocab)  # a classifier, or an extraction tagger (task: extraction)
    state = load_file(str(model_dir / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    not_saved = tuple(meta.get("not_saved", ())) + (
        () if meta["includes_encoders"] else ("text_encoder.", "image_encoder.")
    )
    if not_saved:
        missing = [k for k in missing if not k.startswith(not_saved)]
    if missing or unexpected:
        raise ValueError(
            f"{model_dir}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    if isinstance(model, ExtractionModel):
        model.surface_forms = meta.get("surface_forms", {})
        model.word_aligned = meta.get("word_aligned", {})
    return model.to(device).eval()


def save_extraction_ensemble(
    model: ExtractionEnsemble, out_dir: Path, names: list[str], extra: dict | None = None
) -> Path:
    """An extraction ensemble's folder: each member saved under `members/<name>/`, config.json
    naming them (with the first member's model config, which says the folder's task)."""
    out_dir = Path(out_dir)
    for name, member in zip(names, model.members, strict=True):
        save_model(member, out_dir / MEMBERS / name)  # type: ignore[arg-type]
    meta = {
        "model": model.config.model_dump(mode="json"),
        "ensemble": {"members": names},
        "includes_encoders": True,
        **(extra or {}),
    }
    (out_dir / CONFIG).write_text(json.dumps(meta, indent=1))
    _write_vocab(model.vocab, out_dir)
    return out_dir


def _write_vocab(vocab: dict[str, Vocab], out_dir: Path) -> None:
    (out_dir / VOCAB).write_text(json.dumps({k: v.model_dump() for k, v in vocab.items()}, indent=1))


def load_ensemble(model_dir: Path, meta: dict, device: str | torch.device = "cpu") -> EnsembleModel:
    spec = meta["ensemble"]
    members = {n: load_model(model_dir / MEMBERS / n, device) for n in spec["members"]}
    model = EnsembleModel(members, spec["weights"], shared_encoders=not meta["includes_encoders"])
    return model.to(device).eval()


def load_stacked(model_dir: Path, device: str | torch.device = "cpu") -> StackedModel:
    model = StackedModel({side: load_model(model_dir / MEMBERS / side, device) for side in SIDES})
    state = load_file(str(model_dir / STACKER))
    expected = {k for k in model.state_dict() if k.startswith(("multiclass.", "multilabel."))}
    if set(state) != expected:
        raise ValueError(f"{model_dir}: {STACKER} does not match the members' attributes")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def save_stacker(model: StackedModel, model_dir: Path) -> None:
    state = {f"multiclass.{k}": v for k, v in model.multiclass.state_dict().items()}
    state.update({f"multilabel.{k}": v for k, v in model.multilabel.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(Path(model_dir) / STACKER))


def load_thresholds(model_dir: str | Path) -> dict[str, list[float | None]]:
    path = Path(model_dir) / THRESHOLDS
    return json.loads(path.read_text()) if path.is_file() else {}


def load_meta(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / CONFIG).read_text())


def model_task(model_dir: str | Path) -> str:
    """ "classification" (attribute classifiers, ensembles, stacked models) or "extraction"."""
    return _task(load_meta(model_dir))


def _task(meta: dict) -> str:
    return (meta.get("model") or {}).get("task", "classification")
