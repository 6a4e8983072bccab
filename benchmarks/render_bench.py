"""Render op and end-to-end benchmark JSON into a markdown table and PNG plots.

    python benchmarks/render_bench.py --ops benchmarks/results/ops_h100_2026-11-28.json \\
        --e2e benchmarks/results/e2e_qwen3-4b_h100_2026-11-28.json --out benchmarks/results/speed_h100_2026-11-28

writes ``<out>.md`` and ``<out>_ops.png`` / ``<out>_e2e.png`` (plots need matplotlib).
Ratios are computed here from the measured times; the targets are the project's speed goals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

# (what, goal): the project's speed goals, printed next to the measured ratio
PREFILL_GOAL = 1.15  # SWAA prefill time / window-only time at 128K
PREFILL_VS_FULL_GOAL = 17.0
DECODE_GOAL = 10.0  # full decode / SWAA decode, 32 x 32K
TTFT_GOAL = 5.5  # vanilla / swaa TTFT at 128K (all layers sliding)
DECODE_E2E_GOAL = 2.5  # swaa / vanilla decode tok/s at 128K
BALANCED_TTFT_GOAL = 1.9  # vanilla / balanced TTFT at 128K (FA decode, half the layers full)
HERE = Path(__file__).resolve().parent


def _k(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def ops_markdown(ops: dict) -> list[str]:
    m = ops["meta"]
    lines = [f"### Attention op ({m['gpu']}, {m['date']}, flashinfer {m['flashinfer']}, torch {m['torch']}, "
             f"heads {m['heads'][0]}/{m['heads'][1]} x {m['heads'][2]})", ""]
    pre = [r for r in ops["rows"] if r["kind"] == "prefill"]
    if pre:
        w, k = pre[0]["window"], pre[0]["sinks"]
        lines += [f"Prefill of one sequence, sliding layer W={w}, k={k} (ms; ratios from these times):", "",
                  "| backend | tokens | full causal | window only | SWAA 2-pass | SWAA fused | best SWAA / window | full / best SWAA |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in pre:
            fused = r.get("swaa_fused_ms")
            best = min(r["swaa_ms"], fused) if fused else r["swaa_ms"]
            lines.append(f"| {r.get('backend', 'fa2')} | {_k(r['tokens'])} | {r['full_ms']:.2f} | {r['window_ms']:.2f} | "
                         f"{r['swaa_ms']:.2f} | {fused:.2f} | {best / r['window_ms']:.3f} | {r['full_ms'] / best:.1f} |"
                         if fused else
                         f"| {r.get('backend', 'fa2')} | {_k(r['tokens'])} | {r['full_ms']:.2f} | {r['window_ms']:.2f} | "
                         f"{r['swaa_ms']:.2f} | - | {best / r['window_ms']:.3f} | {r['full_ms'] / best:.1f} |")
        lines += ["", f"Goals at 128K: best SWAA / window <= {PREFILL_GOAL}, full / SWAA >= {PREFILL_VS_FULL_GOAL}.", ""]
    dec = [r for r in ops["rows"] if r["kind"] == "decode"]
    if dec:
        lines += ["Decode (one step, ms):", "", "| batch x context | full | SWAA (sinks ++ window) | full / SWAA |",
                  "|---|---|---|---|"]
        for r in dec:
            lines.append(f"| {r['batch']} x {_k(r['context'])} | {r['full_ms']:.3f} | {r['swaa_ms']:.3f} | "
                         f"{r['full_ms'] / r['swaa_ms']:.1f} |")
        lines += ["", f"Goal: 32 x 32K at least {DECODE_GOAL}x.", ""]
    return lines


def _cells(row: dict) -> dict[int, dict]:
    """One setting's single-request cells by prompt length."""
    return {s["prompt_tokens"]: s for s in row["single"]}


def e2e_markdown(e2e: dict) -> list[str]:
    m = e2e["meta"]
    rows = {r["setting"]: r for r in e2e["rows"]}
    lines = [f"### End to end ({m['gpu']}, {m['date']}, {Path(m['model']).name} shape, dummy weights, one request)", "",
             f"Command: `{' '.join(m.get('argv', []))}`", "",
             "| setting | prompt | TTFT s | TTFT speed-up | decode tok/s | decode speed-up |", "|---|---|---|---|---|---|"]
    base = _cells(rows.get("vanilla", {"single": []}))
    for name, r in rows.items():
        for s in r["single"]:
            b = base.get(s["prompt_tokens"])
            up = f"{b['ttft_s'] / s['ttft_s']:.2f}x" if b and name != "vanilla" else "-"
            dup = f"{s['decode_tok_s'] / b['decode_tok_s']:.2f}x" if b and name != "vanilla" else "-"
            lines.append(f"| {name} | {_k(s['prompt_tokens'])} | {s['ttft_s']:.3f} | {up} | {s['decode_tok_s']:.1f} | {dup} |")
        if r.get("offline"):
            o = r["offline"]
            up = offline_speedup(o, rows.get("vanilla", {}).get("offline")) if name != "vanilla" else None
            lines.append(f"| {name} | offline {o['requests']} x {_k(o['prompt_tokens'])} -> {o['output_tokens']} | "
                         f"{o['seconds']:.1f} s total | | {o['output_tok_s']:.1f} | "
                         f"{f'{up:.2f}x (output tok/s)' if up else '-'} |")
    lines += ["", "Settings: " + "; ".join(f"`{name}` {_setting_description(name)}" for name in rows) + "."]
    # the parsed list bench_e2e records, else (older files) the --settings value in argv
    missing = [name for name in m.get("settings") or _requested_settings(m.get("argv", [])) if name not in rows]
    if missing:  # a run cut short (budget, crash) saves the settings it finished: say which are absent
        lines += ["", "Not measured: " + ", ".join(f"`{name}`" for name in missing)
                  + " (in the command, no results in the JSON: the run ended before it finished them)."]
    lines += ["", f"Speed goals (Qwen3-4B shape, H100, at 128K; all layers sliding, W=2048, k=100): TTFT >= {TTFT_GOAL}x, "
              f"decode >= {DECODE_E2E_GOAL}x vanilla; balanced: TTFT >= {BALANCED_TTFT_GOAL}x.", ""]
    lines += layer_mix_markdown(e2e)
    return lines


def offline_speedup(offline: dict, vanilla: Optional[dict]) -> Optional[float]:
    """Output tokens/s over vanilla's, when vanilla ran the same offline workload."""
    same = ("requests", "prompt_tokens", "output_tokens")
    if not vanilla or any(offline[k] != vanilla[k] for k in same):
        return None
    return offline["output_tok_s"] / vanilla["output_tok_s"]


def _requested_settings(argv: list[str]) -> list[str]:
    """The settings an older bench_e2e JSON was asked for (its --settings value in argv), in order; []
    when argv has none (bench_e2e's defaults are not guessed here)."""
    for i, arg in enumerate(argv):
        if arg == "--settings" and i + 1 < len(argv):
            return argv[i + 1].split(",")
        if arg.startswith("--settings="):
            return arg.split("=", 1)[1].split(",")
    return []


def e2e_speedups(e2e: dict) -> list[dict]:
    """Per non-vanilla setting: TTFT and decode speed-up over vanilla at the longest prompt both measured."""
    rows = {r["setting"]: r for r in e2e["rows"]}
    if "vanilla" not in rows or not rows["vanilla"]["single"]:
        return []
    base = _cells(rows["vanilla"])
    out = []
    for name, r in rows.items():
        common = [s for s in r["single"] if s["prompt_tokens"] in base]
        if name == "vanilla" or not common:
            continue
        s = max(common, key=lambda x: x["prompt_tokens"])
        b = base[s["prompt_tokens"]]
        out.append({"setting": name, "prompt_tokens": s["prompt_tokens"], "ttft": b["ttft_s"] / s["ttft_s"],
                    "decode": s["decode_tok_s"] / b["decode_tok_s"]})
    return out


def _setting_description(setting: str) -> str:
    """What a bench_e2e setting name runs, for the reader of the table."""
    from common import split_setting
    from swaa_sglang.config import PRESETS

    try:
        preset, evict, chunk = split_setting(setting)
    except ValueError:
        return "(not a known setting)"
    if preset == "vanilla":
        what = "SGLang's flashinfer backend, no plugin"
    elif preset == "vanilla-no-prefill-graph":
        what = "the same, prefill CUDA graph off"
    elif preset in PRESETS:
        what = PRESETS[preset][0]
    else:
        return "(not a known setting)"
    if evict is not None:
        what += ", window eviction " + ("on" if evict else "off")
    return what + (f", chunked prefill {chunk}" if chunk else "")


def _num_layers(model: str) -> Optional[int]:
    """Layer count of the benchmarked shape: benchmarks/models/<name>/config.json (the JSON names the
    GPU host's path)."""
    config = HERE / "models" / Path(model).name / "config.json"
    return json.loads(config.read_text())["num_hidden_layers"] if config.is_file() else None


def _sliding_references(names: list[str], n: int) -> dict[tuple[int, int], str]:
    """(window, sinks) -> the run's preset with every layer sliding and that window and those sinks.
    TTFT is prefill, which FA decode does not touch; a preset without it is still preferred."""
    from swaa_sglang.config import PRESETS, preset_config

    refs: dict[tuple[int, int], str] = {}
    for name in sorted((x for x in names if x in PRESETS), key=lambda x: bool(preset_config(x).force_fa_decode)):
        c = preset_config(name)
        if c.sliding_window_size and all(c.is_sliding(i) for i in range(n)):
            refs.setdefault((c.sliding_window_size, c.keep_first), name)
    return refs


def layer_mix_estimate(e2e: dict) -> list[dict]:
    """TTFT a preset with some full layers would have if each full layer cost what it costs in
    vanilla and each sliding layer what it costs in the run's all-sliding preset with the same
    window and sinks (f x vanilla + (1 - f) x reference, f the fraction of full layers): the bound
    a layer mix can reach without a faster full-attention path."""
    from swaa_sglang.config import PRESETS, preset_config

    rows = {r["setting"]: r for r in e2e["rows"]}
    n = _num_layers(e2e["meta"]["model"])
    if n is None or "vanilla" not in rows:
        return []
    refs = _sliding_references(list(rows), n)
    van = _cells(rows["vanilla"])
    out = []
    for name, r in rows.items():
        if name not in PRESETS:
            continue
        c = preset_config(name)
        full = sum(not c.is_sliding(i) for i in range(n))
        ref = refs.get((c.sliding_window_size, c.keep_first))
        if not 0 < full < n or ref is None:
            continue
        sld = _cells(rows[ref])
        f = full / n
        for s in r["single"]:
            t = s["prompt_tokens"]
            if t in van and t in sld:
                est = f * van[t]["ttft_s"] + (1 - f) * sld[t]["ttft_s"]
                out.append({"setting": name, "reference": ref, "prompt_tokens": t, "full_layers": full, "num_layers": n,
                            "measured_s": s["ttft_s"], "estimate_s": est, "bound": van[t]["ttft_s"] / est})
    return out


def layer_mix_markdown(e2e: dict) -> list[str]:
    rows = layer_mix_estimate(e2e)
    if not rows:
        return []
    lines = ["Layer mix: full layers at vanilla's cost, sliding ones at the cost of the all-sliding preset "
             "with the same window and sinks (estimate = f x vanilla + (1 - f) x sliding; its speed-up is "
             "what the mix can reach):", "",
             "| setting | prompt | full layers | sliding cost from | TTFT s | estimate s | measured / estimate "
             "| speed-up bound |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {_k(r['prompt_tokens'])} | {r['full_layers']}/{r['num_layers']} | "
                     f"{r['reference']} | "
                     f"{r['measured_s']:.3f} | {r['estimate_s']:.3f} | {r['measured_s'] / r['estimate_s']:.3f} | "
                     f"{r['bound']:.2f}x |")
    return lines + [""]


def plot(ops: Optional[dict], e2e: Optional[dict], out: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install 'swaa-sglang[bench]')")
        return []
    written = []
    if ops:
        pre = [r for r in ops["rows"] if r["kind"] == "prefill"]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for backend in sorted({r.get("backend", "fa2") for r in pre}):
            rs = [r for r in pre if r.get("backend", "fa2") == backend]
            n = [r["tokens"] for r in rs]
            ax.plot(n, [r["full_ms"] for r in rs], "o-", label=f"full causal ({backend})")
            ax.plot(n, [r["window_ms"] for r in rs], "s--", label=f"window only ({backend})")
            ax.plot(n, [min(r["swaa_ms"], r.get("swaa_fused_ms", r["swaa_ms"])) for r in rs], "^-",
                    label=f"SWAA window+sinks ({backend})")
        ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="ms per layer",
               title=f"Sliding-layer prefill, {ops['meta']['gpu']}")
        ax.set_xticks([r["tokens"] for r in pre if r.get("backend", "fa2") == pre[0].get("backend", "fa2")])
        ax.set_xticklabels([_k(r["tokens"]) for r in pre if r.get("backend", "fa2") == pre[0].get("backend", "fa2")])
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{out}_ops.png", dpi=120)
        plt.close(fig)
        written.append(f"{out}_ops.png")
    if e2e:
        from matplotlib.ticker import NullFormatter

        # curves per setting, then the speed-ups over vanilla at the longest prompt as bars: with nine
        # settings the curves crowd together, the bars still read at a glance
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.3))
        for r in e2e["rows"]:
            n = [s["prompt_tokens"] for s in r["single"]]
            a1.plot(n, [s["ttft_s"] for s in r["single"]], "o-", label=r["setting"])
            a2.plot(n, [s["decode_tok_s"] for s in r["single"]], "o-", label=r["setting"])
        for a, ylabel, title in ((a1, "seconds", "time to first token"), (a2, "tokens/s", "decode, one request")):
            a.set(xscale="log", xlabel="prompt tokens", ylabel=ylabel, title=title)
            ticks = [s["prompt_tokens"] for s in e2e["rows"][0]["single"]]
            a.set_xticks(ticks)
            a.set_xticklabels([_k(t) for t in ticks])
            a.xaxis.set_minor_formatter(NullFormatter())
        a1.set_yscale("log")
        a2.legend(fontsize=7, loc="best")
        ups = e2e_speedups(e2e)
        if ups:
            names = [u["setting"] for u in ups]
            y = range(len(names))
            for shift, key, label in ((-0.2, "ttft", "TTFT"), (0.2, "decode", "decode tok/s")):
                bars = a3.barh([i + shift for i in y], [u[key] for u in ups], height=0.4, label=label)
                a3.bar_label(bars, fmt="%.2fx", fontsize=7, padding=2)
            a3.margins(x=0.12)  # room for the labels
            a3.set_ylim(max(len(names), 3) - 0.5, -0.5)  # top down; one or two settings keep slim bars
            a3.axvline(1.0, color="gray", lw=0.8)
            a3.set_yticks(list(y))
            a3.set_yticklabels(names, fontsize=8)
            at = {u["prompt_tokens"] for u in ups}
            a3.set(xlabel="x vanilla", title="speed-up over vanilla at " + (_k(at.pop()) if len(at) == 1 else
                                                                          "each setting's longest prompt"))
            a3.legend(fontsize=7)
        else:
            a3.set_axis_off()
        fig.suptitle(f"{Path(e2e['meta']['model']).name} shape, {e2e['meta']['gpu']}, {e2e['meta']['date']}")
        fig.tight_layout()
        fig.savefig(f"{out}_e2e.png", dpi=120)
        plt.close(fig)
        written.append(f"{out}_e2e.png")
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", help="JSON from bench_attention_ops.py")
    p.add_argument("--e2e", help="JSON from bench_e2e.py")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.md and PNGs")
    a = p.parse_args()
    if not (a.ops or a.e2e):
        p.error("give --ops and/or --e2e")
    ops = json.loads(Path(a.ops).read_text()) if a.ops else None
    e2e = json.loads(Path(a.e2e).read_text()) if a.e2e else None
    lines = ["# Speed: SWAA against vanilla SGLang / FlashInfer", ""]
    if ops:
        lines += ops_markdown(ops)
    if e2e:
        lines += e2e_markdown(e2e)
    pngs = plot(ops, e2e, a.out)
    lines += [f"![{Path(x).stem}]({Path(x).name})" for x in pngs]
    Path(f"{a.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {a.out}.md", *pngs)


if __name__ == "__main__":
    main()
