"""The serving benchmark's PyTorch peer (reft_jax.bench.filter_peer) computes the filter's own scores: on the demo
teacher's bundle (test_serve's fixtures) and on copies of it whose filter.json reads other layers and scorers."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import without_preload
from test_serve import PROMPTS, bundle, workdir  # noqa: F401 (the demo teacher's bundle and the workdir it needs)

pytest.importorskip("torch", reason="the peer is PyTorch's: pip install torch")

from reft_jax.bench.filter_peer import TorchFilter  # noqa: E402
from reft_jax.refusal.probe import Probe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# test_serve's prompts (one in the 96-token bucket) and one cut to the largest bucket
LENGTHS = [*PROMPTS, "Tell me everything about the history of the Roman roads and bridges, please. " * 12]


def variant(source: Path, out: Path, scorer: str, rng) -> Path:
    """A copy of the bundle that scores with `scorer` at layers 1 and 2 of the demo's two blocks (the last one after
    the final norm, as transformers' last hidden state) in batches of 3: R_l at layer 2 a random direction, and for
    the probe-based scorers a random probe (the veto's tau below every cosine, so that the probe alone decides)."""
    shutil.copytree(source, out)
    settings = json.loads((out / "filter.json").read_text())
    r = np.load(out / "refusal_feature.npy").reshape(1, -1)
    r = np.concatenate([r, rng.normal(size=r.shape)]).astype(np.float32)
    np.save(out / "refusal_feature.npy", r)
    if scorer != "cosine":  # b = 0: a random probe vetoes about half the prompts
        Probe(rng.normal(size=r.shape).astype(np.float32), 0.0 if scorer == "veto" else 0.5, 1.0).save(
            out / "probe.npz")
    settings.update(layers=[1, 2], scorer=scorer, serving={**settings["serving"], "batch_size": 3})
    if scorer == "veto":
        settings["tau"] = -1.0
    (out / "filter.json").write_text(json.dumps(settings))
    return out


@pytest.fixture(scope="module")
def bundles(bundle, tmp_path_factory):  # noqa: F811 (test_serve's fixture)
    rng, tmp = np.random.default_rng(0), tmp_path_factory.mktemp("peer")
    return {"as exported": bundle, **{f"{s} at layers 1, 2": variant(bundle, tmp / s, s, rng)
                                      for s in ("cosine", "probe", "veto")}}


@pytest.mark.parametrize("name", ["as exported", "cosine at layers 1, 2", "probe at layers 1, 2",
                                  "veto at layers 1, 2"])
def test_the_peer_scores_as_the_filter(bundles, name):
    import reft_jax

    filt, peer = reft_jax.Filter.load(bundles[name]), TorchFilter(bundles[name], device="cpu")
    assert (peer.layers, peer.scorer, peer.tau, peer.batch_size) == (filt.layers, filt.scorer, filt.tau,
                                                                     filt.batch_size)
    want, got = filt.score(LENGTHS), peer.score(LENGTHS)
    np.testing.assert_allclose(got, want, atol=1e-4)
    if name.startswith("veto"):  # both sides of the veto
        assert (want < filt.tau).any() and (want > filt.tau).any(), want


def test_the_serving_benchmark_writes_every_figure(bundle, tmp_path):  # noqa: F811 (test_serve's fixture)
    """docs/experiments/serve_bench.py end to end on the demo bundle, each measurement and load test 1 s, and the
    server's memory read over 20 more requests."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "docs/experiments/serve_bench.py"), str(bundle), str(out),
                           "--seconds", "1", "--n", "40", "--memory-requests", "20"],
                          capture_output=True, text=True, timeout=600, env=without_preload())
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for side in ("jax", "torch"):
        assert report[side]["prompts_per_s"] > 0 and report[side]["scoring_prompts_per_s"] > 0
        assert report[side]["batches_per_pass"] == 2 and report[side]["bucket_lengths"] == [64]
    assert report["torch"]["threads"] >= 1 and report["torch"]["max_abs_diff_vs_jax"] <= 1e-4
    tests = report["serve"]["load_tests"]
    assert [t["clients"] for t in tests] == [1, 8, 32] and all(t["errors"] == 0 and t["requests"] for t in tests)
    assert report["serve"]["max_abs_diff_vs_jax"] <= 1e-5 and report["serve"]["exit_code"] == 0
    memory = report["serve"]["memory"]
    assert memory["requests"] >= 20 and memory["errors"] == 0 and len(memory["rss_mb"]) >= 2
    assert all(mb > 10 for _, mb in memory["rss_mb"])  # a loaded model's server, read from /proc
    assert memory["growth_mb"] == round(memory["rss_mb"][-1][1] - memory["rss_mb"][0][1], 1)
    whole = report["jax"]["whole"]  # the same filter with every batch whole: the peer's work
    assert whole["scoring_prompts_per_s"] > 0 and whole["max_abs_diff_vs_shared"] <= 1e-5
    assert report["jax"]["prefix_tokens"] > 10 and report["jax"]["suffix_buckets"][0] == 32
    assert set(report["jax_over_torch"]) == {"prompts_per_s", "scoring_prompts_per_s", "whole_scoring_prompts_per_s"}
    assert report["commit"] and report["machine"]["cpus"] and "serve_bench.py" in report["command"]
