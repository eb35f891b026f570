"""Length groups: a batch encoded in groups of similar token length, each padded to its own longest."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from scalingnote.runtime.bundle import CALL_COST_TOKENS, BundleEncoder
from scalingnote.runtime.tokenization import length_groups


def _cost(lengths: list[int], groups: list[np.ndarray], call_cost: int) -> int:
    return sum(call_cost + len(g) * max(lengths[i] for i in g) for g in groups)


def _least_cost(lengths: list[int], call_cost: int) -> int:
    """Brute force: every split of the length-sorted rows into runs."""
    ordered, n = sorted(lengths), len(lengths)
    best = None
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0, *(i + 1 for i, cut in enumerate(cuts) if cut), n]
        cost = sum(call_cost + (b - a) * ordered[b - 1] for a, b in itertools.pairwise(bounds))
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("call_cost", [0, 3, CALL_COST_TOKENS, 100])
def test_length_groups_cover_every_row_once_at_the_least_cost(call_cost: int) -> None:
    rng = random.Random(call_cost)
    for _ in range(40):
        lengths = [rng.randint(3, 40) for _ in range(rng.randint(1, 9))]
        groups = length_groups(lengths, call_cost)
        assert sorted(int(i) for g in groups for i in g) == list(range(len(lengths)))
        assert _cost(lengths, groups, call_cost) == _least_cost(lengths, call_cost)


def test_a_large_call_cost_keeps_one_group_and_none_splits_equal_lengths() -> None:
    assert len(length_groups([5, 30, 7, 12], call_cost=10_000)) == 1
    assert [len(g) for g in length_groups([9, 9, 9, 9], call_cost=0)] == [4]
    assert [sorted(g.tolist()) for g in length_groups([4, 40, 4, 4], call_cost=1)] == [[0, 2, 3], [1]]


def test_grouped_encoding_gives_each_query_the_vector_it_gets_alone(tiny) -> None:
    """Padding is masked out: a query's vector does not depend on the group it lands in."""
    grouped = BundleEncoder(tiny.bundle, variant="fp32")
    single = BundleEncoder(tiny.bundle, variant="fp32", length_groups=False)
    assert grouped.length_groups and not single.length_groups
    texts = ["cell", "immune response of the liver to a virus infection in mice", "gene", "tumour growth factor"]
    texts += [" ".join(["protein"] * n) for n in (2, 9, 30)]
    encodings = grouped.tokenize(texts)
    assert len(length_groups([len(e.ids) for e in encodings], CALL_COST_TOKENS)) > 1  # the batch does split
    got = grouped.encode_timed(texts).vectors
    alone = np.concatenate([single.encode_timed([t]).vectors for t in texts])
    assert np.allclose((got * alone).sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(got, single.encode_timed(texts).vectors, atol=1e-5)
