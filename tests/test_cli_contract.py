"""The contract of every command line, table-driven: for each careless-user case, the exit status, one line on
stderr, no traceback, every input byte-identical afterwards, and no file left behind.

Two tables. ``UP_FRONT`` holds the cases that must be refused before any work: they run the way a user runs them
(``python -m MODULE ...``, through ``runpy``), all in one subprocess that never imports torch, and each must answer
in under :data:`UP_FRONT_SECONDS` with torch still unimported. ``CASES`` holds the rest (refusals that need a model
loaded or an onnxruntime session), run in this process. Then: ``--help`` of every command, timed against
``python -c pass``; the design card's own command; the synthetic generator's leftovers and folder modes."""

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
    ("frontier --run names a file", "runtime.frontier", lambda f: ["--run", f["note"]], 2),
    ("bundle --force over a folder of the user's files", "runtime.bundle", lambda f: [f["m"], "--target", "cpu", "-o", f["mine"], "--force"], 1),
    ("synthetic --force over a folder of the user's files", "models.synthetic", lambda f: [f["mine"], "--train", "1", "--val", "1", "--force"], 1),
]  # fmt: skip


# (case, command module, argv built from the work folder's files, exit status, what the one line must name)
UpFront = tuple[str, str, Callable[[dict[str, Path]], list[str]], int, str]
UP_FRONT: list[UpFront] = [
    # issue 30: an internal error where a usage error belongs
    ("synthetic --size 99999999", "models.synthetic", lambda f: [f["root"] / "s", "--size", "99999999"], 2, "--size"),
    ("synthetic --seed -1", "models.synthetic", lambda f: [f["root"] / "s", "--seed", "-1"], 2, "--seed"),
    ("prune_heads given a folder (.)", "passes.prune_heads", lambda f: [".", "--ratio", "0.5"], 2, "is a folder"),
    ("distill --feat-stages 9,9", "models.distill", lambda f: [*f["distill"], "--feat-stages", "9,9"], 2, "--feat-stages"),
    # exit 0 with a wrong or empty result
    ("evaluate --std 0 0 0", "runtime.evaluate", lambda f: [f["m"], "--data", f["data"], "--std", "0", "0", "0"], 2, "--std"),
    ("train --eval-split nosplit", "models.train", lambda f: [*f["train"], "--eval-split", "nosplit"], 2, "--eval-split"),
    ("distill --kd-weight nan", "models.distill", lambda f: [*f["distill"], "--kd-weight", "nan"], 2, "--kd-weight"),
    # outputs written into the input data folder
    ("evaluate --out-dir the data folder", "runtime.evaluate", lambda f: [f["m"], "--data", f["data"], "--out-dir", f["data"]], 2, "--out-dir"),
    ("evaluate --out-dir inside the data folder", "runtime.evaluate", lambda f: [f["m"], "--data", f["data"], "--out-dir", f["data"] / "IMG" / "plots"], 2, "--out-dir"),
    ("evaluate --json into the data folder", "runtime.evaluate", lambda f: [f["m"], "--data", f["data"], "--json", f["data"] / "m.json"], 2, "--json"),
    ("parity --save-dir the data folder", "runtime.parity", lambda f: [f["m"], f["m2"], "--data", f["data"], "--save-dir", f["data"]], 2, "--save-dir"),
    ("train --out the data folder", "models.train", lambda f: [*f["train"][:-2], "--out", f["data"]], 2, "--out"),
    ("distill --out the data folder", "models.distill", lambda f: [*f["distill"][:-2], "--out", f["data"]], 2, "--out"),
    ("pipeline --run the data folder", "runtime.pipeline", lambda f: ["--run", f["data"], "--data", f["data"]], 2, "--run"),
    ("pipeline --run inside the data folder", "runtime.pipeline", lambda f: ["--run", f["data"] / "run", "--data", f["data"]], 2, "--run"),
    # an earlier run replaced without --force
    ("distill --out on an earlier run", "models.distill", lambda f: [*f["distill"][:-2], "--out", f["mine"]], 2, "--resume"),
    ("train --out on an earlier run", "models.train", lambda f: [*f["train"][:-2], "--out", f["mine"]], 2, "--resume"),
    ("export -o on an existing model", "exporters.export", lambda f: ["--model", "mobilevit_xxs", "--input-size", "64", "-o", f["m2"]], 2, "--force"),
    ("parity over an earlier run's saved files", "runtime.parity", lambda f: [f["m"], f["m2"], "--data", f["data"]], 2, "--force"),
    ("synthetic over a folder without --force", "models.synthetic", lambda f: [f["mine"], "--train", "1", "--val", "1"], 2, "--force"),
    ("bundle -o on a non-empty folder", "runtime.bundle", lambda f: [f["m"], "--target", "cpu", "-o", f["mine"]], 2, "--force"),
    # out-of-range numbers
    ("parity --atol -1", "runtime.parity", lambda f: [f["m"], f["m2"], "--data", f["data"], "--no-save", "--atol", "-1"], 2, "--atol"),
    ("parity --min-agreement 150", "runtime.parity", lambda f: [f["m"], f["m2"], "--data", f["data"], "--no-save", "--min-agreement", "150"], 2, "--min-agreement"),
    ("prune_torch --tolerance -1", "models.prune_torch", lambda f: [f["m"], "--tolerance", "-1"], 2, "--tolerance"),
    ("export --tolerance -1", "exporters.export", lambda f: ["--tolerance", "-1", "-o", f["root"] / "e.onnx"], 2, "--tolerance"),
    ("prune_heads --ratio 1.5", "passes.prune_heads", lambda f: [f["m"], "-o", f["out"], "--ratio", "1.5"], 2, "--ratio"),
    # work started before the arguments were checked
    ("pipeline --frontier an unknown model", "runtime.pipeline", lambda f: ["--run", f["root"] / "run", "--frontier", "mobilevit_xxl"], 2, "--frontier"),
    ("pipeline --threads 0", "runtime.pipeline", lambda f: ["--run", f["root"] / "run", "--threads", "0"], 2, "--threads"),
    ("pipeline --target mars", "runtime.pipeline", lambda f: ["--run", f["root"] / "run", "--target", "mars"], 2, "--target"),
    ("pipeline --exporter foo", "runtime.pipeline", lambda f: ["--run", f["root"] / "run", "--exporter", "foo"], 2, "--exporter"),
    ("pipeline --run names a file", "runtime.pipeline", lambda f: ["--run", f["note"]], 2, "--run"),
    ("pipeline --batch-size above the images", "runtime.pipeline", lambda f: ["--run", f["root"] / "run", "--data", f["data"], "--batch-size", "3"], 2, "--batch-size"),
    ("train --batch-size 99999 on 2 images", "models.train", lambda f: [*f["train"], "--batch-size", "99999"], 2, "--batch-size"),
    ("train an unknown model", "models.train", lambda f: [*f["train"], "--model", "nope"], 2, "--model"),
    ("train a missing data folder", "models.train", lambda f: ["--data", f["root"] / "nodata", "--out", f["root"] / "t"], 1, "--data"),
    ("distill an unknown student", "models.distill", lambda f: ["--student", "nope", *f["distill"][2:]], 2, "--student"),
    ("distill a missing teacher", "models.distill", lambda f: [*f["distill"][:2], "--teacher", f["root"] / "none.pt", *f["distill"][4:]], 1, "--teacher"),
    ("distill a missing data folder", "models.distill", lambda f: [*f["distill"], "--data", f["root"] / "nodata"], 1, "--data"),
    ("export an unknown model", "exporters.export", lambda f: ["--model", "nope", "-o", f["root"] / "e.onnx"], 2, "--model"),
    ("export a missing --weights file", "exporters.export", lambda f: ["--weights", f["root"] / "none.pt", "-o", f["root"] / "e.onnx"], 1, "--weights"),
]  # fmt: skip
UP_FRONT_SECONDS = 2.0


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
    files["root"] = root
    (root / "other.onnx.parity").mkdir()  # an earlier parity run's files, beside its candidate
    (root / "other.onnx.parity" / "inputs.json").write_text("[]\n")
    files["train"] = ["--batch-size", "2", "--data", files["data"], "--out", root / "t"]
    teacher = files["note"]  # any file: nothing reads it before the arguments are checked
    files["distill"] = ["--student", files["m"], "--teacher", teacher, "--batch-size", "2", "--data", files["data"]]
    files["distill"] += ["--out", root / "d"]
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


# Runs each case as `python -m MODULE ARGV` does (runpy, __main__), all in this one process: stdin is the JSON list of
# cases, stdout the JSON list of results. It never imports torch; a case that does is caught by the check after it.
_DRIVER = r"""
import contextlib, io, json, logging, os, runpy, sys, time, warnings
warnings.simplefilter("ignore")  # runpy on a module another case imported already
cases, results = json.load(sys.stdin), []
def state(root):
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in __import__("pathlib").Path(root).rglob("*"))
for case in cases:
    os.chdir(case["cwd"])
    logging.getLogger().handlers.clear()  # a command's basicConfig binds to this case's stderr
    before, err, out = state(case["cwd"]), io.StringIO(), io.StringIO()
    sys.argv = ["-m", *case["argv"]]
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    seconds = time.perf_counter() - t0
    results.append({"name": case["name"], "code": code, "err": err.getvalue(), "seconds": seconds,
                    "torch": "torch" in sys.modules, "changed": state(case["cwd"]) != before})
print(json.dumps(results))
"""


def test_refused_up_front_without_torch(work: dict[str, Path]) -> None:
    """Every case of UP_FRONT as a user runs it: the exit status, one line on stderr naming the program and the
    option, no traceback, under UP_FRONT_SECONDS, torch never imported, and the folder as it was."""
    import json
    import subprocess
    import sys

    root = work["root"]
    before = _snapshot(root)
    cases = [
        {"name": name, "module": module, "argv": [str(a) for a in argv(work)], "cwd": str(root)}
        for name, module, argv, _, _ in UP_FRONT
    ]
    repo = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER], input=json.dumps(cases), capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    torch_at = next((r["name"] for r in results.values() if r["torch"]), None)
    assert torch_at is None, f"{torch_at}: torch was imported before the arguments were refused"
    for name, module, _, code, names in UP_FRONT:
        r = results[name]
        lines = r["err"].strip().splitlines()
        print(f"{r['seconds']:5.2f} s  {r['code']}  {lines[-1] if lines else ''}")
        assert r["code"] == code, (name, r["err"])
        assert len(lines) == 1 and "Traceback" not in r["err"], (name, r["err"])
        assert lines[0].startswith(f"error: python -m {module}: ") and names in lines[0], (name, lines[0])
        assert r["seconds"] < UP_FRONT_SECONDS, (name, r["seconds"])
        assert not r["changed"], f"{name}: files changed or were left behind"
    assert _snapshot(root) == before


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


# every command: `--help` answers fast (torch, timm and onnxruntime not imported: seconds; onnx not either: half a
# second of ml_dtypes), and every option says what it does and what it defaults to
HELP_COMMANDS = [
    ("exporters.export", []),
    ("models.train", []),
    ("models.distill", []),
    ("models.synthetic", []),
    ("models.prune_torch", []),
    ("runtime.evaluate", []),
    ("runtime.parity", []),
    ("runtime.bundle", []),
    ("runtime.pipeline", []),
    ("runtime.bench", []),
    ("runtime.report", []),
    ("runtime.frontier", []),
    ("runtime.trt", []),
    ("runtime.trt", ["build"]),
    *[
        (f"passes.{name}", [])
        for name in (
            "prune_heads",
            "slice_neurons",
            "slice_width",
            "slice_channels",
            "low_rank",
            "fp16",
            "int8",
            "optimize",
            "simplify",
            "check_target",
            "compress",
        )
    ],
]
HEAVY = ("torch", "torchvision", "timm", "onnxruntime", "onnx")
# `--help` must answer in under a second where `python -c pass` takes this long; on a slower or busier machine the
# allowance grows with the interpreter's own start (the measured ratio is what is held)
HELP_SECONDS, PASS_SECONDS = 1.0, 0.05


@pytest.fixture(scope="module")
def python_start() -> float:
    """The best of three `python -c pass`: this machine's interpreter start, now."""
    import subprocess
    import sys
    import time

    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize(
    ("module", "sub"),
    HELP_COMMANDS,
    ids=[" ".join([m, *s]) for m, s in HELP_COMMANDS],
)
def test_help_is_fast_and_imports_no_heavy_module(module: str, sub: list[str], python_start: float) -> None:
    """`python -X importtime -m MODULE --help`: exit 0, a usage text, none of torch/timm/onnxruntime/onnx imported,
    and under HELP_SECONDS as a ratio to `python -c pass` (HELP_SECONDS / PASS_SECONDS = 20 times its start)."""
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *sub, "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:200]
    # importtime lines: "import time: self | cumulative | <indent>name"
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & set(HEAVY), f"{module} --help imports {sorted(imported & set(HEAVY))}"
    ratio = seconds / python_start
    print(f"{module} --help: {seconds:.3f} s, {ratio:.1f}x python -c pass ({python_start:.3f} s)")
    assert ratio < HELP_SECONDS / PASS_SECONDS, f"{module} --help took {seconds:.2f} s ({ratio:.0f}x python's start)"


def _builder(module: str):
    mod = importlib.import_module(module)
    return getattr(mod, "_parser", None) or mod.build_parser


def _actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif isinstance(action, argparse._HelpAction) or any(o.startswith("--_") for o in action.option_strings):
            continue  # --help itself, and the internal options of a worker process (runtime.bench --_serve)
        else:
            yield parser, action


@pytest.mark.parametrize("module", sorted({m for m, _ in HELP_COMMANDS}))
def test_every_option_has_help_with_its_default(module: str) -> None:
    import argparse

    parser = _builder(module)()
    for owner, action in _actions(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip() and action.help is not argparse.SUPPRESS, f"{module} {name}: no help"
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and action.default is not False:
            shown = owner._get_formatter()._get_help_string(action)  # the help as printed, before % formatting
            assert "default" in shown, f"{module} {name}: the help does not show its default {action.default!r}"


def test_argument_errors_are_one_line_naming_the_option(capsys) -> None:
    """The shared parser: an argparse error is one line, the program, the option and 'see --help'; no usage block."""
    from runtime.evaluate import main

    with pytest.raises(SystemExit) as exc:
        main(["m.onnx", "--data", "d", "--batch-size", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and not err.startswith("usage")
    assert err == "error: python -m runtime.evaluate: argument --batch-size: 0 is not >= 1; see --help\n"


def test_the_design_cards_command_cuts_a_fresh_export(exported, tmp_path: Path, capsys) -> None:
    """`python -m passes.prune_heads model.onnx` on a fresh (untrained) export, with no other option: half of each
    block's heads go, the summary says how many, and the cut model is written beside the input."""
    src = tmp_path / "model.onnx"
    shutil.copy(exported("mobilevit_xxs", size=64, fresh=True), src)
    from passes.prune_heads import main

    assert main([str(src)]) == 0
    out = capsys.readouterr().out
    assert "prune_heads: 18 of 36 heads removed in 9 of 9 attention blocks" in out, out
    assert (tmp_path / "model.prune_heads.onnx").is_file() and f"wrote {tmp_path / 'model.prune_heads.onnx'}" in out


def test_synthetic_sweeps_a_killed_runs_folders_and_keeps_the_umask(tmp_path: Path) -> None:
    """A SIGTERM during models.synthetic leaves .ROOT.tmp-PID-*/ behind: the next run of ROOT removes it (and one of
    an older version, without a PID), never one of a process still alive; the folders get the umask's mode."""
    import os

    from models.synthetic import main

    root = tmp_path / "syn"
    stale = [tmp_path / ".syn.tmp-999999-abc", tmp_path / ".syn.tmp-old", tmp_path / ".syn.old-999999-x"]
    live = tmp_path / f".syn.tmp-{os.getppid()}-live"  # our parent: alive
    for d in (*stale, live):
        (d / "IMG").mkdir(parents=True)
    old = os.umask(0o022)
    try:
        assert main([str(root), "--train", "1", "--val", "1", "--size", "32"]) == 0
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["syn", live.name])
    for d in (root, root / "IMG", root / "IMG" / "train"):
        assert d.stat().st_mode & 0o777 == 0o755, (d, oct(d.stat().st_mode))
