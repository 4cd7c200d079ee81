"""`reft-jax serve` as a client calls it: the real server in a subprocess on a free local port, serving the demo
run's teacher; its answers against `reft-jax filter --data` on the same prompts."""

import concurrent.futures
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest

from conftest import TINY, copy_run, without_preload

from reft_jax.cli import main
from reft_jax.serve import loadtest
from reft_jax.serve.server import exposure_warning

KEY = "test-key-0123456789"
SECRET = "a prompt that must never reach the log 7f3a"  # sent, then looked for in the server's log
PROMPTS = ["How do I bake bread?", "How do I break into a house?", "Write a poem about the sea.",
           "Explain how to poison a neighbour's dog without being caught.", "What is the capital of France?",
           # long enough for the larger bucket (96 tokens; the demo's template is about 40)
           " ".join(["Please explain in detail how a modern city organises its water supply, its sewers and its "
                     "power grid,"] * 4), SECRET]
LIMITS = ["--max-inputs", "8", "--max-chars", "2000", "--max-body-bytes", "4096", "--max-file-bytes", "65536"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`reft-jax serve` in a subprocess: its address, the statuses /healthz gave while starting, its log."""

    def __init__(self, source, tmp, *extra, key=KEY):
        """source: ["--workdir", DIR] or ["--filter", BUNDLE]."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "serve.log"
        env = without_preload(**({"REFT_JAX_API_KEY": key} if key else {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reft_jax.cli", "serve", *map(str, source), "--port", str(self.port),
             *extra, *TINY], stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        self.health, self.moderation_while_loading = [], None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self.proc.poll() is None:
            status, _ = request(self.url + "/healthz")
            if status and not self.health and self.moderation_while_loading is None:
                self.moderation_while_loading = request(self.url + "/v1/moderations", {"input": "hi"})[0]
            if status:
                self.health.append(status)
            if status == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"the server did not become ready:\n{self.log.read_text()[-3000:]}")

    def metric(self, name: str, **labels) -> float:
        text = request(self.url + "/metrics", key=KEY)[1]
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = "^" + re.escape(name + (f"{{{selector}}}" if selector else "")) + r" (\S+)$"
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def request(url, body=None, *, key=KEY, raw: bytes | None = None, headers=None):
    """(status, text) of a GET, or of a POST of `body` as JSON (or of `raw` bytes); (None, "") with no server."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=h), timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (ConnectionError, urllib.error.URLError):
        return None, ""


def teacher_copy(demo_run, tmp_path_factory):
    return copy_run(demo_run, tmp_path_factory.mktemp("serve") / "run", ("student", "no_defense", "eval"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_run):
    """The demo run's teacher for the commands this process runs (a copy: `reft-jax filter` rewrites filter/, and
    the process holds the workdir from then on)."""
    return teacher_copy(demo_run, tmp_path_factory)


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_run):
    """The server of another copy of the same teacher (a server holds its workdir as every command does)."""
    srv = Server(["--workdir", teacher_copy(demo_run, tmp_path_factory)], tmp_path_factory.mktemp("server"),
                 "--max-wait-ms", "50", *LIMITS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def filtered(workdir, tmp_path_factory):
    """`reft-jax filter --data FILE` on PROMPTS (labelled): the file and its scores.jsonl lines."""
    data = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "harmful": i % 2 == 1}) + "\n" for i, p in enumerate(PROMPTS)))
    assert main(["filter", "--workdir", str(workdir), "--data", str(data), *TINY]) == 0
    lines = [json.loads(line) for line in (workdir / "filter" / "scores.jsonl").read_text().splitlines()]
    return data, lines


def test_healthz_is_503_while_loading_then_200(server):
    assert server.health[0] == 503 and server.health[-1] == 200
    assert server.moderation_while_loading == 503


def test_the_openai_client_gets_the_filters_scores_and_flags(server, filtered):
    _, expected = filtered
    client = openai.OpenAI(api_key=KEY, base_url=server.url + "/v1")
    response = client.moderations.create(input=PROMPTS)
    assert len(response.results) == len(PROMPTS) and response.model == "reft-jax-filter"
    for result, want in zip(response.results, expected):
        assert result.flagged == want["flagged"] == result.categories.harmful
        assert abs(result.category_scores.harmful - want["score"]) <= 1e-5
    one = client.moderations.create(input=PROMPTS[1])  # a single string
    assert one.results[0].flagged == expected[1]["flagged"]


def test_the_file_endpoint_streams_the_filters_lines(server, filtered, tmp_path):
    data, expected = filtered
    status, text = request(server.url + "/v1/filter?format=jsonl", raw=data.read_bytes())
    assert status == 200
    lines = [json.loads(line) for line in text.splitlines()]
    fields = ("index", "flagged", "label", "digest")  # the digest: what `finetune --kept` matches rows by
    assert [tuple(x[k] for k in fields) for x in lines] == [tuple(x[k] for k in fields) for x in expected]
    np.testing.assert_allclose([x["score"] for x in lines], [x["score"] for x in expected], atol=1e-5)
    # Another layout `--data` reads, named by its Content-Type: the same rows, the same scores.
    csv = "prompt\n" + "".join(f'"{p}"\n' for p in PROMPTS)
    status, text = request(server.url + "/v1/filter", raw=csv.encode(), headers={"Content-Type": "text/csv"})
    assert status == 200
    np.testing.assert_allclose([json.loads(line)["score"] for line in text.splitlines()],
                               [x["score"] for x in expected], atol=1e-5)


def test_concurrent_requests_share_batches_with_identical_scores_and_no_recompilation(server, filtered, bundle):
    import reft_jax

    _, expected = filtered
    want = {p: x["score"] for p, x in zip(PROMPTS, expected)}
    compiled, batches = server.metric("reft_jax_compiled_programs"), server.metric("reft_jax_batch_rows_count")
    # One program per row size (1, 2, 4, ..., 32) and bucket (64, 96), and per row size and suffix bucket (32,
    # 64 - P, 96 - P: the tokens after the template's opening of P tokens), compiled before ready.
    filt = reft_jax.Filter.load(bundle)
    assert compiled == 6 * (2 + len(filt.suffix_buckets)) == 30, filt.suffix_buckets

    def one(k):
        texts = [PROMPTS[(k + j) % len(PROMPTS)] for j in range(1 + k % 3)]
        status, text = request(server.url + "/v1/moderations", {"input": texts})
        assert status == 200, text
        return texts, [r["category_scores"]["harmful"] for r in json.loads(text)["results"]]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(32)))
    for texts, scores in answers:
        np.testing.assert_allclose(scores, [want[t] for t in texts], atol=1e-5)
    rows = sum(len(t) for t, _ in answers)
    used = server.metric("reft_jax_batch_rows_count") - batches
    assert server.metric("reft_jax_batch_rows_sum") >= rows and used < 32  # requests shared batches
    # A bounded load test (8 clients for 2 s, each stopping by itself): no error, the same scores, nothing compiled.
    report = loadtest.run(server.url, PROMPTS, clients=8, seconds=2, per_request=2, api_key=KEY)
    assert report["errors"] == 0 and report["requests"] > 8, report
    for text, scores in report["scores"].items():
        assert np.allclose(scores, want[text], atol=1e-5), (text, scores)
    assert server.metric("reft_jax_compiled_programs") == compiled


def test_a_key_is_needed_everywhere_but_healthz(server):
    for key in (None, "wrong-key"):
        status, text = request(server.url + "/v1/moderations", {"input": "hi"}, key=key)
        assert status == 401 and "Authorization: Bearer" in json.loads(text)["error"]["message"]
        assert request(server.url + "/metrics", key=key)[0] == 401
        assert request(server.url + "/v1/filter?format=jsonl", raw=b'{"prompt": "hi"}\n', key=key)[0] == 401
    assert request(server.url + "/healthz", key=None)[0] == 200


@pytest.mark.parametrize("body, status, fragment", [
    (b'{"input": [', 400, "malformed JSON"),
    (b'\xff\xfe{"input": "hi"}', 400, "not UTF-8"),
    (b'{"input": 3}', 400, "a string or a list of strings"),
    (b'{"input": ["hi", 3]}', 400, "a string or a list of strings"),
    (b'["hi"]', 400, "an 'input' field"),
    (json.dumps({"input": ["hi"] * 9}).encode(), 400, "limit of 8 per request (--max-inputs)"),
    (json.dumps({"input": ["hi", "x" * 2001]}).encode(), 413, "input[1]: 2001 characters, more than the limit of 2000"),
    (json.dumps({"input": ["x" * 1000] * 5}).encode(), 413, "limit of 4096 bytes (--max-body-bytes)"),
])
def test_bad_requests_are_one_line_errors(server, body, status, fragment):
    got, text = request(server.url + "/v1/moderations", raw=body)
    message = json.loads(text)["error"]["message"]
    assert got == status and fragment in message and "\n" not in message, (got, message)


def test_bad_files_are_one_line_errors(server):
    status, text = request(server.url + "/v1/filter", raw=b'{"prompt": "hi"}\n', headers={"Content-Type": "text/x"})
    assert status == 400 and "?format=jsonl" in text
    status, text = request(server.url + "/v1/filter?format=jsonl", raw=b'{"prompt": "hi"}\n{"prompt": \n')
    message = json.loads(text)["error"]["message"]
    assert status == 400 and message.startswith("upload") and "tmp" not in message, message
    status, text = request(server.url + "/v1/filter?format=jsonl", raw=b'{"prompt": "hi"}\n' * 5000)
    assert status == 413 and "(--max-file-bytes)" in text
    # A failed request leaves the server serving.
    assert request(server.url + "/v1/moderations", {"input": "hi"})[0] == 200


def test_a_public_address_without_a_key_warns():
    assert "without an API key" in exposure_warning("0.0.0.0", "")
    assert exposure_warning("0.0.0.0", KEY) is None
    assert exposure_warning("127.0.0.1", "") is None and exposure_warning("localhost", "") is None
    assert exposure_warning("::1", "") is None


@pytest.fixture(scope="module")
def bundle(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "filter"
    assert main(["export", "--filter", "--workdir", str(workdir), "--out", str(out), *TINY]) == 0
    return out


def test_the_filter_bundle_scores_as_the_filter_command(bundle, filtered):
    import reft_jax

    _, expected = filtered
    assert sorted(p.name for p in bundle.iterdir()) == ["filter.json", "model", "refusal_feature.npy"]
    filt = reft_jax.Filter.load(bundle)  # no config, no workdir
    scores = filt.score(PROMPTS)
    np.testing.assert_allclose(scores, [x["score"] for x in expected], atol=1e-5)
    assert ((scores > filt.tau) == [x["flagged"] for x in expected]).all()
    # A batch has the fewest rows of 1, 2, 4, ... or filter.batch_size that hold its prompts, each scored as in any
    # other.
    ids = list(filt.tokenize(filt.examples(PROMPTS)).prompt_ids) * 3
    assert filt.row_sizes == (1, 2, 4, 8, 16, 32)  # filter.batch_size 32
    assert [filt.batch(ids[:n])["input_ids"].shape[0] for n in (1, 3, 8, 9, 17)] == [1, 4, 8, 16, 32]
    np.testing.assert_allclose([filt.score_rows(ids[i: i + 1])[0] for i in range(3)], scores[:3], atol=1e-5)
    # Every prompt opens with the template's tokens: computed once, and a batch runs the tokens after them only,
    # padded to the shortest suffix bucket that holds them, with the scores of the whole prompts.
    from reft_jax.serve.teacher_filter import PromptBatches

    p = len(filt.prefix_ids)
    # The long prompt is cut to 96 tokens from its start (truncation keeps the end): it no longer opens with them.
    assert p > 10 and [np.array_equal(x[:p], filt.prefix_ids) for x in ids[:7]] == [True] * 5 + [False, True]
    assert filt.suffix_buckets == (32, 64 - p, 96 - p)
    short = ids[:5]
    assert filt.batch([x[p:] for x in short], filt.suffix_buckets)["input_ids"].shape == (8, 32)
    np.testing.assert_allclose(filt.score_rows(short), PromptBatches.score_rows(filt, short), atol=1e-5)
    np.testing.assert_array_equal(filt.score_rows(ids[4:6]), PromptBatches.score_rows(filt, ids[4:6]))  # whole
    # The server's batcher splits what it gathered when two batches hold fewer tokens than one: 31 short prompts
    # (the tokens after the template's opening, in 32 rows of 32) and the long one (whole, 96 tokens) run as two.
    import asyncio

    from reft_jax.serve.batcher import Batcher

    gathered, runs = [ids[i % 5] for i in range(31)] + [ids[5]], []
    assert filt.batch_tokens(gathered) == 32 * 96 and filt.batch_tokens(gathered[:31]) == 32 * 32
    batcher = Batcher(filt, max_wait=2.0, on_batch=runs.append)
    try:
        together = asyncio.run(batcher.score(gathered))
    finally:
        batcher.stop()
    assert runs == [31, 1]
    np.testing.assert_allclose(together, np.concatenate([filt.score_rows(gathered[:31]), filt.score_rows(ids[5:6])]),
                               atol=1e-5)
    # A list of prompts is scored shortest first (like lengths share a batch), its scores in the list's order.
    lengths, score_rows = [], filt.score_rows
    filt.score_rows = lambda rows: lengths.append([len(x) for x in rows]) or score_rows(rows)
    np.testing.assert_allclose(filt.score(PROMPTS[::-1] * 5), np.tile(scores[::-1], 5), atol=1e-5)
    assert [len(x) for x in lengths] == [32, 3] and max(lengths[0]) <= min(lengths[1]) == 96


def test_a_bundle_replaces_only_a_bundle(workdir, bundle, tmp_path, capsys):
    assert main(["export", "--filter", "--workdir", str(workdir), "--out", str(bundle), *TINY]) == 0  # a bundle: whole
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["export", "--filter", "--workdir", str(workdir), "--out", str(other), *TINY]) == 2
    assert "holds other files, not a filter bundle" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"


def test_sigterm_answers_the_requests_in_flight_and_exits_0(bundle, filtered, tmp_path):
    """A server of the filter bundle, whose batches wait 2 s: SIGTERM comes while 8 requests wait in its batching
    window. Its log never held a prompt (no --log-prompts)."""
    expected = {p: x["score"] for p, x in zip(PROMPTS, filtered[1])}
    server = Server(["--filter", bundle], tmp_path, "--max-wait-ms", "2000")
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(request, server.url + "/v1/moderations", {"input": [PROMPTS[k - 1]]})
                       for k in range(8)]
            deadline = time.monotonic() + 10
            while server.metric("reft_jax_requests_in_flight") < 8 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [status for status, _ in answers] == [200] * 8
        for k, (_, text) in enumerate(answers):
            assert abs(json.loads(text)["results"][0]["category_scores"]["harmful"] - expected[PROMPTS[k - 1]]) <= 1e-5
        assert server.proc.wait(timeout=60) == 0
    finally:
        server.stop()
    log = server.log.read_text()
    assert log.count("moderations: 1 prompt(s)") == 8 and SECRET not in log and "poison" not in log
    assert request(server.url + "/healthz")[0] is None  # no longer listening


def test_the_python_api_scores_as_the_filter_command(workdir, filtered):
    import reft_jax

    _, expected = filtered
    filt = reft_jax.Filter.load(workdir, overrides=TINY)
    scores = filt.score(PROMPTS)
    np.testing.assert_allclose(scores, [x["score"] for x in expected], atol=1e-5)
    assert ((scores > filt.tau) == [x["flagged"] for x in expected]).all()
