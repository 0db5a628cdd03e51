"""Build what a run needs from its config: the fused model, +init, the optimizer and the LR
schedule (a pure function of the step)."""
import math
from pathlib import Path

import numpy as np
import torch

from models.backbones import ModelError, create_backbone, load_classifier_weights
from models.limit import FusedNet, PredictorHead
from train import checkpoint
from train.objectives import REGISTRY


def _backbone(flag: str, name: str, n_classes: int, in_chans: int, pretrained) -> torch.nn.Module:
    """create_backbone, its ModelError naming the flag at fault (--pretrained for the file's)."""
    try:
        return create_backbone(name, n_classes, in_chans, pretrained_file=pretrained)
    except ModelError as e:
        raise ModelError(f"{'--pretrained' if pretrained and str(pretrained) in str(e) else flag}: {e}") from None


def build_model(cfg, n_classes: int, in_chans: int) -> FusedNet:
    """The classifier and the second network its objective declares (train.objectives.REGISTRY)."""
    pretrained = cfg.pretrained or None
    if pretrained and not Path(pretrained).is_file():
        raise ModelError(f"--pretrained {pretrained}: no such file")
    clf = _backbone("--model", cfg.model, n_classes, in_chans, pretrained)
    second = REGISTRY[cfg.method].second_net
    if not second:
        return FusedNet(clf)
    if second == "predictor" and cfg.predictor == "head":
        return FusedNet(clf, PredictorHead(clf.num_features, n_classes), mode="head")
    pred_flag = "--predictor-model" if cfg.predictor_model else "--model"
    pred = _backbone(pred_flag, cfg.predictor_model or cfg.model, n_classes, in_chans, pretrained)
    return FusedNet(clf, pred, mode="network", with_features=second == "aux")


def init_from(model: FusedNet, cfg) -> str:
    """+init: copy a CE run's classifier into the predictor, the classifier or both."""
    if not cfg.init_from:
        return ""
    try:
        return _init_from(model, cfg)
    except (ModelError, checkpoint.CheckpointError) as e:
        if str(e).startswith("--"):
            raise
        raise type(e)(f"--init-from {cfg.init_from}: {e}") from None


def _init_from(model: FusedNet, cfg) -> str:
    src = checkpoint.classifier_file(checkpoint.locate(cfg.init_from))
    targets = {"predictor": ["predictor"], "classifier": ["classifier"],
               "both": ["classifier", "predictor"]}[cfg.init_target]
    if REGISTRY[cfg.method].second_net != "predictor":
        targets = ["classifier"]            # baselines fine-tune the CE model itself
    for name in targets:
        net = getattr(model, name)
        if name == "predictor" and model.mode == "head":
            raise ModelError("--init-target predictor needs --predictor network (head mode has no backbone)")
        load_classifier_weights(net, src)
    return f"{', '.join(targets)} from {src}"


@torch.no_grad()
def fw_transition(cfg, model: FusedNet, loader, accelerator, norm) -> torch.Tensor:
    """FW's matrix: --transition FILE, or Patrini et al.'s anchor estimate from the (CE-trained,
    --init-from) classifier's predictions on the train split with eval transforms."""
    from accelerate.utils import gather_object
    from pipeline.batch import to_device
    from pipeline.noise import load_matrix
    from train.objectives import estimate_transition
    k = model.classifier.num_classes
    if cfg.transition:
        return torch.as_tensor(load_matrix(cfg.transition, k), dtype=torch.float32)
    model.eval()
    probs = []
    for batch in loader(0):
        if len(batch):
            b = to_device(batch, accelerator.device, *norm)
            probs.append(model.classifier(b.images).float().softmax(1).cpu().numpy())
    probs = np.concatenate(gather_object([np.concatenate(probs)]))   # every rank's share
    return torch.as_tensor(estimate_transition(probs), dtype=torch.float32)


def build_optimizer(cfg, model: FusedNet) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if cfg.predictor_warmup:          # the classifier's own group, so train_step can hold it
        groups = [{"params": [p for p in model.classifier.parameters() if p.requires_grad], "name": "classifier"},
                  {"params": [p for p in model.predictor.parameters() if p.requires_grad], "name": "predictor"}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, total: int, warmup: int, peak: float, sched: str, restart: int = 0) -> float:
    """Linear warm-up, then constant or cosine to zero; a pure function of the step. `restart`
    (+init's switch, where the optimizer's moments restart: Adam's first steps after a reset
    move every weight by about the full rate) starts the warm-up again from that step."""
    if sched == "cosine" and step >= warmup:
        rate = peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    else:
        rate = peak
    since = step - restart if 0 < restart <= step else step
    return rate * (since + 1) / warmup if since < warmup else rate


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
