"""Sliding windows and packed documents (`window`, `segment_ids`) on the fused Triton kernels, run by Triton's
interpreter here (conftest.py sets TRITON_INTERPRET=1): values and every gradient against the float64 oracle, and the
kernels' loop bounds (which key blocks a query block visits, which of them it masks) against the full mask.

Sizes are tiny: blocks of 16 over 21 keys, so that tiles straddle the band's edges and the sequence end.
"""
import pytest
import torch

from arc_geometry.core import allowed_mask, segment_spans
from arc_geometry.geometries import oracle_case
from arc_geometry.reference import (assert_close_to_oracle, hybrid_attention_ref, mask_cases, metric_attention_ref,
                                    oracle_errors, poincare_attention_ref, position_metric_attention_ref, segments_case)

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from arc_geometry.ops import flash, position_metric_triton as pmt  # noqa: E402

PATHS = {"metric": (flash.metric_kernel, metric_attention_ref), "poincare": (flash.poincare_triton, poincare_attention_ref),
         "hybrid": (flash.hybrid_triton, hybrid_attention_ref),
         "position_metric": (pmt.position_metric_triton, position_metric_attention_ref)}
CASES = mask_cases(2, 13, 21)       # windows of 1, 3 and ≥ S, documents (one of one token, one split), padding, Sq ≠ Sk


@pytest.mark.parametrize("geom", list(PATHS))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_float64_values_and_gradients(geom, case):
    fn, ref = PATHS[geom]
    assert_close_to_oracle(fn, ref, oracle_case(geom, 13, 21, H=1, D=8, Dv=4), torch.float64, 1e-9, scale=0.35,
                           **CASES[case])


@pytest.mark.parametrize("geom", list(PATHS))
def test_float32_and_float16(geom):
    """float32 within 1e-4 of the oracle (window 3, documents, padding, Sq = Sk); fp16 outputs within fp16's own
    error. (A window of 1 leaves each query one key: the exact gradient to q is 0, and float32 kernels return the
    rounding of δ = rowsum(dO ∘ O) there, as for any row with one key.)"""
    fn, ref = PATHS[geom]
    kw = mask_cases(2, 21, 21)[3]
    a = oracle_case(geom, 21, 21, H=1, D=8, Dv=4)
    assert_close_to_oracle(fn, ref, a, torch.float32, 1e-4, scale=0.35, **kw)
    assert oracle_errors(fn, ref, a, torch.float16, scale=0.35, **kw)["out"] < 1e-2


def test_window_alone_equals_explicit_segments_of_the_band():
    "A window wider than the sequence is no window; a window of 1 with causal is each query's own key."
    a = oracle_case("metric", 19, 19, H=2, D=8, Dv=4)
    full = flash.metric_kernel(**a, causal=True, scale=0.35)
    torch.testing.assert_close(flash.metric_kernel(**a, causal=True, scale=0.35, window=19), full, rtol=0, atol=0)
    torch.testing.assert_close(flash.metric_kernel(**a, causal=True, scale=0.35, window=1), a["v"], rtol=1e-12, atol=1e-12)


@triton.jit
def _ranges_kernel(OUT, SPS, SPE, Sq, Sk, causal, window, has_seg, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   KEYS: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    if KEYS:
        lo, ulo, uhi, hi = flash._key_range(pid * BLOCK_M, BLOCK_M, BLOCK_N, Sq, Sk, causal, window, SPS, SPE, b, has_seg)
    else:
        lo, ulo, uhi, hi = flash._query_range(pid * BLOCK_N, BLOCK_M, BLOCK_N, Sq, Sk, causal, window, SPS, SPE, b, has_seg)
    base = OUT + (b * tl.num_programs(0) + pid) * 4
    tl.store(base, lo)
    tl.store(base + 1, ulo)
    tl.store(base + 2, uhi)
    tl.store(base + 3, hi)


def _ranges(Sq, Sk, causal, window, seg, BM, BN, keys):
    B = 1 if seg is None else seg.shape[0]
    _, sps, spe = flash._segment_args(seg, B, Sk, "cpu")
    n = triton.cdiv(Sq, BM) if keys else triton.cdiv(Sk, BN)
    out = torch.zeros(B, n, 4, dtype=torch.int32)
    _ranges_kernel[(n, B)](out, sps, spe, Sq, Sk, int(causal), int(window or 0), int(seg is not None), BLOCK_M=BM,
                           BLOCK_N=BN, KEYS=keys)
    return out.tolist()


@pytest.mark.parametrize("Sq,Sk,causal,window,docs", [(37, 37, True, 5, False), (37, 37, False, 9, False),
                                                     (21, 37, True, 3, False), (37, 37, True, None, True),
                                                     (21, 37, False, 4, True), (37, 37, False, 40, False)])
def test_loop_bounds_visit_exactly_the_band(Sq, Sk, causal, window, docs):
    """Every allowed pair lies in the visited blocks `[lo, hi)`; blocks in `[ulo, uhi)` (run without a mask) hold only
    allowed pairs; and the visited range exceeds the allowed one by less than a block on each side (the skipping)."""
    BM, BN = 8, 16
    seg = segments_case(2, Sk) if docs else None
    if seg is not None: seg[1] = torch.arange(Sk) // 7                   # contiguous documents of 7 keys
    full = allowed_mask(2, Sq, Sk, causal, window=window, segment_ids=seg)
    full = torch.ones(2, 1, Sq, Sk, dtype=torch.bool) if full is None else full
    for keys in (True, False):
        for b, rows in enumerate(_ranges(Sq, Sk, causal, window, seg, BM, BN, keys)):
            for p, (lo, ulo, uhi, hi) in enumerate(rows):
                assert lo <= ulo <= uhi and lo <= hi, (keys, b, p, lo, ulo, uhi, hi)
                if keys: tile = full[b if seg is not None else 0, 0, p * BM:(p + 1) * BM]          # (rows, Sk)
                else: tile = full[b if seg is not None else 0, 0, :, p * BN:(p + 1) * BN].T         # (keys, Sq)
                seen = tile.any(0).nonzero().flatten()
                if len(seen) == 0: continue
                split = seg is not None and segment_spans(seg[b:b + 1]) is None
                step = BN if keys else BM
                assert lo <= seen.min() and seen.max() < hi, (keys, b, p, lo, hi, seen)
                if not split: assert seen.min() - lo < step and hi - seen.max() - 1 < 2 * step, (keys, p, lo, hi, seen)
                assert tile[:, ulo:uhi].all(), (keys, b, p, ulo, uhi)


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("geom", ["metric", "poincare", "lorentz"])
def test_nonfinite_key_reaches_only_the_rows_that_see_it(geom, backend):
    "A NaN key poisons exactly the rows whose window and document hold it; every other row equals the clean run."
    from arc_geometry.geometries import GEOMETRIES
    row = GEOMETRIES[geom]
    if backend == "triton" and row.triton is None: pytest.skip(f"{geom} has no Triton path")
    q, k, v, p = row.example(B=2, H=1, Sq=19, D=8, dtype=torch.float32)
    seg = torch.tensor([[0] * 10 + [1] * 9, [0] * 19])
    bad = k.clone(); bad[:, :, 4, 0] = float("nan")
    kw = dict(causal=True, window=3, segment_ids=seg, backend=backend)
    out, clean = row(q, bad, v, *p, **kw), row(q, k, v, *p, **kw)
    want = torch.zeros(2, 1, 19, dtype=torch.bool); want[:, :, 4:7] = True       # rows 4, 5, 6 see key 4 (window 3)
    assert torch.equal(out.isnan().all(-1), want)
    torch.testing.assert_close(out[~want], clean[~want], rtol=1e-5, atol=1e-6)
