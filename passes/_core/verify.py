"""How an exact rewrite is held to its input: a seeded input of the declared shapes, every output on onnxruntime
(graph optimisations off, so two graphs are compared, not two optimiser runs), and the largest difference. Shared
by ``passes.simplify`` and ``passes.optimize``."""

from __future__ import annotations

import numpy as np
import onnx

from fileformat.errors import PassError
from fileformat.metadata import read_metadata

__all__ = ["input_feed", "max_abs_diff", "run_onnxruntime"]


def _dim(tt: onnx.TypeProto.Tensor, axis: int, batch: int, size: list[int] | None, name: str) -> int:
    """The check input's size on ``axis``: the declared one, else the batch, the recorded input size, 3 channels."""
    d = tt.shape.dim[axis]
    rank = len(tt.shape.dim)
    if d.HasField("dim_value") and d.dim_value > 0:
        return int(d.dim_value)
    if axis == 0:
        return batch
    if size and rank == 4 and axis in (2, 3):
        return int(size[axis - 2])
    if rank == 4 and axis == 1:
        return 3
    raise PassError(
        f"input {name!r} axis {axis} is dynamic and the model has no vitseg.input_size: cannot build "
        "the check input. Give --input-size H W (the size to check at), or export with a static input size."
    )


def input_feed(model: onnx.ModelProto, seed: int, batch: int) -> dict[str, np.ndarray]:
    """Seeded ``N(0, 1)`` inputs of the declared shapes (integer inputs get zeros; a dynamic batch is ``batch``, a
    dynamic image size the recorded ``vitseg.input_size``)."""
    size = read_metadata(model).get("input_size")
    inits = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = [_dim(tt, axis, batch, size, inp.name) for axis in range(len(tt.shape.dim))]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = np.zeros(shape, dtype)
    return feed


def run_onnxruntime(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of ``model`` on ``feed`` (CPU, graph optimisations off)."""
    from fileformat.session import SessionConfig, load_session

    try:
        sess = load_session(model, SessionConfig(optimization="disable", spinning=True))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise PassError(f"onnxruntime cannot load the model ({exc})") from exc
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """``max |a - b|`` over all outputs (``inf`` on a shape mismatch or a missing output; NaN counts as inf)."""
    worst = 0.0
    for name, x in a.items():
        y = b.get(name)
        if y is None or x.shape != y.shape:
            return float("inf")
        if x.size:
            d = np.abs(x.astype(np.float64) - y.astype(np.float64))
            worst = max(worst, float(np.nanmax(np.where(np.isnan(d), np.inf, d))))
    return worst
