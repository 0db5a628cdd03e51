"""A trained classifier for use without this project: timm's own export layout.

EXPORT/model.safetensors (the classifier's state dict, timm's key names) and EXPORT/config.json
in the layout timm writes for the Hugging Face Hub (timm.models._hub.save_config_for_hf, timm
1.0.31 as pinned): architecture, num_classes, label_names (the card's class names) and a
pretrained_cfg with the input size, mean, std, interpolation and crop_pct of this project's
eval transform (resize the shorter side to `resize`, centre crop `size`: crop_pct = size /
resize). Plain timm then loads it either way:

    timm.create_model("local-dir:EXPORT", pretrained=True)
    timm.create_model(ARCH, pretrained=True, num_classes=K,
                      pretrained_cfg_overlay=dict(file="EXPORT/model.safetensors", num_classes=K))

Both forms read local files only: `local-dir:` is a folder, and `file=` in the overlay makes
pretrained=True load that file instead of downloading anything, so neither reaches a model hub
(tests/test_predict.py loads an export both ways with HF_HUB_OFFLINE=1, set by
tests/conftest.py). The overlay must carry num_classes: timm keeps a file's classifier only
when the model's class count equals the *pretrained cfg's* (ARCH's default, 1000 for ImageNet
models), and otherwise drops it silently, leaving a random head (checked by
tests/test_predict.py).

Only models timm itself defines are exported: mnist_cnn and cifar_resnet34 are registered by
models/backbones.py, which plain timm does not have."""
import json
from pathlib import Path

import timm
from timm.models import model_entrypoint
from timm.models._hub import save_config_for_hf
from safetensors.torch import save_file

from models.backbones import ModelError
from pipeline import safe_io

# fields of the architecture's default pretrained_cfg that describe *its* published weights
# (an ImageNet checkpoint's tag, license, paper): not true of weights trained here
SOURCE_FIELDS = ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "hf_hub_id",
                 "url", "file", "source", "custom_load", "test_input_size", "test_crop_pct")


def check_exportable(arch: str) -> None:
    if not timm.is_model(arch):
        raise ModelError(f"--export: unknown model {arch!r}")
    module = model_entrypoint(arch).__module__
    if not module.startswith("timm."):
        raise ModelError(f"--export: {arch} is defined by this project ({module}), not by timm, so plain "
                         "timm cannot build it; use checkpoints/*/model.safetensors with `import models.backbones`")


def data_config(channels: int, size: int, resize: int, mean, std) -> dict:
    """timm's preprocessing keys for this project's eval transform (pipeline.augment.eval_image)."""
    return {"input_size": (channels, size, size), "mean": tuple(mean), "std": tuple(std),
            "interpolation": "bilinear", "crop_pct": size / (resize or size), "crop_mode": "center"}


def export(classifier, arch: str, classes: list[str], data_cfg: dict, out: Path, provenance: dict) -> Path:
    """Write the folder `out` whole (built privately beside it, then swapped in)."""
    check_exportable(arch)
    out = Path(out)
    safe_io.out_dir(out.parent, "--export's folder")
    tmp = safe_io.private_dir(out)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()},
                  str(tmp / "model.safetensors"))
        save_config_for_hf(classifier, tmp / "config.json", model_config={"label_names": list(classes)},
                           data_config=data_cfg)
        cfg = json.loads((tmp / "config.json").read_text())
        for key in SOURCE_FIELDS:
            cfg["pretrained_cfg"].pop(key, None)
        cfg["trained_with"] = provenance          # ignored by timm; says where the weights came from
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        safe_io.replace_dir(tmp, out, out.with_name(out.name + ".old"))
    finally:
        if tmp.exists():
            safe_io.remove(tmp, missing_ok=True)
    return out
