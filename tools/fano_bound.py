"""Print Fano's bound on the training error (Theorem 2.1, Fig. A0); the math is train/fano.py.

    python tools/fano_bound.py --classes 10 --noise 0.8                     # r0 = 0.800
    python tools/fano_bound.py --classes 10 --noise 0.8 --bits-per-sample 1 # r0 = 0.405"""
import argparse
import sys

from train.fano import (binary_entropy, entropy, fano_r0, min_bits_per_sample,  # noqa: F401  (re-exported)
                        noise_entropy, r0_uniform, run_summary, uniform_matrix, uniform_noise_entropy)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, required=True, help="number of classes k (>= 2)")
    p.add_argument("--noise", type=float, required=True,
                   help="uniform noise rate p: the label is kept w.p. 1-p, else uniform over the other k-1 classes")
    p.add_argument("--bits-per-sample", type=float, default=0.0,
                   help="I(w : y | x) / n, label-noise information the weights retain, in bits per sample")
    args = p.parse_args(argv)
    if args.classes < 2:
        p.error("--classes must be >= 2")
    if not 0 <= args.noise <= 1:
        p.error("--noise must lie in [0, 1]")
    if args.bits_per_sample < 0:
        p.error("--bits-per-sample must be >= 0")
    h = uniform_noise_entropy(args.classes, args.noise)
    r0 = fano_r0(h, args.classes, args.bits_per_sample)
    print(f"classes {args.classes}, uniform noise {args.noise:g}, H(y|x) = {h:.4f} bits, "
          f"I = {args.bits_per_sample:g} bits/sample: r0 = {r0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
