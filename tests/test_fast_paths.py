"""The fast PyTorch paths against the float64 oracle, over random shapes, masks, scales and parameters.

Each case draws B, H, Sq, Sk (odd lengths, Sq != Sk both ways), head dims, a causal flag, a key padding mask
(sometimes leaving queries with no key), and the geometry's parameters, then requires the output and every
gradient to match `arc_geometry.reference` (see `reference.assert_close_to_oracle`). Small blocks force
several query blocks and causal key skipping in the chunked paths.
"""
from functools import partial

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arc_geometry.ops.hyperbolic import hybrid_cpu, poincare_cpu
from arc_geometry.ops.metric import metric_cpu
from arc_geometry.reference import (assert_close_to_oracle, hybrid_attention_ref, metric_attention_ref,
                                    poincare_attention_ref)

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


def qkv(B, H, Sq, Sk, D, Dv, g, radius=None, c=None):
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)
    q, k = r(B, H, Sq, D), r(B, H, Sk, D)
    if radius is not None:        # points spread over the ball of each head, up to `radius` of the boundary
        def spread(x):
            rr = torch.rand(*x.shape[:-1], 1, dtype=torch.float64, generator=g) * radius
            return x / x.norm(dim=-1, keepdim=True) * rr / c.sqrt()[None, :, None, None]
        q, k = spread(q), spread(k)
    else:
        q, k = q * 0.5, k * 0.5
    return q, k, r(B, H, Sk, Dv)


@SETTINGS
@given(s=shapes(), R=st.integers(1, 4), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_metric_cpu(s, R, dtype):
    B, H, Sq, Sk, D, Dv, causal, mask, g = s
    q, k, v = qkv(B, H, Sq, Sk, D, Dv, g)
    args = dict(q=q, k=k, v=v, A=torch.randn(H, R, D, dtype=torch.float64, generator=g) * 0.5,
                lam=torch.rand(H, dtype=torch.float64, generator=g) + 0.05)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert_close_to_oracle(metric_cpu, metric_attention_ref, args, dtype, tol, causal=causal, key_padding_mask=mask,
                           scale=0.3)


@SETTINGS
@given(s=shapes(), logc=st.floats(-4, 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       block=st.integers(1, 7))
def test_poincare_cpu(s, logc, dtype, block):
    B, H, Sq, Sk, D, Dv, causal, mask, g = s
    c = 10 ** (logc + torch.rand(H, dtype=torch.float64, generator=g) - 0.5)
    q, k, v = qkv(B, H, Sq, Sk, D, Dv, g, radius=0.95, c=c)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    assert_close_to_oracle(partial(poincare_cpu, block=block), poincare_attention_ref, dict(q=q, k=k, v=v, c=c),
                           dtype, tol, causal=causal, key_padding_mask=mask, scale=0.3)


@SETTINGS
@given(s=shapes(), logc=st.floats(-4, 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       block=st.integers(1, 7), data=st.data())
def test_hybrid_cpu(s, logc, dtype, block, data):
    B, H, Sq, Sk, D, Dv, causal, mask, g = s
    D = max(D, 2)
    dim_e = data.draw(st.integers(1, D - 1))
    c = 10 ** (logc + torch.rand(H, dtype=torch.float64, generator=g) - 0.5)
    q, k, v = qkv(B, H, Sq, Sk, D, Dv, g, radius=0.95, c=c)
    alpha = torch.rand(H, dtype=torch.float64, generator=g) * 2
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    assert_close_to_oracle(partial(hybrid_cpu, block=block), hybrid_attention_ref,
                           dict(q=q, k=k, v=v, c=c, alpha=alpha), dtype, tol, causal=causal, key_padding_mask=mask,
                           scale=0.3, dim_e=dim_e)
