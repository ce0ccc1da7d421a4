"""scripts/benchmark.py's measurements: the training pipeline against a plain PyTorch loop, the
data loader against the model's consumption, each architecture's forward+backward speed, and the
time to scan a large folder. Every figure is a median of timed, synchronised repeats after a
warm-up; what is compared is measured side by side in one run (these machines are noisy)."""
