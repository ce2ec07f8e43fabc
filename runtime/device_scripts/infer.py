#!/usr/bin/env python3
"""Segment a folder of images with the bundle's model; write class-id masks and the challenge's timing.

Standalone: Python 3.6+ (JetPack 4.6), numpy, and Pillow or OpenCV. Backend: a TensorRT engine when ``tensorrt`` and
``pycuda`` import and the engine file exists, else onnxruntime on the ONNX file (``--backend`` forces one)::

    python3 infer.py /data/IMG/val -o masks/            # masks/<image stem>.png + masks/timing.json

Per image: RGB -> resize to the model's input size (bilinear; Pillow's filter, OpenCV's INTER_AREA/INTER_LINEAR as a
fallback) -> ``(x / 255 - mean) / std`` -> the model -> logits upsampled bilinearly (half-pixel centres, as torch's
``align_corners=False``) to the image's size -> argmax -> PNG of class ids (uint8).

Timing (``timing.json``): ``mean_seconds_per_image`` is the model call alone - on TensorRT the host-to-device copy,
the execution and the device-to-host copy, ending with a CUDA stream synchronisation, so the GPU work is inside the
clock; ``fps`` = 1 / that mean. ``end_to_end_seconds_per_image`` adds reading, pre/post-processing and writing.
``--warmup`` untimed runs on the first image come first.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


# -------------------------------------------------------------------------------------------- image handling


def read_rgb(path):
    """HxWx3 uint8 RGB."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except ImportError:
        import cv2

        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError("cannot read " + path) from None
        return bgr[:, :, ::-1].copy()


def write_mask(path, mask):
    """Write an HxW uint8 class-id map as a grey PNG."""
    try:
        from PIL import Image

        Image.fromarray(mask).save(path)
    except ImportError:
        import cv2

        cv2.imwrite(path, mask)


def resize_rgb(image, height, width):
    """Bilinear resize of an HxWx3 uint8 image (Pillow, antialiased when shrinking; OpenCV as a fallback)."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    try:
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    except ImportError:
        import cv2

        shrink = height < image.shape[0] or width < image.shape[1]
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def interp_matrix(out_len, in_len):
    """``[out_len, in_len]`` linear interpolation weights, half-pixel centres, edges clamped."""
    scale = in_len / out_len
    src = np.maximum((np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    frac = src - i0
    m = np.zeros((out_len, in_len), np.float64)
    rows = np.arange(out_len)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def logits_to_mask(logits, height, width):
    """C x h x w logits -> H x W uint8 argmax after bilinear upsampling to (height, width)."""
    h, w = logits.shape[-2:]
    x = logits.astype(np.float32)
    if (h, w) != (height, width):
        ry = interp_matrix(height, h).astype(np.float32)
        rx = interp_matrix(width, w).astype(np.float32)
        x = np.matmul(np.matmul(ry, x), rx.T)
    return np.argmax(x, axis=0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- backends


class OnnxModel:
    """onnxruntime session (CUDA provider first when present)."""

    name = "onnxruntime"
    synchronised = True  # session.run returns when the outputs are on the host

    def __init__(self, path):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(path, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.dtype = np.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else np.float32
        self.providers = self.session.get_providers()

    def __call__(self, x):
        return np.asarray(self.session.run(None, {self.input: x.astype(self.dtype)})[0], np.float32)


class TrtModel:
    """A TensorRT engine run with pycuda: buffers allocated once; each call copies in, executes, copies out and
    synchronises the stream (TensorRT 8 binding API, or the tensor API of 8.5+/10)."""

    name = "tensorrt"
    synchronised = True

    def __init__(self, path, input_shape):
        import pycuda.autoinit  # noqa: F401 - creates the CUDA context
        import pycuda.driver as cuda
        import tensorrt as trt

        self.cuda = cuda
        logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError("cannot deserialise " + path + " (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.v3 = hasattr(self.engine, "num_io_tensors")
        self.inputs = []  # (host, device)
        self.outputs = []
        self.bindings = []
        if self.v3:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            for name in names:
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    if any(d < 0 for d in self.engine.get_tensor_shape(name)):  # dynamic inputs only
                        self.context.set_input_shape(name, tuple(input_shape))
            for name in names:
                dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                shape = tuple(self.context.get_tensor_shape(name))
                host = cuda.pagelocked_empty(shape, dtype)
                dev = cuda.mem_alloc(host.nbytes)
                self.context.set_tensor_address(name, int(dev))
                is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                (self.inputs if is_input else self.outputs).append((host, dev))
        else:
            for i in range(self.engine.num_bindings):
                dtype = trt.nptype(self.engine.get_binding_dtype(i))
                if self.engine.binding_is_input(i):
                    if any(d < 0 for d in self.engine.get_binding_shape(i)):
                        self.context.set_binding_shape(i, tuple(input_shape))
                shape = tuple(self.context.get_binding_shape(i))
                host = cuda.pagelocked_empty(shape, dtype)
                dev = cuda.mem_alloc(host.nbytes)
                self.bindings.append(int(dev))
                (self.inputs if self.engine.binding_is_input(i) else self.outputs).append((host, dev))
        self.providers = ["TensorRT " + trt.__version__]

    def __call__(self, x):
        cuda = self.cuda
        host, dev = self.inputs[0]
        np.copyto(host, x.astype(host.dtype).reshape(host.shape))
        cuda.memcpy_htod_async(dev, host, self.stream)
        if self.v3:
            self.context.execute_async_v3(self.stream.handle)
        else:
            self.context.execute_async_v2(self.bindings, self.stream.handle)
        out_host, out_dev = self.outputs[0]
        cuda.memcpy_dtoh_async(out_host, out_dev, self.stream)
        self.stream.synchronize()  # the GPU work is inside the caller's clock
        return np.array(out_host, dtype=np.float32)


def open_model(backend, here, config):
    """The backend asked for, or TensorRT when importable with an engine present, else onnxruntime."""
    engine = os.path.join(here, config.get("engine", "model.engine"))
    onnx_path = os.path.join(here, config.get("model", "model.onnx"))
    if backend in ("auto", "tensorrt"):
        try:
            import pycuda.driver  # noqa: F401
            import tensorrt  # noqa: F401

            have_trt = os.path.isfile(engine)
            why = "" if have_trt else engine + " not found (run build_engine.sh first)"
        except ImportError as exc:
            have_trt = False
            why = f"tensorrt/pycuda not importable ({exc})"
        if have_trt:
            return TrtModel(engine, config["input_shape"])
        if backend == "tensorrt":
            raise RuntimeError("TensorRT backend unavailable: " + why)
        print(f"TensorRT path unavailable ({why}); using onnxruntime on {onnx_path}")
    return OnnxModel(onnx_path)


# ------------------------------------------------------------------------------------------------------- main


def list_images(folder):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))
    return [os.path.join(folder, n) for n in names]


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", help="folder of images (png, jpg)")
    p.add_argument("-o", "--output", required=True, help="folder for the masks and timing.json")
    p.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime"), default="auto")
    p.add_argument("--config", default=os.path.join(here, "config.json"))
    p.add_argument("--warmup", type=int, default=5, help="untimed runs on the first image")
    args = p.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    if not os.path.isdir(args.images):
        print(f"error: {args.images} is not a folder")
        return 1
    paths = list_images(args.images)
    if not paths:
        print(f"error: no images in {args.images}")
        return 1
    if not os.path.isdir(args.output):
        os.makedirs(args.output)
    model = open_model(args.backend, here, config)
    _, _, height, width = config["input_shape"]
    mean = np.asarray(config["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(3, 1, 1)

    def prepare(rgb):
        x = resize_rgb(rgb, height, width).astype(np.float32).transpose(2, 0, 1) / 255.0
        return ((x - mean) / std)[None].astype(np.float32)

    first = prepare(read_rgb(paths[0]))
    for _ in range(max(0, args.warmup)):
        model(first)
    model_seconds = []
    total_seconds = []
    for path in paths:
        t0 = time.perf_counter()
        rgb = read_rgb(path)
        x = prepare(rgb)
        t1 = time.perf_counter()
        logits = model(x)
        t2 = time.perf_counter()
        mask = logits_to_mask(logits[0], rgb.shape[0], rgb.shape[1])
        stem = os.path.splitext(os.path.basename(path))[0]
        write_mask(os.path.join(args.output, stem + ".png"), mask)
        total_seconds.append(time.perf_counter() - t0)
        model_seconds.append(t2 - t1)
    mean_s = float(np.mean(model_seconds))
    timing = {
        "images": len(paths),
        "backend": model.name,
        "providers": list(model.providers),
        "gpu_synchronised": bool(model.synchronised),
        "warmup_runs": args.warmup,
        "mean_seconds_per_image": mean_s,
        "median_seconds_per_image": float(np.median(model_seconds)),
        "fps": 1.0 / mean_s if mean_s > 0 else float("inf"),
        "end_to_end_seconds_per_image": float(np.mean(total_seconds)),
        "input_shape": config["input_shape"],
    }
    with open(os.path.join(args.output, "timing.json"), "w") as f:
        json.dump(timing, f, indent=2)
    print(
        "{} images with {}: {:.4f} s per image ({:.1f} FPS), end to end {:.4f} s; masks and timing.json in {}".format(
            len(paths), model.name, mean_s, timing["fps"], timing["end_to_end_seconds_per_image"], args.output
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
