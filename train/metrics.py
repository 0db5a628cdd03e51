"""Per-epoch counters kept on the device (no host sync per step); read once per epoch."""
import torch


class Meter:
    """Sums over an epoch: accuracy and cross-entropy against the given labels and the clean
    ones, accuracy on the samples whose labels the noise flipped and on the rest (the
    memorization story), and the objective's own statistics (its value, LIMIT's
    predictor_loss and mu_sq, ...), weighted by batch size. The cross-entropy is the same
    quantity for every method, unlike the objective's value: LIMIT's surrogate
    <a, mu.detach()> is not the loss of anything."""

    KEYS = ("n", "correct", "n_clean", "correct_clean", "n_flipped", "correct_flipped", "correct_kept",
            "ce", "ce_clean")

    def __init__(self, device):
        self.sums = torch.zeros(len(self.KEYS), dtype=torch.float64, device=device)
        self.stats: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels, clean, stats: dict | None = None):
        logits = logits.float()
        pred = logits.argmax(1)
        known = clean >= 0
        flipped = known & (labels != clean)
        hit = pred == labels
        logp = logits.log_softmax(1)
        ce = -logp.gather(1, labels[:, None]).squeeze(1)
        ce_clean = -logp.gather(1, clean.clamp_min(0)[:, None]).squeeze(1) * known
        # torch.full is a fill on the device: no host-to-device copy (which blocks on CUDA)
        vals = torch.stack([torch.full((), float(len(labels)), device=logits.device), hit.sum().float(),
                            known.sum().float(), ((pred == clean) & known).sum().float(),
                            flipped.sum().float(), (hit & flipped).sum().float(),
                            (hit & known & ~flipped).sum().float(), ce.sum(), ce_clean.sum()])
        self.sums += vals.double()
        for k, v in (stats or {}).items():
            v = v.detach().double() * len(labels)
            self.stats[k] = self.stats[k] + v if k in self.stats else v

    def align(self, keys) -> None:
        """Give every rank the same statistics (a rank that saw no batch has none) before a
        reduce, whose tensors must match across ranks."""
        for k in keys:
            self.stats.setdefault(k, torch.zeros((), dtype=torch.float64, device=self.sums.device))

    def state(self) -> dict:
        """For a mid-epoch checkpoint (train.loop); load() restores it."""
        return {"sums": self.sums.tolist(), "stats": {k: float(v) for k, v in self.stats.items()}}

    def load(self, state: dict) -> None:
        self.sums += torch.tensor(state["sums"], dtype=torch.float64, device=self.sums.device)
        for k, v in state["stats"].items():
            self.stats[k] = torch.tensor(v, dtype=torch.float64, device=self.sums.device)

    def finite(self, reduce=None) -> bool:
        """Whether every rank's sums and objective so far are finite (one host sync)."""
        self.align(["objective"])
        s = torch.cat([self.sums, self.stats["objective"].view(1)])
        return bool(torch.isfinite(reduce(s, "sum") if reduce else s).all())

    def all_sums(self) -> torch.Tensor:
        return torch.cat([self.sums, torch.stack([self.stats[k] for k in sorted(self.stats)])]) \
            if self.stats else self.sums

    def running(self, ranks: int = 1) -> dict:
        """For a progress line (pipeline.progress): images so far (this process's count times
        `ranks`, an estimate of the job's without a collective) and the running cross-entropy.
        One host sync; called once per printed line, never per step."""
        n, ce = self.sums[[self.KEYS.index("n"), self.KEYS.index("ce")]].tolist()
        return {"images": n * ranks, "loss": ce / n if n else float("nan")}

    def result(self, reduce=None) -> dict:
        """Fractions in [0, 1] and per-sample means; `reduce` sums across ranks
        (accelerator.reduce) first."""
        s = self.all_sums()
        s = reduce(s, "sum") if reduce else s
        s = s.tolist()
        d = dict(zip(self.KEYS, s))
        div = lambda a, b: (a / b) if b else None  # noqa: E731
        res = {"n": int(d["n"]), "acc": div(d["correct"], d["n"]), "ce": div(d["ce"], d["n"]),
               "acc_clean": div(d["correct_clean"], d["n_clean"]), "ce_clean": div(d["ce_clean"], d["n_clean"]),
               "acc_flipped": div(d["correct_flipped"], d["n_flipped"]),
               "acc_kept": div(d["correct_kept"], d["n_clean"] - d["n_flipped"]),
               "n_flipped": int(d["n_flipped"])}
        res["stats"] = {k: div(v, d["n"]) for k, v in zip(sorted(self.stats), s[len(self.KEYS):])}
        return res
