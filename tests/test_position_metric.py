"""Broad sweep of the fused position-metric attention (arc_geometry.ops.position_metric) against the float64 oracle.

Interpreted Triton (conftest sets TRITON_INTERPRET=1 on machines without CUDA) and the PyTorch path: output and
every gradient (q, k, v, A, lam, W, b), odd lengths, causal and not, key padding with a fully masked row,
Sq != Sk, float32 and float64; gradcheck in float64; ahead-of-time compilation of a few kernel configurations.
"""
import os
import subprocess
import sys

import pytest
import torch

from arc_geometry.attention import implementation, position_metric_attention
from arc_geometry.ops import position_metric as pm
from arc_geometry.ops import position_metric_triton as pmt
from arc_geometry.reference import assert_close_to_oracle, position_metric_attention_ref


def case(Sq, Sk, D=16, Dv=12, B=2, H=2, R=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)
    return dict(q=r(B, H, Sq, D) * 0.5, k=r(B, H, Sk, D) * 0.5, v=r(B, H, Sk, Dv), A=r(H, R, D) * 0.5,
                lam=torch.rand(H, dtype=torch.float64, generator=g) + 0.1, W=r(H, R, D) * 0.5, b=r(H, R))


def padding(B, Sk):
    "Batch 0 sees every key, batch 1 only its last two: with causality its first queries see none."
    return torch.arange(Sk)[None].expand(B, Sk) >= torch.tensor([[0], [Sk - 2]])


TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
SHAPES = [(37, 37), (9, 4), (4, 9)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("Sq,Sk", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_matches_oracle(dtype, Sq, Sk, causal, masked):
    fn = lambda *a, **kw: pm.position_metric_cpu(*a, **kw, block=5, fused=False)
    assert_close_to_oracle(fn, position_metric_attention_ref, case(Sq, Sk), dtype, TOL[dtype], causal=causal,
                           key_padding_mask=padding(2, Sk) if masked else None, scale=0.3)


@pytest.mark.parametrize("dtype,Sq,Sk,causal,masked", [
    (torch.float64, 37, 37, True, True), (torch.float64, 37, 37, False, False), (torch.float64, 9, 20, True, False),
    (torch.float64, 20, 9, False, True), (torch.float32, 37, 37, True, True), (torch.float32, 20, 9, True, False)])
def test_triton_matches_oracle(dtype, Sq, Sk, causal, masked):
    fn = lambda *a, **kw: pmt.position_metric_triton(*a, **kw, block=16)
    assert_close_to_oracle(fn, position_metric_attention_ref, case(Sq, Sk, B=2, H=1, R=2), dtype, TOL[dtype],
                           causal=causal, key_padding_mask=padding(2, Sk) if masked else None, scale=0.3)


def test_cpu_fused_matches_oracle():
    "The torch.compile'd gate loops (used for long sequences) compute the same numbers."
    fn = lambda *a, **kw: pm.position_metric_cpu(*a, **kw, block=8, fused=True)
    assert_close_to_oracle(fn, position_metric_attention_ref, case(24, 24, H=1), torch.float64, 1e-10,
                           causal=True, key_padding_mask=padding(2, 24), scale=0.3)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_empty_rows_are_zero_with_zero_grads(impl):
    a = {n: t.requires_grad_() for n, t in case(6, 6, B=2, H=1, R=2).items()}
    fn = pm.position_metric_cpu if impl == "torch" else pmt.position_metric_triton
    kpm = torch.ones(2, 6, dtype=torch.bool); kpm[1] = False          # batch 1: no key at all
    out = fn(**a, causal=True, key_padding_mask=kpm, scale=0.5)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    out.sum().backward()
    for n, t in a.items():
        assert torch.isfinite(t.grad).all(), n
    assert (a["q"].grad[1] == 0).all() and (a["k"].grad[1] == 0).all() and (a["v"].grad[1] == 0).all()


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gradcheck(impl):
    a = case(5, 7, D=4, Dv=3, B=2, H=1, R=2)
    names = list(a)
    kpm = padding(2, 7)
    if impl == "torch":
        f = lambda *t: pm.position_metric_cpu(*t, causal=True, key_padding_mask=kpm, scale=0.7, block=2, fused=False)
    else:
        f = lambda *t: pmt.position_metric_triton(*t, causal=True, key_padding_mask=kpm, scale=0.7, block=16)
    assert torch.autograd.gradcheck(f, tuple(a[n].requires_grad_() for n in names), fast_mode=True)


def test_dispatcher_uses_this_module():
    assert implementation("position_metric", "torch") is pm.position_metric_cpu
    assert implementation("position_metric", "triton") is pmt.position_metric_triton
    a = case(7, 7, B=1, H=2)
    out = position_metric_attention(**a, causal=True, backend="torch")
    torch.testing.assert_close(out, position_metric_attention_ref(**a, causal=True), rtol=1e-10, atol=1e-12)


def test_aot_configs_cover_the_launches():
    cfgs = pmt.aot_configs()
    names = [c[0] for c in cfgs]
    assert len(names) == len(set(names)) == 2 * 3 * len(pmt._DTYPES) * len(pmt._HEAD_DIMS) * 2
    for name, kernel, sig, cx, opts in cfgs:
        assert set(sig) == set(kernel.arg_names), name          # every argument typed, constexprs included
        assert all(sig[n] == "constexpr" for n in cx), name


def test_aot_compile():
    """A few configurations compile for sm_90 and sm_80 through `arc_geometry.kernels.compile_all`. In a fresh process
    without TRITON_INTERPRET: under the interpreter the kernels are not JIT functions and cannot be compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("from arc_geometry.kernels import compile_all\n"
            "a = compile_all(90, select=lambda n: n.startswith('position_metric') and 'fp16_d64_causal' in n)\n"
            "b = compile_all(80, select=lambda n: n == 'position_metric_fwd_bf16_d128_full_sm80')\n"
            "assert len(a) == 3 and len(b) == 1, (a, b)\nprint('compiled', a + b)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "compiled" in r.stdout


@pytest.mark.parametrize("Sq,Sk,causal,masked,equal", [(24, 24, True, True, False), (13, 29, True, False, False),
                                                      (29, 13, False, True, False), (24, 24, True, False, True)])
def test_triton_fp16_within_3x_of_baselines(Sq, Sk, causal, masked, equal):
    """fp16 (the interpreter computes bf16 dots wrongly) against the float64 oracle on the same rounded inputs: output
    within 3× of rounding the exact output, gradients within 3× of fp16 SDPA's (per-head ones: of its worst)."""
    from arc_geometry.ops.flash import half_errors, half_ratios
    a = case(Sq, Sk, D=16, Dv=16, B=2, H=2, R=4)
    if equal: a["k"][:, :, :min(Sq, Sk)] = a["q"][:, :, :min(Sq, Sk)]
    r = half_ratios(half_errors(pmt.position_metric_triton, position_metric_attention_ref, a, torch.float16,
                                causal=causal, key_padding_mask=padding(2, Sk) if masked else None, scale=0.25))
    assert all(v < 3 for v in r.values()), r
