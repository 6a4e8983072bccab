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


@pytest.fixture
def rerun(tmp_path, two_lanes):
    """Lane b's ``balanced`` run again on the same samples, in a later file, all fully correct."""
    c = _result(tmp_path / "ruler_x_c_h200.json.gz", ["balanced"],
                [_rec("balanced", t, n, i, 1.0) for t in ("vt", "cwe") for n in (4096, 32768) for i in range(4)])
    return (*two_lanes, c)


def test_exclude_per_file_lets_a_rerun_replace_an_invalid_run(tmp_path, rerun):
    md = tmp_path / "r.md"
    with pytest.raises(SystemExit, match="also in an earlier file"):
        rr.main([*map(str, rerun), "--md", str(md)])
    hf = tmp_path / "hf.json"
    hf.write_text(json.dumps({"records": [_rec("balanced", "vt", 4096, 3, 0.0)]}))
    assert rr.main([*map(str, rerun), "--exclude", "balanced@b.json=served wrongly", "--hf", str(hf),
                    "--md", str(md)]) == 0
    text = md.read_text()
    assert "Left out: `balanced` from `b.json` (served wrongly)" in text
    assert "| `balanced` | 1.00 (8/8) | 1.00 (8/8) |" in text.split("**mean over tasks**")[1]  # the rerun's only
    # the HF reference meets both runs of that sample: the rerun's row and the left-out one
    assert "| `balanced` | 1 | 0 | 1 | 1.00 | 0.00 |" in text
    assert "| `balanced` (left out from `b.json`) | 1 | 1 | 1 | 0.00 | 0.00 |" in text
    merged = rr.load([str(p) for p in rerun], drop={("b.json", "balanced")})
    assert len(merged["dropped"]) == 16 and {r["left_out_from"] for r in merged["dropped"]} == {"b.json"}
    # the plain form still leaves the setting out of every file
    assert rr.main([*map(str, rerun), "--exclude", "balanced@b.json=served wrongly", "--exclude", "balanced=all",
                    "--md", str(md)]) == 0
    assert "| `balanced` |" not in md.read_text()


def test_exclude_per_file_names_the_flag_on_bad_file_or_setting(capsys, rerun):
    with pytest.raises(SystemExit):
        rr.main([*map(str, rerun), "--exclude", "balanced@nope.json=x"])
    err = capsys.readouterr().err
    assert "--exclude: 'nope.json' is not an input file; allowed: a.json, b.json, ruler_x_c_h200.json.gz" in err
    with pytest.raises(SystemExit):
        rr.main([*map(str, rerun), "--exclude", "full@b.json=x"])
    err = capsys.readouterr().err
    assert "--exclude: no records for setting 'full' in b.json; settings there: balanced" in err
    with pytest.raises(SystemExit):
        rr.main([*map(str, rerun), "--exclude", "balanced@=x"])
    assert "--exclude: expected NAME=REASON or NAME@FILE=REASON" in capsys.readouterr().err


def test_sign_test_p_values():
    assert rr.sign_test(6, 0) == rr.sign_test(0, 6) == 2 / 64
    assert rr.sign_test(3, 3) == rr.sign_test(0, 0) == rr.sign_test(1, 0) == 1.0
    assert rr.sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109375


def test_paired_counts_wins_and_losses_on_shared_samples(tmp_path):
    ref = [1.0, 1.0, 0.0, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0]
    new = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # 6 wins (2, 4, 6-9), 1 loss (1)
    a = _result(tmp_path / "a.json", ["full", "balanced", "sink100-2k"],
                [_rec("full", "vt", 4096, i, x) for i, x in enumerate(ref)]
                + [_rec("balanced", "vt", 4096, i, x) for i, x in enumerate(new)]
                + [_rec("balanced", "vt", 4096, 99, 1.0)]  # not answered by full: not paired
                + [_rec("sink100-2k", "vt", 4096, i, x) for i, x in enumerate(ref[:4])])
    merged = rr.load([str(a)])
    rows = rr.paired_rows(merged, "full", ["full", "balanced", "sink100-2k"], 4096)
    assert [r["setting"] for r in rows] == ["balanced", "sink100-2k"]
    assert (rows[0]["n"], rows[0]["wins"], rows[0]["losses"]) == (10, 6, 1)
    assert rows[0]["mean_diff"] == pytest.approx((sum(new) - sum(ref)) / 10)
    assert rows[0]["p"] == pytest.approx(2 * (1 + 7) / 128)  # 0.125
    assert (rows[1]["n"], rows[1]["wins"], rows[1]["losses"], rows[1]["p"], rows[1]["mean_diff"]) == (4, 0, 0, 1.0, 0.0)
    md = tmp_path / "r.md"
    assert rr.main([str(a), "--paired", "full", "--md", str(md)]) == 0
    text = md.read_text()
    assert "Paired against `full` at 4K" in text
    assert "| `balanced` | 10 | +0.450 | 6 | 1 | 0.125 |" in text
    with pytest.raises(SystemExit, match="--paired: no records for setting 'even' at length 4096; "
                                         "settings present there: balanced, full, sink100-2k"):
        rr.paired_rows(merged, "even", ["balanced"], 4096)
