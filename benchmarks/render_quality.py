"""Render a quality_niah.py results JSON: a markdown table and a PNG bar chart.

    python benchmarks/render_quality.py benchmarks/results/quality.json            # writes quality.md, quality.png
    python benchmarks/render_quality.py q.json --md out.md --png out.png
    python benchmarks/render_quality.py gpu.json --compare cpu_hf.json   # + per-sample agreement with another run

Accuracy is shown with counts (k/n) per setting x needle position (inside / outside the
sliding window), one table and one panel per (context length, window). The bars carry 95%
Wilson intervals. The markdown repeats the provenance the JSON records: date, machine,
command line, runner and each setting's SWAA config. ``--compare`` adds, per setting, how many
samples the two runs scored alike and answered with the very same text (samples that match by
id and prompt hash only: the same prompt token for token).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
from niah.scoring import wilson  # noqa: E402

POSITION_LABELS = {"inside": "needle inside window", "outside": "needle outside window"}


def cells(result: dict[str, Any]) -> dict[tuple[int, int], dict[str, dict[str, tuple[int, int]]]]:
    """{(context, window): {setting: {position: (correct, n)}}}, counted from the records."""
    out: dict[tuple[int, int], dict[str, dict[str, list[int]]]] = {}
    for r in result["records"]:
        cell = out.setdefault((r["context_length"], r["window"]), {}).setdefault(r["setting"], {})
        k_n = cell.setdefault(r["position"], [0, 0])
        k_n[0] += bool(r["correct"])
        k_n[1] += 1
    return {
        key: {s: {p: (kn[0], kn[1]) for p, kn in pos.items()} for s, pos in settings.items()}
        for key, settings in out.items()
    }


def _setting_order(result: dict[str, Any], window: int, present: Sequence[str]) -> list[str]:
    declared = [s["name"] for s in result.get("settings", {}).get(str(window), [])]
    return [s for s in declared if s in present] + [s for s in present if s not in declared]


def _descriptions(result: dict[str, Any], window: int) -> dict[str, str]:
    return {s["name"]: s.get("description", "") for s in result.get("settings", {}).get(str(window), [])}


def agreement(result: dict[str, Any], other: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per setting: samples present in both runs with the same prompt (``compared``), scored alike
    (``same_score``), answered with the same text (``same_answer``); ``other_prompt``: same id, other prompt."""
    def key(r: dict[str, Any]) -> tuple:
        return r["context_length"], r["window"], r["setting"], r["sample_id"]

    theirs = {key(r): r for r in other["records"]}
    out: dict[str, dict[str, int]] = {}
    for r in result["records"]:
        o = theirs.get(key(r))
        if o is None:
            continue
        row = out.setdefault(r["setting"], {"compared": 0, "same_score": 0, "same_answer": 0, "other_prompt": 0})
        if o.get("prompt_sha256") != r.get("prompt_sha256"):
            row["other_prompt"] += 1
            continue
        row["compared"] += 1
        row["same_score"] += bool(o["correct"]) == bool(r["correct"])
        row["same_answer"] += o["answer"] == r["answer"]
    return out


def agreement_markdown(result: dict[str, Any], other: dict[str, Any], other_name: str) -> list[str]:
    rows = agreement(result, other)
    runner, machine = other.get("runner", {}), other.get("machine", {})
    lines = [
        f"## Agreement with {other_name}",
        "",
        (
            f"The other run: {runner.get('runner', '?')} runner ({runner.get('dtype', '')} {runner.get('device', '')}), "
            f"{machine.get('cuda') or machine.get('cpu', '?')}, {other.get('date', '?')}. Samples compared only where "
            "both runs built the same prompt (same id and prompt hash)."
        ),
        "",
        "| setting | samples compared | same score | same answer text | same id, other prompt |",
        "|---|---|---|---|---|",
    ]
    total = {"compared": 0, "same_score": 0, "same_answer": 0, "other_prompt": 0}
    for name, row in rows.items():
        lines.append(f"| {name} | {row['compared']} | {row['same_score']} | {row['same_answer']} | {row['other_prompt']} |")
        for k in total:
            total[k] += row[k]
    lines += [
        f"| all | {total['compared']} | {total['same_score']} | {total['same_answer']} | {total['other_prompt']} |",
        "",
    ]
    return lines


def fmt_cell(k: int, n: int) -> str:
    return f"{100 * k / n:.0f}% ({k}/{n})" if n else "-"


def markdown(result: dict[str, Any], compare: dict[str, Any] | None = None, compare_name: str = "") -> str:
    """The accuracy tables, with provenance (and the agreement with ``compare``, another run)."""
    machine = result.get("machine", {})
    runner = result.get("runner", {})
    task = result.get("task", {})
    lines = [
        "# Needle in a haystack: SWAA settings, needle inside vs outside the sliding window",
        "",
        f"- date: {result.get('date', '?')}",
        (
            f"- machine: {machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} CPUs, "
            f"{machine.get('torch_threads', '?')} torch threads), GPU: {machine.get('cuda') or 'none'}; "
            f"torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}, "
            f"Python {machine.get('python', '?')}"
        ),
        f"- runner: {', '.join(f'{k}={v}' for k, v in runner.items() if k not in ('prefill_sharing', 'servers'))}",
        f"- command: `{result.get('command', '?')}`",
        f"- elapsed: {result.get('elapsed_seconds', '?')} s",
        (
            f"- task: {task.get('samples_per_cell', '?')} samples per cell, greedy, at most "
            f"{task.get('max_new_tokens', '?')} new tokens, answer prefix {'on' if task.get('answer_prefix') else 'off'}, "
            f"seed {task.get('seed', '?')}; outside depths {task.get('outside_depths', '?')}; "
            f"scoring: {task.get('scoring', '?')}"
        ),
        f"- inside: {task.get('inside', '?')}; outside: {task.get('outside', '?')}",
    ]
    for server in runner.get("servers", []):  # --runner launch: one server per distinct config
        lines.append(
            f"  - server for {', '.join(server['settings'])} (windows {server['windows']}): `{server['flags']}`; "
            f"up in {server.get('start_seconds', '?')} s, log `{server.get('log', '?')}`"
        )
    lines.append("")
    verification = result.get("verification")
    if verification:
        worst = max(v["max_abs_logit_diff"] for v in verification["settings"].values())
        same = sum(v["same_answer"] for v in verification["settings"].values())
        lines += [
            (
                f"Blockwise attention vs the package's reference attention on one {verification['sample']['prompt_tokens']}"
                f"-token sample (window {verification['window']}): same greedy answer in {same}/"
                f"{len(verification['settings'])} settings, max |logit difference| {worst:.1e}."
            ),
            "",
        ]
    for (ctx, window), settings in sorted(cells(result).items()):
        desc = _descriptions(result, window)
        lines += [
            f"## Context {ctx} tokens, window {window}",
            "",
            f"| setting | {POSITION_LABELS['inside']} | {POSITION_LABELS['outside']} | config |",
            "|---|---|---|---|",
        ]
        for name in _setting_order(result, window, list(settings)):
            pos = settings[name]
            k_in, n_in = pos.get("inside", (0, 0))
            k_out, n_out = pos.get("outside", (0, 0))
            lines.append(f"| {name} | {fmt_cell(k_in, n_in)} | {fmt_cell(k_out, n_out)} | {desc.get(name, '')} |")
        lines.append("")
    lines += ["## Settings (SWAA configs)", ""]
    for window, settings in result.get("settings", {}).items():
        for s in settings:
            lines.append(f"- W={window} `{s['name']}`: `{json.dumps(s['config'], sort_keys=True)}`")
    lines.append("")
    if compare is not None:
        lines += agreement_markdown(result, compare, compare_name)
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars (inside / outside) per setting, one panel per (context, window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = cells(result)
    keys = sorted(data)
    fig, axes = plt.subplots(len(keys), 1, figsize=(11, 4.6 * len(keys)), squeeze=False)
    colors = {"inside": "#4C72B0", "outside": "#DD8452"}
    for ax, key in zip(axes[:, 0], keys):
        ctx, window = key
        names = _setting_order(result, window, list(data[key]))
        width = 0.38
        for j, position in enumerate(("inside", "outside")):
            xs, ys, lo, hi, labels = [], [], [], [], []
            for i, name in enumerate(names):
                if position not in data[key][name]:
                    continue
                k, n = data[key][name][position]
                a, b = wilson(k, n)
                xs.append(i + (j - 0.5) * width)
                ys.append(k / n)
                lo.append(k / n - a)
                hi.append(b - k / n)
                labels.append(f"{k}/{n}")
            bars = ax.bar(
                xs,
                ys,
                width,
                yerr=[lo, hi],
                capsize=3,
                color=colors[position],
                label=POSITION_LABELS[position],
                error_kw={"elinewidth": 1, "ecolor": "#333333"},
            )
            for bar, label in zip(bars, labels):
                ax.text(
                    bar.get_x() + bar.get_width() / 2,
                    0.02,
                    label,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="white" if bar.get_height() > 0.08 else "black",
                )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=0, fontsize=9)
        ax.set_ylim(0, 1.2)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("accuracy (95% Wilson CI)")
        ax.set_title(f"context {ctx} tokens, window {window}", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper center", ncol=2, fontsize=9, framealpha=0.9)
    machine = result.get("machine", {})
    runner = result.get("runner", {})
    model = Path(str(runner.get("model_path") or runner.get("model") or "model")).name
    fig.suptitle(
        f"Needle in a haystack, {model} ({runner.get('runner', '?')} runner, {runner.get('dtype', '')}"
        f" {runner.get('device', '')}), {result.get('date', '')[:10]}\n"
        f"{machine.get('cpu', '')}, torch {machine.get('torch', '')}, transformers {machine.get('transformers', '')}; "
        "sink = keep_first, fa = FA decode, odd = odd layers full",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_files(json_path: str | Path, md_path: str | Path | None = None, png_path: str | Path | None = None,
                 compare_path: str | Path | None = None):
    """Write the markdown and PNG (default: next to the JSON, same stem); return their paths."""
    json_path = Path(json_path)
    result = json.loads(json_path.read_text(encoding="utf-8"))
    md_path = Path(md_path) if md_path else json_path.with_suffix(".md")
    png_path = Path(png_path) if png_path else json_path.with_suffix(".png")
    compare = json.loads(Path(compare_path).read_text(encoding="utf-8")) if compare_path else None
    text = markdown(result, compare, f"`{Path(compare_path).name}`" if compare_path else "")
    text = text.replace("\n## Settings", f"\n![accuracy chart]({png_path.name})\n\n## Settings", 1)
    md_path.write_text(text, encoding="utf-8")
    plot(result, png_path)
    return [md_path, png_path]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/render_quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="a quality_niah.py results JSON")
    p.add_argument("--md", help="markdown output (default: next to the JSON)")
    p.add_argument("--png", help="PNG output (default: next to the JSON)")
    p.add_argument("--compare", metavar="JSON", help="another quality_niah.py run: add per-sample agreement with it")
    args = p.parse_args(argv)
    for path in render_files(args.json, args.md, args.png, args.compare):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
