"""Broad sweep of the fused attention kernels (arc_geometry.ops.flash, run by Triton's interpreter here) and of the
fast CPU paths, each against the float64 materialised oracle: outputs and every gradient.

conftest.py sets TRITON_INTERPRET=1 before arc_geometry is imported. Sizes are tiny (the interpreter costs ~ms
per tile); blocks of 4–16 make every case span several blocks.
"""
import math

import pytest
import torch

from arc_geometry import attention as api
from arc_geometry.ops import flash, tlmath
from arc_geometry.reference import (assert_close_to_oracle, hybrid_attention_ref, metric_attention_ref,
                                    oracle_errors, poincare_attention_ref)

F64 = torch.float64


def metric_case(Sq, Sk, D=8, Dv=5, B=2, H=2, R=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=F64, generator=g)
    return dict(q=r(B, H, Sq, D) * 0.5, k=r(B, H, Sk, D) * 0.5, v=r(B, H, Sk, Dv), A=r(H, R, D) * 0.5,
                lam=torch.rand(H, dtype=F64, generator=g) + 0.1)


def ball_case(Sq, Sk, c, D=8, Dv=5, B=2, radius=0.9, seed=0, equal=False):
    g = torch.Generator().manual_seed(seed)
    def pts(S):
        u = torch.randn(B, len(c), S, D, dtype=F64, generator=g)
        r = torch.rand(B, len(c), S, 1, dtype=F64, generator=g) * radius
        return u / u.norm(dim=-1, keepdim=True) * r / c.sqrt()[None, :, None, None]
    q, k = pts(Sq), pts(Sk)
    if equal:
        n = min(Sq, Sk)
        k[:, :, :n] = q[:, :, :n]
    return dict(q=q, k=k, v=torch.randn(B, len(c), Sk, Dv, dtype=F64, generator=g), c=c)


def kpm(B, Sk):
    "Batch 0 sees every key, batch 1 only the last two; with causal and Sq > Sk some of its rows see none."
    return torch.arange(Sk)[None].expand(B, Sk) >= torch.tensor([[0], [Sk - 2]])[:B]


CS = torch.tensor([1e-4, 1.0, 10.0], dtype=F64)
ALPHA = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
def args_for(geom, Sq, Sk, **kw):
    if geom == "metric":
        return metric_case(Sq, Sk, H=3), {}
    a = ball_case(Sq, Sk, CS, **kw)
    if geom == "hybrid":
        return dict(a, alpha=ALPHA), {"dim_e": 3}
    return a, {}


def fn(geom, backend):
    return api.implementation(geom, backend)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("geom", ["metric", "poincare", "hybrid"])
@pytest.mark.parametrize("Sq,Sk", [(11, 11), (5, 9), (9, 5)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)], ids=["f64", "f32"])
def test_against_oracle(backend, geom, Sq, Sk, causal, dtype, tol):
    args, extra = args_for(geom, Sq, Sk)
    impl = fn(geom, backend)
    if backend == "triton":
        assert impl is getattr(flash, f"{geom}_triton")
    ref = {"metric": metric_attention_ref, "poincare": poincare_attention_ref, "hybrid": hybrid_attention_ref}[geom]
    grad_tol = 3e-3 if (geom == "hybrid" and dtype == torch.float32) else None
    kw = dict(causal=causal, key_padding_mask=kpm(2, Sk), scale=0.35, **extra)
    if grad_tol: kw["grad_tol"] = grad_tol
    assert_close_to_oracle(impl, ref, args, dtype, tol, **kw)


@pytest.mark.parametrize("geom", ["poincare", "hybrid"])
@pytest.mark.parametrize("dtype,tol,edge", [(torch.float64, 1e-5, 0.999), (torch.float32, 1e-4, 0.995)],
                         ids=["f64", "f32"])
def test_equal_points_at_the_boundary(geom, dtype, tol, edge):
    "k_j == q_j (distance 0, the cancellation case) just inside the dtype's projection margin, c from 1e-4 to 10."
    args, extra = args_for(geom, 9, 7, radius=edge, equal=True)
    ref = poincare_attention_ref if geom == "poincare" else hybrid_attention_ref
    kw = dict(causal=True, key_padding_mask=kpm(2, 7), scale=0.35, **extra)
    if geom == "hybrid" and dtype == torch.float32: kw["grad_tol"] = 3e-3
    assert_close_to_oracle(getattr(flash, f"{geom}_triton"), ref, args, dtype, tol, **kw)


def test_float32_distance_error_at_the_boundary():
    "The scores' float32 cancellation error stays at float32 precision for equal and near points at 0.995 radius."
    a = ball_case(16, 16, CS, radius=0.995, equal=True, B=1)
    a["k"][:, :, 8:] = a["q"][:, :, 8:] * (1 + 1e-3)          # near, not equal
    e = oracle_errors(flash.poincare_triton, poincare_attention_ref, a, torch.float32, scale=1.0)
    assert e["out"] < 1e-5, e


def test_gradcheck_all_geometries():
    a = ball_case(5, 6, torch.tensor([0.5, 2.0], dtype=F64), D=4, Dv=3, B=1)
    t = tuple(x.requires_grad_() for x in a.values())
    al = torch.tensor([0.3, 1.2], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: flash.poincare_triton(*t, scale=0.5), t, fast_mode=True)
    assert torch.autograd.gradcheck(lambda q, k, v, c, al: flash.hybrid_triton(q, k, v, c, al, 2, causal=True,
                                    key_padding_mask=kpm(1, 6), scale=0.5), (*t, al), fast_mode=True)
    m = tuple(x.requires_grad_() for x in metric_case(5, 6, D=4, Dv=3, B=1).values())
    assert torch.autograd.gradcheck(lambda *m: flash.metric_triton(*m, causal=True, scale=0.5), m, fast_mode=True)


def test_euclidean_limit_and_small_curvature_gradient():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=F64, generator=g) for _ in range(3))
    eucl = torch.softmax(-0.5 * 2 * torch.cdist(q, k), -1) @ v
    out = flash.poincare_triton(q, k, v, torch.full((2,), 1e-9, dtype=F64), scale=0.5)
    assert (out - eucl).abs().max() < 1e-6
    e = oracle_errors(flash.poincare_triton, poincare_attention_ref,
                      dict(q=q, k=k, v=v, c=torch.full((2,), 1e-6, dtype=F64)), F64, scale=0.5)
    assert max(e.values()) < 1e-8, e


@pytest.mark.parametrize("geom", ["metric", "poincare", "hybrid"])
@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_rows_without_keys_are_zero_with_zero_gradients(geom, backend):
    args, extra = args_for(geom, 6, 4)
    args = {n: (x.float().requires_grad_() if torch.is_tensor(x) else x) for n, x in args.items()}
    mask = torch.tensor([[True, True, False, True], [False] * 4])
    out = fn(geom, backend)(**args, **extra, causal=False, key_padding_mask=mask, scale=0.5)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0
    for n in ("q", "v"):
        assert args[n].grad[1].abs().max() == 0
    assert all(torch.isfinite(x.grad).all() for x in args.values() if torch.is_tensor(x) and x.grad is not None)


def test_huge_inputs_and_equal_points_are_finite():
    q = (torch.randn(1, 2, 5, 4) * 1e3).requires_grad_()
    k = torch.cat([q.detach()[:, :, :3], torch.randn(1, 2, 2, 4)], 2).requires_grad_()
    c = torch.tensor([0.1, 10.0], requires_grad=True)
    al = torch.tensor([0.5, 1.0], requires_grad=True)
    for f in (lambda: flash.poincare_triton(q, k, k, c, causal=True, scale=0.5),
              lambda: flash.hybrid_triton(q, k, k, c, al, 2, causal=True, scale=0.5)):
        out = f()
        out.sum().backward()
        assert torch.isfinite(out).all() and all(torch.isfinite(x.grad).all() for x in (q, k, c))


@pytest.mark.parametrize("D,Dv,dim_e", [(16, 16, 8), (128, 32, 100), (64, 128, 3)])
def test_head_dims(D, Dv, dim_e):
    "Head dimensions 16–128 (one padded block width per launch), lengths not multiples of the block."
    a = ball_case(19, 21, torch.tensor([0.5, 2.0], dtype=F64), D=D, Dv=Dv, B=1)
    assert_close_to_oracle(flash.hybrid_triton, hybrid_attention_ref, dict(a, alpha=torch.tensor([0.7, 1.3], dtype=F64)),
                           torch.float32, 1e-4, causal=True, scale=1 / math.sqrt(D), dim_e=dim_e)
    m = metric_case(19, 21, D=D, Dv=Dv, B=1)
    assert_close_to_oracle(flash.metric_triton, metric_attention_ref, m, torch.float32, 1e-4, causal=True,
                           scale=1 / math.sqrt(D))


def test_blocks_and_half_precision():
    "Explicit block shapes (BM != BN) give the same answer; fp16/bf16 values give half-precision-sized errors."
    a = ball_case(23, 17, torch.tensor([0.5, 2.0], dtype=F64), B=1)
    f = lambda **kw: flash.flash_attention(None, None, None, flash._on_ball(a["q"], a["c"]), flash._on_ball(a["k"], a["c"]),
                                           a["v"], a["c"], torch.full((2,), 0.4, dtype=F64), power=1, causal=True, **kw)
    torch.testing.assert_close(f(blocks=(4, 8)), f(blocks=(16, 4)), rtol=1e-12, atol=1e-12)
    for dt in (torch.float16, torch.bfloat16):
        e = oracle_errors(flash.hybrid_triton, hybrid_attention_ref, dict(a, alpha=torch.tensor([0.5, 2.0], dtype=F64)),
                          dt, causal=True, scale=0.35, dim_e=3)
        assert e["out"] < 1e-2, (dt, e)


def test_no_quadratic_saved_tensors():
    "What the fused Function keeps for backward grows like S, not S²."
    def saved(S):
        total = 0
        def pack(t):
            nonlocal total
            total += t.numel()
            return t
        a = {n: x.detach().requires_grad_() for n, x in ball_case(S, S, torch.tensor([1.0, 2.0], dtype=F64), B=1).items()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            flash.poincare_triton(a["q"], a["k"], a["v"], a["c"], causal=True, scale=0.5)
        return total
    s1, s2 = saved(16), saved(64)
    assert s2 < 5 * s1, (s1, s2)


@pytest.mark.parametrize("name", tlmath.FUNCTIONS)
def test_tlmath_float64_and_float32(name):
    x = {"log1p": torch.logspace(-20, 10, 300, dtype=F64), "expm1": torch.linspace(-30, 30, 301, dtype=F64),
         "tanh": torch.linspace(-20, 20, 301, dtype=F64), "asinh": torch.logspace(-25, 20, 300, dtype=F64),
         "acosh": 1 + torch.logspace(-12, 12, 300, dtype=F64), "acosh1p": torch.logspace(-25, 12, 300, dtype=F64),
         "atanh": torch.linspace(-0.999999, 0.999999, 301, dtype=F64)}[name]
    want = {"log1p": torch.log1p, "expm1": torch.expm1, "tanh": torch.tanh, "asinh": torch.asinh, "acosh": torch.acosh,
            "acosh1p": lambda t: torch.log1p(t + torch.sqrt(t * (t + 2))), "atanh": torch.atanh}[name]
    for dt, tol in ((F64, 1e-13), (torch.float32, 2e-6)):
        xs = x.to(dt)
        w = want(xs.double())
        got = tlmath.apply(name, xs).double()
        err = ((got - w).abs() / w.abs().clamp_min(1e-300)).max()
        assert err < tol, (name, dt, float(err))
