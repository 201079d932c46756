"""The BentoML service for real: `musicvae serve` on 127.0.0.1 with a model from a temporary model store,
called over HTTP like a user would (JSON, multipart uploads), including every bad-request case."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile

import httpx
import pytest

from serving.schemas import EXAMPLE_NOTES_1, EXAMPLE_NOTES_2, MAX_UPLOAD_BYTES
from tests.serving.conftest import CONFIG, Server


@pytest.fixture(scope="module")
def http(server: Server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def post_json(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    return http.post(path, json=body)


def upload(http: httpx.Client, path: str, files: dict[str, bytes], **fields) -> httpx.Response:
    return http.post(path, files={k: (f"{k}.mid", v, "audio/midi") for k, v in files.items()}, data={k: str(v) for k, v in fields.items()})


def error_of(resp: httpx.Response) -> str:
    return resp.json()["error"]


# --- answers -----------------------------------------------------------------------------------------


def test_sample_json_to_midi_zip_and_notes(http: httpx.Client):
    r = post_json(http, "/sample", {"config": CONFIG, "num_outputs": 1, "temperature": 0.5})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/midi" and r.content.startswith(b"MThd")

    r = post_json(http, "/sample", {"num_outputs": 4, "format": "zip", "seed": 5})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert len(zf.namelist()) == 4
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}  # not the clock's
    again = post_json(http, "/sample", {"num_outputs": 4, "format": "zip", "seed": 5})
    assert again.content == r.content  # seeded: reproducible

    r = post_json(http, "/sample", {"num_outputs": 2, "format": "notes"})
    doc = r.json()
    assert doc["config"] == CONFIG and len(doc["outputs"]) == 2 and "pitch" in doc["outputs"][0]["notes"][0]


def test_interpolate_two_midi_uploads(http: httpx.Client, midi_a: bytes, midi_b: bytes):
    r = upload(http, "/interpolate", {"input_midi_1": midi_a, "input_midi_2": midi_b}, num_outputs=3, temperature=0.5)
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert len(zf.namelist()) == 3 and all(zf.read(n).startswith(b"MThd") for n in zf.namelist())
    r = upload(http, "/interpolate", {"input_midi_1": midi_a, "input_midi_2": midi_b}, num_outputs=3, format="notes")
    assert len(r.json()["outputs"]) == 3


def test_interpolate_note_lists_encode_decode(http: httpx.Client, midi_a: bytes):
    r = post_json(http, "/interpolate_notes", {"input_midi_1": EXAMPLE_NOTES_1, "input_midi_2": EXAMPLE_NOTES_2, "num_outputs": 3})
    assert r.status_code == 200 and len(r.json()["outputs"]) == 3
    enc = upload(http, "/encode", {"input_midi": midi_a}, seed=1).json()
    assert len(enc["mu"]) == 1 and len(enc["mu"][0]) == 8
    r = post_json(http, "/decode", {"z": enc["mu"], "format": "midi"})
    assert r.status_code == 200 and r.content.startswith(b"MThd")


def test_models_health_metrics(http: httpx.Client):
    (model,) = http.post("/models").json()["models"]
    assert model["config"] == CONFIG and model["source"].startswith("musicvae-cat-mel_2bar_small:")  # from the store
    assert http.get("/readyz").status_code == 200 and http.get("/livez").status_code == 200
    metrics = http.get("/metrics").text
    assert "bentoml_service_request_total" in metrics and 'endpoint="/sample"' in metrics
    assert "musicvae_batch_requests_count" in metrics  # requests per model call


def test_openapi_documents_every_endpoint_with_examples(http: httpx.Client):
    doc = http.get("/docs.json").json()
    for path in ("/sample", "/interpolate", "/interpolate_notes", "/encode", "/decode", "/attribute", "/groove", "/transfer_groove"):
        assert path in doc["paths"], path
    sample = doc["paths"]["/sample"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert sample["config"]["examples"] == [CONFIG] and sample["num_outputs"]["maximum"] == 64
    interp = doc["paths"]["/interpolate"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in interp
    # The documented example request works as documented.
    example = {k: v["examples"][0] for k, v in sample.items() if v.get("examples") and v["examples"][0] is not None}
    assert post_json(http, "/sample", example).status_code == 200


# --- bad requests: a 4xx with a message, never a 500 ----------------------------------------------


def test_malformed_midi(http: httpx.Client, midi_a: bytes):
    r = upload(http, "/interpolate", {"input_midi_1": b"MThd\x00\x00\x00\x06garbage", "input_midi_2": midi_a})
    assert r.status_code == 400 and "input_midi_1: malformed MIDI" in error_of(r)
    r = upload(http, "/interpolate", {"input_midi_1": midi_a, "input_midi_2": b"hello, not MIDI"})
    assert r.status_code == 400 and "not a Standard MIDI File" in error_of(r)


def test_wrong_content_type(http: httpx.Client, midi_a: bytes):
    r = http.post("/sample", content=b"num_outputs=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "application/json" in error_of(r)
    r = http.post("/interpolate", json={"input_midi_1": "http://127.0.0.1:1/x.mid"})  # never fetched
    assert r.status_code == 415 and "multipart/form-data" in error_of(r)
    r = http.post("/sample", content=b'{"num_outputs": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.text
    r = http.post("/interpolate", content=b"garbage", headers={"content-type": "multipart/form-data"})  # no boundary
    assert r.status_code == 400 and "malformed multipart body" in error_of(r)
    big_field = b"--xyz\r\nContent-Disposition: form-data; name=\"config\"\r\n\r\n" + b"x" * 1_100_000 + b"\r\n--xyz--\r\n"
    r = http.post("/interpolate", content=big_field, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400 and "malformed multipart body" in error_of(r)


def test_oversized_upload(http: httpx.Client, midi_a: bytes):
    big = b"MThd" + bytes(MAX_UPLOAD_BYTES)
    r = upload(http, "/interpolate", {"input_midi_1": big, "input_midi_2": midi_a})
    assert r.status_code == 413 and "over the" in error_of(r)
    huge = b"MThd" + bytes(3 * MAX_UPLOAD_BYTES)
    r = upload(http, "/interpolate", {"input_midi_1": huge, "input_midi_2": midi_a})
    assert r.status_code == 413 and "request body" in error_of(r)

    def chunks():  # no Content-Length: read up to the limit, then refused
        for _ in range(60):
            yield bytes(100_000)

    r = http.post("/sample", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_config(http: httpx.Client, midi_a: bytes, midi_b: bytes):
    r = post_json(http, "/sample", {"config": "cat-mel_9bar_huge"})
    assert r.status_code == 404 and "unknown config 'cat-mel_9bar_huge'" in error_of(r) and CONFIG in error_of(r)
    r = upload(http, "/interpolate", {"input_midi_1": midi_a, "input_midi_2": midi_b}, config="hierdec-trio_16bar")
    assert r.status_code == 404 and "not served here" in error_of(r)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"num_outputs": 0}, "num_outputs"),
        ({"num_outputs": 65}, "num_outputs"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": 1e9}, "temperature"),
        ({"num_outputs": "many"}, "num_outputs"),
        ({"seed": -3}, "seed"),
        ({"format": "wav"}, "format"),
    ],
)
def test_out_of_range_sample_parameters(http: httpx.Client, body: dict, field: str):
    r = post_json(http, "/sample", body)
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == [field]


def test_out_of_range_steps_and_length(http: httpx.Client, midi_a: bytes, midi_b: bytes):
    for steps in (1, 65):
        r = upload(http, "/interpolate", {"input_midi_1": midi_a, "input_midi_2": midi_b}, num_outputs=steps)
        assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["num_outputs"]
    r = post_json(http, "/sample", {"length": 33})
    assert r.status_code == 400 and "max_seq_len (32)" in error_of(r)
    r = post_json(http, "/sample", {"num_outputs": 3, "format": "midi"})
    assert r.status_code == 400 and "'zip' or 'notes'" in error_of(r)


def test_inputs_without_exactly_one_window(http: httpx.Client, midi_a: bytes, midi_drums: bytes, midi_long: bytes):
    r = upload(http, "/interpolate", {"input_midi_1": midi_drums, "input_midi_2": midi_a})
    assert r.status_code == 422 and "input_midi_1: no valid input" in error_of(r)
    r = upload(http, "/interpolate", {"input_midi_1": midi_a, "input_midi_2": midi_long})
    assert r.status_code == 422 and "valid inputs extracted" in error_of(r)
    r = post_json(http, "/interpolate_notes", {"input_midi_1": {"notes": [{"pitch": 60, "start_time": 0, "end_time": 0.1}]},
                                               "input_midi_2": EXAMPLE_NOTES_2})
    assert r.status_code == 422
    r = post_json(http, "/interpolate_notes", {"input_midi_1": {"notes": [{"pitch": 200, "start_time": 1, "end_time": 0}]},
                                               "input_midi_2": EXAMPLE_NOTES_2})
    assert r.status_code == 400 and "pitch" in r.text


def test_unsupported_operation(http: httpx.Client, midi_a: bytes):
    r = upload(http, "/groove", {"input_midi": midi_a}, operation="humanize", config=CONFIG)
    assert r.status_code == 400 and "cannot humanize" in error_of(r)
    r = upload(http, "/attribute", {"input_midi": midi_a}, attribute="note_density", config=CONFIG)
    assert r.status_code == 400 and "cannot attribute" in error_of(r)


# --- overload -----------------------------------------------------------------------------------------


def test_overload_gets_fast_429s_and_the_server_recovers(busy_server: Server):
    """64 concurrent requests against a limit of 2 in flight: most refused at once, none fails otherwise."""

    async def burst() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=30, limits=httpx.Limits(max_connections=100)) as c:
            async def one() -> tuple[int, float]:
                t = time.perf_counter()
                r = await c.post("/sample", json={"num_outputs": 64, "format": "notes"})
                return r.status_code, time.perf_counter() - t

            return await asyncio.gather(*(one() for _ in range(64)))

    results = asyncio.run(burst())
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 429} and codes.count(429) >= 32 and codes.count(200) >= 2
    refused = sorted(t for c, t in results if c == 429)
    assert refused[len(refused) // 2] < 1.0  # refusals are fast (median), not queued behind the work
    with httpx.Client(base_url=busy_server.url, timeout=30) as c:
        assert c.post("/sample", json={}).status_code == 200
        assert c.get("/readyz").status_code == 200
