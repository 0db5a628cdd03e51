"""Checkpoints as folders: model.safetensors (the classifier's plain state dict, loadable by
`timm.create_model(name, num_classes=K, checkpoint_path=FILE)`), predictor.safetensors,
train_state.pt (optimizer, RNG, position; loaded with weights_only=True) and meta.json.
A folder is written under a temporary name and swapped in, so a kill never leaves a
half-written checkpoint under a final name."""
import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from train.runfolder import read_jsonl, write_atomic


class CheckpointError(ValueError):
    """A missing or unreadable checkpoint: one line, exit code 2, never a fresh start."""


def _tensors(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save(folder: Path, model, optimizer, meta: dict, ema=None) -> None:
    """model: the unwrapped FusedNet; ema: its classifier's models.ema.Ema, or None."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_tensors(model.classifier), tmp / "model.safetensors")
    if model.predictor is not None:
        save_file(_tensors(model.predictor), tmp / "predictor.safetensors")
    if ema is not None:
        save_file(_tensors(ema.module), tmp / "model_ema.safetensors")
    state = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "python_rng": list(random.getstate()[1]),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(state, tmp / "train_state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def locate(path: str | Path) -> Path:
    """A checkpoint folder from a run folder, a checkpoint folder or a recovered `.old`."""
    path = Path(path)
    for cand in (path, path / "checkpoints" / "best", path / "checkpoints" / "last",
                 path.with_name(path.name + ".old")):
        if (cand / "model.safetensors").is_file():
            return cand
    raise CheckpointError(f"no checkpoint at {path} (expected model.safetensors in it or in checkpoints/best)")


def read_meta(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder}: unreadable meta.json ({e})") from None


def classifier_file(folder: Path) -> Path:
    """The classifier that was evaluated and selected: the EMA's when the run kept one."""
    ema = Path(folder) / "model_ema.safetensors"
    return ema if ema.is_file() else Path(folder) / "model.safetensors"


def load_weights(path: Path) -> dict:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"checkpoint file {path} is damaged or not safetensors ({type(e).__name__})") from None


def load_train_state(folder: Path, model, optimizer, ema=None) -> dict:
    """Restore weights (and the EMA's), optimizer and RNG in place; returns meta.json's content."""
    folder = locate(folder)
    meta = read_meta(folder)
    try:        # another model's checkpoint: torch says RuntimeError (weights), ValueError (optimizer)
        model.classifier.load_state_dict(load_weights(folder / "model.safetensors"))
        if model.predictor is not None:
            model.predictor.load_state_dict(load_weights(folder / "predictor.safetensors"))
        if ema is not None:
            if not (folder / "model_ema.safetensors").is_file():
                raise CheckpointError(f"checkpoint {folder} has no model_ema.safetensors: it was trained without --model-ema")
            ema.module.load_state_dict(load_weights(folder / "model_ema.safetensors"))
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {folder} holds another model ({' '.join(str(e).split())[:200]})") from None
    try:
        state = torch.load(folder / "train_state.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # a pickle that wants to run code lands here, refused
        raise CheckpointError(f"checkpoint {folder}: train_state.pt refused or damaged ({type(e).__name__})") from None
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {folder}: its optimizer state does not fit this model ({e})") from None
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate((3, tuple(state["python_rng"]), None))
    return meta


def trim_logs(out: Path, epoch: int) -> None:
    """Keep only the log lines of epochs before `epoch` (the resumed run writes the rest)."""
    for name in ("metrics.jsonl", "skipped.jsonl"):
        path = Path(out) / name
        if path.exists():
            rows = [r for r in read_jsonl(path) if r["epoch"] < epoch]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
