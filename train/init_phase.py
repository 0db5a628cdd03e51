"""+init inside one run (--init-epochs): the paper's best photo results (CIFAR-10, Clothing1M)
start LIMIT from a cross-entropy model, so a LIMIT run can begin with a short CE phase.

    epochs [0, end)        the classifier learns with cross-entropy on the given labels
    at the start of `end`  the phase's best noisy-validation weights (checkpoints/best) are
                           loaded into --init-target, the optimizer's moments and the EMA restart
    epochs [end, --epochs) LIMIT

With --predictor-loss auto (the recipe's) the predictor's distance is chosen at the same moment,
also from noisy data: choose_loss, below.

`end` is decided from noisy data alone: the first epoch after which noisy validation accuracy
has not improved for --init-patience epochs, or --init-epochs, whichever comes first
(docs/architecture.md section 2). CE's best noisy-validation epoch is early when labels are
very noisy (MNIST p=0.8: epoch 0-2) and later when they are less so, so a fixed length would
either stop CE before its best or let it memorize. `end` is saved in every checkpoint's meta,
so a resumed run switches at the same epoch; the switch itself runs at the start of epoch `end`
(fresh or resumed alike), never inside an epoch."""
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.backbones import load_classifier_weights
from models.limit import Outputs
from train import checkpoint
from train.clean_estimate import noise_structure, transition_problem
from train.objectives import make_objective

# --predictor-loss auto: L1 (LIMIT_L) when fewer than this fraction of the validation labels
# agree with the CE phase's best model, L2 (LIMIT_G) otherwise. Under uniform noise p the
# agreement is about (1 - p) times the clean accuracy, so 0.25 splits "most labels wrong"
# (p >~ 0.7) from the rest. Measured (RESULTS.md, "Photos"): at MNIST p=0.8 (agreement 0.18)
# L1 reaches 0.96 while L2 memorizes and falls back below its CE start (0.87 -> 0.86); on
# Fashion-MNIST at 60% (agreement 0.34) L2 gains 1.6 points over the CE phase while L1 never
# beats it (the L1 fit, 2(1 - q_y), gives little gradient where the predictor is unsure, and
# confusable classes are where it is). The paper's CIFAR-10 table has L2 and L1 within a point
# of each other with +init from 20% to 80% noise, and L2 ahead on Clothing1M.
AUTO_L1_BELOW = 0.25
# ... and with L2, the recipe's higher beta (train/recipe.py LIMIT_BETA_MSE) only when fewer than
# half of the validation labels agree: most labels are then wrong, the predictor learning them is
# what limits the run, and beta slows it. Where most agree, learning the labels is the limit and
# beta stays. Measured on Fashion-MNIST (RESULTS.md, "Photos"): uniform 0.6 (agreement 0.34)
# 0.8386 -> 0.8442 with beta 10; pair 0.4 (agreement 0.76) 0.8402 -> 0.8314; uniform 0.4
# (agreement 0.52) under beta 10 still rising at epoch 59.
AUTO_HIGH_BETA_BELOW = 0.5
# --predictor-transition auto (the recipe's): forward correction through the phase's T only when
# the noise it shows is structured, i.e. each class loses its wrong labels mostly to one other
# class (clean_estimate.noise_structure: 0 for uniform noise, 1 for pairs). There the noisy
# labels' own argmax differs from the clean one on ambiguous images, and correcting for it is
# what pays; under uniform noise the argmax is the same, and the correction only sharpens the
# predictor's targets. Measured (RESULTS.md, "Photos"): Fashion-MNIST pair 0.4 (structure 0.90)
# 0.84 -> 0.88 (last epoch, forced on); uniform 0.6 (structure 0.04) 0.844 -> 0.809.
AUTO_TRANSITION_FROM = 0.5


@dataclass
class InitPhase:
    max_epochs: int                 # --init-epochs: the phase's longest length (0: no phase)
    patience: int                   # --init-patience
    target: str                     # --init-target: predictor | classifier | both
    end: int | None = None          # the first LIMIT epoch, once decided
    auto_loss: bool = False         # --predictor-loss auto: choose it when the phase ends
    loss: str | None = None         # the chosen distance ("mse" | "mae"), once decided
    beta_mse: float | None = None   # the recipe's beta for mse at low agreement (train/recipe.py;
                                    # None: --beta as typed, for either distance)
    beta_chosen: float | None = None    # what decide() took from beta_mse (None: --beta)
    transition_mode: str = "none"   # --predictor-transition: none | estimate | auto
    transition: list | None = None  # the phase's anchor T the predictor fits through, once decided
                                    # (None: not asked for, none estimated, or auto said no)

    def active(self, epoch: int) -> bool:
        """Does `epoch` train with cross-entropy?"""
        return self.max_epochs > 0 and (self.end is None or epoch < self.end)

    def decide(self, epoch: int, best_epoch: int | None, best_val: float | None = None,
               best_transition: list | None = None) -> bool:
        """After CE epoch `epoch` is evaluated: end the phase here? Sets `end` (and, under
        --predictor-loss auto, `loss` and `beta_chosen` from the phase's best noisy-validation
        accuracy; under --predictor-transition estimate, or auto when it shows structured noise,
        `transition`: the anchor T of that same best epoch, whose weights the switch loads)."""
        if not self.active(epoch) or self.end is not None:
            return False
        stale = best_epoch is not None and epoch - best_epoch >= self.patience
        if stale or epoch + 1 >= self.max_epochs:
            self.end = epoch + 1
            if self.auto_loss:
                self.loss = choose_loss(best_val)
                high = self.loss == "mse" and best_val is not None and best_val < AUTO_HIGH_BETA_BELOW
                self.beta_chosen = self.beta_mse if high else None
            if self.transition_mode == "estimate" or (self.transition_mode == "auto"
                                                      and noise_structure(best_transition) >= AUTO_TRANSITION_FROM):
                self.transition = best_transition
            return True
        return False

    def beta(self, cfg) -> float:
        """The penalty LIMIT runs with after the phase."""
        return self.beta_chosen if self.beta_chosen is not None else cfg.beta

    def objective(self, cfg, method_objective, device=None):
        """LIMIT's objective after the phase: the method's own, or with the chosen distance
        (and, for mse under the recipe, its beta) and the phase's noise transition matrix (put on
        `device` once, not copied there every step)."""
        if not self.loss and self.transition is None:
            return method_objective
        if self.loss:
            cfg = dataclasses.replace(cfg, predictor_loss=self.loss, beta=self.beta(cfg))
        t = None if self.transition is None else torch.tensor(self.transition, dtype=torch.float32, device=device)
        return make_objective(cfg, t)

    def wants_transition(self, epoch: int) -> bool:
        """Does a CE epoch's anchor T matter (--predictor-transition, the phase not ended)?"""
        return self.transition_mode != "none" and self.active(epoch)

    def choices_note(self, cfg, estimated) -> str:
        """What decide() chose, for the switch's log line; `estimated`: the T it was offered."""
        note = (f", predictor loss {self.loss}, beta {self.beta(cfg):g} (--predictor-loss auto)"
                if self.loss else "")
        if self.transition_mode == "none":
            return note
        if estimated is None:
            return note + "; no noise transition could be estimated: the predictor fits the labels as given"
        how = (f"the predictor fits the labels through the estimated noise (mean diagonal "
               f"{np.mean(np.diag(estimated)):.3f}" if self.transition is not None else "the labels as given (the noise")
        return note + f"; {how}, structure {noise_structure(estimated):.2f}; --predictor-transition {self.transition_mode})"

    def state(self) -> dict:
        return {"end": self.end, "loss": self.loss, "beta": self.beta_chosen, "transition": self.transition}

    def load(self, state) -> None:
        end, loss, beta = (state or {}).get("end"), (state or {}).get("loss"), (state or {}).get("beta")
        transition = (state or {}).get("transition")
        if problem := transition_problem(transition):
            raise checkpoint.CheckpointError(f"meta.json: init_phase transition {problem}")
        if end is not None and not (isinstance(end, int) and 0 < end <= self.max_epochs):
            raise checkpoint.CheckpointError(f"meta.json: init_phase end {end!r} is not an epoch in 1..{self.max_epochs}")
        if loss not in (None, "mse", "mae") or (self.auto_loss and end is not None and loss is None):
            raise checkpoint.CheckpointError(f"meta.json: init_phase loss {loss!r} is not mse or mae")
        if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float))
                                 or not 0 <= beta < float("inf")):
            raise checkpoint.CheckpointError(f"meta.json: init_phase beta {beta!r} is not a number >= 0")
        self.end, self.loss, self.beta_chosen = end, loss, None if beta is None else float(beta)
        self.transition = transition if self.transition_mode != "none" else None


def choose_loss(best_val: float | None) -> str:
    """--predictor-loss auto's rule (AUTO_L1_BELOW above); no validation score: L1, the
    paper's choice at high noise."""
    return "mae" if best_val is None or best_val < AUTO_L1_BELOW else "mse"


def chosen_loss(meta: dict) -> str | None:
    """The distance a checkpoint's run chose under --predictor-loss auto (None before)."""
    phase = meta.get("init_phase") if isinstance(meta, dict) else None
    loss = phase.get("loss") if isinstance(phase, dict) else None
    return loss if loss in ("mse", "mae") else None


def from_ce_phase(meta: dict) -> bool:
    """Was a checkpoint (its meta.json) saved during the CE phase? Its predictor is then the
    untrained one the phase left alone, so only its classifier can judge labels (rank_labels
    scores such a checkpoint as a CE run: the best noisy-validation epoch can lie in the phase)."""
    phase = meta.get("init_phase") if isinstance(meta, dict) else None
    if not isinstance(phase, dict) or not (meta.get("config") or {}).get("init_epochs"):
        return False
    end, epoch = phase.get("end"), meta.get("epoch")
    return end is None or (isinstance(epoch, int) and isinstance(end, int) and epoch < end)


def ce_objective(out: Outputs, labels):
    """Cross-entropy on the classifier. The predictor's logits enter with weight 0 so that every
    parameter takes part in the backward (DDP's all-reduce expects each one every step); with
    zero gradients Adam leaves the predictor where it is."""
    loss = F.cross_entropy(out.logits.float(), labels)
    if out.aux is not None:
        loss = loss + 0.0 * out.aux.float().sum()
    return loss, {}


def switch(model, optimizer, ema, out_dir, target: str) -> str:
    """Start LIMIT from the CE phase's best checkpoint: its selected classifier (the EMA's when
    kept) goes into `target`; the optimizer's moments (fitted to CE's gradients) and the EMA
    restart. `model` is the unwrapped FusedNet. Returns what was loaded, for the log."""
    src = checkpoint.classifier_file(checkpoint.locate(out_dir / "checkpoints" / "best"))
    names = {"predictor": ["predictor"], "classifier": ["classifier"], "both": ["classifier", "predictor"]}[target]
    with torch.no_grad():
        for name in names:
            load_classifier_weights(getattr(model, name), src)
        if ema is not None:
            ema.module.load_state_dict(model.classifier.state_dict())
    optimizer.state.clear()
    return f"+init: {', '.join(names)} from {src}"
