"""Text runs through the `arc-geometry` command, in process (`main`): train on a small corpus of files, the metrics
rows, resume onto the same curve, `eval --data`, `generate`, the tokenizer recorded with the run and refused when
it differs, and the one-line errors for bad text input. Kept fast: a tiny corpus in tmp_path, a one-layer model,
a few steps; shards are cached in tmp_path (ARC_GEOMETRY_CACHE).
"""
import contextlib
import io
import json
import math
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from arc_geometry.cli import main
from arc_geometry.train_state import read_metrics

# geometry "dot": in this process TRITON_INTERPRET=1 (conftest) would run the metric kernels interpreted, slowly;
# the text path does not depend on the geometry (the DDP test runs subprocesses without the interpreter).
WORDS = "alpha beta gamma delta épsilon zeta ēta theta iota kappa λambda mu".split()


def corpus(d, n=24):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"doc{i:02d}.txt").write_text(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(60)) + "\n")
    return d


def config(tmp_path, **data):
    return {"model": {"dim": 16, "depth": 1, "num_heads": 2, "geometry": "dot", "max_seq_len": 32},
            "data": {"task": "text", "files": str(corpus(tmp_path / "corpus")), "val_fraction": 0.2, **data},
            "train": {"max_steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_every": 3,
                      "checkpoint_every_steps": 3, "checkpoint_every_s": 0, "progress": False, "num_threads": 1,
                      "tensorboard": False, "schedule": "constant"}}


def cli(*args):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main([str(a) for a in args])
    return rc, o.getvalue(), e.getvalue()


def one_line(r, *needles):
    rc, _, err = r
    assert rc == 2, r
    assert len(err.strip().splitlines()) == 1, err
    for n in needles: assert n in err, (n, err)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARC_GEOMETRY_CACHE", str(tmp_path / "cache"))


def write(tmp_path, cfg, name="c.json"):
    p = tmp_path / name; p.write_text(json.dumps(cfg)); return p


def test_train_resume_eval_generate(tmp_path):
    cfg = write(tmp_path, config(tmp_path))
    rc, so, se = cli("train", cfg, "--out", tmp_path / "full")
    assert rc == 0, se
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    ev = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in ev] == [3, 6]
    for r in ev:
        assert math.isclose(r["val_ppl"], math.exp(r["val_loss"]), rel_tol=1e-9)
        assert r["val_bpb"] > 0 and math.isfinite(r["val_bpb"])
    assert all(r["tokens_per_s"] > 0 for r in rows)
    info = json.loads((tmp_path / "full" / "text.json").read_text())
    assert info["python"] == sys.version.split()[0] and len(info["corpus_digest"]) == 64
    assert info["tokenizer"] == {"kind": "bytes"}
    assert json.loads(so)["val_bpb"] == ev[-1]["val_bpb"]

    # a run stopped at step 3 and resumed follows the uninterrupted curve exactly (the data position is restored)
    assert cli("train", cfg, "--out", tmp_path / "part", "--set", "train.max_steps=3")[0] == 0
    assert cli("train", "--out", tmp_path / "part", "--resume", "--set", "train.max_steps=6")[0] == 0
    strip = lambda rs: [(r["step"], r["loss"], r.get("val_loss")) for r in rs]
    assert strip(read_metrics(tmp_path / "part" / "metrics.jsonl")) == strip(rows)

    rc, so, se = cli("eval", tmp_path / "full")
    assert rc == 0 and json.loads(so)["val_bpb"] == pytest.approx(ev[-1]["val_bpb"], rel=1e-6)
    f = tmp_path / "corpus" / "doc03.txt"
    rc, so, se = cli("eval", tmp_path / "full", "--data", f)
    r = json.loads(so)
    assert rc == 0 and r["bytes"] == len(f.read_bytes()) and r["tokens"] == len(f.read_bytes()) + 1
    assert r["bpb"] == pytest.approx(r["loss"] * r["tokens"] / r["bytes"] / math.log(2))

    for d in (tmp_path / "full", tmp_path / "full" / "model"):
        rc, so, se = cli("generate", d, "--prompt", "alpha ", "--max-new-tokens", 12, "--seed", 1)
        assert rc == 0 and so.startswith("alpha "), se
        assert so == cli("generate", d, "--prompt", "alpha ", "--max-new-tokens", 12, "--seed", 1)[1]
    one_line(cli("generate", tmp_path / "full", "--prompt", "x", "--max-new-tokens", 40), "--max-new-tokens 40", "max_seq_len = 32")


def test_bpe_run_keeps_its_tokenizer(tmp_path):
    c = config(tmp_path, tokenizer={"kind": "bpe", "vocab_size": 280})
    c["train"]["max_steps"] = 3
    cfg = write(tmp_path, c)
    assert cli("train", cfg, "--out", tmp_path / "r")[0] == 0
    run = tmp_path / "r"
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == 280
    for d in (run, run / "model"): assert (d / "tokenizer.json").is_file()
    assert cli("generate", run, "--prompt", "beta", "--max-new-tokens", 5, "--seed", 0)[0] == 0
    # a tokenizer.json that differs from the one the model was trained with is refused on eval, generate and resume
    good = (run / "tokenizer.json").read_text()
    other = json.loads(good); other["model"]["merges"] = other["model"]["merges"][:-1]
    (run / "tokenizer.json").write_text(json.dumps(other)); (run / "model" / "tokenizer.json").write_text(json.dumps(other))
    one_line(cli("eval", run), "differs from the one its model was trained with")
    one_line(cli("generate", run, "--prompt", "x"), "differs from the one its model was trained with")
    one_line(cli("train", "--out", run, "--resume"), "differs from the one its model was trained with")
    (run / "tokenizer.json").unlink()
    one_line(cli("train", "--out", run, "--resume"), "tokenizer.json is missing")
    one_line(cli("train", cfg, "--out", tmp_path / "x", "--set", "model.vocab_size=300"),
             "model.vocab_size = 300", "vocabulary of 280")


def test_bad_text_input_is_one_line(tmp_path):
    c = config(tmp_path)
    (tmp_path / "corpus" / "doc05.txt").write_bytes(b"ok " * 50 + b"caf\xe9 " + b"ok " * 50)
    one_line(cli("train", write(tmp_path, c), "--out", tmp_path / "a"), "doc05.txt is not UTF-8", "at byte offset 153")
    c["data"]["errors"] = "replace"
    with pytest.warns(UserWarning, match=r"1 invalid UTF-8 sequence\(s\) replaced"):
        assert cli("train", write(tmp_path, c), "--out", tmp_path / "b")[0] == 0
    (tmp_path / "empty").mkdir(); (tmp_path / "empty" / "a.csv").write_text("x")
    c["data"]["files"] = str(tmp_path / "empty")
    one_line(cli("train", write(tmp_path, c), "--out", tmp_path / "c"), "holds no file matching")
    c["data"]["files"] = [str(tmp_path / "corpus" / "doc01.txt"), str(tmp_path / "corpus" / "doc02.txt")]
    c["model"]["max_seq_len"] = 512
    one_line(cli("train", write(tmp_path, c), "--out", tmp_path / "d"), "fewer than one training window of max_seq_len + 1 = 513")
    c["data"]["tokenizer"] = {"kind": "bpe", "vocab_size": 200}
    one_line(cli("train", write(tmp_path, c), "--out", tmp_path / "e"), "data.tokenizer.vocab_size must be an int >= 257")


def test_ddp_two_ranks_equal_one_with_double_batch(tmp_path):
    "torchrun, 2 ranks with batch b on text follow the loss curve of 1 process with batch 2b (disjoint windows)."
    c = config(tmp_path); c["train"].update(max_steps=4, eval_every=2, checkpoint_every_steps=0)
    cfg = write(tmp_path, c)
    env = {**subprocess_env(), "ARC_GEOMETRY_CACHE": str(tmp_path / "cache")}
    def run(out, nproc, *extra):
        pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        r = subprocess.run(pre + ["-m", "arc_geometry.cli", "train", str(cfg), "--out", str(out), *extra],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    assert cli("train", cfg, "--out", tmp_path / "one", "--set", "train.batch_size=8")[0] == 0   # the reference, in process
    run(tmp_path / "two", 2)
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for k in ("loss", "val_loss", "val_bpb"):
            assert (k in a) == (k in b) and (k not in a or abs(a[k] - b[k]) <= 2e-5 * max(1, abs(a[k]))), (k, a, b)
