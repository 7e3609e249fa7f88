"""Bit helpers of the hash codes: packing, Hamming distance, coarse-bit choice and the
Kernighan–Lin grouping (thesis 4.2.3), and refusing mismatched code lengths."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.hashing.bits import (
    apply_permutation,
    bit_correlations,
    check_permutation,
    hamming,
    kl_partition,
    pack_bits,
    select_coarse_bits,
    unpack_bits,
)
from retrieval.search.base import CodeLengthMismatch, check_codes


def planted_groups(n: int, groups: int, size: int, noise: float, rng) -> tuple[np.ndarray, list]:
    """Bits in ``groups`` blocks; the bits of a block are noisy copies of one source bit,
    and the blocks are shuffled over the bit positions."""
    sources = rng.random((n, groups)) < 0.5
    cols, truth = [], []
    for g in range(groups):
        for _ in range(size):
            cols.append(sources[:, g] ^ (rng.random(n) < noise))
            truth.append(g)
    bits = np.stack(cols, axis=1)
    order = rng.permutation(groups * size)
    return bits[:, order], [truth[i] for i in order]


def test_pack_unpack_roundtrip_and_bit_order():
    rng = np.random.default_rng(0)
    bits = rng.random((5, 256)) < 0.5
    codes = pack_bits(bits)
    assert codes.shape == (5, 32) and codes.dtype == np.uint8
    assert np.array_equal(unpack_bits(codes), bits)
    one = np.zeros((1, 256), dtype=bool)
    one[0, 0] = True  # big-endian within a byte: bit 0 is the high bit of byte 0
    assert pack_bits(one)[0, 0] == 128


def test_hamming_matches_bit_count_and_refuses_other_lengths():
    rng = np.random.default_rng(1)
    bits = rng.random((20, 256)) < 0.5
    codes = pack_bits(bits)
    expected = (bits != bits[3]).sum(axis=1)
    assert np.array_equal(hamming(codes, codes[3]), expected)
    with pytest.raises(ValueError, match="code lengths differ"):
        hamming(codes, codes[3, :8])
    with pytest.raises(ValueError):
        pack_bits(bits[:, :64])
    with pytest.raises(ValueError):
        unpack_bits(codes[:, :8])


def test_check_codes_refuses_mismatched_lengths():
    good = np.zeros((3, 32), dtype=np.uint8)
    assert check_codes(good).shape == (3, 32)
    with pytest.raises(CodeLengthMismatch, match="256 bits"):
        check_codes(np.zeros((3, 8), dtype=np.uint8))
    with pytest.raises(CodeLengthMismatch):
        check_codes(np.zeros(16, dtype=np.uint8), single=True)


def test_kernighan_lin_recovers_planted_groups():
    rng = np.random.default_rng(2)
    bits, truth = planted_groups(2000, 4, 16, 0.1, rng)
    groups = kl_partition(bit_correlations(bits), 4, seed=0)
    assert [len(g) for g in groups] == [16, 16, 16, 16]
    flat = [b for g in groups for b in g]
    assert sorted(flat) == list(range(64))  # disjoint and complete
    for g in groups:  # every found group is one planted group
        assert len({truth[b] for b in g}) == 1


def test_kl_partition_rejects_uneven_split():
    with pytest.raises(ValueError):
        kl_partition(np.eye(10), 4)


def test_select_coarse_bits_prefers_uncorrelated_bits():
    rng = np.random.default_rng(3)
    n = 3000
    independent = rng.random((n, 64)) < 0.5
    # 192 redundant bits: noisy copies of 8 source bits (highly correlated with each other)
    redundant, _ = planted_groups(n, 8, 24, 0.05, rng)
    bits = np.concatenate([redundant[:, :100], independent, redundant[:, 100:]], axis=1)
    independent_positions = set(range(100, 164))
    perm = select_coarse_bits(bits)
    assert sorted(perm.tolist()) == list(range(256))
    assert set(perm[:64].tolist()) == independent_positions
    assert perm[64:].tolist() == sorted(perm[64:].tolist())  # the rest keep their order
    permuted = apply_permutation(bits, perm)
    assert np.array_equal(permuted[:, 0], bits[:, perm[0]])


def test_constant_bits_are_never_coarse():
    rng = np.random.default_rng(4)
    bits = rng.random((500, 256)) < 0.5
    bits[:, :10] = True
    perm = select_coarse_bits(bits)
    assert not set(range(10)) & set(perm[:64].tolist())


def test_check_permutation_rejects_bad_permutations():
    with pytest.raises(ValueError):
        check_permutation(list(range(255)))
    with pytest.raises(ValueError):
        check_permutation([0] * 256)
    assert check_permutation(list(range(256))).dtype == np.int64
