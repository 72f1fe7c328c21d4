"""Small helpers shared by the CLI, the loops and the benchmarks."""
