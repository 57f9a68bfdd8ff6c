"""The vLLM backends. Unmarked tests run everywhere: config checks, the server command line, and the server's life
cycle (health wait, errors with the log tail, sharing, stopping the whole process group at exit and on SIGTERM)
against a small stand-in server started as a real subprocess. Tests marked `vllm` run the real thing on the tiny
Qwen2.5-VL (`make test-vllm`): a short synthetic job through a started server, attaching to it by url, then the
in-process engine on the same job."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from backends import vllm_engine, vllm_server
from backends.base import BACKENDS
from backends.vllm_server import VLLMServerConfig, server_command
from harness.errors import BackendError, ConfigError
from harness.records import Frame, Request
from harness.registry import answer_fields, plain
from harness.runner import store
from harness.runner.job import run_job
from tests.fixtures.openai_server import PROXY_VARIABLES
from tests.helpers import ROOT, compose_job

# The stand-in for `python -m vllm.entrypoints.openai.api_server`: a `vllm` package on PYTHONPATH whose api_server
# reads the same flags, logs to stderr, starts a grandchild in its process group (as vLLM starts its engine), writes
# its argv and both pids to files, and behaves as FAKE_MODE says.
FAKE_SERVER = """
import argparse, json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
for flag in ("--model", "--served-model-name", "--host", "--port", "--dtype", "--max-model-len", "--max-num-seqs",
             "--limit-mm-per-prompt"):
    parser.add_argument(flag)
args, extra = parser.parse_known_args()
mode, state = os.environ["FAKE_MODE"], os.environ["FAKE_STATE"]
child = subprocess.Popen(["sleep", "600"])
with open(os.path.join(state, f"server-{args.port}.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "pid": os.getpid(), "child": child.pid, "env": os.environ.get("FAKE_ENV")}, f)
print(f"fake server: loading {args.model}", file=sys.stderr, flush=True)
if mode == "crash":
    print("fake server: RuntimeError: no such model", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "silent":
    time.sleep(600)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            self.reply(503 if mode == "unhealthy" else 200, {})
        elif self.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": args.served_model_name, "object": "model"}]})
        else:
            self.reply(404, {"error": {"message": "no route", "type": "invalid_request_error"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = body["messages"][-1]["content"]
        parts = [{"type": "text", "text": parts}] if isinstance(parts, str) else parts
        images = sum(p["type"] == "image_url" for p in parts)
        text = " ".join(p.get("text", "") for p in parts)
        if "TOO LONG" in text:
            message = "This model's maximum context length is 64 tokens. However, you requested 900 tokens."
            return self.reply(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
        usage = {"prompt_tokens": 10 * images + len(text.split()), "completion_tokens": 2}
        usage["total_tokens"] = usage["prompt_tokens"] + 2
        choice = {"index": 0, "message": {"role": "assistant", "content": f"A. {images} images"},
                  "finish_reason": "stop"}
        self.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [choice], "usage": usage})

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass

ThreadingHTTPServer((args.host, int(args.port)), Handler).serve_forever()
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A folder with the stand-in `vllm` package, a state folder, and a model folder with a config.json."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package.parents[1], package.parent, package):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(textwrap.dedent(FAKE_SERVER))
    model = tmp_path / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")  # the job's hash covers the weights file
    state = tmp_path / "state"
    state.mkdir()
    yield _Fake(tmp_path, model, state)
    vllm_server.stop_all()


class _Fake:
    def __init__(self, root: Path, model: Path, state: Path) -> None:
        self.root, self.model, self.state = root, model, state

    def node(self, mode: str = "serve", **overrides) -> dict:
        env = {"PYTHONPATH": str(self.root / "fake"), "FAKE_MODE": mode, "FAKE_STATE": str(self.state)}
        return {
            "name": "vllm_server",
            "model_path": str(self.model),
            "log_dir": str(self.root / "logs"),
            "env": env,
            "startup_timeout_s": 20.0,
            "stop_grace_s": 5.0,
            **overrides,
        }

    def build(self, mode: str = "serve", **overrides):
        return BACKENDS.build(BACKENDS.parse(self.node(mode, **overrides)))

    def pids(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.state.glob("server-*.json"))]


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _gone(*pids: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _request(prompt: str = "Which colour?", frames: int = 2) -> Request:
    pixels = np.full((48, 64, 3), 120, np.uint8)
    shown = tuple(Frame(i, 0.5 * i, pixels) for i in range(frames))
    return Request(time_s=1.0, route="S1", frames=shown, prompt=prompt, max_new_tokens=8)


def _generate(backend, request: Request):
    async def go():
        try:
            return await backend.generate(request)
        finally:
            await backend.aclose()

    return asyncio.run(go())


# ---- config


def test_config_errors_name_the_key_and_the_fix(tmp_path):
    def parse(**node):
        return BACKENDS.parse({"name": "vllm_server", **node})

    with pytest.raises(ConfigError, match="neither backend.model_path nor backend.url"):
        BACKENDS.build(parse())
    with pytest.raises(ConfigError, match="are both set"):
        parse(model_path=str(tmp_path), url="http://127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match="not an http"):
        parse(url="127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match="backend.port=70000"):
        parse(model_path=str(tmp_path), port=70000)
    with pytest.raises(ConfigError, match="secret"):
        parse(model_path=str(tmp_path), extra_args=["--api-key=abc"])
    with pytest.raises(ConfigError, match="--max-model-len in backend.extra_args"):
        parse(model_path=str(tmp_path), extra_args=["--max-model-len", "4096"])
    with pytest.raises(ConfigError, match="limit_mm_per_prompt.image=-1"):
        parse(model_path=str(tmp_path), limit_mm_per_prompt={"image": -1})
    with pytest.raises(ConfigError, match="no config.json there"):
        BACKENDS.build(parse(model_path=str(tmp_path)))
    assert not vllm_server._SERVERS

    with pytest.raises(ConfigError, match="backend.model_path is not set"):
        BACKENDS.build(BACKENDS.parse({"name": "vllm"}))
    with pytest.raises(ConfigError, match="no config.json there"):
        BACKENDS.build(BACKENDS.parse({"name": "vllm", "model_path": str(tmp_path)}))
    with pytest.raises(ConfigError, match="engine_args sets max_model_len"):
        BACKENDS.parse({"name": "vllm", "model_path": str(tmp_path), "engine_args": {"max_model_len": 8}})
    assert "vllm" not in sys.modules  # registering and checking the backends needs no vllm


def test_server_command_line_from_config(tmp_path):
    cfg = VLLMServerConfig(
        model_path=str(tmp_path),
        served_model_name="tiny",
        python="/opt/vllm/bin/python",
        dtype="float32",
        max_model_len=4096,
        max_num_seqs=4,
        limit_mm_per_prompt={"video": 0, "image": 8},
        extra_args=["--enforce-eager"],
    )
    assert server_command(cfg, 8123) == [
        "/opt/vllm/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tmp_path),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
        "--max-num-seqs",
        "4",
        "--limit-mm-per-prompt",
        '{"image": 8, "video": 0}',
        "--enforce-eager",
    ]
    # where and how it runs is not what it answers: those fields stay out of the job's hash
    assert {"port", "log_dir", "python", "startup_timeout_s"} <= set(plain(cfg)) - set(answer_fields(cfg))
    assert {"model_path", "dtype", "max_model_len", "extra_args", "url"} <= set(answer_fields(cfg))
    bare = server_command(VLLMServerConfig(model_path=str(tmp_path)), 9000)
    assert bare[0] == sys.executable and "--max-model-len" not in bare and "--max-num-seqs" not in bare
    assert bare[bare.index("--served-model-name") + 1] == tmp_path.name  # the folder's name by default


# ---- the server's life cycle, on the stand-in


def test_started_server_answers_is_shared_by_jobs_and_stopped_at_exit(fake):
    backend = fake.build(dtype="float32", max_model_len=512, env={**fake.node()["env"], "FAKE_ENV": "seen"})
    (started,) = fake.pids()
    assert started["argv"] == server_command(backend.cfg, _port(backend.url))[3:]  # after `python -m <module>`
    assert started["env"] == "seen"  # backend.env reaches the server
    log_path = next((fake.root / "logs").glob("tiny-model-*.log"))
    assert "vllm.entrypoints.openai.api_server" in log_path.read_text().splitlines()[0]  # the command, first line

    response = _generate(backend, _request(frames=3))
    assert response.text == "A. 3 images"
    assert (response.tokens_out, response.visual_tokens, response.ttft_s) == (2, 0, None)
    assert response.tokens_in == 3 * 10 + 3 * 2 + 2  # its usage: 10 per image, the words of "[0.5 s]" and the prompt
    assert _alive(started["pid"])  # aclose let go of it: the next job reuses it

    # another job, and a route whose config differs only in client settings: the same server, no second start
    again = fake.build(dtype="float32", max_model_len=512, env={**fake.node()["env"], "FAKE_ENV": "seen"})
    other_route = fake.build(
        dtype="float32", max_model_len=512, env={**fake.node()["env"], "FAKE_ENV": "seen"}, temperature=0.5
    )
    assert again.url == other_route.url == backend.url
    assert _generate(other_route, _request(frames=1)).text == "A. 1 images"
    asyncio.run(again.aclose())
    assert len(fake.pids()) == 1

    vllm_server.stop_all()  # what atexit runs
    assert _gone(started["pid"], started["child"]), "server and its engine child must be gone"
    assert not vllm_server._SERVERS


def test_an_idle_server_is_stopped_before_one_with_other_settings_starts(fake):
    first = fake.build(dtype="float32")
    asyncio.run(first.aclose())
    second = fake.build(dtype="bfloat16")
    by_dtype = {p["argv"][p["argv"].index("--dtype") + 1]: p for p in fake.pids()}
    assert _gone(by_dtype["float32"]["pid"], by_dtype["float32"]["child"])
    assert _alive(by_dtype["bfloat16"]["pid"])
    busy = fake.build(dtype="float16")  # the bfloat16 one is still in use by `second`: both stay up
    assert _alive(by_dtype["bfloat16"]["pid"]) and len(vllm_server._SERVERS) == 2
    asyncio.run(second.aclose())
    asyncio.run(busy.aclose())


@pytest.mark.parametrize(("mode", "last"), [("unhealthy", "HTTP 503"), ("silent", "refused")])
def test_health_wait_times_out_with_the_log_tail_and_stops_the_server(fake, mode, last):
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        fake.build(mode, startup_timeout_s=1.5)
    message = str(caught.value)
    assert "/health did not answer 200 within 2 s" in message and last in message
    assert "backend.startup_timeout_s" in message
    assert "fake server: loading" in message and "last lines of its log" in message
    assert time.monotonic() - started < 10
    (server,) = fake.pids()
    assert _gone(server["pid"], server["child"])
    assert not vllm_server._SERVERS


def test_a_server_that_exits_while_starting_reports_its_code_and_log(fake):
    with pytest.raises(BackendError, match="exited with code 3 while starting") as caught:
        fake.build("crash")
    assert "RuntimeError: no such model" in str(caught.value)
    (server,) = fake.pids()
    assert _gone(server["child"])  # the engine child it left behind: killed with the group


def test_sigkill_after_the_grace_period(fake):
    fake.build("stubborn", stop_grace_s=0.5)
    (server,) = fake.pids()
    started = time.monotonic()
    vllm_server.stop_all()
    assert _gone(server["pid"], server["child"])
    assert 0.5 <= time.monotonic() - started < 5


def test_errors_while_serving_become_backend_errors(fake):
    backend = fake.build()

    async def calls():
        with pytest.raises(BackendError, match="maximum context length is 64") as caught:
            await backend.generate(_request("TOO LONG"))
        assert "backend.max_model_len" in str(caught.value)  # the fix
        (server,) = fake.pids()
        os.killpg(server["pid"], signal.SIGKILL)
        assert _gone(server["pid"])
        dead = r"(?s)exited with code -9; last lines of its log .*fake server: loading"
        with pytest.raises(BackendError, match=dead):
            await backend.generate(_request())
        await backend.aclose()

    asyncio.run(calls())


HARNESS = """
import json, sys, time, types
package = types.ModuleType("backends")  # vllm_server alone: the other backends import torch (seconds per process)
package.__path__ = [sys.argv[3]]
sys.modules["backends"] = package
from backends.vllm_server import VLLMServer, VLLMServerConfig
backend = VLLMServer(VLLMServerConfig(**json.loads(sys.argv[1])))
print("up", flush=True)
if sys.argv[2] == "sigterm":
    time.sleep(60)
"""


def test_the_server_is_stopped_when_the_harness_exits_or_gets_sigterm(fake):
    """Two harness processes, each with its own server: one ends normally (atexit), one gets SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    harnesses, servers = {}, {}
    for ending in ("exit", "sigterm"):
        state = fake.state / ending
        state.mkdir()
        node = fake.node(env={**fake.node()["env"], "FAKE_STATE": str(state)}, log_dir=str(fake.root / ending))
        command = [sys.executable, "-c", HARNESS, json.dumps(node), ending, str(ROOT / "backends")]
        harnesses[ending] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    for ending, harness in harnesses.items():
        assert harness.stdout is not None and harness.stdout.readline() == "up\n"
        (path,) = (fake.state / ending).glob("server-*.json")
        servers[ending] = json.loads(path.read_text())
    assert _alive(servers["sigterm"]["pid"])
    harnesses["sigterm"].send_signal(signal.SIGTERM)
    assert harnesses["sigterm"].wait(timeout=20) == -signal.SIGTERM  # then dies of it, as without the handler
    assert harnesses["exit"].wait(timeout=20) == 0
    for server in servers.values():
        assert _gone(server["pid"], server["child"])


def test_attach_by_url_never_starts_or_stops_a_server(fake):
    port = vllm_server._free_port("127.0.0.1")
    env = {**os.environ, **fake.node()["env"]}
    command = [sys.executable, "-m", vllm_server.SERVER_MODULE, "--served-model-name", "mine", "--host", "127.0.0.1"]
    server = subprocess.Popen([*command, "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 20
        while not fake.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        backend = None
        while backend is None:
            try:  # the served model's name is asked from /v1/models
                backend = BACKENDS.build(BACKENDS.parse({"name": "vllm_server", "url": url}))
            except BackendError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert backend._client.cfg.model == "mine"
        assert _generate(backend, _request(frames=2)).text == "A. 2 images"
        assert not vllm_server._SERVERS
        vllm_server.stop_all()
        assert server.poll() is None  # still running: not ours to stop
    finally:
        server.kill()
        server.wait()
        for started in fake.pids():
            os.kill(started["child"], signal.SIGKILL)


def test_a_synthetic_job_through_a_started_server(fake, tmp_path):
    env = fake.node()["env"]
    job, run, shard = compose_job(
        tmp_path / "data",
        "dataset=synthetic",
        "dataset.videos=1",
        "dataset.duration_s=20",
        "backend=vllm_server",
        f"backend.model_path={fake.model}",
        f"backend.log_dir={fake.root / 'logs'}",
        *(f"+backend.env.{name}='{value}'" for name, value in env.items()),
    )
    run_job(job, run, shard, tmp_path / "out")
    records = store.read_job(tmp_path / "out")
    assert len(records) == 10 and not [r.error for r in records if r.error]
    for record in records:
        images = len(record.frame_times_s)
        assert record.tokens_in >= 10 * images and record.tokens_out == 2 * record.n_calls
    assert {r.response for r in records if r.kind == "mcq"} <= {f"A. {n} images" for n in range(1, 17)}
    (server,) = fake.pids()
    assert _alive(server["pid"])  # shared with the next job of the sweep
    vllm_server.stop_all()
    assert _gone(server["pid"], server["child"])


# ---- the real vLLM (make test-vllm)

SHORT_JOB = [
    "dataset=synthetic",
    "dataset.videos=1",
    "dataset.duration_s=20",
    "system.max_side=112",  # 16 image tokens per frame
    "system.s1.max_frames=4",
    "system.s2.max_frames=4",
    "system.s1.max_new_tokens=8",
    "system.s2.max_new_tokens=8",
]
ON_CPU = [
    "backend.dtype=float32",
    "backend.max_model_len=2048",
    "backend.max_num_seqs=4",
    "+backend.env.VLLM_CPU_KVCACHE_SPACE='1'",
]


def _check_records(out_dir: Path) -> list:
    records = store.read_job(out_dir)
    assert len(records) == 10
    assert not [r.error for r in records if r.error]
    for record in records:
        assert record.tokens_in > 10 * len(record.frame_times_s)  # the frames' tokens and the text
        assert 0 < record.tokens_out <= 8 * record.n_calls  # greedy, cut at max_new_tokens
    return records


@pytest.mark.vllm
def test_vllm_server_job_attach_and_stop(tiny_qwen25vl, tmp_path, monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    server_args = [
        "backend=vllm_server",
        f"backend.model_path={tiny_qwen25vl}",
        f"backend.log_dir={tmp_path / 'logs'}",
        "backend.served_model_name=tiny",
        "backend.limit_mm_per_prompt={image:4}",
        "backend.extra_args=[--enforce-eager]",
        *ON_CPU,
    ]
    job, run, shard = compose_job(tmp_path / "data", *SHORT_JOB, *server_args)
    run_job(job, run, shard, tmp_path / "out")
    _check_records(tmp_path / "out")
    (server,) = vllm_server._SERVERS.values()
    assert server.process.poll() is None and server.users == 0  # up for the next job

    attached = BACKENDS.build(BACKENDS.parse({"name": "vllm_server", "url": server.url}))
    assert attached._client.cfg.model == "tiny"
    response = _generate(attached, _request(frames=2))
    assert response.tokens_in > 0 and 0 < response.tokens_out <= 8
    assert list(vllm_server._SERVERS.values()) == [server]

    vllm_server.stop_all()
    group = subprocess.run(["pgrep", "-g", str(server.process.pid)], capture_output=True, text=True).stdout.split()
    assert server.process.returncode is not None and _gone(*map(int, group), within_s=1)  # API server, engine, worker


@pytest.mark.vllm
def test_vllm_engine_in_process_job(tiny_qwen25vl, tmp_path):
    engine_args = [
        "backend=vllm",
        f"backend.model_path={tiny_qwen25vl}",
        "backend.limit_mm_per_prompt={image:4}",
        "backend.enforce_eager=true",
        *ON_CPU,
    ]
    job, run, shard = compose_job(tmp_path / "data", *SHORT_JOB, *engine_args)
    run_job(job, run, shard, tmp_path / "out")
    records = _check_records(tmp_path / "out")
    single = [r for r in records if r.n_calls == 1]
    per_frame = single[0].visual_tokens // len(single[0].frame_times_s)  # 112x84 px: 4x3 merged patches
    assert per_frame == 12
    assert all(r.visual_tokens == per_frame * len(r.frame_times_s) < r.tokens_in for r in single)
    assert all(r.ttft_s is not None and 0 < r.ttft_s <= r.latency_s for r in records)
    (engine,) = vllm_engine._ENGINES.values()
    assert engine.users == 0  # up for the next job

    # a route with other per-call settings shares the engine; a prompt over max_model_len is a BackendError
    too_long = BACKENDS.build(
        dataclasses.replace(job.backend, config=dataclasses.replace(job.backend.config, image_max_side=64))
    )
    assert list(vllm_engine._ENGINES.values()) == [engine]
    with pytest.raises(BackendError, match="fix: fewer or smaller frames"):
        _generate(too_long, Request(time_s=0, route="S2", frames=(), prompt="word " * 3000, max_new_tokens=4))
    vllm_engine.stop_all()
    assert not vllm_engine._ENGINES
