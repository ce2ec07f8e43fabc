"""Scripts copied into the device bundle (Python 3.6 compatible); ``runtime.trt`` imports build_engine."""
