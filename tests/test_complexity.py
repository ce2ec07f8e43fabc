"""Sizes the next engineer can read: no file in passes/ over 800 lines, and no function of the packages of cyclomatic
complexity above 30 (radon's grades E and F)."""

from __future__ import annotations

from _shared import ROOT, package_sources
from radon.complexity import cc_rank, cc_visit

MAX_LINES = 800
MAX_COMPLEXITY = 30  # radon grade D at most


def _functions(blocks: list) -> list:
    """The functions and methods among radon's blocks, closures and inner classes' methods included."""
    out = []
    for block in blocks:
        if hasattr(block, "methods"):  # a class: its own figure is not a function's
            out.extend(_functions([*block.methods, *block.inner_classes]))
        else:
            out.extend([block, *_functions(block.closures)])
    return out


def _blocks(source: str) -> list:
    return _functions(cc_visit(source))


def test_no_file_in_passes_is_over_800_lines() -> None:
    long = {}
    for p in package_sources("passes"):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            long[str(p.relative_to(ROOT))] = n
    assert not long, f"split these files (at most {MAX_LINES} lines): {long}"


def test_no_function_is_graded_e_or_f() -> None:
    complex_ = []
    for p in package_sources():
        for block in _blocks(p.read_text(encoding="utf-8")):
            if block.complexity > MAX_COMPLEXITY:
                where = f"{p.relative_to(ROOT)}:{block.lineno} {block.fullname}"
                complex_.append(f"{where} ({block.complexity}, {cc_rank(block.complexity)})")
    assert not complex_, "split these functions:\n" + "\n".join(complex_)


def test_the_threshold_is_radon_s_grade_d_and_methods_are_counted() -> None:
    assert cc_rank(MAX_COMPLEXITY) == "D" and cc_rank(MAX_COMPLEXITY + 1) == "E"
    branches = "".join(f"        if x == {i}:\n            return {i}\n" for i in range(MAX_COMPLEXITY))
    source = f"class A:\n    def f(self, x):\n{branches}        return -1\n"
    assert max(b.complexity for b in _blocks(source)) == MAX_COMPLEXITY + 1
