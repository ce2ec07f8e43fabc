"""Every structural pass on ONNX files as users bring them, each against its oracle (a check, not a test).

``python bench/check_user_files.py model.onnx [other.onnx ...]``

Per file: heads, MLP neurons and head channels (ratio 0.5) against the zeroing oracle, with how much the cut
changed the output (the oracle proves little where that is ~0); the transformer width (0.5)
must run with the original output shape (its oracle is the torch model built narrower, in the tests);
``slice_channels`` (0.5) against the channel oracle; ``compress`` to half the FLOPs over the exact kinds against the
combined oracle. Prints one line per file: what was cut and the oracle error relative to the output's scale. The
oracles are the package's (:mod:`passes._core.oracle`).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXACT = ("heads", "head_dim", "neurons", "channels")  # the kinds with a zeroing oracle


def run_ort(model, x):  # noqa: ANN001, ANN201 - an onnx.ModelProto and its input; its first output
    """The first output of ``model`` on ``x`` (onnxruntime CPU, one thread)."""
    from fileformat.session import SessionConfig, load_session

    sess = load_session(model, SessionConfig(threads=1, spinning=True))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def input_for(model):  # noqa: ANN001, ANN201 - an onnx.ModelProto; a seeded input, symbolic sizes as 2
    import numpy as np

    dims = [d.dim_value if d.dim_value > 0 else 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(0).standard_normal(dims).astype(np.float32)


def check(label: str, model) -> str:  # noqa: ANN001 - an onnx.ModelProto
    import numpy as np

    from fileformat.plan import read_plan
    from passes._core.oracle import plan_oracle, zero_kept
    from passes._core.prune import UnitPruneConfig, prune_units
    from passes._core.units import find_units
    from passes.compress import CompressConfig, compress
    from passes.slice_channels import SliceChannelsConfig, slice_channels

    x = input_for(model)
    ref = run_ort(model, x)
    scale = float(np.abs(ref).max())
    row = [label, f"output scale {scale:.3g}"]
    for kind in ("heads", "neurons", "head_dim", "width"):
        units = find_units(model, kind)
        out, _ = prune_units(model, kind, UnitPruneConfig(ratio=0.5), kind)
        plan = read_plan(out)[kind]
        if not plan:
            row.append(f"{kind}: nothing cut ({len(units)} found: {[u.skip_reason for u in units][:1]})")
        elif kind == "width":
            row.append(f"width: {len(plan)} cut, runs {run_ort(out, x).shape == ref.shape}")
        else:
            err = float(np.abs(run_ort(out, x) - run_ort(plan_oracle(model, {kind: plan}), x)).max()) / scale
            row.append(f"{kind}: {len(plan)} cut, oracle {err:.1e}, change {_change(out, x, ref) / scale:.1e}")
    out, _ = slice_channels(model, SliceChannelsConfig(ratio=0.5))
    groups = find_units(model, "channels")
    names = {g.id for g in groups}
    keep = {n: e["kept"] for n, e in read_plan(out)["channels"].items() if n in names}
    err = float(np.abs(run_ort(out, x) - run_ort(zero_kept(model, groups, keep), x)).max()) / scale
    row.append(f"channels: {len(keep)} groups cut, oracle {err:.1e}, change {_change(out, x, ref) / scale:.1e}")
    out, rep = compress(model, CompressConfig(target_flops=0.5, units=EXACT))
    err = float(np.abs(run_ort(out, x) - run_ort(plan_oracle(model, read_plan(out)), x)).max()) / scale
    row.append(
        f"compress: FLOPs {rep.flops_after / rep.flops_before:.2f}x, oracle {err:.1e}, "
        f"change {_change(out, x, ref) / scale:.1e}"
    )
    return " | ".join(row)


def _change(out, x, ref) -> float:  # noqa: ANN001 - a model, its input and the uncut output
    """How much the cut moved the output (an oracle error means little where this is ~0: a block that starts as an
    identity, as timm's layer scales and zero-initialised branch norms make it)."""
    import numpy as np

    return float(np.abs(run_ort(out, x) - ref).max())


def main(argv: list[str] | None = None) -> int:
    import onnx

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__)
        return 2
    warnings.filterwarnings("ignore")
    for path in paths:
        print(check(Path(path).name, onnx.load(path)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
