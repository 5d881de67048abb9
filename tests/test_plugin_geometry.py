"""A geometry from outside the package: one registry row, its functions and its model block, all defined in this file
and registered at run time — no file of the package edited. It must then work wherever a built-in geometry works:
the attention call and its backends, `GeoLM`, training through the CLI's trainer, generation with the KV cache, the
attention and model benchmarks, the ONNX export, and the widgets.

The toy geometry is a dot product with a learned per-head temperature `t_h > 0`: `s_ij = t_h · scale · q_i·k_j`.
"""
import math

import numpy as np
import pytest
import torch

from arc_geometry.core import check_attention, check_bound, masked_attend, allowed_mask
from arc_geometry.geometries import BLOCKS, GEOMETRIES, Geometry, register, unregister
from arc_geometry.ops.metric import sdpa_attend
from arc_geometry.reference import dot_case


def check_toy(q, t):
    if t.shape != (q.shape[1],):
        raise ValueError(f"t must be (H,) = ({q.shape[1]},), got {tuple(t.shape)}")
    check_bound("t", t)


def toy_scores(q, k, t, scale):
    return t[:, None, None] * scale * (q @ k.transpose(-1, -2))


def toy_ref(q, k, v, t, causal=False, key_padding_mask=None, scale=None):
    *_, scale = check_attention(q, k, v, key_padding_mask, scale)
    allowed = allowed_mask(q.shape[0], q.shape[2], k.shape[2], causal, key_padding_mask, q.device)
    return masked_attend(toy_scores(q, k, t, scale), v, allowed)


def toy_cpu(q, k, v, t, *, causal=False, key_padding_mask=None, scale):
    return sdpa_attend(q * t[:, None, None], k, v, causal, key_padding_mask, scale)


def toy_case(g, B, H, Sq, Sk, D, Dv, **kw):
    return dot_case(g, B, H, Sq, Sk, D, Dv, **kw) | dict(t=torch.rand(H, dtype=torch.float64, generator=g) + 0.5)


TOY = Geometry(name="toy", summary="a dot product with a learned temperature", distance="−t·q·k",
               params=("t",), validate=check_toy, reference=toy_ref, scores=toy_scores, torch=toy_cpu,
               no_triton="SDPA on scaled queries", inputs=toy_case, export=toy_scores, block=__name__)


from arc_geometry.blocks import GeoAttention  # noqa: E402  (after the row: a reader sees the row first)


class ToyAttention(GeoAttention):
    geometry = "toy"

    def __init__(self, cfg, layer=0):
        super().__init__(cfg, layer)
        self.log_t = torch.nn.Parameter(torch.zeros(cfg.num_heads))

    def params(self):
        return (self.log_t.exp(),)


@pytest.fixture
def toy():
    register(TOY)
    BLOCKS["toy"] = ToyAttention
    try:
        yield GEOMETRIES["toy"]
    finally:
        unregister("toy")
        BLOCKS.pop("toy", None)


def test_attention_backends(toy):
    q, k, v, (t,) = toy.example(Sq=5, Sk=7, D=8, Dv=6)
    kpm = torch.ones(2, 7, dtype=torch.bool); kpm[1, :6] = False
    want = toy.reference(q, k, v, t, causal=True, key_padding_mask=kpm, scale=0.3)
    got = toy(q, k, v, t, causal=True, key_padding_mask=kpm, scale=0.3)
    assert torch.allclose(got, want, atol=1e-10)
    with pytest.raises(ValueError, match=r"t must be > 0"):
        toy(q, k, v, -t)


def test_model_training_generation(toy, tmp_path):
    from arc_geometry.cli import DEFAULT_CONFIG, run_training
    from arc_geometry.models import GeoConfig, GeoLM
    cfg = {s: dict(v) for s, v in DEFAULT_CONFIG.items()}
    cfg["model"].update(geometry="toy", dim=16, num_heads=2)          # a rank would be refused: the toy owns none
    cfg["data"].update(p=11)
    cfg["train"].update(max_steps=4, batch_size=16, eval_every=2, target_accuracy=None)
    summary = run_training(cfg, tmp_path / "run")
    assert summary["step"] == 4
    model = GeoLM.from_pretrained(tmp_path / "run" / "model")
    assert type(model.model.blocks[0].attn) is ToyAttention
    assert model.model.blocks[0].attn.log_t.abs().sum() > 0                 # the toy's own parameter was trained
    ids = torch.randint(0, 11, (2, 1))                                      # the task's sequences are 4 long
    out = model.generate(ids, 3, temperature=0)
    full = ids
    for _ in range(3):
        full = torch.cat([full, model(full)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, full)


def test_benchmarks(toy):
    from arc_geometry.bench import run_case
    from arc_geometry.bench_model import TINY, bench_one
    row = run_case("toy", 32, H=2, D=8, R=2, repeats=1)
    assert row["geometry"] == "toy" and row["fwdbwd_s"] > 0
    m = bench_one("toy", **TINY)
    assert m["tokens_per_s"] > 0


def test_onnx_export_and_widgets(toy, tmp_path):
    pytest.importorskip("onnxruntime")
    from arc_geometry.export import OnnxLM, export_onnx
    from arc_geometry.models import GeoConfig, GeoLM
    from arc_geometry.widgets import AttentionExplorer
    model = GeoLM(GeoConfig(vocab_size=13, dim=16, depth=1, num_heads=2, geometry="toy", max_seq_len=16)).eval()
    with torch.no_grad():
        model.model.blocks[0].attn.log_t.copy_(torch.tensor([0.3, -0.2]))
    ids = torch.randint(0, 13, (2, 7))
    path = export_onnx(model, tmp_path / "toy.onnx")
    with torch.no_grad():
        want = model(ids).numpy()
    assert np.abs(OnnxLM(path)(ids.numpy()) - want).max() < 1e-4
    ex = AttentionExplorer(model, ids[0])
    assert any("−t·q·k" in str(a.text) for a in ex.figure().layout.annotations)
