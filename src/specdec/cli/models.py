"""`specdec models list | fetch NAME | clear [NAME]`: the offline model registry and its cache."""

from __future__ import annotations

import argparse

from specdec.models import convert, fetch
from specdec.models.registry import REGISTRY


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="specdec models", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="registry models (parameters, size, cached or not) and the "
                   "converted copies in the cache")
    get = sub.add_parser("fetch", help="download, assemble and verify a model into the cache")
    get.add_argument("name", help=f"one of: {', '.join(REGISTRY)}")
    get.add_argument("--force", action="store_true", help="fetch again even if cached")
    clear = sub.add_parser("clear", help="delete converted copies (the next load of the model "
                           "converts its GGUF again)")
    clear.add_argument("name", nargs="?", default=None,
                       help="registry name or GGUF file name (default: every copy)")
    args = parser.parse_args(argv)
    if args.action == "list":
        print_list()
    elif args.action == "clear":
        print_cleared(args.name)
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
    copies = convert.list_copies()
    print("\nconverted copies (safetensors, loaded instead of dequantizing the GGUF again):")
    for info in copies:
        print(f"  {info.name:<28} {info.dtype:<9} {info.size / 1e6:>7.0f}MB  {info.path}")
    if not copies:
        print("  none yet (made by the first load of a GGUF model)")
    print(f"\ncache: {fetch.cache_dir()}  (set ${fetch.CACHE_ENV} to move it)")


def print_cleared(name: str | None) -> None:
    removed = convert.remove_copies(name)
    for info in removed:
        print(f"removed {info.name} ({info.dtype}, {info.size / 1e6:.0f}MB): {info.path}")
    if not removed:
        print("no converted copy" + (f" of {name}" if name else "") + " in the cache")
