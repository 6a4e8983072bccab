"""Plot bench_concurrency.py's scheduler samples: requests running and waiting, and KV pool usage, over time.

    python benchmarks/render_concurrency.py conc_vanilla.json conc_swaa.json --png conc.png

One line per (setting, phase of N requests) in each of two panels: requests the scheduler ran
(solid) and kept waiting (dashed), and the share of its KV pool in use (``token_usage``: the full
pool; with window eviction, the pool of the layers kept whole). The samples are what SGLang's
``/v1/loads`` serves, every ``--sample-every`` seconds of the run; a phase's line ends where the
phase ended (or where ``--time-limit`` cut it short, marked "partial").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def phases(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Every (setting, phase) row with load samples, in file order; a row without samples is an error."""
    out = []
    for path in paths:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))["rows"]
        for r in rows:
            loads = r.get("loads") or []
            if not loads:
                raise SystemExit(f"{path}: {r['setting']} x{r['requests']} has no load samples "
                                 "(bench_concurrency.py --sample-every 0?)")
            out.append({"label": f"{r['setting']}, {r['requests']} requests" + (" (partial)" if r.get("partial") else ""),
                        "pool": r.get("max_total_num_tokens"), "loads": loads})
    return out


def plot(rows: Sequence[dict[str, Any]], png: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_req, ax_kv) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for i, row in enumerate(rows):
        color = f"C{i}"
        t = [s["t"] for s in row["loads"]]
        ax_req.plot(t, [s["num_running_reqs"] or 0 for s in row["loads"]], color=color, label=row["label"])
        ax_req.plot(t, [s["num_waiting_reqs"] or 0 for s in row["loads"]], color=color, linestyle="--")
        pool = f" (pool {row['pool']:,} tokens)" if row["pool"] else ""
        ax_kv.plot(t, [100 * (s["token_usage"] or 0) for s in row["loads"]], color=color, label=row["label"] + pool)
    ax_req.set_ylabel("requests: running (solid), waiting (dashed)")
    ax_kv.set_ylabel("KV pool in use (%)")
    ax_kv.set_xlabel("seconds since the phase's requests were sent")
    ax_req.legend(fontsize=8)
    ax_kv.legend(fontsize=8)
    for ax in (ax_req, ax_kv):
        ax.grid(alpha=0.3)
    ax_req.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/render_concurrency.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="bench_concurrency.py JSONs")
    p.add_argument("--png", required=True, help="chart out")
    p.add_argument("--title", default="Long requests at once: scheduler load over time")
    args = p.parse_args(argv)
    rows = phases(args.results)
    plot(rows, args.png, args.title)
    for row in rows:
        peak = max(s["num_running_reqs"] or 0 for s in row["loads"])
        usage = max(s["token_usage"] or 0 for s in row["loads"])
        print(f"{row['label']}: {len(row['loads'])} samples, peak running {peak}, peak KV pool use {100 * usage:.1f}%")
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
