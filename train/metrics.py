"""Per-epoch counters kept on the device (no host sync per step); read once per epoch."""
import torch


class Meter:
    """Sums over an epoch: loss, and accuracy against the given labels, the clean labels, on
    the samples whose labels the noise flipped and on the rest (the memorization story)."""

    KEYS = ("loss", "n", "correct", "n_clean", "correct_clean", "n_flipped", "correct_flipped", "correct_kept")

    def __init__(self, device):
        self.sums = torch.zeros(len(self.KEYS), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels, clean, loss: torch.Tensor | None = None):
        pred = logits.argmax(1)
        known = clean >= 0
        flipped = known & (labels != clean)
        hit = pred == labels
        vals = torch.stack([
            (loss.detach().float() * len(labels)) if loss is not None else hit.new_zeros((), dtype=torch.float32),
            torch.tensor(float(len(labels)), device=hit.device),
            hit.sum().float(),
            known.sum().float(),
            ((pred == clean) & known).sum().float(),
            flipped.sum().float(),
            (hit & flipped).sum().float(),
            (hit & known & ~flipped).sum().float(),
        ])
        self.sums += vals.double()

    def result(self, reduce=None) -> dict:
        """Fractions in [0, 1]; `reduce` sums across ranks (accelerator.reduce) first."""
        s = reduce(self.sums, "sum") if reduce else self.sums
        d = dict(zip(self.KEYS, s.tolist()))
        div = lambda a, b: (a / b) if b else None  # noqa: E731
        return {"loss": div(d["loss"], d["n"]), "n": int(d["n"]), "acc": div(d["correct"], d["n"]),
                "acc_clean": div(d["correct_clean"], d["n_clean"]),
                "acc_flipped": div(d["correct_flipped"], d["n_flipped"]),
                "acc_kept": div(d["correct_kept"], d["n_clean"] - d["n_flipped"]),
                "n_flipped": int(d["n_flipped"])}
