"""runtime.bundle: the device folder (trtexec script per target, Python 3.6 scripts, infer.py on onnxruntime)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _helpers_deploy_rt import conv_model, qdq_model
from PIL import Image

from fileformat.targets import get_target
from runtime.bundle import SCRIPTS, BundleConfig, BundleError, check_py36, main, trtexec_args, write_bundle

COMMON = [
    "--onnx=model.onnx",
    "--saveEngine=model.engine",
    "--timingCacheFile=timing.cache",
    "--exportTimes=times.json",
    "--dumpProfile",
    "--exportProfile=profile.json",
    "--separateProfileRun",
]


@pytest.fixture(scope="module")
def nano_model(exported) -> Path:
    """The opset-13 export without fused attention: what ``--target jetson-nano`` produces."""
    return exported(opset=13, fused_attn=False)


@pytest.fixture(scope="module")
def nano_bundle(nano_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "nano"
    assert main([str(nano_model), "--target", "jetson-nano", "-o", str(out)]) == 0
    return out


def _flags(script: str) -> list[str]:
    return [line.strip().rstrip("\\").strip() for line in script.splitlines() if line.strip().startswith("--")]


def test_nano_bundle_files_and_trtexec_flags(nano_bundle: Path) -> None:
    names = sorted(p.name for p in nano_bundle.iterdir())
    assert names == sorted(
        [
            "model.onnx",
            "build_engine.sh",
            "build_engine.py",
            "fp32_layers.json",
            "infer.py",
            "config.json",
            "check_target.json",
            "README.md",
            ".vitseg-manifest.json",  # what --force may replace later
        ]
    )
    script = (nano_bundle / "build_engine.sh").read_text()
    flags = _flags(script)
    assert flags == COMMON[:2] + ["--fp16", "--workspace=512"] + COMMON[2:]  # TensorRT 8.2 syntax, no --int8
    assert "--memPoolSize" not in script and "--shapes" not in script
    assert subprocess.run(["bash", "-n", str(nano_bundle / "build_engine.sh")], check=False).returncode == 0
    cfg = json.loads((nano_bundle / "config.json").read_text())
    assert cfg["input_shape"] == [1, 3, 64, 64] and cfg["input_name"] == "image" and len(cfg["classes"]) == 14
    sel = json.loads((nano_bundle / "fp32_layers.json").read_text())
    assert len(sel["layernorm"]["nodes"]) == 21 * 9 and len(sel["softmax"]["nodes"]) == 9
    assert json.loads((nano_bundle / "check_target.json").read_text())["compatible"] is True
    readme = (nano_bundle / "README.md").read_text()
    assert "polygraphy run model.onnx --trt --onnxrt" in readme and "bash build_engine.sh" in readme
    assert "ESTIMATE" in readme and "python3 infer.py" in readme


def test_orin_bundle_uses_84_plus_flags(nano_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "orin"
    write_bundle(nano_model, out, BundleConfig(target="jetson-orin"))
    script = (out / "build_engine.sh").read_text()
    assert _flags(script) == COMMON[:2] + ["--fp16", "--memPoolSize=workspace:2048"] + COMMON[2:]
    assert subprocess.run(["bash", "-n", str(out / "build_engine.sh")], check=False).returncode == 0


def test_trtexec_args_int8_and_shapes() -> None:
    nano, orin = get_target("jetson-nano"), get_target("jetson-orin")
    kw = {"input_name": "image", "input_shape": [2, 3, 64, 64], "dynamic_batch": True}
    assert "--int8" in trtexec_args(orin, quantized=True, **kw)
    assert "--int8" not in trtexec_args(orin, quantized=False, **kw)  # no placeholder-scale INT8 builds
    assert "--int8" not in trtexec_args(nano, quantized=True, **kw)  # the Nano has no INT8
    assert "--shapes=image:2x3x64x64" in trtexec_args(nano, quantized=False, **kw)
    assert "--workspace=100" in trtexec_args(nano, quantized=False, workspace_mb=100, **kw)


def test_dynamic_batch_model_gets_shapes(tmp_path: Path) -> None:
    src = tmp_path / "dyn.onnx"
    onnx.save(conv_model(batch="N", size=32), str(src))
    result = write_bundle(src, tmp_path / "b", BundleConfig(target="jetson-nano", batch=4))
    assert "--shapes=image:4x3x32x32" in result.trtexec
    assert json.loads((tmp_path / "b" / "config.json").read_text())["input_shape"] == [4, 3, 32, 32]


def test_qdq_model_on_orin_gets_int8(tmp_path: Path) -> None:
    src = tmp_path / "q.onnx"
    onnx.save(qdq_model(), str(src))
    assert "--int8" in write_bundle(src, tmp_path / "orin", BundleConfig(target="jetson-orin")).trtexec
    nano = write_bundle(src, tmp_path / "nano", BundleConfig(target="jetson-nano"))
    assert "--int8" not in nano.trtexec and "int8-no-speedup" in (tmp_path / "nano" / "README.md").read_text()


def test_scripts_are_python36(nano_bundle: Path) -> None:
    for name in ("build_engine.py", "infer.py"):
        src = (nano_bundle / name).read_text()
        assert check_py36(src) == [], name
        assert src == (SCRIPTS / name).read_text()  # the shipped copy is the tested file
    assert check_py36("if (n := 3):\n    pass\n")[0].startswith("line 1")
    assert check_py36("x = 1\nprint(f'{x=}')\n")
    assert check_py36("from __future__ import annotations\n")
    assert check_py36("from dataclasses import dataclass\n")
    assert check_py36("import subprocess\nsubprocess.run(['ls'], capture_output=True)\n")
    assert check_py36("def f(a, /):\n    pass\n")


def test_infer_runs_with_onnxruntime(nano_bundle: Path, nano_model: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"a": rng.integers(0, 256, (80, 96, 3), dtype=np.uint8), "b": rng.integers(0, 256, (64, 64, 3), np.uint8)}
    for name, arr in arrays.items():
        Image.fromarray(arr).save(images / f"{name}.png")
    out = tmp_path / "masks"
    proc = subprocess.run(
        [sys.executable, str(nano_bundle / "infer.py"), str(images), "-o", str(out), "--warmup", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "timing.json"]
    timing = json.loads((out / "timing.json").read_text())
    assert timing["images"] == 2 and timing["backend"] == "onnxruntime"
    assert timing["fps"] == pytest.approx(1 / timing["mean_seconds_per_image"])
    assert timing["end_to_end_seconds_per_image"] >= timing["mean_seconds_per_image"] > 0
    from runtime.session import OnnxSegmenter

    expected = OnnxSegmenter(nano_model).predict([arrays["a"], arrays["b"]])
    for name, want in zip(("a", "b"), expected):
        mask = np.asarray(Image.open(out / f"{name}.png"))
        assert mask.shape == arrays[name].shape[:2] and mask.dtype == np.uint8
        assert np.array_equal(mask, want)  # same pre/post-processing as runtime.evaluate
    bad = subprocess.run(
        [sys.executable, str(nano_bundle / "infer.py"), str(tmp_path / "none"), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "not a folder" in bad.stdout


def test_build_engine_script_without_tensorrt(nano_bundle: Path, tmp_path: Path) -> None:
    script = str(nano_bundle / "build_engine.py")
    help_ = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=False)
    assert help_.returncode == 0 and "--fp32-layers" in help_.stdout
    bad = subprocess.run([sys.executable, script, "m.onnx", "-o", "x", "--fp32-layers", "gelu"], capture_output=True)
    assert bad.returncode == 2
    if importlib.util.find_spec("tensorrt") is None:
        cmd = [sys.executable, script, str(nano_bundle / "model.onnx"), "-o", "x.engine", "--fp16"]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
        assert run.returncode == 1 and "python3-libnvinfer" in run.stdout
        assert not (tmp_path / "x.engine").exists()


def test_build_engine_sh_names_trtexec_when_it_is_missing(nano_bundle: Path, tmp_path: Path) -> None:
    """Without trtexec on the PATH or at JetPack's place, build_engine.sh stops before building and says to set
    TRTEXEC=, on the terminal and in build_engine.log."""
    if shutil.which("trtexec") or Path("/usr/src/tensorrt/bin/trtexec").exists():
        pytest.skip("trtexec is installed here")
    copy = tmp_path / "bundle"
    shutil.copytree(nano_bundle, copy)
    env = {k: v for k, v in os.environ.items() if k != "TRTEXEC"}
    run = subprocess.run(["bash", str(copy / "build_engine.sh")], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 127 and "TRTEXEC=/path/to/trtexec" in run.stderr, run.stderr
    assert "TRTEXEC=/path/to/trtexec" in (copy / "build_engine.log").read_text()
    assert not (copy / "model.engine").exists()


def test_incompatible_model_is_refused_unless_allowed(exported, tmp_path: Path, capsys) -> None:
    o17 = exported(opset=17)
    out = tmp_path / "b"
    assert main([str(o17), "--target", "jetson-nano", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "LayerNormalization" in err and "--allow-incompatible" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing left behind
    assert main([str(o17), "--target", "jetson-nano", "-o", str(out), "--force"]) == 1  # --force: only replace
    assert main([str(o17), "--target", "jetson-nano", "-o", str(out), "--allow-incompatible"]) == 0
    assert "NOT compatible (written with --allow-incompatible)" in (out / "README.md").read_text()
    assert main([str(o17), "--target", "jetson-nano", "-o", str(out), "--allow-incompatible"]) == 2  # not empty


def test_existing_output_needs_force(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(conv_model(), str(src))
    out = tmp_path / "b"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(BundleError, match="not empty"):
        write_bundle(src, out, BundleConfig())
    assert (out / "old.txt").exists()
    with pytest.raises(BundleError, match=r"did not write \(old.txt\)"):  # --force never deletes foreign files
        write_bundle(src, out, BundleConfig(force=True))
    assert (out / "old.txt").read_text() == "old"
    (out / "old.txt").unlink()
    write_bundle(src, out, BundleConfig())
    write_bundle(src, out, BundleConfig(force=True))  # its own earlier output (the manifest says so) is replaced
    assert (out / "model.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "m.onnx"]  # no temp or old folders left
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(src, empty, BundleConfig())  # an empty folder is fine
    assert (empty / "infer.py").is_file()


def test_bad_inputs(tmp_path: Path) -> None:
    assert main([str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "b")]) == 1
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "m.onnx"), "--target", "jetson-tx2", "-o", str(tmp_path / "b")])
    assert exc.value.code == 2
    assert main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "no" / "such" / "b")]) == 1
