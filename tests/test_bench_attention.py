"""The attention bench times grouped_bmm and sdpa on the run's three packed layouts at
SmolLM2's shapes, and the two agree there (the bench prints the same difference)."""

from __future__ import annotations

import math

from bench import bench_attention


def test_attention_bench_compares_implementations_that_agree(monkeypatch, capsys):
    monkeypatch.setattr(bench_attention, "REPEATS", 1)
    monkeypatch.setattr(bench_attention, "CALLS", 1)
    monkeypatch.setenv("EAPO_BENCH_ATTENTION", "sdpa")  # grouped_bmm, the reference, is added
    results = bench_attention.main()
    assert set(results) == {"sft", "preference K=3", "score"}
    for workload, variants in results.items():
        assert list(variants) == ["grouped_bmm", "sdpa"], workload
        # bf16 outputs of unit-scale values: a few units in the last place, not a wrong mask
        diff = variants["sdpa"]["max_abs_diff"]
        assert math.isfinite(diff) and diff < 0.05, (workload, variants)
        assert all(v["seconds"] > 0 for v in variants.values())
    printed = capsys.readouterr().out
    assert "score" in printed and "vs grouped_bmm" in printed


def test_segments_pack_titles_after_a_left_padded_prompt():
    seg = bench_attention.segments("score", seed=1)
    assert seg.shape[0] == 4
    for row in seg:
        prompt = (row == 0).nonzero()[0]
        assert (row[:prompt[0]] == -1).all()  # left padding only before the prompt
        titles = row[prompt[-1] + 1:]
        real = titles[titles > 0]
        assert sorted(set(real)) == list(range(1, 22))
        assert (real[1:] >= real[:-1]).all()  # titles 1..21 in order, each contiguous
    sft = bench_attention.segments("sft", seed=1)
    assert set(sft.flatten()) <= {-1, 0} and (sft[:, -1] == 0).all()
