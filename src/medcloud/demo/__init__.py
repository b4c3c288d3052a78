"""Small real MONAI bundles and synthetic data for the demo mode, the tests and the benchmarks."""
