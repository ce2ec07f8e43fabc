"""The toolchain's file format, at the bottom of the package graph (it imports none of the others).

``metadata`` (the ``vitseg.*`` entries of an ONNX file, the weight map), ``plan`` (what the passes kept),
``io`` (loading models with clear errors, atomic writes that never replace an input), ``errors`` (the exceptions
the command lines turn into exit statuses), ``params`` (parameter counting) and ``targets`` (device profiles).
``models/``, ``exporters/``, ``passes/`` and ``runtime/`` all build on it.
"""
