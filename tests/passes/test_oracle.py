"""passes._core.oracle: the masked copy computes the model itself under masks of ones and, with a layer's mask
zeroed at some units, exactly the model cut there (the passes' own rewrite), for a layer of every kind the zeroing
oracle covers; widths are refused with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fileformat.errors import PassError
from passes._core.oracle import all_ones, mask_input, maskable, masked_model, zero_units
from passes._core.problem import CompressConfig, cut_one_layer, discover

from _helpers_channels import image, run  # isort: skip


@pytest.fixture(scope="module")
def problem(exported):
    """MobileViT-XXS with UPerNet-64 at 64 px: heads, head channels (q/k apart from v), neurons, widths, residual
    channel groups and the parts of the decoder's concatenation."""
    return discover(onnx.load(str(exported("mobilevit_xxs_upernet64", size=64))), CompressConfig(target_flops=0.5))


def _masked_run(sess: ort.InferenceSession, x: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    return sess.run(None, {"image": x, **masks})[0]


def test_a_masked_run_is_the_cut_model(problem) -> None:
    units = problem.units
    exact = {name: u for name, u in units.items() if maskable(u, problem.model) is None}
    assert {u.kind for u in exact.values()} == {"heads", "head_dim", "neurons", "channels"}
    sess = ort.InferenceSession(
        masked_model(problem.model, exact).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    ones = all_ones(exact)
    x = image(64, seed=4)
    full = run(problem.model, x)
    scale = float(np.abs(full).max())
    assert np.abs(_masked_run(sess, x, ones) - full).max() <= 1e-6 * scale  # ones: the model itself
    # a layer of every kind, a residual group (several convs tied by a sum) and a part of a concatenation
    chosen, kinds = [], set()
    for name, u in exact.items():
        residual = u.kind == "channels" and len(getattr(u, "source_nodes", [])) > 1
        if u.kind not in kinds or residual:
            chosen.append(name)
            kinds.add(u.kind)
    chosen.append(next(n for n in exact if n.startswith("channels:decoder.fpn_convs")))
    for name in dict.fromkeys(chosen):
        count = exact[name].count
        kept = list(range(0, count, 2)) if count > 1 else [0]  # every other unit: not a prefix
        mask = np.zeros(count, np.float32)
        mask[kept] = 1.0
        cut = run(cut_one_layer(problem, name, kept), x)
        got = _masked_run(sess, x, {**ones, mask_input(name): mask})
        assert np.abs(got - cut).max() <= 1e-5 * scale, name
        assert np.abs(cut - full).max() > 1e-3 * scale, name  # the cut changed the output
        shifted = np.roll(mask, 1)  # negative control: other units zeroed
        assert np.abs(_masked_run(sess, x, {**ones, mask_input(name): shifted}) - cut).max() > 1e-4 * scale, name


def test_widths_have_no_mask_and_say_why(problem) -> None:
    width = next(u for u in problem.units.values() if u.kind == "width")
    assert "no zeroing oracle" in (maskable(width, problem.model) or "")
    with pytest.raises(PassError, match="cannot be masked"):
        masked_model(problem.model, {"w": width})
    with pytest.raises(PassError, match="no zeroing oracle"):
        zero_units(problem.model, width, [0])
