"""The web integration (``vocalborn_tasks.fastapi``) against real processes.

A real worker and the app served by a real uvicorn process (``web_app.py``), driven with httpx
over TCP; one test drives headless Chromium's EventSource through a uvicorn restart. A worker
is *frozen* (SIGSTOP of its processes) to hold a task in PENDING: a state, not a race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from support import AUDIO, ROOT, WorkerProcess, flush, settings_env, wait_until
from vocalborn_tasks import TaskManager, TaskSettings
from vocalborn_tasks.embedded import LocalServer, die_with_parent, free_port
from vocalborn_tasks.errors import ConfigurationError
from vocalborn_tasks.models import parse_cursor
from vocalborn_tasks.record import RecordKeys, new_task_id
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.tasks.builtin import CleanupReport, cleanup

pytestmark = pytest.mark.integration

MAX_UPLOAD = 2_000_000
FINAL = {"SUCCESS", "FAILURE", "REVOKED", "LOST"}


#: The therapist's reference recording the tests name (``REFERENCE_DIR/sentence-1.flac``).
REFERENCE_ID = "sentence-1"


@pytest.fixture(scope="module")
def rec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recordings")
    (root / "uploads").mkdir()
    (root / "references").mkdir()
    (root / "references" / f"{REFERENCE_ID}.flac").write_bytes(
        sample_path("en_reference").read_bytes()
    )
    return root


@pytest.fixture(scope="module")
def web_settings(base_settings: TaskSettings, rec_root: Path) -> TaskSettings:
    return base_settings.model_copy(
        update={
            "recording_roots": [rec_root],
            "upload_dir": rec_root / "uploads",
            "reference_dir": rec_root / "references",
            "upload_retention_s": 3600.0,
        }
    )


@pytest.fixture(scope="module")
def web_worker(
    web_settings: TaskSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    flush(web_settings)
    proc = WorkerProcess(
        web_settings, name="web", concurrency=2, log_dir=tmp_path_factory.mktemp("web-logs")
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_worker_with_recording_roots_gives_no_roots_warning(web_worker: WorkerProcess) -> None:
    assert "RECORDING_ROOTS is not set" not in web_worker.log_tail(400)


class WebServer:
    """``uvicorn --factory web_app:create_app`` on a fixed port, owned by PID."""

    def __init__(self, settings: TaskSettings, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / "uvicorn.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TASK_"))}
        self.env.update(settings_env(settings))
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "integration"), str(ROOT)])
        self.env["WEB_MAX_UPLOAD"] = str(MAX_UPLOAD)
        self.env["WEB_KEEPALIVE"] = "0.3"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "web_app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            try:
                return httpx.get(f"{self.url}/live", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 30, 0.05, "uvicorn answering")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM (a deploy) and the seconds until the process exited."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return float("inf")
        finally:
            self.proc = None
        return time.monotonic() - started


@pytest.fixture(scope="module")
def web(
    web_settings: TaskSettings,
    web_worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WebServer]:
    server = WebServer(web_settings, tmp_path_factory.mktemp("uvicorn"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def client(web: WebServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=web.url, timeout=90, headers={"X-User": "alice"}) as c:
        yield c


@contextlib.contextmanager
def frozen(worker: WorkerProcess) -> Iterator[None]:
    """SIGSTOP the worker and its pool: nothing is reserved until it is thawed."""
    pids = [worker.pid, *worker.child_pids()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def files(recording: bytes | None = None, name: str = "attempt.flac") -> dict[str, Any]:
    rec = recording if recording is not None else sample_path("en_other_voice").read_bytes()
    return {"recording": (name, rec, "audio/flac")}


def form(practice_record_id: str | None = None, **more: str) -> dict[str, str]:
    """The upload's fields: the reference is named, never uploaded."""
    rid = practice_record_id if practice_record_id is not None else record_id()
    return {"practice_record_id": rid, "language": "en", "reference_id": REFERENCE_ID, **more}


def record_id() -> str:
    return f"web-{uuid.uuid4().hex[:12]}"


def uploads(rec_root: Path) -> set[str]:
    return {p.name for p in (rec_root / "uploads").iterdir()}


def assert_problem(response: httpx.Response, status: int, code: str, cause: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code and body["cause"] == cause, body
    assert body["type"] == f"urn:vocalborn-tasks:error:{code}"
    return body


def cursor_of(event_id: str) -> tuple[int, int, int] | None:
    """The status cursor of an SSE id (``<cursor>-<sequence number>``)."""
    return parse_cursor(event_id.partition("-")[0])


async def read_events(
    response: httpx.Response, *, until_comment: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse SSE from a streamed response: events (id + data) and comment lines."""
    events: list[dict[str, Any]] = []
    comments: list[str] = []
    current: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            comments.append(line)
            if until_comment:
                break
        elif line.startswith("id: "):
            current["id"] = line[4:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and current:
            events.append(current)
            current = {}
    return events, comments


async def submit(client: httpx.AsyncClient, **kw: Any) -> str:
    response = await client.post("/analyses", data=form(), files=files(**kw))
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


# --- configuration -----------------------------------------------------------------------------
def test_router_refuses_to_start_without_recording_roots(
    base_settings: TaskSettings, tmp_path: Path
) -> None:
    from vocalborn_tasks.fastapi import analysis_router

    with pytest.raises(ConfigurationError, match="RECORDING_ROOTS"):
        analysis_router(base_settings, upload_dir=tmp_path)
    inside = base_settings.model_copy(update={"recording_roots": [tmp_path / "roots"]})
    with pytest.raises(ConfigurationError, match="outside RECORDING_ROOTS"):
        analysis_router(inside, upload_dir=tmp_path / "elsewhere")
    with pytest.raises(ConfigurationError, match="UPLOAD_DIR"):
        analysis_router(inside)


def test_fastapi_module_does_not_import_celery() -> None:
    code = (
        "import sys, vocalborn_tasks.fastapi; "
        "assert 'celery' not in sys.modules and 'kombu' not in sys.modules; print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.stdout.strip() == "ok", proc.stderr


# --- the happy path ----------------------------------------------------------------------------
async def test_upload_then_status_result_and_events(
    client: httpx.AsyncClient, rec_root: Path
) -> None:
    before = uploads(rec_root)
    rid = record_id()
    response = await client.post("/analyses", data=form(rid), files=files())
    assert response.status_code == 202, response.text
    body = response.json()
    task_id = body["task_id"]
    assert response.headers["location"] == body["status_url"]
    assert body["status_url"] == f"/analyses/{task_id}"  # relative
    assert body["result_url"] == f"/analyses/{task_id}/result"
    assert body["events_url"] == f"/analyses/{task_id}/events"
    assert (body["duplicate"], body["practice_record_id"]) == (False, rid)
    new = uploads(rec_root) - before
    assert len(new) == 1 and not any(n.endswith(".part") for n in new), new  # renamed, whole

    result = await client.get(f"/analyses/{task_id}/result", params={"wait": 60})
    assert result.status_code == 200, result.text
    assert result.json()["practice_record_id"] == rid
    again = await client.get(f"/analyses/{task_id}/result", params={"wait": 0})
    assert again.status_code == 200 and again.json() == result.json()  # finished: no 202

    status = (await client.get(f"/analyses/{task_id}")).json()
    assert status["state"] == "SUCCESS" and status["error"] is None
    assert status["task_name"] == "vocalborn.analyze_audio"
    assert status["result"]["practice_record_id"] == rid

    # SSE of a finished task: one event (the final one), then the stream ends.
    async with client.stream("GET", f"/analyses/{task_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events, _ = await read_events(stream)
    assert [e["data"]["state"] for e in events] == ["SUCCESS"]
    final_id = events[0]["id"]
    # Resuming after the final event: 204, so EventSource stops reconnecting.
    resumed = await client.get(f"/analyses/{task_id}/events", headers={"Last-Event-ID": final_id})
    assert resumed.status_code == 204
    # Resuming after an earlier state: only what came later.
    async with client.stream(
        "GET", f"/analyses/{task_id}/events", headers={"Last-Event-ID": "0.1.0"}
    ) as stream:
        events, _ = await read_events(stream)
    assert [cursor_of(e["id"]) for e in events] == [cursor_of(final_id)]


async def test_events_follow_a_task_to_the_end(client: httpx.AsyncClient) -> None:
    task_id = await submit(client)
    async with client.stream("GET", f"/analyses/{task_id}/events") as stream:
        events, _ = await read_events(stream)
    states = [e["data"]["state"] for e in events]
    assert states[-1] == "SUCCESS", states
    assert all(e["data"]["task_name"] == "vocalborn.analyze_audio" for e in events), events
    cursors = [cursor_of(e["id"]) for e in events]
    assert all(c is not None for c in cursors)
    assert cursors == sorted(cursors), cursors  # type: ignore[type-var]
    assert len({e["id"] for e in events}) == len(events)  # unique ids


# --- a task held in PENDING: long poll, keep-alive, resume, 504, cancel -----------------------
async def test_pending_task_long_poll_keepalive_resume_timeout_and_cancel(
    client: httpx.AsyncClient, web_worker: WorkerProcess
) -> None:
    with frozen(web_worker):
        task_id = await submit(client)
        poll = await client.get(f"/analyses/{task_id}/result", params={"wait": 0.5})
        assert poll.status_code == 202, poll.text
        assert poll.headers["retry-after"] == "1"
        assert poll.json()["state"] == "PENDING"

        # A host route's own wait that runs out: 504.
        body = assert_problem(await client.get(f"/wait/{task_id}"), 504, "timeout", "system")
        assert body["task_id"] == task_id

        # The stream sends PENDING, then keep-alive comments while nothing happens.
        async with client.stream("GET", f"/analyses/{task_id}/events") as stream:
            events, comments = await read_events(stream, until_comment=True)
        assert [e["data"]["state"] for e in events] == ["PENDING"]
        assert comments == [": keep-alive"]
        # Resumed after PENDING: PENDING is not sent again; the first thing is a keep-alive.
        async with client.stream(
            "GET", f"/analyses/{task_id}/events", headers={"Last-Event-ID": events[0]["id"]}
        ) as stream:
            again, comments = await read_events(stream, until_comment=True)
        assert again == [] and comments == [": keep-alive"]

        cancelled = await client.post(f"/analyses/{task_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "REVOKED"
    assert_problem(await client.get(f"/analyses/{task_id}/result"), 409, "revoked", "system")
    assert (await client.get(f"/analyses/{task_id}")).json()["state"] == "REVOKED"


# --- errors --------------------------------------------------------------------------------------
async def test_unknown_and_lost_tasks(
    client: httpx.AsyncClient, web_settings: TaskSettings
) -> None:
    assert_problem(await client.get(f"/analyses/{new_task_id()}"), 404, "not_found", "system")
    assert_problem(await client.get(f"/analyses/{uuid.uuid4()}/result"), 404, "not_found", "system")
    # An id made before the server's epoch whose record is gone: the server forgot it.
    lost = new_task_id()
    r = redis.Redis.from_url(web_settings.backend_url)
    epoch_key = RecordKeys.of(web_settings).epoch
    saved = r.get(epoch_key)
    try:
        r.set(epoch_key, str(int((time.time() + 1) * 1_000_000)))
        body = assert_problem(await client.get(f"/admin/analyses/{lost}"), 410, "lost", "system")
        assert body["task_id"] == lost
        # Scoped to an owner, a task without a record is unknown, whoever it was: 404.
        assert_problem(await client.get(f"/analyses/{lost}"), 404, "not_found", "system")
    finally:
        if saved is not None:
            r.set(epoch_key, saved)
        r.close()


async def test_bad_requests_are_422_and_leave_no_file(
    client: httpx.AsyncClient, rec_root: Path
) -> None:
    before = uploads(rec_root)
    bad_id = await client.post("/analyses", data=form("no spaces/allowed"), files=files())
    body = assert_problem(bad_id, 422, "invalid_request", "input")
    assert body["errors"][0]["loc"] == ["practice_record_id"]

    missing = await client.post(
        "/analyses", data={"practice_record_id": record_id()}, files=files()
    )
    body = assert_problem(missing, 422, "invalid_request", "input")
    assert body["errors"] == [{"loc": ["body", "reference_id"], "msg": "Field required"}]

    empty = await client.post("/analyses", data=form(), files=files(recording=b""))
    assert_problem(empty, 422, "empty_audio", "input")

    text = await client.post(
        "/analyses",
        data=form(),
        files=files(recording=b"not a recording\n" * 100, name="attempt.wav"),
    )
    body = assert_problem(text, 422, "unreadable_audio", "input")
    assert str(rec_root) not in text.text and "/" not in body["detail"]

    big = await client.post(
        "/analyses", data=form(), files=files(recording=b"\0" * (MAX_UPLOAD + 1))
    )
    assert_problem(big, 413, "upload_too_large", "input")

    not_multipart = await client.post("/analyses", json={"practice_record_id": "x"})
    assert_problem(not_multipart, 415, "invalid_request", "input")
    assert uploads(rec_root) == before  # nothing kept from any refused upload


async def test_unusable_recording_fails_as_input_with_a_public_message(
    client: httpx.AsyncClient, rec_root: Path, web_worker: WorkerProcess
) -> None:
    """A 10 ms recording: accepted, then FAILURE ``too_short`` (cause input), without paths."""
    task_id = await submit(client, recording=(AUDIO / "tiny_10ms.wav").read_bytes(), name="a.wav")
    result = await client.get(f"/analyses/{task_id}/result", params={"wait": 60})
    body = assert_problem(result, 422, "too_short", "input")
    assert body["detail"] == "the recording is too short"
    status = await client.get(f"/analyses/{task_id}")
    error = status.json()["error"]
    assert error == {
        "code": "too_short",
        "cause": "input",
        "message": "the recording is too short",
        "retryable": False,
    }
    assert str(rec_root) not in result.text + status.text
    # The worker logged it as one WARNING line with the code, not an ERROR traceback.
    lines = [
        line
        for line in web_worker.log_path.read_text(errors="replace").splitlines()
        if task_id in line
    ]
    warnings = [line for line in lines if "WARNING" in line and "code too_short" in line]
    assert len(warnings) == 1, lines
    assert not [line for line in lines if "ERROR" in line or "raised" in line], lines
    assert "Traceback" not in web_worker.log_tail(200)


async def test_broker_unavailable_is_503_with_retry_after(
    web_settings: TaskSettings, tmp_path: Path
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "example_service_503", ROOT / "examples" / "fastapi_service.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    create_app = module.create_app

    port = free_port()
    (tmp_path / "references").mkdir()
    (tmp_path / "references" / "s.flac").write_bytes(sample_path("en_reference").read_bytes())
    settings = web_settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{port}",
            "redis_connect_timeout_s": 2.0,
            "recording_roots": [*web_settings.recording_roots, tmp_path],
            "reference_dir": tmp_path / "references",
        }
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers={"X-User": "u"}
        ) as c,
    ):
        response = await c.post("/analyses", data=form(reference_id="s"), files=files())
        body = assert_problem(response, 503, "broker_unavailable", "system")
        assert response.headers["retry-after"] == "5"
        assert str(port) not in body["detail"]
        status = await c.get(f"/analyses/{new_task_id()}")
        assert_problem(status, 503, "broker_unavailable", "system")
    assert not any((web_settings.upload_dir or tmp_path).glob("*.part"))


# --- retention --------------------------------------------------------------------------------
async def test_maintenance_task_deletes_uploads_past_retention(
    web_settings: TaskSettings, web_worker: WorkerProcess, rec_root: Path
) -> None:
    old = rec_root / "uploads" / "old-recording.wav"
    fresh = rec_root / "uploads" / "fresh-recording.wav"
    old.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 10)
    past = time.time() - web_settings.upload_retention_s - 60
    os.utime(old, (past, past))
    async with TaskManager(web_settings) as manager:
        handle = await manager.submit(cleanup)
        report = await manager.wait_for_result(handle, timeout=60)
    assert isinstance(report, CleanupReport)
    assert not old.exists() and fresh.exists()
    assert report.files_removed >= 1
    # beat sends that task periodically (MAINTENANCE_INTERVAL).
    from vocalborn_tasks.worker.factory import create_celery_app

    schedule = create_celery_app(web_settings).conf.beat_schedule
    assert schedule["vocalborn-maintenance-cleanup"]["task"] == cleanup.name


# --- a real browser --------------------------------------------------------------------------------
async def test_browser_event_source_resumes_across_a_server_restart(
    client: httpx.AsyncClient, web: WebServer, web_worker: WorkerProcess, tmp_path: Path
) -> None:
    """Headless Chromium's EventSource: PENDING, the server is killed and restarted, the
    browser reconnects with Last-Event-ID, PENDING is not repeated, the task runs to SUCCESS."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None, "apt-get install -y chromium"

    async def reports() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = (await client.get("/reports")).json()
        return got

    async def wait_reports(predicate: Any, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 60
        while not predicate(got := await reports()):
            assert time.monotonic() < deadline, f"{what}: {got}"
            await asyncio.sleep(0.1)
        return got

    with frozen(web_worker):
        task_id = await submit(client)
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [
                browser,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"{web.url}/page/{task_id}?user=alice",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        await wait_reports(lambda r: any(x.get("state") == "PENDING" for x in r), "PENDING")
        web.kill()  # the blip: the stream breaks, the browser reconnects (retry: 1000)
        await asyncio.to_thread(web.start)
        # The reports list lived in the killed process: the restarted server's is empty.
        # Wait until the browser's new stream is open (the server logs the request).
        await asyncio.to_thread(
            wait_until,
            lambda: web.log_path.read_text().count(f"/analyses/{task_id}/events") >= 2,
            60,
            0.05,
            "the browser's reconnect",
        )
    try:
        got = await wait_reports(lambda r: any(x.get("state") in FINAL for x in r), "final")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    states = [x["state"] for x in got if "state" in x]
    assert states[-1] == "SUCCESS", got
    assert "PENDING" not in states, got  # resumed after PENDING: not sent twice
    assert all(x["task_name"] == "vocalborn.analyze_audio" for x in got if "state" in x), got
    cursors = [cursor_of(x["id"]) for x in got if "state" in x]
    assert cursors == sorted(cursors), got  # type: ignore[type-var]


# --- issue 18: the patient cannot set the reference ----------------------------------------------
async def test_a_patient_supplied_reference_is_refused(
    client: httpx.AsyncClient, rec_root: Path
) -> None:
    """The router takes a ``reference_id`` resolved on the server; an uploaded reference (a
    patient's own attempt would score 100) is refused before a byte of it is stored."""
    before = uploads(rec_root)
    own = {**files(), "reference": ("ref.flac", sample_path("en_other_voice").read_bytes())}
    refused = await client.post("/analyses", data=form(), files=own)
    body = assert_problem(refused, 422, "reference_upload_not_allowed", "input")
    assert "reference_id" in body["detail"]
    for bad in ("no-such-sentence", "../references/sentence-1", "/etc/passwd", ".hidden"):
        response = await client.post("/analyses", data=form(reference_id=bad), files=files())
        code = "unknown_reference" if bad == "no-such-sentence" else "invalid_request"
        assert_problem(response, 422, code, "input")
        assert str(rec_root) not in response.text
    assert uploads(rec_root) == before


# --- issue 18: one user cannot reach another's results ----------------------------------------
async def test_another_user_gets_404_on_every_route_and_a_task_of_their_own(
    client: httpx.AsyncClient, web: WebServer, web_worker: WorkerProcess, rec_root: Path
) -> None:
    rid = record_id()
    bob = {"X-User": "bob"}
    with frozen(web_worker):
        first = await client.post("/analyses", data=form(rid), files=files())
        assert first.status_code == 202, first.text
        alice_task = first.json()["task_id"]
        # Bob sends the same practice record id: a task of his own, not Alice's.
        theirs = await client.post("/analyses", data=form(rid), files=files(), headers=bob)
        assert theirs.status_code == 202, theirs.text
        bob_task = theirs.json()["task_id"]
        assert bob_task != alice_task and theirs.json()["duplicate"] is False
        # Alice again while it waits: a duplicate, said so; its upload is deleted at once.
        before = uploads(rec_root)
        again = await client.post("/analyses", data=form(rid), files=files())
        assert again.status_code == 202, again.text
        assert again.json()["task_id"] == alice_task
        assert again.json()["duplicate"] is True
        assert again.json()["practice_record_id"] == rid
        assert uploads(rec_root) == before

        # Every route of Bob's on Alice's task: 404, exactly as for a made-up id.
        made_up = new_task_id()
        for url in ("/analyses/{}", "/analyses/{}/result?wait=0", "/analyses/{}/events"):
            for task_id in (alice_task, made_up):
                response = await client.get(url.format(task_id), headers=bob)
                body = assert_problem(response, 404, "not_found", "system")
                assert body["detail"] == "no such task"
        cancel = await client.post(f"/analyses/{alice_task}/cancel", headers=bob)
        assert_problem(cancel, 404, "not_found", "system")
        mine = (await client.get(f"/analyses/{alice_task}")).json()
        assert mine["state"] == "PENDING"  # not cancelled by Bob
        # While it waits: its place in the queue (the CLI's figures).
        assert isinstance(mine["position"], int) and mine["position"] >= 1, mine
        unauthenticated = await client.get(f"/analyses/{alice_task}", headers={"X-User": ""})
        assert_problem(unauthenticated, 401, "http_error", "input")
    for task_id, who in ((alice_task, "alice"), (bob_task, "bob")):
        result = await client.get(
            f"/analyses/{task_id}/result", params={"wait": 60}, headers={"X-User": who}
        )
        assert result.status_code == 200, result.text
        assert result.json()["practice_record_id"] == rid
    # The owner is never logged (it is a patient identifier).
    assert "bob" not in web.log_path.read_text()


async def test_uploads_are_deleted_when_the_task_ends(
    client: httpx.AsyncClient, rec_root: Path
) -> None:
    before = uploads(rec_root)
    task_id = await submit(client)
    (new,) = uploads(rec_root) - before
    result = await client.get(f"/analyses/{task_id}/result", params={"wait": 60})
    assert result.status_code == 200, result.text
    await asyncio.to_thread(
        wait_until, lambda: new not in uploads(rec_root), 30, 0.05, "the upload deleted"
    )


# --- issue 18: deploys do not hang ---------------------------------------------------------------
async def test_sigterm_with_open_streams_exits_within_2_s(
    web_settings: TaskSettings, web_worker: WorkerProcess, tmp_path: Path
) -> None:
    """uvicorn waits for open responses before the lifespan shutdown: the streams end on the
    signal itself, so a deploy does not wait for SIGKILL."""
    server = WebServer(web_settings, tmp_path)
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(
            base_url=server.url, timeout=30, headers={"X-User": "alice"}
        ) as c:
            with frozen(web_worker):
                task_ids = [await submit(c) for _ in range(2)]
                streams = [
                    await c.send(c.build_request("GET", f"/analyses/{t}/events"), stream=True)
                    for t in task_ids
                ]
                poll = asyncio.ensure_future(c.get(f"/analyses/{task_ids[0]}/result?wait=60"))
                for stream in streams:
                    events, _ = await read_events(stream, until_comment=True)
                    assert [e["data"]["state"] for e in events] == ["PENDING"]
                elapsed = await asyncio.to_thread(server.terminate)
                assert elapsed < 2.0, (elapsed, server.log_path.read_text()[-2000:])
                for stream in streams:
                    await stream.aclose()
                response = await poll  # the long poll answered before the exit: 202
                assert response.status_code == 202, response.text
            for task_id in task_ids:
                async with TaskManager(web_settings) as manager:
                    await manager.cancel(task_id)
    finally:
        server.kill()


# --- issue 18: streams survive an outage and an app restart ----------------------------------
async def test_browser_sees_the_result_across_an_app_restart_while_redis_is_down(
    web_settings: TaskSettings,
    server_binary: str | None,
    tmp_path: Path,
) -> None:
    """Redis stops, the app restarts while it is down: the browser's EventSource reconnects
    to a stream that opens (200, not 503: a 503 closes an EventSource for good) and waits;
    a long poll started during the outage rides it out. Redis comes back with its AOF, a
    worker starts (none ran before: the task waited in PENDING as a state, not a race) and
    runs the task, and the browser and the long poll both see the result."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None, "apt-get install -y chromium"
    srv = LocalServer(binary=server_binary, data_dir=tmp_path / "redis", die_with_parent=True)
    srv.start()
    settings = web_settings.model_copy(
        update={"redis_url": srv.url, "redis_connect_timeout_s": 1.0}
    )
    worker = WorkerProcess(settings, name="outage", concurrency=1, log_dir=tmp_path)
    server = WebServer(settings, tmp_path)
    proc: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=90, headers={"X-User": "alice"}
        ) as c:

            async def reports() -> list[dict[str, Any]]:
                got: list[dict[str, Any]] = (await c.get("/reports")).json()
                return got

            async def wait_reports(predicate: Any, what: str) -> list[dict[str, Any]]:
                deadline = time.monotonic() + 90
                while not predicate(got := await reports()):
                    assert time.monotonic() < deadline, f"{what}: {got}"
                    await asyncio.sleep(0.1)
                return got

            events_ok = '/analyses/{}/events?user=alice HTTP/1.1" 200'
            # No worker yet: the task stays PENDING.
            task_id = await submit(c)
            proc = await asyncio.to_thread(
                subprocess.Popen,
                [
                    browser,
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    f"--user-data-dir={tmp_path / 'chromium'}",
                    f"{server.url}/page/{task_id}?user=alice",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
            await wait_reports(lambda r: any(x.get("state") == "PENDING" for x in r), "PENDING")
            srv.stop()  # Redis is down (a graceful stop: the AOF keeps the task)
            server.kill()
            await asyncio.to_thread(server.start)  # the new app starts without Redis
            # The browser reconnects, and the stream opens although Redis is down.
            await asyncio.to_thread(
                wait_until,
                lambda: server.log_path.read_text().count(events_ok.format(task_id)) >= 2,
                60,
                0.05,
                "the browser's stream reopened during the outage",
            )
            poll = asyncio.ensure_future(c.get(f"/analyses/{task_id}/result", params={"wait": 60}))
            await asyncio.to_thread(
                wait_until,
                lambda: (
                    f"result of task {task_id}: broker unavailable" in server.log_path.read_text()
                ),
                60,
                0.05,
                "the long poll waiting out the outage",
            )
            assert not poll.done()
            srv.start()  # Redis is back
            await asyncio.to_thread(worker.start)
            got = await wait_reports(lambda r: any(x.get("state") in FINAL for x in r), "final")
            response = await poll
            assert response.status_code == 200, response.text
            assert response.json()["practice_record_id"].startswith("web-")
        states = [x["state"] for x in got if "state" in x]
        assert states[-1] == "SUCCESS", got
        assert not any(x.get("error") == 2 for x in got), got  # never CLOSED for good
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        server.kill()
        worker.stop()
        srv.close()


# --- issue 18: OpenAPI that tools can use ----------------------------------------------------
def _validate(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate ``instance`` against a response schema of ``spec`` (its refs resolved)."""
    import jsonschema

    jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(instance)


def _body_schema(spec: dict[str, Any], op: dict[str, Any], status: int, kind: str) -> Any:
    return op["responses"][str(status)]["content"][kind]["schema"]


async def test_openapi_is_valid_and_a_generated_request_works(client: httpx.AsyncClient) -> None:
    import re

    from openapi_spec_validator import validate

    spec = (await client.get("/openapi.json")).json()
    validate(spec)
    paths = spec["paths"]
    upload = paths["/analyses"]["post"]
    schema = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(schema["properties"]) == {
        "recording",
        "practice_record_id",
        "reference_id",
        "language",
    }
    assert set(schema["required"]) == {"recording", "practice_record_id", "reference_id"}
    problems = {
        ("/analyses", "post"): {"202", "413", "415", "422", "503"},
        ("/analyses/{task_id}", "get"): {"200", "404", "410", "503"},
        ("/analyses/{task_id}/result", "get"): {"200", "202", "404", "409", "410", "503", "504"},
        ("/analyses/{task_id}/cancel", "post"): {"200", "404", "410", "503"},
        ("/analyses/{task_id}/events", "get"): {"200", "204", "404", "410"},
    }
    for (path, method), statuses in problems.items():
        op = paths[path][method]
        assert op["summary"] and op["description"], path
        assert statuses <= set(op["responses"]), (path, set(op["responses"]))
        for status in statuses - {"200", "202", "204"}:
            problem = _body_schema(spec, op, int(status), "application/problem+json")
            assert {"type", "title", "status", "detail", "code", "cause"} <= set(
                problem["properties"]
            )
    result_op = paths["/analyses/{task_id}/result"]["get"]
    (wait,) = [p for p in result_op["parameters"] if p["name"] == "wait"]
    assert wait["schema"]["maximum"] == 60
    assert "AnalysisResult" in json.dumps(result_op["responses"]["200"])
    assert "StatusView" in json.dumps(result_op["responses"]["202"])
    events = paths["/analyses/{task_id}/events"]["get"]["responses"]["200"]["content"]
    assert set(events) == {"text/event-stream"}

    # A request built from the schema alone, sent to the running app.
    values = {"practice_record_id": record_id(), "reference_id": REFERENCE_ID, "language": "en"}
    data: dict[str, str] = {}
    sent: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        if prop.get("format") == "binary":
            sent[name] = (f"{name}.flac", sample_path("en_other_voice").read_bytes())
            continue
        data[name] = values[name]
        assert re.fullmatch(prop["pattern"], data[name]), (name, prop)
        assert len(data[name]) <= prop.get("maxLength", 10**6)
    response = await client.post("/analyses", data=data, files=sent)
    assert str(response.status_code) in upload["responses"]
    _validate(spec, _body_schema(spec, upload, 202, "application/json"), response.json())
    status_op = paths["/analyses/{task_id}"]["get"]
    status = await client.get(response.json()["status_url"])
    _validate(spec, _body_schema(spec, status_op, 200, "application/json"), status.json())
    result = await client.get(response.json()["result_url"], params={"wait": 60})
    assert result.status_code == 200, result.text
    _validate(spec, _body_schema(spec, result_op, 200, "application/json"), result.json())
    too_long = await client.get(response.json()["result_url"], params={"wait": 61})
    body = assert_problem(too_long, 422, "invalid_request", "input")  # the router's own: problem
    _validate(spec, _body_schema(spec, result_op, 422, "application/problem+json"), body)
    missing = await client.get(f"/analyses/{new_task_id()}")
    _validate(spec, _body_schema(spec, status_op, 404, "application/problem+json"), missing.json())


# --- issue 18: error handlers, probes, the import without the extra ----------------------------
async def test_error_handlers_answer_routes_methods_and_host_errors(
    client: httpx.AsyncClient,
) -> None:
    assert_problem(await client.get("/no/such/route"), 404, "no_route", "input")
    assert_problem(await client.delete("/analyses"), 405, "method_not_allowed", "input")
    # (uvicorn drops the connection after an unhandled error: use one of its own)
    crash = await client.get("/host/13", headers={"Connection": "close"})
    body = assert_problem(crash, 500, "internal", "system")
    assert "host bug" not in body["detail"]
    # The host's own validation errors keep FastAPI's format (scope="library").
    host = await client.get("/host/abc")
    assert host.status_code == 422 and host.headers["content-type"] == "application/json"
    assert isinstance(host.json()["detail"], list)
    assert (await client.get("/host/7")).json() == 7


async def test_ready_and_live_probes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/live")).json() == {"status": "live"}
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"] >= 1


def test_import_without_the_extra_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'fastapi':\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import vocalborn_tasks.fastapi\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "ImportError: vocalborn_tasks.fastapi needs FastAPI: pip install 'vocalborn-tasks[fastapi]'"
    )
