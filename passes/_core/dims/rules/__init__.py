"""The tracer's op rules, one module per family, each registered per op type and opset range
(:func:`passes._core.dims.registry.register`; the contract: :class:`passes._core.dims.registry.Rule`).

Importing this package registers them all. A new family is a new module here, imported below; its test goes in
``tests/passes/rules/test_<family>.py``.
"""

from passes._core.dims.rules import (  # noqa: F401 - imported to register their rules
    contraction,
    elementwise,
    indexing,
    layout,
    normalization,
    parts,
    pooling,
    reduction,
    shape,
    softmax,
)
