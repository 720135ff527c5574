"""`python -m training.seeds SHIPPED OTHER... [--ship DEST]`: the dev accuracy of the same
recipe over seeds.

Reads the dev figures of each trained folder (the shipped one first), writes their mean and
spread into the shipped folder's config.json (`metrics["dev, seeds 1,2,3 (same command)"]`)
and model card. With `--ship DEST`, the shipped folder is first copied to DEST (replacing it)
under DEST's name, and the summary goes there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from .export import write_model_card

__all__ = ["main", "summarise"]


def summarise(folders: list[Path]) -> dict[str, Any]:
    """Mean, standard deviation and range of dev accuracy over the folders' seeds."""
    runs = [json.loads((f / "config.json").read_text(encoding="utf-8")) for f in folders]
    accuracy = [r["metrics"]["dev"]["accuracy"] for r in runs]
    return {"seeds": ",".join(str(r["training"]["seed"]) for r in runs),
            "mean_accuracy": statistics.fmean(accuracy),
            "std_accuracy": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
            "min_accuracy": min(accuracy), "max_accuracy": max(accuracy),
            "accuracy_by_seed": accuracy}


def main(argv: list[str] | None = None) -> int:
    """Write the summary into the first folder and print it."""
    parser = argparse.ArgumentParser(prog="python -m training.seeds", description=__doc__)
    parser.add_argument("shipped", type=Path)
    parser.add_argument("others", type=Path, nargs="+")
    parser.add_argument("--ship", type=Path, help="copy SHIPPED here first (a models/ folder)")
    args = parser.parse_args(argv)
    summary = summarise([args.shipped, *args.others])
    folder = args.shipped
    if args.ship is not None:
        staging = args.ship.with_name(args.ship.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging)
        shutil.rmtree(args.ship, ignore_errors=True)
        folder = staging.rename(args.ship)
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["name"] = folder.name
    config["metrics"][f"dev, seeds {summary['seeds']} (same command)"] = summary
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_model_card(folder, config)
    print(f"dev accuracy over seeds {summary['seeds']}: mean {summary['mean_accuracy']:.4f} "
          f"(sd {summary['std_accuracy']:.4f}, {summary['min_accuracy']:.4f}-"
          f"{summary['max_accuracy']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
