"""The one error family: every error the toolchain raises for its user derives from :class:`PassError` (exit status 1:
the input cannot be processed) or :class:`UsageError` (exit status 2: an option out of its range, options that
contradict each other, a name that is not known). :func:`fileformat.cli.cli_main` is the one boundary that turns
them into a line on stderr and an exit status; nothing between a command's ``main`` and the code that raises
translates one error into another to reach an exit status.

The domain errors, each beside what it guards:

============================  =====================  ==========================================================
class                         derives from           raised for
============================  =====================  ==========================================================
``UsageError``                ``PassError``          an option or a combination of options (exit 2)
``InputError``                ``PassError``          an input file, checkpoint or image set that cannot be used
``MissingInputError``         ``PassError``          an input file that does not exist
``targets.UnknownTargetError``  ``UsageError``       a device profile name that is not known
``configs.UnknownModelError``   ``UsageError``       a model name that is not registered
``export.ExportUsageError``     ``UsageError``       an export option out of range (opset, exporter, size)
``export.ExportError``          ``PassError``        an export that cannot be done
``data.DataError``              ``InputError``       a data folder, split, image or mask
``weights.WeightsError``        ``InputError``       a weights file that cannot be read or does not fit
``calib.CalibrationDataError``  ``InputError``       calibration images
``prune_torch.PlanError``       ``InputError``       a plan that cannot be applied to the torch model
``distill.DistillError``        ``InputError``       a student, teacher or checkpoint for distillation
``bench.BenchError``            ``PassError``        a model that cannot be benchmarked
``bundle.BundleError``          ``PassError``        a bundle that cannot be written
``trt.TensorRTUnavailable``     ``PassError``        TensorRT missing on this machine
``pipeline.StageFailed``        ``PassError``        a stage of a run that failed
============================  =====================  ==========================================================

The errors that replaced a builtin keep it as a second base (``InputError`` is a ``ValueError``,
``MissingInputError`` a ``FileNotFoundError``, the unknown names ``KeyError``\\s), so code that caught the builtin
still does.
"""

from __future__ import annotations

__all__ = ["InputError", "MissingInputError", "PassError", "UsageError"]


class PassError(Exception):
    """A model (or plan, or option) the pass cannot process; the message says what is wrong and what to do."""


class UsageError(PassError):
    """An option out of its range or options that contradict each other: a usage error (exit status 2)."""


class InputError(PassError, ValueError):
    """An input (a model file, a checkpoint, images, a plan) that exists but cannot be used as it is (exit status 1)."""


class MissingInputError(PassError, FileNotFoundError):
    """An input file that does not exist (exit status 1); the message names it."""
