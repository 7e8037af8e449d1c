"""Compression φ and `compress`: counts and values. The cache's incremental compression
is tested in tests/test_cache.py."""

import pytest
import torch

from naive_nsa import DTYPE, make_cfg, random_mlp
from naive_nsa import single_thread  # noqa: F401  (autouse fixture: one intra-op thread)
from specsa.config import NSAConfig
from specsa.nsa.compression import MLPCompression, compress, mean_compression

CONFIGS = [NSAConfig(), make_cfg(l=8, d=4, lp=16), make_cfg(l=16, d=4, lp=16), make_cfg(l=8, d=8, lp=32)]


def _x(length, heads=2, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, length, heads, dim, generator=gen, dtype=DTYPE)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_counts_including_lengths_below_l(cfg):
    for length in list(range(0, 3 * cfg.cmp_block + 2)) + [5 * cfg.sel_block + 3]:
        x = _x(length)
        out = compress(x, cfg, mean_compression)
        complete = [i for i in range(length) if i * cfg.cmp_stride + cfg.cmp_block <= length]
        assert out.shape == (2, len(complete), 2, 8), length
        if length < cfg.cmp_block:
            assert out.shape[1] == 0
        assert cfg.num_cmp_tokens(length) == len(complete)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_mean_values(cfg):
    x = _x(5 * cfg.cmp_block + 3)
    out = compress(x, cfg, mean_compression)
    for i in range(out.shape[1]):
        start = i * cfg.cmp_stride
        expected = x[:, start : start + cfg.cmp_block].sum(1) / cfg.cmp_block
        torch.testing.assert_close(out[:, i], expected, rtol=1e-12, atol=1e-12)


def test_mlp_compression_by_hand():
    cfg = make_cfg(l=4, d=2, lp=8)
    dim, hidden = 3, 5
    phi = random_mlp(4, cfg, dim, hidden)
    assert isinstance(phi, MLPCompression)
    x = _x(11, heads=2, dim=dim)
    out = compress(x, cfg, phi)  # [2, 4, 2, 3]
    assert out.shape == (2, 4, 2, dim)
    w1, b1, w2, b2, pos = phi.fc1.weight, phi.fc1.bias, phi.fc2.weight, phi.fc2.bias, phi.pos
    for b in range(2):
        for i in range(4):
            for h in range(2):
                # flatten position-major: [x_0 + pos_0, x_1 + pos_1, ...]
                flat = torch.cat([x[b, i * 2 + r, h] + pos[r] for r in range(4)])
                hid = w1 @ flat + b1
                hid = hid / (1 + torch.exp(-hid))
                torch.testing.assert_close(out[b, i, h], w2 @ hid + b2, rtol=1e-12, atol=1e-12)

