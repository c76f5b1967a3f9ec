"""`specdec models list` and `specdec models fetch NAME`: the offline model registry."""

from __future__ import annotations

import argparse

from specdec.models import fetch
from specdec.models.registry import REGISTRY


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="specdec models", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="registry models: parameters, size, cached or not")
    get = sub.add_parser("fetch", help="download, assemble and verify a model into the cache")
    get.add_argument("name", help=f"one of: {', '.join(REGISTRY)}")
    get.add_argument("--force", action="store_true", help="fetch again even if cached")
    args = parser.parse_args(argv)
    if args.action == "list":
        print_list()
    else:
        path = fetch.fetch(args.name, force=args.force)
        print(path)
    return 0


def print_list() -> None:
    print(f"{'name':<20} {'parameters':>10} {'size':>8}  {'format':<15} {'cached':<6} description")
    for entry in REGISTRY.values():
        cached = "yes" if fetch.is_cached(entry.name) else "no"
        print(f"{entry.name:<20} {entry.parameters / 1e6:>9.0f}M {entry.size / 1e6:>6.0f}MB  "
              f"{'GGUF ' + entry.quantization:<15} {cached:<6} {entry.description}")
    print(f"\ncache: {fetch.cache_dir()}  (set ${fetch.CACHE_ENV} to move it)")
