"""`specdec theory`: the paper's section 3 for given alpha and c."""

from __future__ import annotations

import argparse

from specdec import theory


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="specdec theory", description=__doc__)
    parser.add_argument("--alpha", type=float, required=True, help="acceptance rate in [0, 1)")
    parser.add_argument("--c", type=float, default=0.0,
                        help="drafter step cost / target step cost (default 0)")
    parser.add_argument("--gamma", type=int, default=None,
                        help="draft length to evaluate (default: the optimal one)")
    parser.add_argument("--c-hat", type=float, default=None,
                        help="drafter operations per token / target's (default: c)")
    parser.add_argument("--max-gamma", type=int, default=16, help="largest gamma in the table")
    args = parser.parse_args(argv)
    if not 0 <= args.alpha < 1:
        parser.error(f"--alpha must be in [0, 1), got {args.alpha}")
    if args.c < 0:
        parser.error(f"--c must be >= 0, got {args.c}")
    if args.gamma is not None and not 0 <= args.gamma <= 1024:
        parser.error(f"--gamma must be in [0, 1024], got {args.gamma}")
    if not 1 <= args.max_gamma <= 1024:
        parser.error(f"--max-gamma must be in [1, 1024], got {args.max_gamma}")

    best = theory.optimal_gamma(args.alpha, args.c, max_gamma=max(args.max_gamma, 64))
    gamma = best if args.gamma is None else args.gamma
    c_hat = args.c if args.c_hat is None else args.c_hat
    print(f"alpha={args.alpha:g}  c={args.c:g}  c_hat={c_hat:g}")
    print(f"optimal gamma: {best}  (S={theory.speedup(args.alpha, best, args.c):.2f}x)")
    possible = "yes" if theory.speedup_possible(args.alpha, args.c) else "no (alpha <= c)"
    print(f"speedup possible: {possible}")
    print(f"gamma={gamma}: expected tokens per target call "
          f"{theory.expected_tokens(args.alpha, gamma):.2f}, "
          f"speedup {theory.speedup(args.alpha, gamma, args.c):.2f}x, "
          f"operations {theory.operations_factor(args.alpha, gamma, c_hat):.2f}x")
    print()
    print(f"{'gamma':>5} {'E[tokens]':>10} {'speedup':>8} {'operations':>11}")
    for row in theory.table(args.alpha, args.c, range(1, args.max_gamma + 1), c_hat):
        mark = "  <- optimal" if row.gamma == best else ""
        print(f"{row.gamma:>5} {row.expected_tokens:>10.2f} {row.speedup:>7.2f}x "
              f"{row.operations:>10.2f}x{mark}")
    return 0
