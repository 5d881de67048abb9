"""Layer 3: property-based tests (hypothesis) for invariants that deserve many random cases.

Each property is a theorem about the geometry or the attention, checked on points hypothesis draws:
the triangle inequality of the Poincaré distance, gyrovector identities, the Euclidean limit, and
invariances of the reference attention (key permutation without causality, causal prefixes, masks).
"""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arc_geometry.core import causal_mask
from arc_geometry.manifolds import LowRankMetric, PoincareBall
from arc_geometry.geometries import ATTENTION_GEOMETRIES, GEOMETRIES

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
curvatures = st.sampled_from([1e-4, 1e-2, 0.3, 1.0, 3.0, 10.0])
seeds = st.integers(0, 2**31 - 1)


def ball_points(seed, n, d, c, radius=0.999):
    "n points of the ball of curvature -c, radii up to `radius` of the boundary, float64."
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, dtype=torch.float64, generator=g)
    r = torch.rand(n, 1, dtype=torch.float64, generator=g) ** 0.5 * radius / math.sqrt(c)
    return u / u.norm(dim=-1, keepdim=True) * r


@SETTINGS
@given(seed=seeds, c=curvatures, d=st.integers(1, 8))
def test_triangle_inequality(seed, c, d):
    M = PoincareBall(c)
    x, y, z = ball_points(seed, 3, d, c, radius=0.99)
    dxy, dyz, dxz = M.dist(x, y), M.dist(y, z), M.dist(x, z)
    assert dxz <= dxy + dyz + 1e-9 * (1 + dxz)


@SETTINGS
@given(seed=seeds, c=curvatures, d=st.integers(1, 8))
def test_distance_axioms(seed, c, d):
    M = PoincareBall(c)
    x, y = ball_points(seed, 2, d, c)
    assert M.dist(x, x) == 0
    assert torch.isclose(M.dist(x, y), M.dist(y, x), rtol=1e-12, atol=0)
    assert M.dist(x, y) > 0 or torch.equal(x, y)


@SETTINGS
@given(seed=seeds, c=curvatures, d=st.integers(1, 8))
def test_left_cancellation_and_log_exp(seed, c, d):
    M = PoincareBall(c)
    x, y = ball_points(seed, 2, d, c, radius=0.9)
    sc = math.sqrt(c)
    assert torch.allclose(M.mobius_add(-x, M.mobius_add(x, y)) * sc, y * sc, atol=1e-8)
    assert torch.allclose(M.expmap0(M.logmap0(y)) * sc, y * sc, atol=1e-9)
    # the distance is the norm of the logarithm, in the metric at x: d(x, y) = λ_x ‖log_x(y)‖
    assert torch.isclose(M.dist(x, y), (M.lambda_x(x) * M.logmap(x, y).norm()).squeeze(), rtol=1e-7)


@SETTINGS
@given(seed=seeds, d=st.integers(1, 8), c=st.sampled_from([1e-5, 1e-7, 1e-9]))
def test_euclidean_limit(seed, d, c):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2, d, dtype=torch.float64, generator=g)
    assert torch.isclose(PoincareBall(c).dist(x, y), 2 * (x - y).norm(), rtol=1e-3)


@SETTINGS
@given(seed=seeds, d=st.integers(2, 6), r=st.integers(1, 4), h=st.integers(1, 3))
def test_metric_is_positive_definite_and_triangle(seed, d, r, h):
    torch.manual_seed(seed)
    met = LowRankMetric(d, r, h).double()
    g = torch.Generator().manual_seed(seed)
    x, y, z = torch.randn(3, h, 1, d, dtype=torch.float64, generator=g)
    s = lambda a, b: met.sqdist(a, b).sqrt()
    assert (s(x, z) <= s(x, y) + s(y, z) + 1e-9).all()     # a constant metric is a norm: triangle holds
    assert (met.sqdist(x, y) >= met.lam[:, None] * (x - y).pow(2).sum(-1) - 1e-12).all()


def _random_case(seed, geometry, Sq, Sk):
    "The registry row's example inputs (float64; hyperbolic points well inside their balls)."
    c = torch.rand(2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3 + 0.01
    return GEOMETRIES[geometry].example(B=2, H=2, Sq=Sq, Sk=Sk, D=6, Dv=3, seed=seed, scale=0.3, c=c)


REFS = {name: GEOMETRIES[name].reference for name in ATTENTION_GEOMETRIES}
geometries = st.sampled_from(sorted(REFS))


@SETTINGS
@given(seed=seeds, geometry=geometries, Sq=st.integers(1, 6), Sk=st.integers(1, 6))
def test_key_permutation_equivariance(seed, geometry, Sq, Sk):
    q, k, v, params = _random_case(seed, geometry, Sq, Sk)
    perm = torch.randperm(Sk, generator=torch.Generator().manual_seed(seed))
    ref = REFS[geometry]
    assert torch.allclose(ref(q, k, v, *params), ref(q, k[:, :, perm], v[:, :, perm], *params), atol=1e-12)


@SETTINGS
@given(seed=seeds, geometry=geometries, Sq=st.integers(1, 6), Sk=st.integers(1, 6))
def test_causal_output_is_convex_combination_of_visible_values(seed, geometry, Sq, Sk):
    q, k, v, params = _random_case(seed, geometry, Sq, Sk)
    out = REFS[geometry](q, k, v, *params, causal=True)
    vis = causal_mask(Sq, Sk)
    for i in range(Sq):
        keys = vis[i].nonzero().flatten()
        if len(keys) == 0:
            assert (out[:, :, i] == 0).all()
        else:   # a softmax average lies between the min and max of the visible values
            lo, hi = v[:, :, keys].min(2).values, v[:, :, keys].max(2).values
            assert ((out[:, :, i] >= lo - 1e-12) & (out[:, :, i] <= hi + 1e-12)).all()


@SETTINGS
@given(seed=seeds, geometry=geometries, Sk=st.integers(2, 7))
def test_padded_keys_are_ignored(seed, geometry, Sk):
    q, k, v, params = _random_case(seed, geometry, 3, Sk)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(2, Sk, generator=g) > 0.4
    k2, v2 = k.clone(), v.clone()
    k2[~mask[:, None, :, None].expand_as(k2)] = 7.0      # change only what the mask hides
    v2[~mask[:, None, :, None].expand_as(v2)] = -7.0
    ref = REFS[geometry]
    assert torch.allclose(ref(q, k, v, *params, key_padding_mask=mask), ref(q, k2, v2, *params, key_padding_mask=mask),
                          atol=1e-12)
