"""Benchmarks, run with `python -m bench` (every bench/bench_*.py module's main())."""
