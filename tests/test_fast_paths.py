"""The fast PyTorch paths against the float64 oracle, over random shapes, masks, scales and parameters.

Each case draws B, H, Sq, Sk (odd lengths, Sq != Sk both ways), head dims, a causal flag, a key padding mask
(sometimes leaving queries with no key), and the geometry's parameters, then requires the output and every
gradient to match `arc_geometry.reference` (see `reference.assert_close_to_oracle`). Small blocks force
several query blocks and causal key skipping in the chunked paths.
"""
from functools import partial

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arc_geometry.geometries import ATTENTION_GEOMETRIES, GEOMETRIES
from arc_geometry.geometries import oracle_case
from arc_geometry.reference import assert_close_to_oracle

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def shapes(draw):
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Sq, Sk = draw(st.integers(1, 19)), draw(st.integers(1, 19))
    D, Dv = draw(st.sampled_from([2, 5, 8, 16])), draw(st.sampled_from([1, 3, 8]))
    causal = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(B, Sk, generator=g) > draw(st.sampled_from([0.0, 0.3, 0.9]))
    return B, H, Sq, Sk, D, Dv, causal, mask, g


# Smaller blocks than the defaults, so that short sequences still make several query blocks (and causal key skipping).
BLOCKS = {"metric": {}, "position_metric": {"block": 3}, "poincare": {"block": 3}, "hybrid": {"block": 3}}


@pytest.mark.parametrize("geometry", ATTENTION_GEOMETRIES)
def test_cpu_path_matches_oracle(geometry):
    "Every geometry's CPU path (the registry's), over random shapes, masks, curvatures and dtypes."
    row = GEOMETRIES[geometry]

    @SETTINGS
    @given(s=shapes(), R=st.integers(1, 4), logc=st.floats(-4, 1), dtype=st.sampled_from([torch.float32, torch.float64]),
           data=st.data())
    def check(s, R, logc, dtype, data):
        B, H, Sq, Sk, D, Dv, causal, mask, g = s
        kw = {}
        if geometry in ("poincare", "hybrid"):
            kw = dict(c=10 ** (logc + torch.rand(H, dtype=torch.float64, generator=g) - 0.5), radius=0.95)
        if geometry == "lorentz":                     # float32 is judged where it keeps its digits (see 19_lorentz)
            kw = dict(c=10 ** (torch.rand(H, dtype=torch.float64, generator=g) * 1.3 - 0.3), radius=3.0)
        if geometry == "hybrid":
            D = max(D, 2)
            kw.update(dim_e=data.draw(st.integers(1, D - 1)), alpha=torch.rand(H, dtype=torch.float64, generator=g) * 2)
        args = oracle_case(geometry, Sq, Sk, B=B, H=H, D=D, Dv=Dv, R=R, seed=int(torch.randint(2**31, (1,), generator=g)), **kw)
        tol = (1e-9 if geometry in ("metric", "position_metric") else 1e-6) if dtype == torch.float64 else 1e-4
        assert_close_to_oracle(partial(row.torch, **BLOCKS.get(geometry, {})), row.reference, args, dtype, tol, causal=causal,
                               key_padding_mask=mask, scale=0.3)
    check()
