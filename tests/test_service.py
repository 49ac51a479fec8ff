"""nmt-serve: the API's answers match nmt-translate's, every limit has its status code, the model
survives errors and reloads, and SIGTERM finishes the requests in flight."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import PAIRS, start_server  # noqa: E402

from nmt.options import InferenceOptions, SearchOptions  # noqa: E402
from nmt.service.app import Limits, create_app  # noqa: E402
from nmt.service.engine import Engine, EngineSettings, LoadedModel  # noqa: E402
from nmt.translation import Translator  # noqa: E402

BIN = Path(sys.executable).parent
SOURCES = [de for de, _ in PAIRS]
INFERENCE = InferenceOptions(device="cpu", workers=1)


def serve(run: Path, settings: EngineSettings | None = None, limits: Limits | None = None) -> TestClient:
    loaded = LoadedModel.load(run, INFERENCE)
    app = create_app(Engine(loaded, settings or EngineSettings()), INFERENCE, limits or Limits())
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(trained_run):
    with serve(trained_run, EngineSettings(workers=2)) as client:  # searches in 2 forked workers
        yield client


def test_health_ready_and_the_model_description(client, trained_run):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    info = client.get("/model").json()
    assert ready["status"] == "ready" and ready["sha256"] == info["sha256"]
    assert info["src_lang"] == "de" and info["tgt_lang"] == "en" and info["attention"] == "bahdanau"
    assert info["parameters"] > 1000 and info["precision"] == "fp32" and len(info["sha256"]) == 64


def test_translations_are_nmt_translates_in_order_with_empty_segments_empty(client, trained_run):
    segments = [SOURCES[3], "", SOURCES[7], "   ", SOURCES[1]]
    answer = client.post("/translate", json={"segments": segments, "beam": 3, "nbest": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = Translator.load(trained_run, SearchOptions(beam_size=3, nbest=2), INFERENCE).translate_lines(segments)
    assert [t["text"] for t in body["translations"]] == [t.text for t in expected]
    assert body["translations"][1] == {"text": "", "score": 0.0, "nbest": []}
    assert [h["text"] for h in body["translations"][0]["nbest"]] == expected[0].texts
    assert body["model"] == client.get("/model").json()["sha256"] and body["ms"] > 0


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("beam", [1, 2])
def test_concurrent_requests_join_running_searches_and_get_their_own_answers(trained_run, workers, beam):
    lines = [SOURCES[k % len(SOURCES)] for k in range(48)]
    expected = Translator.load(trained_run, SearchOptions(beam_size=beam), INFERENCE).translate_lines(lines)
    with serve(trained_run, EngineSettings(workers=workers)) as client:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda line: client.post("/translate", json={"segments": [line], "beam": beam}), lines)
            )
        searches = client.app.state.engine.searches
    got = [answer.json()["translations"][0] for answer in answers]
    assert [t["text"] for t in got] == [t.text for t in expected]
    assert [t["score"] for t in got] == pytest.approx([t.score for t in expected], abs=1e-5)
    assert searches < len(lines)  # requests joined searches under way


def test_line_breaks_and_control_characters_are_handled_as_nmt_translate_handles_a_line(client, trained_run):
    segment = f"{SOURCES[2]}\x07\n{SOURCES[4]}"
    answer = client.post("/translate", json={"segments": [segment], "beam": 1}).json()
    translator = Translator.load(trained_run, SearchOptions(beam_size=1), INFERENCE)
    assert answer["translations"][0]["text"] == translator.translate([segment.replace("\n", " ")])[0]


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"segments": ["a"] * 65}, "segments", "at most 64 per request"),
        ({"segments": ["x" * 2001]}, "segments", "at most 2000 per segment"),
        ({"segments": ["a"], "beam": 17}, "beam", "over this server's limit of 16"),
        ({"segments": ["a"], "beam": 2, "nbest": 3}, "nbest", "between 1 and the beam size"),
        ({"segments": ["a"], "beam": 0}, "beam", "beam=0 must be >= 1"),
        ({"segments": ["a"], "length_penalty": "long"}, "length_penalty", "Input should be"),
        ({"segments": ["a"], "temperature": 0.5}, "temperature", "only apply with sample=true"),
        ({"segments": "a"}, "segments", "valid list"),
        ({"segments": ["a"], "colour": "red"}, "colour", "Extra inputs"),
        ({}, "segments", "Field required"),
    ],
)
def test_bad_options_are_400_naming_the_field(client, body, field, words):
    answer = client.post("/translate", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field and words in answer.json()["error"]


def test_bad_json_and_invalid_utf8_are_400(client):
    for content in (b'{"segments": [', b'{"segments": ["\xff\xfe"]}'):
        answer = client.post("/translate", content=content, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert "error" in answer.json()


def test_a_body_over_the_limit_is_413_by_its_length_or_as_it_streams(trained_run):
    with serve(trained_run, limits=Limits(max_body_bytes=200)) as client:
        big = json.dumps({"segments": ["a" * 300]}).encode()
        assert client.post("/translate", content=big, headers={"Content-Type": "application/json"}).status_code == 413
        streamed = client.post(
            "/translate", content=iter([big[:100], big[100:]]), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert client.post("/translate", json={"segments": [SOURCES[0]]}).status_code == 200


def test_a_full_queue_is_503_with_retry_after_and_a_passed_deadline_504(trained_run):
    with serve(trained_run, EngineSettings(queue_segments=2)) as client:
        answer = client.post("/translate", json={"segments": ["a", "b", "c"]})
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        assert client.post("/translate", json={"segments": ["a", "b"]}).status_code == 200
    with serve(trained_run, limits=Limits(timeout_s=0.0)) as client:
        assert client.post("/translate", json={"segments": [SOURCES[0]]}).status_code == 504
        assert client.get("/ready").status_code == 200


def test_a_bug_is_500_and_the_model_stays_loaded(trained_run, monkeypatch):
    with serve(trained_run, EngineSettings(workers=1)) as client:  # searches in this process
        engine = client.app.state.engine
        original = engine.loaded.translator_for

        def broken(options):
            raise RuntimeError("a bug in search")

        monkeypatch.setattr(engine.loaded, "translator_for", broken)
        answer = client.post("/translate", json={"segments": [SOURCES[0]]})
        assert answer.status_code == 500 and "RuntimeError" in answer.json()["error"]
        monkeypatch.setattr(engine.loaded, "translator_for", original)
        assert client.post("/translate", json={"segments": [SOURCES[0]]}).status_code == 200


def test_a_killed_search_worker_fails_its_requests_with_503_and_a_new_one_takes_over(trained_run):
    with serve(trained_run, EngineSettings(workers=2)) as client:
        engine = client.app.state.engine
        workers = engine.loaded.worker_pids
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # hold the request in a worker
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(client.post, "/translate", json={"segments": [SOURCES[0]]})
            while not any(worker.jobs for worker in engine.loaded.workers):
                time.sleep(0.01)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
            answer = held.result(timeout=30)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        assert "worker died" in answer.json()["error"]
        assert client.post("/translate", json={"segments": [SOURCES[0]]}).status_code == 200
        assert len(engine.loaded.worker_pids) == 2 and not engine.loaded.worker_pids & workers


def test_inspect_returns_attention_gates_and_state_norms(client):
    answer = client.post("/inspect", json={"sentence": SOURCES[5]})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    attention = data["attention"]
    assert len(attention) == len(data["tgt_pieces"]) and len(attention[0]) == len(data["src_pieces"])
    assert all(abs(sum(row) - 1) < 1e-3 for row in attention)
    names = {layer["name"] for layer in data["layers"]}
    assert {"encoder_layer0_forward", "encoder_layer0_backward", "decoder_layer0_forward"} <= names
    for layer in data["layers"]:
        assert set(layer["gates"]) == {"forget", "input", "output"}
        steps = len(layer["pieces"])
        assert len(layer["gates"]["forget"]) == steps and len(layer["state_norm"]) == steps
        assert all(0 <= v <= 1 for row in layer["gates"]["input"] for v in row)
    assert client.post("/inspect", json={"sentence": " "}).status_code == 400


def test_reload_swaps_in_a_good_checkpoint_and_keeps_serving_after_a_corrupt_one(trained_run, tmp_path):
    with serve(trained_run) as client:
        before = client.get("/model").json()["sha256"]
        corrupt = tmp_path / "corrupt.pt"
        corrupt.write_bytes(b"not a checkpoint")
        answer = client.post("/reload", json={"checkpoint": str(corrupt)})
        assert answer.status_code == 422 and "corrupt.pt" in answer.json()["error"]
        assert client.get("/model").json()["sha256"] == before
        assert client.post("/translate", json={"segments": [SOURCES[0]]}).status_code == 200
        answer = client.post("/reload", json={"checkpoint": str(trained_run / "checkpoints" / "last.pt")})
        assert answer.status_code == 200, answer.text
        assert client.get("/model").json()["checkpoint"].endswith("last.pt")
        assert client.post("/reload").status_code == 200  # the one serving, re-read


def test_requests_in_flight_during_a_reload_finish_and_the_old_model_is_let_go(trained_run):
    last = str(trained_run / "checkpoints" / "last.pt")
    with serve(trained_run, EngineSettings(workers=2)) as client:
        engine = client.app.state.engine
        old_workers = engine.loaded.worker_pids
        segments = [SOURCES[k % len(SOURCES)] for k in range(64)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            busy = [pool.submit(client.post, "/translate", json={"segments": segments, "beam": 4}) for _ in range(3)]
            while not any(worker.jobs for worker in engine.loaded.workers):
                time.sleep(0.01)
            assert client.post("/reload", json={"checkpoint": last}).status_code == 200
            answers = [future.result(timeout=60) for future in busy]
        assert [answer.status_code for answer in answers] == [200] * 3
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in old_workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{pid}").exists() for pid in old_workers)  # the old workers ended
        assert engine._retired == [] and len(engine.loaded.worker_pids) == 2


def test_the_openapi_schema_describes_the_requests(client):
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["TranslateRequest"]["properties"]
    assert {"segments", "beam", "nbest", "length_penalty", "no_repeat_ngram", "sample"} <= set(request)
    assert request["beam"]["default"] == SearchOptions().beam_size
    assert {"/translate", "/inspect", "/reload", "/model", "/ready", "/health"} <= set(schema["paths"])


def test_the_page_and_its_assets_come_from_the_server_itself(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no other host
    for asset in ("/static/app.js", "/static/style.css"):
        answer = client.get(asset)
        assert answer.status_code == 200 and "https://" not in answer.text


# --- the command ----------------------------------------------------------------------------------
def test_sigterm_finishes_the_requests_in_flight_then_exits_0(trained_run):
    process, url = start_server(trained_run, "--workers", "2")
    workers = [
        int(child)
        for task in Path(f"/proc/{process.pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    assert workers  # the search workers, forked at start
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)  # requests stay in flight until the server has been told to stop
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(httpx.post, f"{url}/translate", json={"segments": [SOURCES[k]], "beam": 4}, timeout=60)
            for k in range(8)
        ]
        time.sleep(1.0)  # the requests are in
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        answers = [future.result() for future in futures]
    output, _ = process.communicate(timeout=60)
    assert [answer.status_code for answer in answers] == [200] * 8
    assert all(answer.json()["translations"][0]["text"] for answer in answers)
    assert process.returncode == 0, output


def test_a_bad_checkpoint_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    result = subprocess.run([str(BIN / "nmt-serve"), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "bad.pt" in result.stderr and "Traceback" not in result.stderr
