"""Checkpoints as folders: model.safetensors (the classifier's plain state dict, loadable by
`timm.create_model(name, num_classes=K, checkpoint_path=FILE)`), predictor.safetensors,
train_state.pt (optimizer, torch/Python/CUDA RNG states; loaded with weights_only=True) and
meta.json (epoch, step, best, the meter and, mid-epoch, each rank's data position).
A folder is written under a temporary name and swapped in, so a kill never leaves a
half-written checkpoint under a final name."""
import json
import math
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline import safe_io
from pipeline.shards import DataError
from train.clean_estimate import transition_problem
from train.metrics import Meter
from train.runfolder import read_jsonl, write_atomic


class CheckpointError(ValueError):
    """A missing or unreadable checkpoint: one line, exit code 2, never a fresh start."""


def _tensors(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save(folder: Path, model, optimizer, meta: dict, ema=None) -> None:
    """model: the unwrapped FusedNet; ema: its classifier's models.ema.Ema, or None. Built in a
    fresh private folder (a fixed `last.tmp` could be a planted link), then swapped in."""
    folder = Path(folder)
    safe_io.out_dir(folder.parent, "checkpoint folder")
    tmp = safe_io.private_dir(folder)
    try:
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
        safe_io.replace_dir(tmp, folder, folder.with_name(folder.name + ".old"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def locate(path: str | Path) -> Path:
    """A checkpoint folder from a run folder, a checkpoint folder or a recovered `.old`."""
    path = Path(path)
    for cand in (path, path / "checkpoints" / "best", path / "checkpoints" / "last",
                 path.with_name(path.name + ".old")):
        if (cand / "model.safetensors").is_file():
            return cand
    raise CheckpointError(f"no checkpoint at {path} (expected model.safetensors in it or in checkpoints/best)")


MAX_META = 64 << 20          # meta.json: the config and one metrics row, kilobytes
MAX_STATE = 16 << 30         # train_state.pt: optimizer moments, twice the weights at most


def read_meta(folder: Path) -> dict:
    """meta.json, its schema checked (check_meta): one line naming the field, never a traceback."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(safe_io.read_capped(path, MAX_META, "meta.json"))
    except (ValueError, RecursionError) as e:     # DataError too: a pipe, a device, too large
        raise CheckpointError(f"checkpoint {folder}: unreadable meta.json ({getattr(e, 'msg', None) or e})") from None
    problem = check_meta(meta)
    if problem:
        raise CheckpointError(f"checkpoint {folder}: meta.json is damaged ({problem})")
    return meta


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_meta(meta) -> str | None:
    """What is wrong with a meta.json object, or None. Every field the trainer reads back:
    epoch and step are counts (a negative epoch would train epochs -4..1), best a record of
    numbers, in_epoch a flag whose position and meter fit a mid-epoch resume."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    for key in ("epoch", "step"):
        if not _count(meta.get(key)):
            return f"{key!r} is not a count (an integer >= 0)"
    if "n_skipped" in meta and not _count(meta["n_skipped"]):
        return "'n_skipped' is not a count"
    if not isinstance(meta.get("config"), dict):
        return "no 'config' object"
    best = meta.get("best")
    if not (isinstance(best, dict) and _number(best.get("score")) and not math.isnan(best["score"])
            and all(best.get(k) is None or _number(best[k])
                    for k in ("val_acc", "test_acc", "val_acc_clean_est", "val_acc_clean_est_se", "switch_score"))
            and (best.get("epoch") is None or _count(best["epoch"]))):
        return "'best' is not a record {score, val_acc, epoch, test_acc, val_acc_clean_est[_se], switch_score} of numbers"
    if problem := transition_problem(best.get("val_transition")):
        return f"'best' val_transition {problem}"
    if not isinstance(meta.get("in_epoch", False), bool):
        return "'in_epoch' is not true or false"
    if meta.get("in_epoch"):
        return _check_position(meta.get("position")) or _check_meter(meta.get("meter"))
    return None


def _check_position(position) -> str | None:
    """One {worker: batches taken} per rank."""
    if not isinstance(position, list) or not position:
        return "'position' is not a list of one position per rank"
    for p in position:
        if not (isinstance(p, dict) and all(isinstance(k, str) and k.isdigit() and k.isascii() and len(k) < 6
                                            and _count(v) for k, v in p.items())):
            return "'position' holds a rank's entry that is not {worker: batches taken}"
    return None


def _check_meter(meter) -> str | None:
    if not (isinstance(meter, dict) and isinstance(meter.get("sums"), list)
            and len(meter["sums"]) == len(Meter.KEYS) and all(_number(v) for v in meter["sums"])
            and isinstance(meter.get("stats"), dict)
            and all(isinstance(k, str) and _number(v) for k, v in meter["stats"].items())):
        return f"'meter' is not {{sums: {len(Meter.KEYS)} numbers, stats: {{name: number}}}}"
    return None


def check_train_state(state) -> str | None:
    """What is wrong with train_state.pt's content, or None: an optimizer state, the torch
    RNG state this torch makes, Python's Mersenne Twister state (625 words, each 32-bit, the
    position <= 624) and a list of CUDA RNG states."""
    if not isinstance(state, dict):
        return "not a dict"
    if not isinstance(state.get("optimizer"), dict):
        return "no optimizer state"
    rng, ref = state.get("torch_rng"), torch.get_rng_state()
    if not (isinstance(rng, torch.Tensor) and rng.dtype == ref.dtype and rng.shape == ref.shape):
        return "its torch RNG state is missing or of the wrong size"
    py = state.get("python_rng")
    if not (isinstance(py, (list, tuple)) and len(py) == 625
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 32 for v in py)
            and py[-1] <= 624):
        return "its Python RNG state is missing or malformed"
    cuda = state.get("cuda_rng", [])
    if not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
        return "its CUDA RNG states are malformed"
    return None


def classifier_file(folder: Path) -> Path:
    """The classifier that was evaluated and selected: the EMA's when the run kept one."""
    ema = Path(folder) / "model_ema.safetensors"
    return ema if ema.is_file() else Path(folder) / "model.safetensors"


def load_weights(path: Path) -> dict:
    try:
        safe_io.check_regular(path, MAX_STATE, "checkpoint file")
    except DataError as e:
        raise CheckpointError(str(e)) from None
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
        safe_io.check_regular(folder / "train_state.pt", MAX_STATE, "train_state.pt")
    except DataError as e:
        raise CheckpointError(f"checkpoint {folder}: {e}") from None
    try:
        state = torch.load(folder / "train_state.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # a pickle that wants to run code lands here, refused
        raise CheckpointError(f"checkpoint {folder}: train_state.pt refused or damaged ({type(e).__name__})") from None
    problem = check_train_state(state)
    if problem:
        raise CheckpointError(f"checkpoint {folder}: train_state.pt is damaged ({problem})")
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
