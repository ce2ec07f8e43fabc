"""A zoo of small EXTERNAL models (timm, torchvision, transformers, a plain CNN), exported the way a user does.

:func:`build` returns a torch module in eval mode (tiny configurations, 16x16 to 64x64 inputs, so the passes run
in seconds on two CPU cores) and its input shape; :func:`export` writes it to one ``.onnx`` file with
``torch.onnx.export`` directly, never through :mod:`exporters.export`: no weight map, no metadata, no checks of our
own, so the passes see the graphs users bring. Two weight variants:

* ``fresh``: the module's own random init, untouched (an untrained model: zero biases, unit LayerNorm scales, so
  the exporters merge equal initializers into one tensor read by several nodes);
* ``perturbed``: every parameter and float buffer plus seeded noise (``_shared.perturb_``), no two tensors equal.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from _shared import perturb_, write_once
from torch import nn

VARIANTS = ("fresh", "perturbed")
EXPORTS = {  # id: (exporter, opset); dynamo builds opset 18 (its default here is 20)
    "legacy13": ("legacy", 13),
    "legacy17": ("legacy", 17),
    "dynamo18": ("dynamo", 18),
}
#: exports with symbolic dimensions, as users make them: id -> (static export of the same form, axes). ``batch``: a
#: dynamic batch (``dynamic_axes={"input": {0: ...}}``; dynamo: ``dynamic_shapes`` of ``Dim.AUTO``); ``size``: a
#: dynamic batch, height and width
DYNAMIC = {
    "legacy17-batch": ("legacy17", "batch"),
    "dynamo18-batch": ("dynamo18", "batch"),
    "legacy17-size": ("legacy17", "size"),
    "dynamo18-size": ("dynamo18", "size"),
}


@dataclass(frozen=True)
class ZooModel:
    """A model of the zoo and what the passes should find in it.

    ``heads``: attention blocks with two or more heads (``find_attention_blocks``); ``mlps``: transformer MLPs whose
    activation is elementwise (``find_mlps``); ``channels``: whether slice_channels has a conv channel group to cut;
    ``requires``: the module a test must ``importorskip`` first; ``calibrate_bn``: BatchNorm statistics are
    measured on random images before the weight variant is made (with its init statistics the model's activations
    vanish into denormals, so every output is 0); ``cannot_export``: ``(export id, why)`` of the exports torch
    itself refuses. ``head_dims``: the head-channel groups that can be cut, where a block count does not say it (a
    block of one head has them too: MobileViTv2's separable attention); ``refused``: ``(kind, reason)``: every unit
    of that kind is refused, each with a reason that holds ``reason`` (the engine cannot cut them exactly and says
    why; a regression that cut them, or refused them for another reason, fails). ``sides``: other input sides its
    export with a dynamic height and width runs at (empty: the export holds its size, as a learned position
    embedding or a baked patch grid does, so no dynamic-size export is made).
    """

    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    heads: int
    mlps: int
    channels: bool
    requires: str | None = None
    calibrate_bn: bool = False
    cannot_export: tuple[tuple[str, str], ...] = ()
    head_dims: int | None = None
    refused: tuple[tuple[str, str], ...] = ()
    sides: tuple[int, ...] = ()

    def export_skip(self, export_id: str) -> str | None:
        """Why the exporter itself cannot export this model as ``export_id`` (``None``: it can)."""
        return dict(self.cannot_export).get(export_id)

    def refusal(self, kind: str) -> str | None:
        """What the reason of every refused unit of ``kind`` holds, where all are refused (``None``: none is)."""
        return dict(self.refused).get(kind)


class _Logits(nn.Module):
    """``net(pixel_values=x).logits`` of a transformers model as a plain tensor-in, tensor-out module."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).logits


# ----------------------------------------------------------------------------------------------------- builders
def timm_vit() -> nn.Module:
    """timm ViT: 32x32, 8x8 patches (16 tokens + class token), 2 blocks of 4 heads x 16, GELU MLP 256."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)


def timm_mobilevit() -> nn.Module:
    """timm MobileViT-XXS (1.0M params) at 64x64: 9 transformer blocks of 4 heads, SiLU MLPs."""
    import timm

    return timm.create_model("mobilevit_xxs", pretrained=False, num_classes=5)


def timm_swin() -> nn.Module:
    """timm Swin: 32x32, 2x2 patches, 4x4 windows, two stages of 2 blocks (2 and 4 heads), shifted windows."""
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=5
    )


def timm_swinv2() -> nn.Module:
    """timm SwinV2-CR (cosine attention: q and k L2-normalised over head_dim, a per-head logit scale; post-norm):
    64x64, 4x4 windows, two stages of 2 blocks (2 and 4 heads).

    Its residual branches end in a LayerNorm that timm initialises to scale 0, so every fresh block is an identity
    and no oracle could tell which units were cut; the scales are set to 1, as a trained model's are not 0."""
    import timm

    net = timm.create_model(
        "swinv2_cr_tiny_ns_224", pretrained=False, num_classes=5, img_size=64, window_size=4, embed_dim=32,
        depths=(2, 2), num_heads=(2, 4),
    )  # fmt: skip
    for block in net.modules():
        if type(block).__name__ == "SwinTransformerV2CrBlock":
            nn.init.ones_(block.norm1.weight)
            nn.init.ones_(block.norm2.weight)
    return net


def timm_pvt_v2() -> nn.Module:
    """timm PVTv2-B0 (SegFormer's encoder: spatial-reduction attention, a depthwise conv inside each MLP) at 64x64;
    1/2/5/8 heads in its four stages of 2 blocks."""
    import timm

    return timm.create_model("pvt_v2_b0", pretrained=False, num_classes=5)


def timm_levit() -> nn.Module:
    """timm LeViT-128S at 64x64: BatchNorm after every linear layer; per head a fused ``[q 16 | k 16 | v 32]``
    projection split into unequal parts (64 values per head in the downsampling attention); 11 attention blocks.

    Each residual branch ends in a BatchNorm that timm initialises to scale 0 (as SwinV2-CR's LayerNorms), so a
    fresh block is an identity; those scales are set to 1."""
    import timm

    net = timm.create_model("levit_128s", pretrained=False, num_classes=5, img_size=64)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d) and not m.weight.any():
            nn.init.ones_(m.weight)
    return net


def tv_vit() -> nn.Module:
    """torchvision ViT (nn.MultiheadAttention): 32x32, 8x8 patches, 2 layers of 4 heads x 16, MLP 128.

    The classifier is replaced by an identity (a backbone use): torchvision initialises it to zero, so a fresh
    model would output zeros whatever the heads hold.
    """
    from torchvision.models import VisionTransformer

    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    net.heads = nn.Identity()
    return net


def tiny_cnn() -> nn.Module:
    """The channel tests' TinyCNN (BN, residual, depthwise, Linear-ReLU-Linear head) at 16x16."""
    from _helpers_channels import TinyCNN

    return TinyCNN()


def hf_mobilevit() -> nn.Module:
    """transformers MobileViTForSemanticSegmentation, tiny: 64x64, hidden sizes 32/48/64, 4 heads, DeepLabV3 head."""
    from transformers import MobileViTConfig, MobileViTForSemanticSegmentation

    config = MobileViTConfig(
        image_size=64,
        hidden_sizes=[32, 48, 64],
        neck_hidden_sizes=[16, 16, 24, 32, 48, 64, 128],
        num_attention_heads=4,
        aspp_out_channels=32,
        num_labels=3,
        attn_implementation="eager",
    )
    return _Logits(MobileViTForSemanticSegmentation(config))


def hf_segformer() -> nn.Module:
    """transformers SegformerForSemanticSegmentation, tiny: 64x64, one block per stage, 1/2/2/4 heads."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 48, 64],
        num_attention_heads=[1, 2, 2, 4],
        decoder_hidden_size=32,
        num_labels=3,
        attn_implementation="eager",
    )
    return _Logits(SegformerForSemanticSegmentation(config))


def tv_swinv2() -> nn.Module:
    """torchvision Swin-V2 (cosine attention, continuous position bias by an MLP over a log-spaced table, post-norm,
    PatchMergingV2): 32x32, 2x2 patches, 4x4 windows, two stages of 2 blocks (2 and 4 heads). Its attention masks
    the shifted windows by writing into a zero tensor (ScatterND on the legacy export, a GatherND on dynamo's)."""
    from torchvision.models import swin_transformer as sw

    return sw.SwinTransformer(
        patch_size=[2, 2], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], stochastic_depth_prob=0.0,
        num_classes=5, block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2,
    )  # fmt: skip


def tv_maxvit() -> nn.Module:
    """torchvision MaxViT: 64x64, a 16-channel stem, two stages of one MBConv + block- and grid-attention layer
    (32 and 64 channels, heads of 16 channels), partitions of 4x4; its attention is written with ``einsum``."""
    from torchvision.models.maxvit import MaxVit

    return MaxVit(
        input_size=(64, 64), stem_channels=16, partition_size=4, block_channels=[32, 64], block_layers=[1, 1],
        head_dim=16, stochastic_depth_prob=0.0, num_classes=5,
    )  # fmt: skip


def timm_coat_lite() -> nn.Module:
    """timm CoaT-Lite (factorised attention ``q @ (softmax_N(k)^T @ v)`` plus a convolutional relative position
    encoding whose depthwise kernels are 3/5/7 for 2/3/3 of the 8 heads): 64x64, four serial stages of one block
    (32, 32, 64, 64 channels), MLP ratio 2."""
    from timm.models.coat import CoaT

    return CoaT(
        img_size=64, patch_size=4, embed_dims=(32, 32, 64, 64), serial_depths=(1, 1, 1, 1), parallel_depth=0,
        num_heads=8, mlp_ratios=(2, 2, 2, 2), num_classes=5,
    )  # fmt: skip


def timm_convit() -> nn.Module:
    """timm ConViT: 32x32, 8x8 patches, 4 heads of 16 (ConViT multiplies its embed_dim by the heads), one gated
    positional self-attention block (two softmaxes: content and position, mixed by a per-head gate) and one plain
    multi-head attention block (after the class token is appended)."""
    from timm.models.convit import ConVit

    return ConVit(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=4, local_up_to_layer=1, num_classes=5)


def timm_mobilevitv2() -> nn.Module:
    """timm MobileViTv2-0.5 (1.1M params) at 64x64: separable self-attention (a one-channel query softmaxed over
    the patches weighs the keys into one context vector, which scales ``relu(v)``), GroupNorm of one group as its
    LayerNorm, 1x1-conv MLPs."""
    import timm

    return timm.create_model("mobilevitv2_050", pretrained=False, num_classes=5)


def timm_beit() -> nn.Module:
    """timm BEiT: 32x32, 8x8 patches, 2 blocks of 4 heads x 16, a relative position bias per block, layer scales
    (``gamma_1``, ``gamma_2``) initialised to 0.5, a trained model's order (at 0.1 a residual branch adds too little
    for a wrong cut to show against the zeroing oracle), q and v biases (k's a zero buffer, concatenated with them
    at run time)."""
    from timm.models.beit import Beit

    net = Beit(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, init_values=0.5, use_abs_pos_emb=False,
        use_rel_pos_bias=True, num_classes=5,
    )  # fmt: skip
    # timm draws the output projections at std 0.02 / sqrt(2 * layer): a fresh block's heads then move the output by
    # under 1%, which no zeroing control can tell apart; they get nn.Linear's own init, as the other zoo models' have
    for block in net.blocks:
        block.attn.proj.reset_parameters()
    return net


def hf_swinv2() -> nn.Module:
    """transformers Swinv2ForImageClassification, tiny: 32x32, 2x2 patches, 4x4 windows, two stages of 2 blocks
    (2 and 4 heads)."""
    from transformers import Swinv2Config, Swinv2ForImageClassification

    config = Swinv2Config(
        image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5,
        attn_implementation="eager",
    )  # fmt: skip
    return _Logits(Swinv2ForImageClassification(config))


def hf_beit_seg() -> nn.Module:
    """transformers BeitForSemanticSegmentation, tiny: 64x64, 8x8 patches, 4 layers of 4 heads x 16 (relative
    position bias, layer scales ``lambda_1``/``lambda_2`` initialised to 0.5, as timm's BEiT), the FPN of
    ConvTranspose2d / MaxPool and a UPerNet head with pooling bins 1, 2, 4. Its ``out_indices`` 1 .. 4 pick
    ``hidden_states[i - 1]``: the embeddings and the first three layers' outputs, so the fourth layer is dead code
    and the exporters drop it."""
    from transformers import BeitConfig, BeitForSemanticSegmentation

    config = BeitConfig(
        image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        out_indices=[1, 2, 3, 4], use_relative_position_bias=True, layer_scale_init_value=0.5, pool_scales=[1, 2, 4],
        auxiliary_channels=32, num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    return _Logits(BeitForSemanticSegmentation(config))


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("timm_vit", timm_vit, (1, 3, 32, 32), heads=2, mlps=2, channels=False),
        ZooModel(
            "tv_vit",
            tv_vit,
            (1, 3, 32, 32),
            heads=2,
            mlps=2,
            channels=False,
            cannot_export=(("legacy13", "nn.MultiheadAttention exports scaled_dot_product_attention (opset >= 14)"),),
        ),
        ZooModel("timm_swin", timm_swin, (1, 3, 32, 32), heads=4, mlps=4, channels=False),
        ZooModel("timm_mobilevit", timm_mobilevit, (1, 3, 64, 64), heads=9, mlps=9, channels=True),
        ZooModel("timm_swinv2", timm_swinv2, (1, 3, 64, 64), heads=4, mlps=4, channels=False),
        ZooModel(
            "timm_pvt_v2", timm_pvt_v2, (1, 3, 64, 64), heads=6, mlps=8, channels=False, sides=(96, 128)
        ),  # stage 1: one head
        ZooModel("timm_levit", timm_levit, (1, 3, 64, 64), heads=11, mlps=11, channels=True),
        ZooModel("tiny_cnn", tiny_cnn, (1, 3, 16, 16), heads=0, mlps=1, channels=True),
        ZooModel(
            "hf_mobilevit",
            hf_mobilevit,
            (1, 3, 64, 64),
            heads=9,
            mlps=10,  # 9 transformer MLPs and the 1x1-conv one of the head (ASPP project -> ReLU -> classifier)
            channels=True,
            requires="transformers",
            calibrate_bn=True,
        ),
        # stage 1 has one head; MLPs: 4 Mix-FFNs (a depthwise conv between fc1 and fc2) and the head's 1x1 convs
        ZooModel(
            "hf_segformer",
            hf_segformer,
            (1, 3, 64, 64),
            heads=3,
            mlps=5,
            channels=True,
            requires="transformers",
            sides=(96, 128),
        ),
        ZooModel("tv_swinv2", tv_swinv2, (1, 3, 32, 32), heads=4, mlps=4, channels=False, sides=(48, 64)),
        # MLPs: 2 MBConv squeeze-excitations (1x1 convs) and 1x1 classifier pair besides the 4 transformer MLPs
        ZooModel("tv_maxvit", tv_maxvit, (1, 3, 64, 64), heads=4, mlps=7, channels=True),
        ZooModel(
            "timm_coat_lite",
            timm_coat_lite,
            (1, 3, 64, 64),
            heads=4,
            mlps=4,
            channels=False,
            refused=(
                ("heads", "factorised attention (a softmax of k over the tokens): Split node"),
                ("head_dim", "its attention block cannot be cut: factorised attention"),
            ),  # the position encoding's Split gives each group of heads its own kernel size: a head cut would move
            # heads between groups of convolutions that the layout of one axis cannot express
        ),
        ZooModel("timm_convit", timm_convit, (1, 3, 32, 32), heads=2, mlps=2, channels=False),
        # separable attention: one head per block (nothing to cut in heads), its key/value channels are head channels;
        # MLPs: 9 transformer MLPs and 3 1x1-conv pairs of the MobileNet blocks
        ZooModel("timm_mobilevitv2", timm_mobilevitv2, (1, 3, 64, 64), heads=0, mlps=12, channels=True, head_dims=9),
        ZooModel(
            "timm_beit",
            timm_beit,
            (1, 3, 32, 32),
            heads=2,
            mlps=2,
            channels=False,
            cannot_export=(("dynamo18", "torch's decomposition fails on BEiT's fused attention (cannot view as)"),),
        ),
        ZooModel("hf_swinv2", hf_swinv2, (1, 3, 32, 32), heads=4, mlps=4, channels=False, requires="transformers"),
        # its FPN upsamples with ConvTranspose2d; the width is concatenated with the pyramid pooling's channels in the
        # UPerNet head, which keeps it whole
        ZooModel(
            "hf_beit_seg",
            hf_beit_seg,
            (1, 3, 64, 64),
            heads=3,
            mlps=3,
            channels=True,
            requires="transformers",
            refused=(("width", "carries the unit axis but Conv node"),),
            cannot_export=(
                ("legacy17-batch", "adaptive_avg_pool2d of a dynamic size (the UPerNet head's pooling)"),
                ("legacy17-size", "adaptive_avg_pool2d of a dynamic size (the UPerNet head's pooling)"),
            ),
        ),
    )
}


def build(name: str, variant: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """Model ``name`` in eval mode with ``variant`` weights (``fresh`` or ``perturbed``), seeded, and its input
    shape."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown weight variant {variant!r}; use one of {VARIANTS}")
    torch.manual_seed(seed)
    net = MODELS[name].build()
    if MODELS[name].calibrate_bn:
        calibrate_bn_(net, MODELS[name].shape, seed)
    if variant == "perturbed":
        perturb_(net, seed)
    return net.eval(), MODELS[name].shape


def calibrate_bn_(net: nn.Module, shape: tuple[int, ...], seed: int = 0, batches: int = 4) -> nn.Module:
    """Set every BatchNorm's running statistics to their average over ``batches`` random inputs (in place)."""
    bns = {m: m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen = torch.Generator().manual_seed(seed + 1)
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.randn((4, *shape[1:]), generator=gen))
    for m, momentum in bns.items():
        m.momentum = momentum
    return net.eval()


# ------------------------------------------------------------------------------------------------------- export
@contextlib.contextmanager
def _export_mode(model: nn.Module, opset: int) -> Iterator[None]:
    """What a user sets for an export: no MHA fast path (it does not export); below opset 14 no fused attention
    (``scaled_dot_product_attention`` needs 14): the modules' ``fused_attn`` flag is what
    ``timm.layers.set_fused_attn(False)`` before building sets. Everything is restored afterwards."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    fused = {m: m.fused_attn for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)}
    torch.backends.mha.set_fastpath_enabled(False)
    if opset < 14:
        for m in fused:
            m.fused_attn = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on constant shapes: sizes are fixed
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, value in fused.items():
            m.fused_attn = value


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


#: the input axes each kind of dynamic export leaves symbolic
AXES = {"batch": (0,), "size": (0, 2, 3)}


def export(
    model: nn.Module,
    shape: tuple[int, ...],
    path: str | Path,
    exporter: str = "legacy",
    opset: int = 17,
    axes: str | None = None,
) -> Path:
    """Export ``model`` to ONE ``.onnx`` file as a user does: ``torch.onnx.export(dynamo=False)`` for ``legacy``;
    for ``dynamo`` ``prog = torch.onnx.export(dynamo=True); prog.save(path)`` (value_info included). ``axes``
    (:data:`AXES`) leaves those input axes symbolic: ``dynamic_axes`` for legacy; for dynamo ``dynamic_shapes``
    of ``Dim.AUTO``, traced at a batch of 2 (torch.export specialises a dimension it sees as 1)."""
    path = Path(path)
    dims = AXES[axes] if axes else ()
    x = example_input(shape if exporter == "legacy" or not dims else (2, *shape[1:]))
    with _export_mode(model, opset):
        if exporter == "legacy":
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {d: f"input_{d}" for d in dims}} if dims else None,
            )
        elif exporter == "dynamo":
            prog = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({d: torch.export.Dim.AUTO for d in dims},) if dims else None,
                verbose=False,
            )
            prog.save(str(path))
        else:
            raise ValueError(f"unknown exporter {exporter!r}; use legacy or dynamo")
    return path


_CACHE: dict[tuple[Path, str, str, str], Path] = {}


def exported(root: Path, name: str, export_id: str, variant: str) -> tuple[onnx.ModelProto, Path]:
    """``(model, path)``: zoo model ``name`` with ``variant`` weights exported per ``EXPORTS[export_id]`` (or
    ``DYNAMIC[export_id]``) under ``root``, once per test session (the file is reused; a fresh ModelProto is loaded
    each call)."""
    key = (root, name, export_id, variant)
    if key not in _CACHE:
        static, axes = DYNAMIC.get(export_id, (export_id, None))
        exporter, opset = EXPORTS[static]

        def make(path: Path) -> None:
            net, shape = build(name, variant)
            export(net, shape, path, exporter, opset, axes)

        _CACHE[key] = write_once(root / f"{name}_{export_id}_{variant}.onnx", make)  # once for both workers
    return onnx.load(str(_CACHE[key])), _CACHE[key]
