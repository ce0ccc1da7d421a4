"""scripts/model_table.py (semseg.bench.architectures): one row per requested model config, with consistent numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from semseg.bench.architectures import measure

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "model_table.py"


def test_table_has_a_row_per_requested_model(tmp_path: Path):
    out = tmp_path / "table.md"
    args = ["--size", "64", "--repeats", "1", "--output", str(out), "--only", "FCN-32s", "SegFormer-B0"]
    subprocess.run([sys.executable, SCRIPT, *args], check=True, capture_output=True)
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [label.strip() for label, *_ in rows] == ["Model", "FCN-32s (ResNet-18)", "SegFormer-B0"]
    assert all(float(cell) > 0 for _, *cells in rows[1:] for cell in cells)


def test_measurements_follow_the_architectures():
    params32, flops32, latency = measure(["model=fcn", "model.variant=32s"], 64, 21, repeats=1)
    params8, flops8, _ = measure(["model=fcn", "model.variant=8s"], 64, 21, repeats=1)
    assert latency > 0
    # FCN-8s adds 1x1 score layers and 2x upsamplings on the stride-16 and stride-8 features.
    assert params8 > params32 and flops8 > flops32
    # ResNet-18's convolutions: 1.82 GFLOPs (multiply-adds) at 224x224, so about 2x that in FLOPs
    # scaled to 64x64, plus the fc6/fc7 head; a unit error would be off by orders of magnitude.
    assert 0.2 < flops32 < 0.5
