"""Render quality_ruler.py results: score tables per task and length, the full-layer comparison,
agreement with the HF reference, and a chart of score against speed.

    python benchmarks/render_ruler.py a.json b.json --md ruler.md --png ruler.png \\
        --speed benchmarks/results/e2e_qwen3-4b-recipes_h200_2026-12-02.json \\
        --speed benchmarks/results/e2e_qwen3-4b_h200_2026-12-02.json --speed-as sw+sink+fa+even=balanced \\
        --compare balanced,sw+sink+fa+even,calibrated --hf hf_spot.json

Several results files (for example two server lanes that ran different settings on the same
samples) are merged: their records must share the task definition (seed, split, essays). Tables
list full attention first: a cell where full attention fails says nothing about a window.

* Per task: mean score per setting x length, with the fully correct count (k/n).
* ``--compare A,B,...``: at ``--compare-length`` (default the longest), each setting's mean over
  the tasks and its fully correct count with a Wilson 95% interval.
* ``--hf FILE``: per setting present in both, how many samples (same task, length, index: the
  same prompt) the HF reference and the server scored alike and answered with the same text.
* ``--paired REF``: after the comparison, each compared setting against REF on the samples both
  answered at that length (the same prompts): mean score difference, wins (the setting fully correct
  where REF is not), losses (the reverse) and the exact two-sided sign test (McNemar) on them.
* ``--exclude NAME=REASON``: a setting left out of the tables and the chart, with the reason printed.
  ``--exclude NAME@FILE=REASON`` (FILE: an input's base name) leaves out only that file's records of
  NAME, before merging, so a rerun of the same samples can replace an invalid run; the HF agreement
  still shows the left-out records, on a row of their own.
* ``--speed FILE`` (bench_e2e.py JSONs): each setting's 128K TTFT speed-up over vanilla, for the
  chart (x: speed-up, y: mean score at ``--compare-length``). ``--speed-as NAME=PRESET`` plots a
  setting at a measured preset's speed (for example the even-layers twin of ``balanced``: the
  same number of full layers, so the same attention work), marked as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Sequence
from math import comb
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
from niah.scoring import wilson  # noqa: E402

# quality_ruler's settings named as bench_e2e names them (the window-relative names at W = 2048)
E2E_NAME = {"full": "vanilla", "sw": "window-2k", "sw+sink": "sink100-2k", "sw+sink+fa": "fa-decode-2k",
            "sw+sink+fa+odd": "balanced"}
SPEED_LENGTH = 131072


def read_json(path: str) -> Any:
    """A JSON file, gzip-compressed or not (results are committed as ``.json.gz``)."""
    import gzip

    raw = Path(path).read_bytes()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def _machine(info: dict[str, Any]) -> str:
    return str(info.get("gpu") or info.get("cuda") or info.get("cpu") or "machine not recorded")


def load(paths: Sequence[str], drop: Collection[tuple[str, str]] = ()) -> dict[str, Any]:
    """The merged results: records, the settings' descriptions and configs in first-seen order, provenance.

    ``drop`` holds (file base name, setting) pairs whose records are set aside before merging (into
    ``merged["dropped"]``, each tagged with ``left_out_from``), so they neither clash with a rerun of
    the same samples nor lend that setting their description."""
    merged: dict[str, Any] = {"records": [], "settings": {}, "sources": [], "dropped": []}
    dropped_settings: dict[str, Any] = {}
    task_key = None
    for path in paths:
        file = Path(path).name
        data = read_json(path)
        key = {**{k: data["task"].get(k) for k in ("seed", "split", "essays_sha256")},
               "model": Path(str(data.get("runner", {}).get("model_path", ""))).name}
        if task_key is not None and key != task_key:
            raise SystemExit(f"{path}: task definition {key} differs from the first file's {task_key}; "
                             "only runs of the same samples merge")
        task_key = key
        for settings in data.get("settings", {}).values():
            for s in settings:
                (dropped_settings if (file, s["name"]) in drop else merged["settings"]).setdefault(s["name"], s)
        records = [r for r in data["records"] if (file, r["setting"]) not in drop]
        merged["dropped"] += [{**r, "left_out_from": file} for r in data["records"] if (file, r["setting"]) in drop]
        seen = {(r["setting"], r["task"], r["length"], r["index"]) for r in merged["records"]}
        twice = [k for k in ((r["setting"], r["task"], r["length"], r["index"]) for r in records) if k in seen]
        if twice:
            raise SystemExit(f"{path}: sample {twice[0]} (setting, task, length, index) is also in an earlier file; "
                             "runs merge only over distinct samples (quality_ruler.py --first-index; "
                             "or --exclude NAME@FILE=REASON to replace an invalid run)")
        merged["records"] += records
        merged["sources"].append({"file": Path(path).name, "date": data.get("date"), "command": data.get("command"),
                                  "machine": _machine(data.get("machine") or {}),
                                  "elapsed_seconds": data.get("elapsed_seconds")})
    for name, s in dropped_settings.items():  # only in left-out records: still named, for the HF agreement
        merged["settings"].setdefault(name, s)
    windows = sorted({r["window"] for r in merged["records"]})
    if len(windows) > 1:
        raise SystemExit(f"results: windows {windows}; the tables hold one window (SWAA settings built at W, "
                         "full attention answered once for all): render each window's run on its own")
    merged["task"] = task_key
    return merged


def order_settings(names: Sequence[str], declared: Sequence[str]) -> list[str]:
    """Full attention first, then as declared."""
    present = list(dict.fromkeys(n for n in declared if n in names)) + [n for n in names if n not in declared]
    return sorted(present, key=lambda n: n != "full")


def cell_scores(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int], list[float]]:
    """{(setting, task, length): [score per sample]} (one window per run is assumed for the tables)."""
    out: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        out.setdefault((r["setting"], r["task"], r["length"]), []).append(r["score"])
    return out


def _k(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def task_tables(merged: dict[str, Any]) -> str:
    """One markdown table per task (and one for the mean over tasks): settings x lengths."""
    scores = cell_scores(merged["records"])
    settings = order_settings({s for s, _, _ in scores}, list(merged["settings"]))
    tasks = list(dict.fromkeys(t for _, t, _ in scores))
    lengths = sorted({n for _, _, n in scores})
    out = []
    for task in [*tasks, "mean over tasks"]:
        lines = [f"**{task}**", "", "| setting | " + " | ".join(_k(n) for n in lengths) + " |",
                 "|---|" + "---|" * len(lengths)]
        for s in settings:
            cells = []
            for n in lengths:
                got = ([x for t in tasks for x in scores.get((s, t, n), [])] if task == "mean over tasks"
                       else scores.get((s, task, n), []))
                if not got:
                    cells.append("-")
                    continue
                full = sum(1 for x in got if x == 1.0)
                cells.append(f"{sum(got) / len(got):.2f} ({full}/{len(got)})")
            lines.append(f"| `{s}` | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def compare_rows(merged: dict[str, Any], names: Sequence[str], length: int) -> list[dict[str, Any]]:
    """Per setting at one length, over every task: mean score, fully correct k/n and its Wilson interval."""
    rows = []
    for name in names:
        got = [r["score"] for r in merged["records"] if r["setting"] == name and r["length"] == length]
        if not got:
            raise SystemExit(f"--compare: no records for setting {name!r} at length {length}; "
                             f"settings present: {', '.join(sorted({r['setting'] for r in merged['records']}))}")
        full = sum(1 for x in got if x == 1.0)
        lo, hi = wilson(full, len(got))
        layers = merged["settings"].get(name, {}).get("resolved") or merged["settings"].get(name, {}).get("config", {})
        windowed = layers.get("sliding_window_size") is not None
        rows.append({"setting": name, "n": len(got), "mean_score": sum(got) / len(got), "all_correct": full,
                     "wilson95": (lo, hi),
                     "full_layers": (layers.get("non_sliding_layers") or "none") if windowed else "all",
                     "fa_decode": layers.get("force_fa_decode", False) if windowed else "-"})
    return rows


def compare_table(rows: Sequence[dict[str, Any]], length: int) -> str:
    lines = [f"At {_k(length)}, all tasks together:", "",
             "| setting | full layers | FA decode | mean score | fully correct | Wilson 95% |", "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["wilson95"]
        lines.append(f"| `{r['setting']}` | {r['full_layers']} | {r['fa_decode']} | {r['mean_score']:.3f} | "
                     f"{r['all_correct']}/{r['n']} | {lo:.3f}-{hi:.3f} |")
    return "\n".join(lines)


def hf_agreement(merged: dict[str, Any], hf: dict[str, Any]) -> str:
    """Per setting in both runs: samples scored alike and answered with the same text (same prompt).
    Records left out of one file (``left_out_from``) get a row of their own: a rerun of the same
    samples may sit beside them, and their agreement may be why they were left out."""
    def key(r):
        return (r["setting"], r["task"], r["length"], r["index"])

    ours: dict[tuple, list[dict]] = {}
    for r in merged["records"]:
        ours.setdefault(key(r), []).append(r)
    pairs: dict[tuple[str, str], list[tuple[dict, dict]]] = {}  # {(setting, file left out from or ""): pairs}
    for r in hf["records"]:
        for o in ours.get(key(r), []):
            if r.get("prompt_sha256") != o.get("prompt_sha256"):
                raise SystemExit(f"--hf: sample {key(r)} has another prompt there; only runs of the same samples compare")
            pairs.setdefault((r["setting"], o.get("left_out_from", "")), []).append((o, r))
    if not pairs:
        raise SystemExit("--hf: no sample of that run is in these results (same setting, task, length, index)")
    lines = ["| setting | samples | same score | same text | server mean | HF mean |", "|---|---|---|---|---|---|"]
    rank = {n: i for i, n in enumerate(order_settings({n for n, _ in pairs}, list(merged["settings"])))}
    for name, file in sorted(pairs, key=lambda k: (rank[k[0]], k[1])):  # kept records before left-out ones
        ps = pairs[name, file]
        same_score = sum(a["score"] == b["score"] for a, b in ps)
        same_text = sum(a["answer"].strip() == b["answer"].strip() for a, b in ps)
        label = f"`{name}`" + (f" (left out from `{file}`)" if file else "")
        lines.append(f"| {label} | {len(ps)} | {same_score} | {same_text} | "
                     f"{sum(a['score'] for a, _ in ps) / len(ps):.2f} | {sum(b['score'] for _, b in ps) / len(ps):.2f} |")
    return "\n".join(lines)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test (McNemar's exact binomial test) on the discordant pairs."""
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n)


def paired_rows(merged: dict[str, Any], ref: str, names: Sequence[str], length: int) -> list[dict[str, Any]]:
    """Each setting in ``names`` (but REF) against REF at one length, over the samples both answered
    (same task, length, index: the same prompt): n, mean score difference, wins, losses, sign-test p."""
    def at(name: str) -> dict[tuple[str, int], float]:
        return {(r["task"], r["index"]): r["score"] for r in merged["records"]
                if r["setting"] == name and r["length"] == length}

    base = at(ref)
    if not base:
        present = sorted({r["setting"] for r in merged["records"] if r["length"] == length})
        raise SystemExit(f"--paired: no records for setting {ref!r} at length {length}; "
                         f"settings present there: {', '.join(present)}")
    rows = []
    for name in names:
        if name == ref:
            continue
        ours = at(name)
        both = [k for k in ours if k in base]
        wins = sum(1 for k in both if ours[k] == 1.0 and base[k] != 1.0)
        losses = sum(1 for k in both if base[k] == 1.0 and ours[k] != 1.0)
        rows.append({"setting": name, "n": len(both), "wins": wins, "losses": losses, "p": sign_test(wins, losses),
                     "mean_diff": sum(ours[k] - base[k] for k in both) / len(both) if both else None})
    return rows


def paired_table(rows: Sequence[dict[str, Any]], ref: str, length: int) -> str:
    lines = [f"Paired against `{ref}` at {_k(length)} (the samples both answered; wins: fully correct where "
             f"`{ref}` is not, losses: the reverse; p: exact two-sided sign test on wins against losses):", "",
             "| setting | samples | mean difference | wins | losses | p |", "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-" if r["mean_diff"] is None else f"{r['mean_diff']:+.3f}"
        p = f"{r['p']:.3f}" if r["p"] >= 0.001 else f"{r['p']:.1e}"
        lines.append(f"| `{r['setting']}` | {r['n']} | {diff} | {r['wins']} | {r['losses']} | {p} |")
    return "\n".join(lines)


def speedups(paths: Sequence[str]) -> dict[str, float]:
    """{preset: TTFT speed-up over vanilla at 128K}, from bench_e2e.py JSONs (the first file that has a
    preset wins). Eviction suffixes name the same attention work; a +chunkN row is another setting and
    is skipped; a bare preset's row is preferred to a suffixed one in the same file."""
    from common import split_setting

    out: dict[str, float] = {}
    for path in paths:
        rows = read_json(path)["rows"]
        ttft = {r["setting"]: s["ttft_s"] for r in rows for s in r.get("single", []) if s["prompt_tokens"] == SPEED_LENGTH}
        if "vanilla" not in ttft:
            raise SystemExit(f"--speed: {path} has no vanilla row at {SPEED_LENGTH} tokens")
        found: dict[str, float] = {}
        for name, t in sorted(ttft.items(), key=lambda kv: "+" in kv[0]):  # bare names first
            base, _, chunk = split_setting(name)
            if chunk is None:
                found.setdefault(base, ttft["vanilla"] / t)
        for base, x in found.items():
            out.setdefault(base, x)
    return out


def plot(rows: Sequence[dict[str, Any]], speed: dict[str, float], speed_as: dict[str, str], length: int,
         png: str, title: str) -> list[str]:
    """Mean score at ``length`` against 128K TTFT speed-up; returns the settings left out (no speed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    missing = []
    placed: dict[float, int] = {}  # settings already at (about) this speed-up
    markers = "osD^vP*Xh<>p"
    for i, r in enumerate(rows):
        name = r["setting"]
        e2e = speed_as.get(name, E2E_NAME.get(name, name))
        if e2e not in speed:
            missing.append(name)
            continue
        lo, hi = r["wilson95"]
        frac = r["all_correct"] / r["n"]
        # settings at nearly one speed-up (the same full-layer count) would hide each other's
        # intervals: spread them sideways a little, and name every point in the legend
        key = round(speed[e2e] * 5) / 5
        x = speed[e2e] + 0.07 * placed.get(key, 0)
        placed[key] = placed.get(key, 0) + 1
        label = name + (f" (at {e2e}'s speed)" if name in speed_as else "")
        ax.errorbar([x], [frac], yerr=[[frac - lo], [hi - frac]], fmt=markers[i % len(markers)], capsize=3,
                    mfc="white" if name in speed_as else None, label=label)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel("TTFT speed-up over vanilla SGLang at 128K (Qwen3-4B shape, H200)")
    ax.set_ylabel(f"fully correct at {_k(length)} (all tasks, Wilson 95%)")
    ax.set_ylim(-0.03, 1.05)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/render_ruler.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="quality_ruler.py JSONs of the same samples")
    p.add_argument("--md", help="markdown out (default: print)")
    p.add_argument("--png", help="chart out (needs --speed)")
    p.add_argument("--compare", help="comma-separated settings for the comparison table (default: every "
                   "setting; the chart shows every setting not excluded)")
    p.add_argument("--compare-length", type=int, help="length of the comparison and the chart (default: the longest)")
    p.add_argument("--hf", action="append", default=[],
                   help="a quality_ruler.py --runner hf JSON on some of the same samples (repeatable)")
    p.add_argument("--speed", action="append", default=[], help="bench_e2e.py JSON with 128K TTFT rows (repeatable)")
    p.add_argument("--speed-as", action="append", default=[], metavar="NAME=PRESET",
                   help="plot NAME at PRESET's measured speed (repeatable)")
    p.add_argument("--paired", metavar="REF",
                   help="after the comparison, a paired table of each compared setting against REF on the same "
                   "samples: mean difference, wins, losses, exact sign-test p")
    p.add_argument("--exclude", action="append", default=[], metavar="NAME[@FILE]=REASON",
                   help="leave a setting's records out of every table and the chart, saying why; with @FILE (an "
                   "input's base name) only that file's records, before merging (repeatable)")
    p.add_argument("--title", default="RULER-style tasks: quality against speed")
    args = p.parse_args(argv)
    files = [Path(x).name for x in args.results]
    excluded: dict[str, str] = {}
    excluded_in: dict[tuple[str, str], str] = {}  # {(file base name, setting): reason}
    for item in args.exclude:
        target, sep, reason = item.partition("=")
        name, at, file = target.partition("@")
        if not sep or not name or not reason or (at and not file):
            p.error(f"--exclude: expected NAME=REASON or NAME@FILE=REASON; got {item!r}")
        if not at:
            excluded[name] = reason
            continue
        if file not in files:
            p.error(f"--exclude: {file!r} is not an input file; allowed: {', '.join(files)}")
        if files.count(file) > 1:
            p.error(f"--exclude: {file!r} names {files.count(file)} input files; give them distinct base names")
        excluded_in[file, name] = reason
    # checked before merging: a mistyped NAME would otherwise surface as the rerun's duplicate samples
    for file in dict.fromkeys(f for f, _ in excluded_in):
        there = {r["setting"] for r in read_json(args.results[files.index(file)])["records"]}
        for name in [n for f, n in excluded_in if f == file and n not in there]:
            p.error(f"--exclude: no records for setting {name!r} in {file}; settings there: {', '.join(sorted(there))}")
    # left out per file before merging: a rerun of those samples may replace them
    merged = load(args.results, drop=excluded_in)
    for name in excluded:
        if not any(r["setting"] == name for r in [*merged["records"], *merged["dropped"]]):
            p.error(f"--exclude: no records for setting {name!r}")
    # the HF agreement covers excluded settings and left-out records too: it may be why
    every_record = merged["records"] + merged["dropped"]
    merged["records"] = [r for r in merged["records"] if r["setting"] not in excluded]
    lengths = sorted({r["length"] for r in merged["records"]})
    length = args.compare_length or lengths[-1]
    if length not in lengths:
        p.error(f"--compare-length: {length} not in the results; allowed: {', '.join(map(str, lengths))}")
    present = order_settings({r["setting"] for r in merged["records"]}, list(merged["settings"]))
    names = [x.strip() for x in args.compare.split(",")] if args.compare else present
    speed_as = {}
    for item in args.speed_as:
        name, sep, preset = item.partition("=")
        if not sep or not name or not preset:
            p.error(f"--speed-as: expected NAME=PRESET; got {item!r}")
        speed_as[name] = preset
    parts = ["Sources: " + "; ".join(f"`{s['file']}` ({s['date']}, {s['machine']})" for s in merged["sources"]),
             task_tables(merged), compare_table(compare_rows(merged, names, length), length)]
    if args.paired:
        parts.append(paired_table(paired_rows(merged, args.paired, names, length), args.paired, length))
    if excluded or excluded_in:
        parts.insert(1, "Left out: " + "; ".join(
            [f"`{n}` ({why})" for n, why in excluded.items()]
            + [f"`{n}` from `{file}` ({why})" for (file, n), why in excluded_in.items()]))
    if args.hf:
        parts.append("Agreement with the HF reference (same prompts):\n\n"
                     + hf_agreement({**merged, "records": every_record},
                                  {"records": [r for f in args.hf for r in read_json(f)["records"]]}))
    if args.png:
        if not args.speed:
            p.error("--png: needs --speed (bench_e2e.py JSONs with 128K TTFT)")
        rows = compare_rows(merged, present, length)
        missing = plot(rows, speedups(args.speed), speed_as, length, args.png, args.title)
        if missing:
            parts.append(f"Not in the chart (no 128K speed measured): {', '.join(missing)}")
    text = "\n\n".join(parts) + "\n"
    if args.md:
        Path(args.md).write_text(text, encoding="utf-8")
        print(f"wrote {args.md}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
