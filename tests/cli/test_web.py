"""`jobgraph token` and `jobgraph web` through the real command: tokens shown once and stored hashed; a server
off loopback refused without a token; a real server over TCP that leaves nothing behind when stopped."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from jobgraph.store import Store
from jobgraph.store.tokens import Tokens, token_hash
from tests.conftest import Cli, WritePipeline, process_alive, sh, store_url


def test_a_token_is_printed_once_and_stored_only_hashed(cli: Cli, tmp_path: Path) -> None:
    made = cli("token", "create", "ci-bot", "--scope", "operate", "--expires", "30", check=0)
    secret = made.stdout.strip()
    assert secret.startswith("jg_") and len(secret.splitlines()) == 1
    assert "shown this once" in made.stderr and "ci-bot (operate, expires" in made.stderr
    assert "sign in with it at /login" in made.stderr and "Authorization: Bearer" in made.stderr
    listed = cli("token", "list", check=0)
    assert "ci-bot" in listed.stdout and "operate" in listed.stdout and "live" in listed.stdout
    assert secret not in listed.stdout + listed.stderr
    with Store(store_url(tmp_path)) as records:
        (info,) = Tokens(records).all()
        assert info.expires_at is not None and (info.expires_at - info.created_at).days == 30
    database = tmp_path / ".jobgraph" / "jobgraph.db"
    raw = b"".join(path.read_bytes() for path in database.parent.glob("jobgraph.db*"))
    assert secret.encode() not in raw and token_hash(secret).encode() in raw
    assert cli("token", "revoke", "ci-bot", check=0).stdout.startswith("revoked 1 token")
    assert "revoked" in cli("token", "list", check=0).stdout


def test_bad_token_commands_exit_2_with_a_clear_error(cli: Cli) -> None:
    again = cli("token", "revoke", "nobody", check=2)
    assert "no unrevoked token named 'nobody'" in again.stderr and "Traceback" not in again.stderr
    assert "'root'" in cli("token", "create", "x", "--scope", "root", check=2).stderr
    assert "--expires must be at least 1 day" in cli("token", "create", "x", "--scope", "read", "--expires", "0",
                                                      check=2).stderr
    cli("token", "create", "dup", "--scope", "read", check=0)
    assert "a live token named 'dup' exists already" in cli("token", "create", "dup", "--scope", "read",
                                                            check=2).stderr


def test_web_off_loopback_is_refused_without_a_live_token(cli: Cli) -> None:
    refused = cli("web", "--host", "0.0.0.0", "--port", "0", check=2, timeout=30)
    assert "refusing to listen on 0.0.0.0" in refused.stderr and "jobgraph token create" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    cli("token", "create", "old", "--scope", "read", check=0)
    cli("token", "revoke", "old", check=0)
    assert "refusing to listen" in cli("web", "--host", "0.0.0.0", "--port", "0", check=2, timeout=30).stderr


def _descendants(pid: int) -> set[int]:
    """Every living process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and process_alive(child):
                found.add(child)
                todo.append(child)
    return found


def _job_started(pid: int) -> None:
    """Wait until a `sleep 120` job runs below `pid`."""
    deadline = time.monotonic() + 30
    while not [child for child in _descendants(pid) if b"sleep\x00120" in _cmdline(child)]:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_real_server_over_tcp_ends_with_its_runs_on_sigterm(cli: Cli, write_pipeline: WritePipeline,
                                                            tmp_path: Path) -> None:
    path = write_pipeline({"name": "slow", "jobs": [sh("wait", "sleep 120")]})
    cli("deploy", str(path), check=0)
    operate = cli("token", "create", "ops", "--scope", "operate", check=0).stdout.strip()
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    server = subprocess.Popen([sys.executable, "-m", "jobgraph", "web", "--port", "0"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        match = re.search(r"jobgraph web: (http://127\.0\.0\.1:\d+/)", first)
        assert match, first + (server.stderr.read() if server.poll() is not None and server.stderr else "")
        base = match[1]
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/healthz").json() == {"ok": True}
            assert [p["name"] for p in client.get("/api/v1/pipelines").json()["pipelines"]] == ["slow"]
            assert client.post("/api/v1/pipelines/slow/trigger").status_code == 401
            auth = {"Authorization": f"Bearer {operate}"}
            first = client.post("/api/v1/pipelines/slow/trigger", headers=auth).json()["run_id"]
            _job_started(server.pid)
            assert client.post(f"/api/v1/runs/{first}/cancel", headers=auth).status_code == 202
            deadline = time.monotonic() + 30
            while client.get(f"/api/v1/runs/{first}").json()["run"]["state"] != "CANCELLED":  # the server's own run
                assert time.monotonic() < deadline, "the cancel request was not acted on"
                time.sleep(0.05)
            assert not [pid for pid in _descendants(server.pid) if b"sleep" in _cmdline(pid)]
            started = client.post("/api/v1/pipelines/slow/trigger", headers={"Authorization": f"Bearer {operate}"})
            assert started.status_code == 202 and started.json()["action"] == "STARTED", started.text
            run_id = started.json()["run_id"]
            _job_started(server.pid)
            job_pids = _descendants(server.pid)
            with client.stream("GET", f"/api/v1/runs/{run_id}/events") as events:
                lines = events.iter_lines()
                assert next(lines) == "event: snapshot"
                assert '"state":"RUNNING"' in next(lines)
                server.send_signal(signal.SIGTERM)  # an open event stream must not hold the server up
                remaining = list(lines)
        assert server.wait(30) == 0
        assert not server.stdout.read().count("Traceback")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert "event: end" not in remaining  # the stream was ended cleanly by the stopping server; the run did not end
    assert not any(process_alive(pid) for pid in job_pids)
    with Store(store_url(tmp_path)) as records:
        run = records.run(run_id)
        assert run.state == "CANCELLED" and run.finished_at is not None
        assert [t.state for t in records.tasks(run_id)] == ["CANCELLED"]


def test_serve_http_runs_the_scheduler_and_the_api_in_one_process(cli: Cli, write_pipeline: WritePipeline,
                                                                  tmp_path: Path) -> None:
    path = write_pipeline({"name": "slow", "jobs": [sh("wait", "sleep 120")]})
    cli("deploy", str(path), check=0)
    operate = cli("token", "create", "ops", "--scope", "operate", check=0).stdout.strip()
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    service = subprocess.Popen([sys.executable, "-m", "jobgraph", "serve", "--tick", "0.2", "--http", "127.0.0.1:0"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output: list[str] = []
    try:
        assert service.stdout is not None
        while not any("jobgraph web: " in line for line in output):
            line = service.stdout.readline()
            assert line, "".join(output) + (service.stderr.read() if service.stderr else "")
            output.append(line)
        match = re.search(r"jobgraph web: (http://127\.0\.0\.1:\d+/)", "".join(output))
        assert match
        with httpx.Client(base_url=match[1], timeout=30) as client:
            started = client.post("/api/v1/pipelines/slow/trigger", headers={"Authorization": f"Bearer {operate}"})
            assert started.status_code == 202 and started.json()["action"] == "STARTED", started.text
            run_id = started.json()["run_id"]
            assert client.get(f"/api/v1/runs/{run_id}").json()["run"]["state"] == "RUNNING"
        _job_started(service.pid)
        job_pids = _descendants(service.pid)
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert not any(process_alive(pid) for pid in job_pids)
    with Store(store_url(tmp_path)) as records:
        run = records.run(run_id)
    assert run.state == "CANCELLED" and run.trigger is not None


def test_serve_http_refuses_a_bad_address(cli: Cli) -> None:
    bad = cli("serve", "--http", "localhost", check=2, timeout=30)
    assert "--http 'localhost' is not HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr
    refused = cli("serve", "--http", "0.0.0.0:0", check=2, timeout=30)
    assert "refusing to listen on 0.0.0.0" in refused.stderr


def test_web_on_a_port_in_use_says_so_and_what_to_do(cli: Cli) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        busy = cli("web", "--port", str(port), check=2, timeout=30)
    finally:
        taken.close()
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in busy.stderr
    assert "choose another with --port" in busy.stderr and "Traceback" not in busy.stderr and busy.stdout == ""


def test_web_on_every_address_names_one_a_browser_opens(cli: Cli, tmp_path: Path) -> None:
    cli("token", "create", "reader", "--scope", "read", check=0)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    env.pop("JOBGRAPH_STORE", None)
    server = subprocess.Popen([sys.executable, "-m", "jobgraph", "web", "--host", "0.0.0.0", "--port", "0"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        found = re.search(r"http://0\.0\.0\.0:(\d+)/ \(every address of this host, e.g. http://(\S+):(\d+)/\)", line)
        assert found and found.group(2) == socket.gethostname() and found.group(1) == found.group(3), line
        assert "a token needed for every request" in line
        assert httpx.get(f"http://127.0.0.1:{found.group(1)}/api/v1/runs", timeout=30).status_code == 401
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_the_servers_never_print_the_stores_password(postgres_server: str, tmp_path: Path) -> None:
    """`jobgraph web` and `serve --http` say which store they serve: a PostgreSQL URL's password is not shown."""
    name = f"t_pw_{os.getpid()}"
    admin = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = postgres_server.replace("postgres@", "postgres:pw-S3CRET-9@") + f"/{name}"  # trust auth: any password
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    for command in (["web", "--port", "0"], ["serve", "--http", "127.0.0.1:0"]):
        server = subprocess.Popen([sys.executable, "-m", "jobgraph", *command, "--store", url], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stderr is not None
        output: list[str] = []
        try:
            while not any("jobgraph web: " in line for line in output):
                line = server.stdout.readline()
                assert line, "".join(output) + server.stderr.read()
                output.append(line)
            server.send_signal(signal.SIGTERM)
            out, err = server.communicate(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        said = "".join(output) + out + err
        assert "pw-S3CRET-9" not in said and "***" in said, said
