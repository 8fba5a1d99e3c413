"""Fixtures of the data tests: the public benchmarks indexed for the leakage guard."""

from __future__ import annotations

import pytest

from tests.support.overlap import BenchmarkIndex, shared_datasets_dir


@pytest.fixture(scope="session")
def bench_index() -> BenchmarkIndex:
    root = shared_datasets_dir()
    if not root.is_dir():
        pytest.skip(f"public benchmark folder not found: {root} (set MOGU_SHARED_DATASETS)")
    index = BenchmarkIndex.from_dir(root)
    if not index.texts:
        pytest.skip(f"no benchmark texts under {root}")
    return index
