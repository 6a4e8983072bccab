"""benchmarks/render_ruler.py on hand-made quality_ruler results (CPU, fast): merging, tables with
full attention first, the comparison's Wilson intervals, HF agreement, speed-ups, the chart."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import render_ruler as rr  # noqa: E402
from niah.scoring import wilson  # noqa: E402

TASK = {"seed": 0, "split": "test", "essays_sha256": "abc"}


def _rec(setting, task, length, index, score, answer="x", sha=None):
    return {"setting": setting, "task": task, "length": length, "index": index, "score": score, "answer": answer,
            "prompt_sha256": sha or f"{task}{length}{index}", "window": 2048}


def _config(setting: str) -> dict:
    if setting == "full":
        return {}
    return {"sliding_window_size": 2048, "keep_first": 100, "non_sliding_layers": [1, 3] if setting == "balanced" else []}


def _result(path: Path, settings: list[str], records: list[dict], **task) -> Path:
    path.write_text(json.dumps({
        "date": "2026-12-03", "command": "quality_ruler.py ...", "machine": {"gpu": "H200"},
        "task": {**TASK, **task},
        "settings": {"2048": [{"name": s, "description": s, "config": _config(s), "resolved": None}
                              for s in settings]},
        "records": records}))
    return path


@pytest.fixture
def two_lanes(tmp_path):
    a = _result(tmp_path / "a.json", ["sink100-2k", "full"],
                [_rec("full", t, n, i, 1.0) for t in ("vt", "cwe") for n in (4096, 32768) for i in range(4)]
                + [_rec("sink100-2k", t, n, i, 1.0 if i == 0 else 0.5) for t in ("vt", "cwe") for n in (4096, 32768)
                   for i in range(4)])
    b = _result(tmp_path / "b.json", ["balanced"],
                [_rec("balanced", t, n, i, 1.0 if i < 3 else 0.0) for t in ("vt", "cwe") for n in (4096, 32768)
                 for i in range(4)])
    return a, b


def test_tables_merge_lanes_and_put_full_attention_first(two_lanes):
    merged = rr.load([str(p) for p in two_lanes])
    text = rr.task_tables(merged)
    vt = text.split("**vt**")[1].split("**cwe**")[0]
    rows = [line for line in vt.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["full", "sink100-2k", "balanced"]
    assert rows[0] == "| `full` | 1.00 (4/4) | 1.00 (4/4) |"
    assert rows[1] == "| `sink100-2k` | 0.62 (1/4) | 0.62 (1/4) |"  # (1 + 3 x 0.5) / 4
    mean = text.split("**mean over tasks**")[1]
    assert "| `balanced` | 0.75 (6/8) | 0.75 (6/8) |" in mean


def test_comparison_counts_and_intervals(two_lanes):
    merged = rr.load([str(p) for p in two_lanes])
    rows = rr.compare_rows(merged, ["balanced", "sink100-2k"], 32768)
    assert (rows[0]["all_correct"], rows[0]["n"]) == (6, 8) and rows[0]["wilson95"] == wilson(6, 8)
    assert rows[0]["full_layers"] == [1, 3]
    assert (rows[1]["all_correct"], rows[1]["n"]) == (2, 8) and rows[1]["full_layers"] == "none"
    assert rr.compare_rows(merged, ["full"], 32768)[0]["full_layers"] == "all"
    with pytest.raises(SystemExit, match="no records for setting 'even'"):
        rr.compare_rows(merged, ["even"], 32768)


def test_runs_of_other_samples_do_not_merge(tmp_path, two_lanes):
    other = _result(tmp_path / "c.json", ["full"], [_rec("full", "vt", 4096, 0, 1.0)], seed=1)
    with pytest.raises(SystemExit, match="task definition .* differs"):
        rr.load([str(two_lanes[0]), str(other)])


def test_hf_agreement_counts_same_scores_and_texts(two_lanes):
    merged = rr.load([str(p) for p in two_lanes])
    hf = {"records": [_rec("full", "vt", 4096, 0, 1.0, answer="x"), _rec("full", "vt", 4096, 1, 0.0, answer="y"),
                      _rec("balanced", "cwe", 4096, 3, 0.0, answer="x ")]}
    table = rr.hf_agreement(merged, hf)
    assert "| `full` | 2 | 1 | 1 | 1.00 | 0.50 |" in table
    assert "| `balanced` | 1 | 1 | 1 | 0.00 | 0.00 |" in table
    hf["records"][0]["prompt_sha256"] = "other"
    with pytest.raises(SystemExit, match="another prompt"):
        rr.hf_agreement(merged, hf)


def test_speedups_and_chart(tmp_path, two_lanes):
    e2e = tmp_path / "e2e.json"
    e2e.write_text(json.dumps({"rows": [
        {"setting": "vanilla", "single": [{"prompt_tokens": 131072, "ttft_s": 15.0}]},
        {"setting": "sink100-2k+noevict", "single": [{"prompt_tokens": 131072, "ttft_s": 2.5}]},
        {"setting": "balanced", "single": [{"prompt_tokens": 32768, "ttft_s": 1.0}]}]}))
    speed = rr.speedups([str(e2e)])
    assert speed == {"vanilla": 1.0, "sink100-2k": 6.0}
    png = tmp_path / "c.png"
    md = tmp_path / "r.md"
    assert rr.main([*map(str, two_lanes), "--speed", str(e2e), "--png", str(png), "--md", str(md)]) == 0
    assert png.stat().st_size > 10_000
    text = md.read_text()
    assert "Not in the chart (no 128K speed measured): balanced" in text  # its e2e row has no 128K figure
    assert rr.main([*map(str, two_lanes), "--speed", str(e2e), "--speed-as", "balanced=sink100-2k",
                    "--png", str(png), "--md", str(md)]) == 0
    assert "Not in the chart" not in md.read_text()


def test_exclude_leaves_a_setting_out_and_says_why(tmp_path, two_lanes):
    md = tmp_path / "r.md"
    assert rr.main([*map(str, two_lanes), "--exclude", "balanced=served wrongly", "--md", str(md)]) == 0
    text = md.read_text()
    assert "Left out: `balanced` (served wrongly)" in text and "| `balanced` |" not in text
    with pytest.raises(SystemExit):
        rr.main([*map(str, two_lanes), "--exclude", "nope=x"])


def test_gzipped_results_read_like_plain_ones(tmp_path, two_lanes):
    import gzip

    gz = tmp_path / "a.json.gz"
    gz.write_bytes(gzip.compress(two_lanes[0].read_bytes()))
    assert rr.load([str(gz)])["records"] == rr.load([str(two_lanes[0])])["records"]


def test_two_windows_or_two_models_do_not_merge(tmp_path):
    a = _result(tmp_path / "a.json", ["full"], [_rec("full", "vt", 4096, 0, 1.0), {**_rec("full", "vt", 4096, 1, 1.0),
                                                                                   "window": 512}])
    with pytest.raises(SystemExit, match=r"windows \[512, 2048\]"):
        rr.load([str(a)])
    b = _result(tmp_path / "b.json", ["full"], [_rec("full", "vt", 4096, 0, 1.0)])
    c = json.loads(b.read_text())
    c["runner"] = {"model_path": "/m/other-model"}
    (tmp_path / "c.json").write_text(json.dumps(c))
    with pytest.raises(SystemExit, match="task definition"):
        rr.load([str(b), str(tmp_path / "c.json")])


def test_speedups_prefer_the_bare_preset_and_skip_other_chunk_sizes(tmp_path):
    e2e = tmp_path / "e.json"
    e2e.write_text(json.dumps({"rows": [
        {"setting": "vanilla", "single": [{"prompt_tokens": 131072, "ttft_s": 12.0}]},
        {"setting": "sink100-2k+noevict", "single": [{"prompt_tokens": 131072, "ttft_s": 4.0}]},
        {"setting": "sink100-2k", "single": [{"prompt_tokens": 131072, "ttft_s": 3.0}]},
        {"setting": "balanced+chunk32768", "single": [{"prompt_tokens": 131072, "ttft_s": 1.0}]}]}))
    assert rr.speedups([str(e2e)]) == {"vanilla": 1.0, "sink100-2k": 4.0}
