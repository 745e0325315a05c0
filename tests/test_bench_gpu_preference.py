"""The GPU preference bench runs end to end on the CPU with --tiny (bench/gpu_check.sh runs
the full-size one on a GPU)."""

from __future__ import annotations

import math

from bench.bench_gpu_preference import main, step_flops


def test_tiny_bench_runs_on_cpu(capsys):
    result = main(["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1"])
    assert result["finite"] and math.isfinite(result["loss"])
    assert result["tokens_per_s"] > 0 and result["tflops"] > 0
    assert result["mfu"] is None  # no peak known for a CPU
    assert 0 < result["trainable"] < result["params"]
    assert "tokens/s" in capsys.readouterr().out


def test_step_flops_counts_tokens_pairs_and_head_rows():
    from types import SimpleNamespace

    config = SimpleNamespace(hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=8, vocab_size=10)
    # One prompt of 3 tokens, completions of 1 and 2 tokens: 6 tokens, 3 head rows,
    # pairs 6 (prompt, causal) + (3 + 1) + (2 * 3 + 3) = 19.
    per_token = 2 * 16 + 2 * 4 * 2 + 3 * 4 * 8
    want = 2 * (2 * per_token * 6) + 3 * (4 * 4 * 19) + 2 * (2 * 4 * 10 * 3)
    assert step_flops(config, [[1, 2, 3]], [[[4], [5, 6]]]) == want
