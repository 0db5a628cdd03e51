"""An exponential moving average of a module's weights (timm's --model-ema): under noisy
gradients (LIMIT's predicted ones, label noise) the averaged weights sit nearer the middle of
the region the live weights wander in, and score steadier from epoch to epoch."""
import copy

import torch


class Ema:
    """`module` is a frozen copy of `source`; update() moves its floating-point state
    (weights and BatchNorm statistics) towards the source's by 1 - decay and copies the rest.
    Build it after the source is on its device: the pairs below alias the source's tensors,
    which optimizers and load_state_dict change in place."""

    def __init__(self, source: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(source).requires_grad_(False).eval()
        self.decay = decay
        mine, theirs = self.module.state_dict(), source.state_dict()
        self._float = ([mine[k] for k in mine if mine[k].is_floating_point()],
                       [theirs[k] for k in mine if mine[k].is_floating_point()])
        self._other = [(mine[k], theirs[k]) for k in mine if not mine[k].is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(*self._float, 1.0 - self.decay)
        for mine, theirs in self._other:
            mine.copy_(theirs)
