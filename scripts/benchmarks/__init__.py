"""The benchmarks of scripts/bench.py, one module per subcommand group."""
