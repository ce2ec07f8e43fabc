"""Prove a refactoring changed nothing the passes write: every structural pass on a set of models, two trees, compared.

``python bench/check_unchanged.py BASE [AFTER] [--paths P ...] [--models NAME ...] [--work DIR]``

``BASE`` and ``AFTER`` are commits (``AFTER`` defaults to the working tree). With ``--paths``, ``AFTER`` is ``BASE``
with only those paths taken from ``AFTER`` (your own files, when others commit in the same tree). Each tree is
written out (``git archive``) under ``--work``; the model set is exported once, by ``BASE``'s exporters: the
project's MobileViT-XXS (legacy and dynamo), the paper's model and MobileViT-XXS + UPerNet at 64 px, and the test
zoo's timm ViT, torchvision ViT, Swin, SwinV2, PVTv2, LeViT, MobileViT and a CNN (perturbed weights; LeViT and Swin
also fresh, legacy and dynamo). Then, from each tree, the passes a user runs: ``prune_heads``, ``slice_neurons``,
``slice_width --kind width`` and ``--kind head_dim``, ``slice_channels``, ``compress --target-flops 0.5 --importance
l2``. The output files must be byte-identical (sha256) and each command's output the same (exit status, summary and
refusal messages, output paths aside). Prints one line per difference and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSES = {
    "heads": ["passes.prune_heads"],
    "neurons": ["passes.slice_neurons"],
    "width": ["passes.slice_width", "--kind", "width"],
    "head_dim": ["passes.slice_width", "--kind", "head_dim"],
    "channels": ["passes.slice_channels"],
    "compress": ["passes.compress", "--target-flops", "0.5", "--importance", "l2"],
}
PROJECT = {  # name: export arguments
    "mvxxs": ["--model", "mobilevit_xxs"],
    "mvxxs_dynamo": ["--model", "mobilevit_xxs", "--exporter", "dynamo"],
    "paper": ["--model", "paper"],
    "upernet": ["--model", "mobilevit_xxs_upernet64"],
}
ZOO = [  # (zoo model, export id, weights)
    ("timm_vit", "legacy13", "perturbed"),
    ("timm_vit", "dynamo18", "perturbed"),
    ("tv_vit", "legacy17", "perturbed"),
    ("timm_swin", "legacy17", "perturbed"),
    ("timm_swin", "dynamo18", "perturbed"),
    ("timm_swin", "legacy13", "fresh"),
    ("timm_swinv2", "legacy17", "perturbed"),
    ("timm_pvt_v2", "legacy17", "perturbed"),
    ("timm_levit", "legacy17", "perturbed"),
    ("timm_levit", "legacy13", "perturbed"),
    ("timm_levit", "dynamo18", "perturbed"),
    ("timm_levit", "legacy17", "fresh"),
    ("timm_mobilevit", "legacy17", "perturbed"),
    ("tiny_cnn", "legacy17", "perturbed"),
]
_ZOO_EXPORT = """
import sys
sys.path[:0] = [{tests!r}, {passes!r}]
import _zoo
exporter, opset = _zoo.EXPORTS[{eid!r}]
net, shape = _zoo.build({name!r}, {variant!r})
_zoo.export(net, shape, {out!r}, exporter, opset)
"""


def _tree(commit: str | None, dest: Path, overlay: tuple[str, list[str]] | None = None) -> Path:
    """``commit`` (``None``: the working tree's tracked and new files) written out at ``dest``; with ``overlay``
    ``(commit, paths)``, those paths replaced by their state there."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if commit is None:
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        for f in files:
            if (ROOT / f).is_file():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, dest / f)
    else:
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    if overlay is not None:
        source = _tree(overlay[0], dest.with_name(dest.name + "_src"))
        for p in overlay[1]:
            shutil.rmtree(dest / p, ignore_errors=True)
            (dest / p).unlink(missing_ok=True)
            if (source / p).is_dir():
                shutil.copytree(source / p, dest / p)
            elif (source / p).exists():
                shutil.copy2(source / p, dest / p)
    return dest


def _export(tree: Path, models: Path, names: list[str] | None) -> list[Path]:
    """The model set under ``models`` (exported once, by ``tree``)."""
    models.mkdir(parents=True, exist_ok=True)
    out = []
    for name, args in PROJECT.items():
        path = models / f"{name}.onnx"
        if names and name not in names:
            continue
        if not path.exists():
            cmd = [sys.executable, "-m", "exporters.export", *args, "--input-size", "64", "-o", str(path)]
            subprocess.run(cmd, cwd=tree, check=True, capture_output=True)
        out.append(path)
    for name, eid, variant in ZOO:
        path = models / f"zoo_{name}_{eid}_{variant}.onnx"
        if names and path.stem not in names:
            continue
        if not path.exists():
            code = _ZOO_EXPORT.format(
                tests=str(tree / "tests"),
                passes=str(tree / "tests" / "passes"),
                eid=eid,
                name=name,
                variant=variant,
                out=str(path),
            )
            subprocess.run([sys.executable, "-c", code], cwd=tree, check=True, capture_output=True)
        out.append(path)
    return out


def _run(tree: Path, models: list[Path], out: Path) -> dict[str, str]:
    """Every pass on every model from ``tree``: ``{output name: sha256 or "-", log name: its text}``."""
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, str] = {}
    for m in models:
        for tag, args in PASSES.items():
            target = out / f"{m.stem}.{tag}.onnx"
            target.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", *args, str(m), "-o", str(target)]
            proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
            log = (proc.stdout + proc.stderr).replace(str(out), "OUT") + f"exit {proc.returncode}\n"
            result[f"{target.name}.log"] = log
            result[target.name] = hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else "-"
            print(f"{tree.name}: {target.name} exit {proc.returncode}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the commit before the change")
    ap.add_argument("after", nargs="?", help="the commit after it (default: the working tree)")
    ap.add_argument("--paths", nargs="*", help="take only these paths from AFTER, the rest from BASE")
    ap.add_argument(
        "--models", nargs="*", help="only these models (file stems, e.g. mvxxs zoo_tiny_cnn_legacy17_perturbed)"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/check_unchanged"), help="scratch folder (kept)")
    args = ap.parse_args(argv)
    base = _tree(args.base, args.work / "base")
    if args.paths:
        after = _tree(args.base, args.work / "after", (args.after, args.paths))
    else:
        after = _tree(args.after, args.work / "after")
    models = _export(base, args.work / "models", args.models)
    before, now = _run(base, models, args.work / "out_base"), _run(after, models, args.work / "out_after")
    diffs = [k for k in sorted(before) if before[k] != now.get(k)]
    for k in diffs:
        print(f"DIFFERS: {k}" + ("" if k.endswith(".log") else f" ({before[k][:12]} -> {now.get(k, '-')[:12]})"))
    written = sum(1 for k, v in before.items() if not k.endswith(".log") and v != "-")
    print(f"{len(models)} models x {len(PASSES)} passes: {written} outputs written, {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
