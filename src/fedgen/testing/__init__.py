"""Harnesses for tests and benchmarks (never imported by the package): a Flower deployment on
loopback, Flower apps driven in one process, the dummy task and tiny configs."""
