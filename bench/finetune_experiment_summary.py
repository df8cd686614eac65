"""Side-by-side summary of fine-tuning experiment configurations (``bench/finetune_experiment.py --tag``).

Reads every ``experiment*.json`` under the experiment directory, prints one table (per
configuration and arm: mean F1 change on |yaw| <= 30 and on |yaw| >= 60 against the base parser,
and the share of the oracle's gain recovered), writes ``summary.json`` and a scatter plot
(frontal change against extreme-pose change, the target region shaded: a gain at >= 60 while
losing at most 1 point at <= 30).

    .venv/bin/python bench/finetune_experiment_summary.py [--dir bench/out/finetune_experiment] \\
        [--plot docs/img/finetune_experiment_configs.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ARMS = ("raw", "refined", "oracle", "raw_wise", "refined_wise", "oracle_wise")


def describe(args: dict) -> str:
    parts = [f"{args['epochs']} ep", f"lr {args['lr']:g}", f"mix {args['mix_ratio']:g}"]
    if args.get("background_prob"):
        parts.append(f"bg {args['background_prob']:g}")
    if args.get("ft_seed"):
        parts.append(f"seed {args['ft_seed']}")
    if args.get("abs_yaw_range"):
        lo, hi = args["abs_yaw_range"]
        parts.append(f"|yaw| {lo:g}-{hi:g}")
    return ", ".join(parts)


def load(directory: Path) -> list[dict]:
    rows = []
    for p in sorted(directory.glob("experiment*.json")):
        d = json.loads(p.read_text())
        tag = p.stem[len("experiment"):].lstrip("_") or "(untagged)"
        for arm in [k for k in d["frontal_change"] if k != "base"]:
            share = {"refined": d["oracle_share_recovered"], "refined_wise": d.get("wise_oracle_share_recovered")}
            rows.append({"tag": tag, "config": describe(d["args"]), "arm": arm,
                         "frontal_change": 100 * d["frontal_change"][arm], "gain_ge60": 100 * d["gain_ge60"][arm],
                         "oracle_share": share.get(arm),
                         "wise_alpha": (d.get("wise") or {}).get(arm, {}).get("alpha"),
                         "steps": d["args"]["epochs"] * d["args"]["epoch_length"] // d["args"]["batch_size"]})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    ax.axvspan(-1.0, 20, ymin=0, ymax=1, color="#e8f5e9", zorder=0)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.axvline(-1.0, color="#2e7d32", lw=0.8, ls="--")
    colours = {"raw": "#9e9e9e", "refined": "#1565c0", "oracle": "#e65100"}
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        kind = arm.split("_")[0]
        ax.scatter([r["frontal_change"] for r in rs], [r["gain_ge60"] for r in rs], c=colours[kind], label=arm, s=30,
                   zorder=3, marker="^" if arm.endswith("_wise") else "o")
        if arm == "refined":
            for r in rs:
                ax.annotate(r["tag"], (r["frontal_change"], r["gain_ge60"]), fontsize=6.5, xytext=(4, 2),
                            textcoords="offset points", color=colours[kind])
    xs = [r["frontal_change"] for r in rows]
    ax.set_xlim(min(xs) - 0.5, max(max(xs), 0.0) + 1.5)
    ax.set_xlabel("change in mean F1 at |yaw| <= 30 (points)")
    ax.set_ylabel("change in mean F1 at |yaw| >= 60 (points)")
    ax.set_title("fine-tuning configurations (green: loses at most 1 point frontally)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="bench/out/finetune_experiment")
    ap.add_argument("--plot", default=None, help="also write the scatter plot here (PNG)")
    ap.add_argument("--exclude", nargs="*", default=[], help="tags left out of the plot (not the table)")
    a = ap.parse_args()
    rows = load(Path(a.dir))
    if not rows:
        print(f"no experiment*.json under {a.dir}", file=sys.stderr)
        return 2
    print(f"{'tag':22s} {'configuration':46s} {'arm':13s} {'steps':>5s} {'d F1 0-30':>9s} {'d F1 >=60':>9s} "
          f"{'oracle share':>12s} {'WiSE alpha':>10s}")
    for r in rows:
        share = f"{r['oracle_share']:.2f}" if r["oracle_share"] is not None else ""
        wa = f"{r['wise_alpha']:g}" if r["wise_alpha"] is not None else ""
        print(f"{r['tag']:22s} {r['config']:46s} {r['arm']:13s} {r['steps']:5d} {r['frontal_change']:+9.1f} "
              f"{r['gain_ge60']:+9.1f} {share:>12s} {wa:>10s}")
    (Path(a.dir) / "summary.json").write_text(json.dumps(rows, indent=1))
    if a.plot:
        plot([r for r in rows if r["tag"] not in set(a.exclude)], Path(a.plot))
        print(f"plot: {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
