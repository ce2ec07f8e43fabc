"""What goes onto the device: ``python -m runtime.bundle compressed.onnx --target jetson-nano -o bundle/ [--force]``.

Runs ``passes.check_target`` first and refuses (exit 1, the list of problems) when the model cannot run on the
target, unless ``--allow-incompatible``. Then writes, atomically (built in a temporary folder beside ``-o``, then
renamed):

===================  ===========================================================================================
``model.onnx``       the model (external data beside it, if it has any)
``build_engine.sh``  the exact trtexec command for the target (:func:`trtexec_args`)
``build_engine.py``  the builder-API script that keeps LayerNorm/Softmax in FP32 (trtexec 8.2 cannot), Python 3.6
``fp32_layers.json`` the ONNX nodes/tensors of every LayerNorm pattern and Softmax (``runtime.trt.fp32_selection``)
``infer.py``         folder of images -> PNG masks + the challenge's timing (TensorRT + pycuda, or onnxruntime)
``config.json``      input name and shape, normalisation, classes, target
``check_target.json`` the compatibility check and its latency ESTIMATE
``README.md``        the steps on the device, the Polygraphy comparison, the files to expect
===================  ===========================================================================================

trtexec flags (:func:`trtexec_args`): ``--onnx --saveEngine``; ``--fp16`` where the target has FP16; ``--int8`` only
where the target has INT8 *and* the model is explicitly quantised (QDQ): on an unquantised model trtexec's ``--int8``
would use placeholder scales and wreck the accuracy; ``--shapes=<input>:NxCxHxW`` when the batch is dynamic; the
workspace as ``--workspace=N`` (MiB) for TensorRT < 8.4 and ``--memPoolSize=workspace:N`` from 8.4 on;
``--timingCacheFile``; ``--exportTimes``, ``--dumpProfile``, ``--exportProfile`` and ``--separateProfileRun`` (the
per-layer profile is measured in its own run, so it does not slow the timed one).

A non-empty ``-o`` is refused unless ``--force``, which means what it means in every command: replace my earlier
output (only a folder this tool wrote, per its manifest; a folder holding other files is refused). Exit 0 written,
1 refused or failed, 2 usage error (a non-empty ``-o`` without ``--force`` included).

``build_engine.sh`` finds trtexec on the PATH or at JetPack's ``/usr/src/tensorrt/bin/trtexec``; where there is
none it stops before building, saying to set ``TRTEXEC=/path/to/trtexec`` (on the terminal and in
``build_engine.log``).
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fileformat.args import Parser, check_output_folder, positive_int
from fileformat.cli import cli_main
from fileformat.errors import PassError
from fileformat.io import check_replaceable, load_model, write_manifest
from fileformat.metadata import read_metadata
from fileformat.targets import TARGETS, TargetProfile, get_target

if TYPE_CHECKING:  # these load onnx (0.5 s): imported when a bundle is written, so --help answers at once
    import onnx

    from passes.check_target import TargetCheck

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent / "device_scripts"
MODEL_NAME = "model.onnx"
ENGINE_NAME = "model.engine"


class BundleError(PassError):
    """The bundle cannot be written (incompatible model, existing output, bad input); the message says why."""


@dataclass
class BundleConfig:
    """``workspace_mb=None`` takes the target's; ``batch`` is the batch a dynamic batch dimension is built for."""

    target: str = "jetson-nano"
    force: bool = False  # replace an earlier bundle in the output folder
    allow_incompatible: bool = False  # write a bundle for a model passes.check_target says the target cannot run
    batch: int = 1
    workspace_mb: int | None = None


@dataclass
class BundleResult:
    """The folder written, its files and the compatibility check."""

    path: Path
    files: list[str] = field(default_factory=list)
    check: TargetCheck | None = None
    trtexec: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- pure builders


def _trt_at_least(target: TargetProfile, major: int, minor: int) -> bool:
    parts = [int(x) for x in (target.tensorrt or "0").split(".")[:2]] + [0]
    return (parts[0], parts[1]) >= (major, minor)


def trtexec_args(
    target: TargetProfile,
    *,
    input_name: str,
    input_shape: Sequence[int],
    dynamic_batch: bool,
    quantized: bool,
    workspace_mb: int | None = None,
    onnx_name: str = MODEL_NAME,
    engine_name: str = ENGINE_NAME,
) -> list[str]:
    """The trtexec arguments (without the program) for ``target``; see the module docstring for each flag."""
    ws = target.workspace_mb if workspace_mb is None else workspace_mb
    args = [f"--onnx={onnx_name}", f"--saveEngine={engine_name}"]
    if target.fp16:
        args.append("--fp16")
    if target.int8 and quantized:
        args.append("--int8")
    if dynamic_batch:
        args.append(f"--shapes={input_name}:{'x'.join(str(int(d)) for d in input_shape)}")
    if _trt_at_least(target, 8, 4):
        args.append(f"--memPoolSize=workspace:{ws}")
    else:
        args.append(f"--workspace={ws}")
    args += [
        "--timingCacheFile=timing.cache",
        "--exportTimes=times.json",
        "--dumpProfile",
        "--exportProfile=profile.json",
        "--separateProfileRun",
    ]
    return args


def build_engine_sh(target: TargetProfile, args: Sequence[str], created: str) -> str:
    """``build_engine.sh``: the trtexec call with a log, runnable from any directory."""
    flags = " \\\n  ".join(shlex.quote(a) for a in args)
    py_workspace = [a for a in args if "workspace" in a][0].split(":")[-1].split("=")[-1]
    if _trt_at_least(target, 8, 4):
        pin_note = "could pin layers with --layerPrecisions, but their names are only known after parsing"
    else:
        pin_note = "cannot pin single layers to FP32 (--layerPrecisions arrived in 8.4)"
    return f"""#!/usr/bin/env bash
# Build the TensorRT engine for {target.name}: {target.description}.
# Written by `python -m runtime.bundle` on {created}. Run it on the device: bash build_engine.sh
# trtexec {target.tensorrt} {pin_note};
# if the FP16 engine loses accuracy, build with the builder API instead:
#   python3 build_engine.py {MODEL_NAME} -o {ENGINE_NAME} --fp16 --fp32-layers auto \\
#       --workspace-mb {py_workspace} --timing-cache timing.cache
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-}}"
if [ -z "$TRTEXEC" ]; then
  if command -v trtexec >/dev/null 2>&1; then TRTEXEC=trtexec; else TRTEXEC=/usr/src/tensorrt/bin/trtexec; fi
fi
if ! command -v "$TRTEXEC" >/dev/null 2>&1; then
  echo "error: trtexec not found (not on the PATH, not at $TRTEXEC). Install TensorRT (JetPack on a Jetson) or" \
    "point to it: TRTEXEC=/path/to/trtexec bash build_engine.sh" | tee build_engine.log >&2
  exit 127
fi
"$TRTEXEC" \\
  {flags} \\
  2>&1 | tee build_engine.log
echo "engine: {ENGINE_NAME}; per-run times: times.json; per-layer profile: profile.json; log: build_engine.log"
"""


def check_py36(source: str) -> list[str]:
    """Problems that keep ``source`` from running on Python 3.6: syntax newer than 3.6 (``ast`` with
    ``feature_version=(3, 6)``), ``from __future__ import annotations`` (3.7), ``dataclasses`` (3.7),
    ``subprocess.run(capture_output=/text=)`` (3.7). Empty when none."""
    try:
        tree = ast.parse(source, feature_version=(3, 6))
    except SyntaxError as exc:
        return [f"line {exc.lineno}: {exc.msg}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.module == "__future__" and any(a.name == "annotations" for a in node.names):
                problems.append(f"line {node.lineno}: from __future__ import annotations needs 3.7")
            if node.module == "dataclasses":
                problems.append(f"line {node.lineno}: dataclasses needs 3.7")
        elif isinstance(node, ast.Import) and any(a.name == "dataclasses" for a in node.names):
            problems.append(f"line {node.lineno}: dataclasses needs 3.7")
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in ("capture_output", "text") and "run" in ast.dump(node.func):
                    problems.append(f"line {node.lineno}: subprocess.run({kw.arg}=) needs 3.7")
    return problems


def _readme(
    target: TargetProfile,
    source: str,
    created: str,
    config: dict[str, Any],
    check: TargetCheck,
    trtexec: Sequence[str],
    workspace_mb: int,
) -> str:
    shape = "x".join(str(d) for d in config["input_shape"])
    est = check.estimate
    warn = "\n".join(f"- {f.severity}: {f.code}: {f.message}" for f in check.findings if f.severity != "info")
    python = f"Python {target.python}" if target.python else "Python 3"
    verdict = "compatible" if check.compatible else "NOT compatible (written with --allow-incompatible)"
    return f"""# Deployment bundle: {source} for {target.name}

Written by `python -m runtime.bundle` on {created}. Target: {target.description}.
Input `{config["input_name"]}` {shape} (N x C x H x W), normalised RGB; output `{config["output_name"]}`
({len(config["classes"])} classes). The scripts run with {python}, numpy and Pillow (or OpenCV).

## Check before deployment

`passes.check_target` found the model {verdict}
with {target.name} (details in `check_target.json`).
{warn or "No warnings."}

Latency ESTIMATE (not a measurement): {est.get("latency_ms", float("nan")):.2f} ms per image
({est.get("fps", float("nan")):.1f} FPS), {est.get("formula", "")}. Measure it with the steps below.

## Steps on the device

1. Copy this folder to the device, e.g. `scp -r bundle/ user@jetson:~/bundle` and `cd ~/bundle`.
2. Build the engine with trtexec (writes `{ENGINE_NAME}`, `timing.cache`, `times.json`, `profile.json`,
   `build_engine.log`):

       bash build_engine.sh

   The command it runs: `trtexec {" ".join(trtexec)}`.
   If the FP16 engine loses accuracy (step 3), rebuild with LayerNorm and Softmax kept in FP32 through the builder
   API (`fp32_layers.json` lists those layers; `auto` builds FP16, compares with an FP32 engine and constrains the
   layers only when fewer than 99% of the pixels agree; needs `pip3 install pycuda`):

       python3 build_engine.py {MODEL_NAME} -o {ENGINE_NAME} --fp16 --fp32-layers auto \\
           --workspace-mb {workspace_mb} --timing-cache timing.cache

3. Compare TensorRT with onnxruntime on the device (Polygraphy: `pip3 install polygraphy`, plus an onnxruntime
   wheel for the Jetson for `--onnxrt`). FP16 never meets a 1e-5 tolerance; judge it by the segmentation
   metrics as well:

       polygraphy run {MODEL_NAME} --trt --onnxrt --fp16 --atol 1e-2 --rtol 1e-2

4. Segment a folder of images and time it (the challenge's timing: mean seconds per image, GPU synchronised):

       python3 infer.py /path/to/IMG/val -o masks/

   TensorRT + pycuda are used when importable and `{ENGINE_NAME}` exists, otherwise onnxruntime on
   `{MODEL_NAME}` (`--backend` forces one). `masks/<image>.png` holds class ids 0..{len(config["classes"]) - 1};
   `masks/timing.json` has `mean_seconds_per_image`, `fps`, `end_to_end_seconds_per_image`.

## Files

| file | what |
|---|---|
| `{MODEL_NAME}` | the model |
| `build_engine.sh` | trtexec build + timing + per-layer profile |
| `build_engine.py` | builder-API build with FP32 LayerNorm/Softmax (TensorRT 8.2+, Python 3.6+) |
| `fp32_layers.json` | ONNX nodes and tensors of the LayerNorm patterns and Softmax |
| `infer.py` | images -> masks + timing.json |
| `config.json` | input name/shape, mean/std, classes, target |
| `check_target.json` | the compatibility check |

After step 2: `{ENGINE_NAME}`, `timing.cache`, `times.json`, `profile.json`, `build_engine.log`.
After step 4: `masks/*.png`, `masks/timing.json`.
An engine only runs on the TensorRT version and GPU it was built with: build it on the device.
"""


# -------------------------------------------------------------------------------------------------- writing


def _input_info(model: onnx.ModelProto, batch: int) -> tuple[str, list[int], bool, str]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise BundleError(f"expected one NCHW image input, found {[i.name for i in inputs]}")
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if any(v is None for v in static[1:]):
        size = read_metadata(model).get("input_size")
        if not size:
            raise BundleError(f"input {inp.name!r} has dynamic spatial dims and no vitseg.input_size")
        static[1:] = [static[1] or 3, int(size[0]), int(size[1])]
    dynamic_batch = static[0] is None
    shape = [batch if dynamic_batch else static[0]] + static[1:]
    return inp.name, [int(d) for d in shape], dynamic_batch, model.graph.output[0].name


def _copy_model(src: Path, dst_dir: Path) -> list[str]:
    """Copy the ONNX file as ``model.onnx`` with its external data files (same relative names)."""
    import onnx

    shutil.copyfile(src, dst_dir / MODEL_NAME)
    files = [MODEL_NAME]
    proto = onnx.load(str(src), load_external_data=False)
    for loc in sorted({e.value for i in proto.graph.initializer for e in i.external_data if e.key == "location"}):
        shutil.copyfile(src.parent / loc, dst_dir / loc)
        files.append(loc)
    return files


def write_bundle(model_path: str | os.PathLike[str], out: str | os.PathLike[str], config: BundleConfig) -> BundleResult:
    """Check the model, then write the bundle folder ``out`` atomically; raise :class:`BundleError` when refused."""
    from passes.check_target import CheckConfig, check_target
    from runtime.trt import fp32_selection, node_infos

    src = Path(model_path)
    dst = Path(out)
    target = get_target(config.target)
    if dst.exists() and not dst.is_dir():
        raise BundleError(f"-o {dst} exists and is not a folder")
    try:  # the API's one error type; the command line checks this before, as a usage error
        check_replaceable(dst, config.force)
    except PassError as exc:
        raise BundleError(str(exc)) from exc
    if not dst.resolve().parent.is_dir():
        raise BundleError(f"-o {dst}: folder {dst.resolve().parent} does not exist")
    try:
        model = load_model(src)
    except PassError as exc:
        raise BundleError(str(exc)) from None
    check = check_target(model, target, CheckConfig(batch=config.batch), name=src.name)
    if not check.compatible and not config.allow_incompatible:
        raise BundleError(
            f"{src.name} cannot run on {target.name}; fix these (or pass --allow-incompatible):\n"
            + "\n".join(f"  {f.code}: {f.message}" + _where(f.nodes) for f in check.errors)
        )
    input_name, shape, dynamic_batch, output_name = _input_info(model, config.batch)
    meta = read_metadata(model)
    from models.constants import CLASS_NAMES, MEAN, STD

    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    workspace = target.workspace_mb if config.workspace_mb is None else config.workspace_mb
    args = trtexec_args(
        target,
        input_name=input_name,
        input_shape=shape,
        dynamic_batch=dynamic_batch,
        quantized=quantized,
        workspace_mb=workspace,
    )
    cfg = {
        "model": MODEL_NAME,
        "engine": ENGINE_NAME,
        "source": src.name,
        "input_name": input_name,
        "output_name": output_name,
        "input_shape": shape,
        "dynamic_batch": dynamic_batch,
        "mean": list(meta.get("mean") or MEAN),
        "std": list(meta.get("std") or STD),
        "classes": list(meta.get("classes") or CLASS_NAMES),
        "target": target.name,
        "tensorrt": target.tensorrt,
        "created": created,
    }
    scripts = {name: (SCRIPTS / name).read_text(encoding="utf-8") for name in ("build_engine.py", "infer.py")}
    if target.python == "3.6":
        for name, text in scripts.items():
            problems = check_py36(text)
            if problems:  # a bug of this package, never the user's
                raise BundleError(f"{name} is not Python 3.6 compatible: {problems}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.resolve().parent))
    try:
        files = _copy_model(src, tmp)
        texts = {
            "build_engine.sh": build_engine_sh(target, args, created),
            "fp32_layers.json": json.dumps(fp32_selection(node_infos(model)), indent=1) + "\n",
            "config.json": json.dumps(cfg, indent=2) + "\n",
            "check_target.json": json.dumps(check.to_dict(), indent=2) + "\n",
            "README.md": _readme(target, src.name, created, cfg, check, args, workspace),
            **scripts,
        }
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
            files.append(name)
        for name in ("build_engine.sh", "build_engine.py", "infer.py"):
            (tmp / name).chmod(0o755)
        os.chmod(tmp, 0o755)
        write_manifest(tmp, "runtime.bundle")
        _replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BundleResult(path=dst, files=sorted(files), check=check, trtexec=args)


def _where(nodes: Sequence[str], shown: int = 5) -> str:
    if not nodes:
        return ""
    more = f", ... {len(nodes) - shown} more" if len(nodes) > shown else ""
    return f" [{len(nodes)}: {', '.join(nodes[:shown])}{more}]"


def _replace_dir(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` to ``dst``; an existing ``dst`` is moved aside first and removed after the rename."""
    old = None
    if dst.exists():
        old = dst.resolve().parent / f".{dst.name}.old.{os.getpid()}"
        os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m runtime.bundle", description=__doc__.splitlines()[0])
    p.add_argument("model", help="the (compressed) ONNX model")
    p.add_argument("--target", default="jetson-nano", choices=sorted(TARGETS), help="device profile")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write (must not exist or be empty)")
    p.add_argument("--force", action="store_true", help="replace an earlier bundle in a non-empty -o")
    p.add_argument(
        "--allow-incompatible",
        action="store_true",
        help="write the bundle even where passes.check_target says the target cannot run the model",
    )
    p.add_argument("--batch", type=positive_int, default=1, help="batch for a dynamic batch dimension")
    p.add_argument(
        "--workspace-mb", type=positive_int, default=None, help="builder workspace in MiB (none given: the target's)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log details; show tracebacks on errors")
    return p


@cli_main("python -m runtime.bundle")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 written, 1 refused or failed, 2 usage error (the output folder checked before any work)."""
    p = _parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    check_output_folder("-o", args.output)
    check_replaceable(args.output, args.force)  # without --force: a usage error (exit 2), before the model is read
    config = BundleConfig(
        target=args.target,
        force=args.force,
        allow_incompatible=args.allow_incompatible,
        batch=args.batch,
        workspace_mb=args.workspace_mb,
    )
    result = write_bundle(args.model, args.output, config)
    assert result.check is not None
    print(result.check.format())
    print(f"wrote {result.path}/: {', '.join(result.files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
