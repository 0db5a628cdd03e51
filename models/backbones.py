"""Backbones: the paper's networks registered in timm, and local-only weight loading.

Every model, ours or timm's, is built by ``timm.create_model`` and exposes timm's API
(``num_classes``, ``num_features``, ``forward_features``, ``forward_head``,
``get_classifier``, ``reset_classifier``), so the trainer treats them all alike and a trained
``mnist_cnn`` can be rebuilt elsewhere with timm alone once this module is imported.
Weights only ever come from local files: nothing here can reach the network.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._helpers import clean_state_dict
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

# defined up front: timm's register_model appends each entrypoint to the module's __all__ and
# would otherwise create one holding only the model functions, hiding this API from `import *`
__all__ = ['ModelError', 'create_backbone', 'load_classifier_weights', 'penultimate']


class ModelError(ValueError):
    """Bad model arguments or weights; the message is one line shown to users."""


class MnistCNN(nn.Module):
    """Paper Table 3 CNN for 28x28 inputs (4 conv-BN-ReLU, fc128-[BN]-ReLU, fc). Larger inputs
    are averaged over the last feature map (at 28x28 it is 1x1 and nothing changes), so it is
    also the cheap CNN of the scaling benchmarks (64 px, 3 channels).

    fc128 belongs to the trunk: ``forward_features`` returns the 128-d penultimate features, so
    ``num_features`` is 128 and the classifier is the last Linear alone, as LIMIT's head mode wants.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, fc_bn: bool = False,
                 drop_rate: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_features = self.head_hidden_size = 128
        layers, chans = [], in_chans
        # (out, kernel, stride, padding): 28 -> 14 -> 7 -> 3 -> 1
        for out, k, s, p in ((32, 4, 2, 1), (32, 4, 2, 1), (64, 3, 2, 0), (256, 3, 1, 0)):
            # no conv bias: the BatchNorm that follows cancels it
            layers += [nn.Conv2d(chans, out, k, s, p, bias=False, **dd), nn.BatchNorm2d(out, **dd),
                       nn.ReLU(inplace=True)]
            chans = out
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(256, 128, **dd)
        self.bn1 = nn.BatchNorm1d(128, **dd) if fc_bn else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(128, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def get_classifier(self, name_only: bool = False):
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        w = self.fc1.weight
        self.num_classes = num_classes
        self.fc = (nn.Linear(128, num_classes, device=w.device, dtype=w.dtype)
                   if num_classes > 0 else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)              # (B, 256, 1, 1) for 28x28 inputs
        if x.shape[-2:] != (1, 1):        # larger inputs (a small CNN for 64 px benchmarks): average
            x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.act(self.bn1(self.fc1(x.flatten(1))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # dropout before the pre_logits return, as timm's ResNet does, so that
        # get_classifier()(forward_head(f, pre_logits=True)) == forward_head(f) in train mode too
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CifarResNet(ResNet):
    """timm ResNet with the CIFAR stem: 3x3 stride-1 conv, no max-pool (32x32 inputs).

    A subclass rather than surgery after ``build_model_with_cfg`` so the stem already has its
    final shape whenever timm loads weights (pretrained cfg file or ``checkpoint_path``).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        w = self.conv1.weight
        self.conv1 = nn.Conv2d(self.in_chans, 64, 3, 1, 1, bias=False, device=w.device, dtype=w.dtype)
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')  # as timm
        self.maxpool = nn.Identity()
        for info in self.feature_info:  # the stem no longer downsamples by 4
            info['reduction'] = max(1, info['reduction'] // 4)


# No url/hf_hub_id: these have no published weights, so timm never looks anything up for them.
# num_classes and input_size[0] become create_model's defaults (10 classes; 1 channel for MNIST).
_CFG = dict(url='', num_classes=10, crop_pct=1.0, interpolation='bilinear', classifier='fc')
_MNIST = dict(_CFG, input_size=(1, 28, 28), mean=(0.1307,), std=(0.3081,), first_conv='features.0')
# must exist before the @register_model calls: register_model reads the module's default_cfgs
default_cfgs = generate_default_cfgs({
    'mnist_cnn': _MNIST,
    'mnist_cnn_bn': _MNIST,
    'cifar_resnet34': dict(_CFG, input_size=(3, 32, 32), pool_size=(4, 4), first_conv='conv1',
                           mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
})


@register_model
def mnist_cnn(pretrained: bool = False, **kwargs) -> MnistCNN:
    """Paper Table 3 MNIST CNN."""
    return build_model_with_cfg(MnistCNN, 'mnist_cnn', pretrained, **kwargs)


@register_model
def mnist_cnn_bn(pretrained: bool = False, **kwargs) -> MnistCNN:
    """Paper Table 3 MNIST CNN with BatchNorm1d after fc128 (the LIMIT recipe uses it for the predictor)."""
    return build_model_with_cfg(MnistCNN, 'mnist_cnn_bn', pretrained, **dict(kwargs, fc_bn=True))


@register_model
def cifar_resnet34(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-34 with the CIFAR stem (paper's CIFAR-10 network)."""
    args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return build_model_with_cfg(CifarResNet, 'cifar_resnet34', pretrained, **dict(args, **kwargs))


def _one_line(e) -> str:
    text = ' '.join(str(e).split())[:300]
    return text if isinstance(e, str) else f"{type(e).__name__}: {text}"


def _read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a local safetensors or weights-only torch file (checkpoint dicts unwrapped)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}")
    with open(p, 'rb') as f:
        head = f.read(9)
    try:
        # sniff rather than trust the suffix: safetensors = u64 header length, then '{'
        if len(head) == 9 and head[8:9] == b'{':
            sd = safetensors.torch.load_file(str(p), device='cpu')
        else:
            # weights_only refuses any pickle that would import or call code, before running it
            sd = torch.load(p, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; keep the part that says what was refused
        why = str(e).split('WeightsUnpickler error:')[-1].split('Check the documentation')[0]
        why = why.split('. Please use')[0]  # drop torch's advice to allowlist the global
        raise ModelError(f"refusing {p}: not a weights-only torch file ({_one_line(why)}); "
                         "its pickled code was not run") from None
    except Exception as e:  # torch/safetensors raise many types for bad files
        raise ModelError(f"cannot read weights from {p} (only safetensors or weights-only torch "
                         f"files are accepted): {_one_line(e)}") from None
    if isinstance(sd, dict):
        for key in ('state_dict', 'model'):  # timm train.py / common checkpoint wrappers
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{p} does not hold a state dict of tensors")
    return clean_state_dict(sd)  # strips DDP 'module.' and torch.compile '_orig_mod.' prefixes


def _head_prefixes(model: nn.Module) -> set[str]:
    """Module names of the classifier: from get_classifier() and timm's pretrained_cfg."""
    prefixes = set()
    clf = model.get_classifier() if hasattr(model, 'get_classifier') else None
    prefixes.update(n for n, m in model.named_modules() if m is clf and n)
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    prefixes.update((names,) if isinstance(names, str) else names)
    return prefixes


def _is_head(key: str, prefixes: set[str]) -> bool:
    return any(key == p or key.startswith(p + '.') for p in prefixes)


def _check_match(model_sd: dict, sd: dict, path) -> None:
    """ModelError naming the first key (model order first) that is missing, extra or misshaped."""
    for k, v in model_sd.items():
        if k not in sd:
            raise ModelError(f"{path} does not fit this model: missing key '{k}'")
        if sd[k].shape != v.shape:
            raise ModelError(f"{path} does not fit this model: '{k}' has shape "
                             f"{tuple(sd[k].shape)}, model has {tuple(v.shape)}")
    for k in sd:
        if k not in model_sd:
            raise ModelError(f"{path} does not fit this model: unexpected key '{k}'")


def create_backbone(name: str, num_classes: int, in_chans: int | None = None,
                    pretrained_file: str | Path | None = None, **kwargs) -> nn.Module:
    """Build a timm-registered model; optionally load a local trunk with a fresh head.

    ``in_chans=None`` keeps the model's default (1 for mnist_cnn, 3 otherwise). Hub downloads
    are refused: asking timm for pretrained weights would try the network, so local files are the only source.
    """
    if not timm.is_model(name):
        raise ModelError(f"unknown model '{name}' (see timm.list_models())")
    if kwargs.pop('pretrained', False):
        raise ModelError("downloading weights is disabled; pass a local file as pretrained_file")
    try:
        model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, FileNotFoundError) as e:
        raise ModelError(f"cannot build model '{name}': {_one_line(e)}") from None
    if pretrained_file is not None:
        # loaded here, not via pretrained=True + pretrained_cfg_overlay(file=...): timm drops the
        # file's head only when num_classes differs from the *cfg's* class count (not the file's),
        # an empty file name falls through to the hub, and its errors come in assorted types
        prefixes = _head_prefixes(model)
        sd = {k: v for k, v in _read_state_dict(pretrained_file).items() if not _is_head(k, prefixes)}
        trunk = {k: v for k, v in model.state_dict().items() if not _is_head(k, prefixes)}
        _check_match(trunk, sd, pretrained_file)
        model.load_state_dict(sd, strict=False)  # only the (fresh) head keys are left out
    return model


def load_classifier_weights(model: nn.Module, path) -> None:
    """Strictly load a full classifier state dict (trunk and head) into ``model``."""
    sd = _read_state_dict(path)
    for prefix in sorted(_head_prefixes(model)):
        w = sd.get(prefix + '.weight')
        n = getattr(model, 'num_classes', None)
        if w is not None and w.ndim >= 1 and n is not None and w.shape[0] != n:
            raise ModelError(f"{path}: checkpoint has {w.shape[0]} classes, model has {n}")
    _check_match(model.state_dict(), sd, path)
    model.load_state_dict(sd, strict=True)


def penultimate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre-logit features, logits) from one forward pass of a timm-API model."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return feats, model.get_classifier()(feats)
