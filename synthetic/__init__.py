"""Generated images for tests and benchmarks: MNIST digits rendered as photos, scans and drawings
(realistic), whole numbers composed of them (realistic_numbers). Nothing here is imported by
inference.py or app.py."""
