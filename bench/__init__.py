"""Load and throughput benchmarks (run by `make bench`, never by the tests)."""
