#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX model with LayerNorm / Softmax layers kept in FP32 where needed.

Standalone: runs on the device with Python 3.6+ (JetPack 4.6), TensorRT 8.2 or later, numpy; pycuda only for
``--fp32-layers auto``. No onnx package needed: the layers to keep in FP32 are read from ``fp32_layers.json``,
written next to this script by ``python -m runtime.bundle`` (ONNX node names and output tensor names of every
LayerNorm pattern and Softmax). trtexec 8.2 has no ``--layerPrecisions``; this script does it with the builder API::

    python3 build_engine.py model.onnx -o model.engine --fp16 --fp32-layers auto --workspace-mb 512 \
        --timing-cache timing.cache

``--fp32-layers``: ``none`` (plain FP16), ``layernorm``, ``softmax``, ``layernorm,softmax``, or ``auto``: build FP16,
run it and an FP32 engine (the reference) on one seeded random input, and if the argmax class agrees on fewer than
``--threshold`` of the pixels (default 0.99), rebuild with LayerNorm and Softmax in FP32 and report both agreements.
A constrained layer gets ``layer.precision = float32`` and FP32 output types; the builder flag that makes TensorRT
obey them is ``OBEY_PRECISION_CONSTRAINTS`` (8.4+) or ``STRICT_TYPES`` (8.2). The workspace limit is
``config.max_workspace_size`` on 8.2/8.3 and ``config.set_memory_pool_limit(WORKSPACE, ...)`` from 8.4 on.

``runtime/trt.py`` (the workstation command) imports the TensorRT functions of this file, so both build the same way.
"""

import argparse
import json
import os
import re
import sys
import time

import numpy as np

FP32_KINDS = ("layernorm", "softmax")


# ------------------------------------------------------------------------------------------ pure helpers (no TRT)


def parse_fp32_layers(text):
    """``auto`` -> "auto"; ``none`` -> (); ``layernorm,softmax`` -> ("layernorm", "softmax"). ValueError otherwise."""
    text = (text or "").strip().lower()
    if text == "auto":
        return "auto"
    if text in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in FP32_KINDS]
    if bad:
        raise ValueError(f"unknown --fp32-layers kind(s) {bad}: use auto, none or a comma list of {FP32_KINDS}")
    return tuple(k for k in FP32_KINDS if k in kinds)


def match_layers(layers, selection, kinds):
    """Indices of the TensorRT layers that implement the selected ONNX nodes.

    ``layers``: a list of ``(layer_name, [output tensor names])`` in network order. ``selection``:
    ``{kind: {"nodes": [onnx node names], "tensors": [onnx output tensor names]}}``. A layer matches when one of its
    outputs is a selected ONNX tensor (the parser keeps ONNX tensor names on each node's final layer), or its name is
    a selected node name, possibly with the parser's uniqueness suffix ``_<n>`` (the other layers a node expands to).
    """
    nodes = set()
    tensors = set()
    for kind in kinds:
        entry = selection.get(kind) or {}
        nodes.update(entry.get("nodes", []))
        tensors.update(entry.get("tensors", []))
    out = []
    suffix = re.compile(r"^(.*)_\d+$")
    for i, (name, outputs) in enumerate(layers):
        m = suffix.match(name)
        if name in nodes or (m and m.group(1) in nodes) or any(o in tensors for o in outputs):
            out.append(i)
    return out


def pixel_agreement(a, b):
    """Fraction of pixels whose argmax class (axis 1 of ``N x C x H x W`` logits) is the same in ``a`` and ``b``."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


# ------------------------------------------------------------------------------------------------ TensorRT side


def trt_version(trt):
    """(major, minor) of the imported tensorrt module."""
    parts = trt.__version__.split(".")
    return int(parts[0]), int(parts[1])


def set_workspace(config, trt, workspace_mb):
    """Limit the builder workspace: ``set_memory_pool_limit`` (8.4+) or ``max_workspace_size`` (8.2/8.3)."""
    size = int(workspace_mb) * (1 << 20)
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)
    else:
        config.max_workspace_size = size


def precision_flag(trt):
    """The builder flag that makes layer precisions binding: OBEY_PRECISION_CONSTRAINTS (8.4+) or STRICT_TYPES."""
    flag = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
    return flag if flag is not None else trt.BuilderFlag.STRICT_TYPES


def constrain_layers(network, trt, selection, kinds):
    """Set FP32 precision and FP32 outputs on the layers matching ``selection``; return their names."""
    if not kinds:
        return []
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        layers.append((layer.name, [layer.get_output(j).name for j in range(layer.num_outputs)]))
    floats = (trt.float32, trt.float16)
    names = []
    for i in match_layers(layers, selection, kinds):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(o.dtype not in floats for o in outputs):
            continue  # shape/index layers: no float precision to constrain
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        names.append(layer.name)
    return names


def build_serialized(
    onnx_path, fp16=True, workspace_mb=1024, timing_cache=None, selection=None, kinds=(), batch=1, log=print
):
    """Parse ``onnx_path`` and build a serialised engine; return ``(engine bytes, constrained layer names)``.

    A dynamic batch gets one optimisation profile with min = opt = max = ``batch``. The timing cache is read
    from ``timing_cache`` when the file exists and written back after the build.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and trt_version(trt)[0] < 10:
        flags = 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("TensorRT cannot parse {}:\n  {}".format(onnx_path, "\n  ".join(errors)))
    config = builder.create_builder_config()
    set_workspace(config, trt, workspace_mb)
    if fp16:
        if not builder.platform_has_fast_fp16:
            log("warning: this GPU has no fast FP16; building FP16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise RuntimeError(f"input {tensor.name} has dynamic dims {shape} other than the batch")
        if shape and shape[0] < 0:
            profile = profile or builder.create_optimization_profile()
            fixed = tuple([batch] + shape[1:])
            profile.set_shape(tensor.name, fixed, fixed, fixed)
    if profile is not None:
        config.add_optimization_profile(profile)
    constrained = constrain_layers(network, trt, selection or {}, kinds)
    if constrained:
        config.set_flag(precision_flag(trt))
        log("kept {} layers in FP32 ({})".format(len(constrained), ", ".join(kinds)))
    cache = None
    if timing_cache:
        blob = b""
        if os.path.isfile(timing_cache):
            with open(timing_cache, "rb") as f:
                blob = f.read()
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)
    t0 = time.time()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("the TensorRT build failed (see the messages above); try a larger --workspace-mb")
    log(f"built in {time.time() - t0:.1f} s")
    if timing_cache:
        with open(timing_cache, "wb") as f:
            f.write(bytes(config.get_timing_cache().serialize()))
    return bytes(engine), constrained


def run_engine(engine_bytes, inputs):
    """Run a serialised engine once on ``{name: array}`` with pycuda; return ``{output name: array}``.

    Uses the binding API of TensorRT 8 (``execute_async_v2``) or the tensor API of 10 (``execute_async_v3``).
    """
    import pycuda.autoinit  # noqa: F401 - creates the CUDA context
    import pycuda.driver as cuda
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    context = engine.create_execution_context()
    stream = cuda.Stream()
    outputs = {}
    device = []
    if hasattr(engine, "num_io_tensors"):  # TensorRT 8.5+ / 10
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                if any(d < 0 for d in engine.get_tensor_shape(name)):  # only dynamic inputs take a shape
                    context.set_input_shape(name, inputs[name].shape)
        for name in names:
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                host = np.ascontiguousarray(inputs[name].astype(dtype))
                buf = cuda.mem_alloc(host.nbytes)
                cuda.memcpy_htod_async(buf, host, stream)
            else:
                host = cuda.pagelocked_empty(tuple(context.get_tensor_shape(name)), dtype)
                buf = cuda.mem_alloc(host.nbytes)
                outputs[name] = (host, buf)
            device.append(buf)
            context.set_tensor_address(name, int(buf))
        context.execute_async_v3(stream.handle)
    else:  # TensorRT 8.2 binding API
        bindings = []
        for i in range(engine.num_bindings):
            name = engine.get_binding_name(i)
            dtype = trt.nptype(engine.get_binding_dtype(i))
            if engine.binding_is_input(i):
                host = np.ascontiguousarray(inputs[name].astype(dtype))
                if any(d < 0 for d in engine.get_binding_shape(i)):
                    context.set_binding_shape(i, host.shape)
                buf = cuda.mem_alloc(host.nbytes)
                cuda.memcpy_htod_async(buf, host, stream)
            else:
                host = cuda.pagelocked_empty(tuple(context.get_binding_shape(i)), dtype)
                buf = cuda.mem_alloc(host.nbytes)
                outputs[name] = (host, buf)
            device.append(buf)
            bindings.append(int(buf))
        context.execute_async_v2(bindings, stream.handle)
    for host, buf in outputs.values():
        cuda.memcpy_dtoh_async(host, buf, stream)
    stream.synchronize()
    return {name: np.array(host, dtype=np.float32) for name, (host, _) in outputs.items()}


# ------------------------------------------------------------------------------------------------------- main


def _input_shapes(engine_bytes, batch):
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
    shapes = {}
    if hasattr(engine, "num_io_tensors"):
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shapes[name] = [batch if d < 0 else d for d in engine.get_tensor_shape(name)]
    else:
        for i in range(engine.num_bindings):
            if engine.binding_is_input(i):
                shapes[engine.get_binding_name(i)] = [batch if d < 0 else d for d in engine.get_binding_shape(i)]
    return shapes


def build_auto(onnx_path, workspace_mb, timing_cache, selection, threshold, batch, seed=0, log=print):
    """FP16 build; if its pixel agreement with an FP32 engine is below ``threshold``, rebuild with LayerNorm and
    Softmax in FP32. Returns ``(engine bytes, report dict)``."""
    ref, _ = build_serialized(onnx_path, False, workspace_mb, timing_cache, None, (), batch, log)
    shapes = _input_shapes(ref, batch)
    rng = np.random.RandomState(seed)
    feed = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    want = run_engine(ref, feed)
    engine, _ = build_serialized(onnx_path, True, workspace_mb, timing_cache, None, (), batch, log)
    got = run_engine(engine, feed)
    key = sorted(want)[0]
    agree = pixel_agreement(want[key], got[key])
    report = {"reference": "tensorrt fp32", "fp16_agreement": agree, "threshold": threshold, "constrained": []}
    log(f"FP16 pixel agreement with FP32: {agree:.4f} (threshold {threshold})")
    if agree >= threshold:
        return engine, report
    engine, names = build_serialized(onnx_path, True, workspace_mb, timing_cache, selection, FP32_KINDS, batch, log)
    got = run_engine(engine, feed)
    report["constrained"] = names
    report["constrained_agreement"] = pixel_agreement(want[key], got[key])
    log("with LayerNorm/Softmax in FP32: {:.4f}".format(report["constrained_agreement"]))
    return engine, report


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx")
    p.add_argument("-o", "--output", required=True, help="engine file to write")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    p.add_argument("--workspace-mb", type=int, default=512)
    p.add_argument("--timing-cache", default=None)
    p.add_argument("--fp32-layers", default="auto", help="auto | none | layernorm,softmax")
    p.add_argument("--fp32-list", default=os.path.join(here, "fp32_layers.json"))
    p.add_argument("--threshold", type=float, default=0.99, help="pixel agreement below which auto constrains")
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args(argv)
    try:
        kinds = parse_fp32_layers(args.fp32_layers)
    except ValueError as exc:
        p.error(str(exc))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print("error: TensorRT's Python package is not importable (on JetPack: sudo apt install python3-libnvinfer)")
        return 1
    selection = {}
    if kinds and os.path.isfile(args.fp32_list):
        with open(args.fp32_list) as f:
            selection = json.load(f)
    elif kinds:
        print(f"warning: {args.fp32_list} not found: no layer can be constrained")
    report = {"fp32_layers": args.fp32_layers}
    if kinds == "auto" and args.fp16:
        try:
            import pycuda.driver  # noqa: F401
        except ImportError:
            print(
                "pycuda is not installed (pip3 install pycuda): cannot compare builds; keeping LayerNorm and "
                "Softmax in FP32 (the safe choice)"
            )
            kinds = FP32_KINDS
    if kinds == "auto" and args.fp16:
        engine, auto = build_auto(
            args.onnx, args.workspace_mb, args.timing_cache, selection, args.threshold, args.batch
        )
        report.update(auto)
    else:
        fixed = () if kinds == "auto" else kinds
        engine, names = build_serialized(
            args.onnx,
            args.fp16,
            args.workspace_mb,
            args.timing_cache,
            selection,
            fixed if args.fp16 else (),
            args.batch,
        )
        report["constrained"] = names
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(engine)
    os.replace(tmp, args.output)
    with open(args.output + ".json", "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output} ({len(engine) / 1e6:.1f} MB) and {args.output}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
