"""Tests of ``runtime.parity``: identical models agree, a broken candidate fails with exit 1, the saved Polygraphy JSON
files load in ``polygraphy run``, bad input is a clear error.

The models are the shared perturbed-random-init export (``exported``), not trained ones: what is checked here is
the comparison machinery (agreement, mIoU bookkeeping, verdict, files), which does not depend on training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from runtime.parity import ParityConfig, compare_models, main

POLYGRAPHY = Path(sys.executable).with_name("polygraphy")


def _flip_classifier(src: Path, dst: Path) -> None:
    """Copy ``src`` with the sign of the classifier conv weight flipped (the last Conv before the output)."""
    from passes.int8 import classifier_convs

    model = onnx.load(str(src))
    (cls,) = classifier_convs(model)
    weight = next(n for n in model.graph.node if n.name == cls).input[1]
    for init in model.graph.initializer:
        if init.name == weight:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, str(dst))


def _polygraphy_run(candidate: Path, save_dir: Path, atol: float, rtol: float) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(POLYGRAPHY),
        "run",
        str(candidate),
        "--onnxrt",
        "--load-inputs",
        str(save_dir / "inputs.json"),
        "--load-outputs",
        str(save_dir / "ref_outputs.json"),
        "--atol",
        str(atol),
        "--rtol",
        str(rtol),
        "--check-error-stat",
        "quantile",
        "--error-quantile",
        "0.99",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_identical_models_agree_and_polygraphy_reproduces(exported, syn_tiny: Path, tmp_path: Path) -> None:
    """Same file twice: 100 % agreement, equal mIoU, zero error, verdict PASS; the JSON reruns in polygraphy."""
    model = exported(opset=17)
    save = tmp_path / "same"
    code = main(
        [str(model), str(model), "--data", str(syn_tiny), "--save-dir", str(save), "--save-count", "2"]
        + ["--json", str(tmp_path / "p.json"), "--no-progress", "--check", "both"]
    )
    assert code == 0
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["agreement"] == 100.0 and result["images"] == 6 and result["pixels"] == 6 * 64 * 64
    assert result["miou_reference"] == result["miou_candidate"] and result["miou_drop_points"] == 0.0
    assert result["outputs"]["logits"]["max_abs"] == 0.0 and result["passed"]
    assert result["data"]["synthetic"] is True
    assert {"inputs.json", "ref_outputs.json", "cand_outputs.json"} <= {p.name for p in save.iterdir()}
    inputs = json.loads((save / "inputs.json").read_text())
    assert len(inputs) == 2  # --save-count
    proc = _polygraphy_run(model, save, atol=1e-5, rtol=1e-5)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASSED" in proc.stdout + proc.stderr


def test_broken_candidate_fails_with_exit_1(exported, syn_tiny: Path, tmp_path: Path, capsys) -> None:
    """Classifier weight sign flipped: agreement far below 99.5 %, exit 1; polygraphy on the saved JSON fails too."""
    ref = exported(opset=17)
    broken = tmp_path / "broken.onnx"
    _flip_classifier(ref, broken)
    save = tmp_path / "broken_parity"
    code = main([str(ref), str(broken), "--data", str(syn_tiny), "--save-dir", str(save), "--no-progress"])
    assert code == 1
    out = capsys.readouterr().out
    assert "check agreement: pixel agreement >= 99.5 %" in out and "verdict: FAIL" in out
    assert "polygraphy run" in out  # the command to rerun it
    proc = _polygraphy_run(broken, save, atol=1e-2, rtol=1e-2)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def test_library_result_and_thresholds(exported, syn_tiny: Path, tmp_path: Path) -> None:
    """The thresholds are flags: the same broken pair passes when the bar is set below what it measures."""
    ref = exported(opset=17)
    broken = tmp_path / "broken.onnx"
    _flip_classifier(ref, broken)
    strict = compare_models(ref, broken, syn_tiny, ParityConfig(progress=False, save_count=0, check="both"))
    assert not strict.passed and strict.agreement < 50.0
    assert strict.outputs["logits"]["max_abs"] > 0.1 and strict.outputs["logits"]["mean_abs"] > 0.0
    assert set(strict.checks) == {"agreement", "miou_drop"}
    assert strict.miou_drop_points == pytest.approx(strict.miou_reference - strict.miou_candidate)
    lax = compare_models(
        ref,
        broken,
        syn_tiny,
        ParityConfig(progress=False, save_count=0, min_agreement=strict.agreement - 1.0, check="agreement"),
    )
    assert lax.passed and set(lax.checks) == {"agreement"}
    # an FP16-I/O candidate gets float16 inputs; its agreement with the FP32 model stays high
    from passes.fp16 import FP16Config, convert_fp16

    fp16, _ = convert_fp16(onnx.load(str(ref)), FP16Config(fp16_io=True))
    fp16_path = tmp_path / "fp16io.onnx"
    onnx.save(fp16, str(fp16_path))
    res = compare_models(ref, fp16_path, syn_tiny, ParityConfig(progress=False), save_dir=tmp_path / "io16")
    assert res.passed and res.agreement >= 99.5
    from polygraphy.json import load_json

    saved = load_json(str(tmp_path / "io16" / "inputs.json"))
    assert len(saved) == 4 and saved[0]["image"].dtype == np.float16 and saved[0]["image"].shape == (1, 3, 64, 64)


def test_bad_inputs(exported, syn_tiny: Path, tmp_path: Path, capsys) -> None:
    """Missing data or model, masks missing for the mIoU rule, different input sizes: exit 1 with a message."""
    model = str(exported(opset=17))
    assert main([model, model, "--data", str(tmp_path / "nothing"), "--no-progress", "--no-save"]) == 1
    assert "no such data folder" in capsys.readouterr().err
    assert main([model, str(tmp_path / "missing.onnx"), "--data", str(syn_tiny), "--no-save"]) == 1
    assert "not found" in capsys.readouterr().err
    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "IMG" / "val").mkdir(parents=True)
    for p in sorted((syn_tiny / "IMG" / "val").iterdir())[:2]:
        (unlabelled / "IMG" / "val" / p.name).write_bytes(p.read_bytes())
    args = [model, model, "--data", str(unlabelled), "--no-progress", "--no-save"]
    assert main([*args, "--check", "miou"]) == 1
    assert "needs ground-truth masks" in capsys.readouterr().err
    assert main(args) == 0  # agreement needs no masks
    capsys.readouterr()
    other = str(exported(opset=17, size=96))
    assert main([model, other, "--data", str(syn_tiny), "--no-save"]) == 1
    assert "different input sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([model, model, "--data", str(syn_tiny), "--limit", "0"])
    assert exc.value.code == 2
