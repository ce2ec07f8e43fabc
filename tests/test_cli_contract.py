"""The contract of every command line, table-driven: for each careless-user case, the exit status, no traceback,
every input byte-identical afterwards, and no file left behind."""

from __future__ import annotations

import hashlib
import importlib
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

# (case, command module, argv built from the work folder's files, expected exit status)
Case = tuple[str, str, Callable[[dict[str, Path]], list[str]], int]
CASES: list[Case] = [
    ("check_target --json at the input", "passes.check_target", lambda f: [f["m"], "--target", "cpu", "--json", f["m"]], 2),
    ("evaluate --json at the input", "runtime.evaluate", lambda f: [f["m"], "--data", f["data"], "--json", f["m"]], 2),
    ("evaluate --out-dir names a file", "runtime.evaluate", lambda f: [f["m"], "--data", f["data"], "--out-dir", f["note"]], 2),
    ("bench --json at the input", "runtime.bench", lambda f: [f["m"], "--json", f["m"]], 2),
    ("parity --json at the reference", "runtime.parity", lambda f: [f["m"], f["m2"], "--data", f["data"], "--json", f["m"]], 2),
    ("parity --save-dir names a file", "runtime.parity", lambda f: [f["m"], f["m2"], "--data", f["data"], "--save-dir", f["note"]], 2),
    ("prune_torch --json at the input", "models.prune_torch", lambda f: [f["m"], "--json", f["m"]], 2),
    ("export -o at the --weights file", "exporters.export", lambda f: ["--model", "mobilevit_xxs", "--weights", f["note"], "-o", f["note"]], 2),
    ("simplify --report at -o", "passes.simplify", lambda f: [f["m"], "-o", f["out"], "--report", f["out"]], 2),
    ("prune_heads -o at the input via a symlink", "passes.prune_heads", lambda f: [f["m"], "-o", f["link"], "--ratio", "0.5"], 2),
    ("prune_heads -o at a hard link of the input", "passes.prune_heads", lambda f: [f["m"], "-o", f["hard"], "--ratio", "0.5"], 2),
    ("prune_heads -o names a folder", "passes.prune_heads", lambda f: [f["m"], "-o", f["data"], "--ratio", "0.5"], 2),
    ("prune_heads --ratio out of range", "passes.prune_heads", lambda f: [f["m"], "-o", f["out"], "--ratio", "1.5"], 2),
    ("slice_channels --ratio 1", "passes.slice_channels", lambda f: [f["m"], "-o", f["out"], "--ratio", "1"], 2),
    ("compress --target-flops 2", "passes.compress", lambda f: [f["m"], "-o", f["out"], "--target-flops", "2"], 2),
    ("prune_heads on a corrupt model", "passes.prune_heads", lambda f: [f["bad"], "-o", f["out"], "--ratio", "0.5"], 1),
    ("check_target on a corrupt model", "passes.check_target", lambda f: [f["bad"], "--target", "cpu"], 1),
    ("prune_heads on a model with no attention", "passes.prune_heads", lambda f: [f["cnn"], "-o", f["out"], "--keep", "1"], 1),
    ("parity on a corrupt candidate", "runtime.parity", lambda f: [f["m"], f["bad"], "--data", f["data"], "--no-save"], 1),
    ("parity of models with other class counts", "runtime.parity", lambda f: [f["m"], f["m5"], "--data", f["data"], "--no-save"], 1),
    ("evaluate a corrupt model", "runtime.evaluate", lambda f: [f["bad"], "--data", f["data"]], 1),
    ("bench a corrupt model", "runtime.bench", lambda f: [f["bad"]], 1),
    ("prune_torch on a corrupt model", "models.prune_torch", lambda f: [f["bad"]], 1),
    ("pipeline --only an unknown stage", "runtime.pipeline", lambda f: ["--run", f["m"].parent / "run", "--only", "bogus"], 2),
    ("pipeline --target-flops 2", "runtime.pipeline", lambda f: ["--run", f["m"].parent / "run", "--target-flops", "2"], 2),
    ("compress --target-latency-of a corrupt model", "passes.compress", lambda f: [f["m"], "-o", f["out"], "--target-latency-of", f["bad"]], 1),
    ("frontier --seeds 0", "runtime.frontier", lambda f: ["--run", f["m"].parent / "fr", "--seeds", "0"], 2),
    ("frontier --ablations unknown", "runtime.frontier", lambda f: ["--run", f["m"].parent / "fr", "--ablations", "dropout"], 2),
    ("bundle --force over a folder of the user's files", "runtime.bundle", lambda f: [f["m"], "--target", "cpu", "-o", f["mine"], "--force"], 1),
    ("synthetic --force over a folder of the user's files", "models.synthetic", lambda f: [f["mine"], "--train", "1", "--val", "1", "--force"], 1),
]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, exported) -> dict[str, Path]:
    import numpy as np
    from onnx import helper, numpy_helper

    from models.synthetic import main as synthetic

    root = tmp_path_factory.mktemp("contract")
    files = {"m": root / "model.onnx", "m2": root / "other.onnx", "note": root / "notes.txt", "out": root / "o.onnx"}
    shutil.copy(exported("mobilevit_xxs", size=64), files["m"])
    shutil.copy(exported("mobilevit_xxs", size=64), files["m2"])
    files["m5"] = root / "five_classes.onnx"
    shutil.copy(exported("mobilevit_xxs", size=64, num_classes=5), files["m5"])
    files["note"].write_text("my notes\n")
    files["mine"] = root / "mine"
    files["mine"].mkdir()
    (files["mine"] / "checkpoint.pt").write_bytes(b"a training run")
    files["bad"] = root / "bad.onnx"
    files["bad"].write_bytes(files["m"].read_bytes()[:5000])
    files["cnn"] = root / "cnn.onnx"
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])
    onnx.save(helper.make_model(helper.make_graph([conv], "cnn", [x], [y], [w])), str(files["cnn"]))
    files["link"] = root / "link.onnx"
    files["link"].symlink_to(files["m"])
    files["hard"] = root / "hard.onnx"
    files["hard"].hardlink_to(files["m"])
    files["data"] = root / "data"
    assert synthetic([str(files["data"]), "--train", "2", "--val", "2", "--size", "64"]) == 0
    return files


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("name", "module", "argv", "code"), CASES, ids=[c[0] for c in CASES])
def test_cli_contract(work: dict[str, Path], capsys, name: str, module: str, argv, code: int) -> None:
    root = work["m"].parent
    before = _snapshot(root)
    main = importlib.import_module(module).main
    try:
        got = main([str(a) for a in argv(work)])
    except SystemExit as exc:  # argparse's usage errors
        got = exc.code
    out = capsys.readouterr()
    assert got == code, (name, out.out[-500:], out.err[-500:])
    assert "Traceback" not in out.out + out.err, name
    assert "internal error" not in out.err, f"{name}: an unexpected exception reached the boundary: {out.err}"
    assert out.err.strip(), f"{name}: no message"
    assert _snapshot(root) == before, f"{name}: files changed or were left behind"


def test_train_refuses_another_runs_folder(work: dict[str, Path], tmp_path: Path, capsys) -> None:
    """`models.train --out` naming a folder that holds a run: refused without --resume or --force."""
    from models.train import main as train

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"another run's checkpoint")
    before = (out / "checkpoint.pt").read_bytes()
    args = ["--data", str(work["data"]), "--out", str(out), "--steps", "1", "--batch-size", "2", "-q"]
    assert train(args) == 2
    assert "--resume" in capsys.readouterr().err and (out / "checkpoint.pt").read_bytes() == before
    assert train([*args, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "not a readable torch file" in err and "Traceback" not in err


# every command that is not a pass: `--help` answers without importing torch (seconds) or onnxruntime, and every
# option says what it does and what it defaults to
HELP_COMMANDS = [
    ("exporters.export", []),
    ("models.train", []),
    ("models.distill", []),
    ("models.synthetic", []),
    ("runtime.evaluate", []),
    ("runtime.parity", []),
    ("runtime.bundle", []),
    ("runtime.pipeline", []),
    ("runtime.trt", []),
    ("runtime.trt", ["build"]),
]
HEAVY = ("torch", "torchvision", "timm", "onnxruntime")


@pytest.mark.parametrize(("module", "sub"), HELP_COMMANDS, ids=[" ".join([m, *s]) for m, s in HELP_COMMANDS])
def test_help_imports_no_heavy_module(module: str, sub: list[str]) -> None:
    """`python -X importtime -m MODULE --help`: exit 0, a usage text, and none of torch/timm/onnxruntime imported
    (the time itself is not tested: machines are noisy)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *sub, "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:200]
    # importtime lines: "import time: self | cumulative | <indent>name"
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & set(HEAVY), f"{module} --help imports {sorted(imported & set(HEAVY))}"


def _actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif not isinstance(action, argparse._HelpAction):
            yield parser, action


@pytest.mark.parametrize("module", sorted({m for m, _ in HELP_COMMANDS}))
def test_every_option_has_help_with_its_default(module: str) -> None:
    import argparse

    parser = importlib.import_module(module)._parser()
    for owner, action in _actions(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip() and action.help is not argparse.SUPPRESS, f"{module} {name}: no help"
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and action.default is not False:
            shown = owner._get_formatter()._get_help_string(action)  # the help as printed, before % formatting
            assert "default" in shown, f"{module} {name}: the help does not show its default {action.default!r}"
