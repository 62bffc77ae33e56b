# -*- coding: utf-8 -*-
"""notify: runs tell a real HTTP(S) receiver on a loopback port how they went, within their budget.

The receiver is http.server in a thread; HTTPS uses a throwaway CA made with the openssl command line and
given to the target as its ca_file (the product's option for private CAs; verification is never turned off).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from contextlib import contextmanager

import pytest
from repobackup_testlib import make_db

from ansible_collections.reposerver.backup.plugins.module_utils import notify as N
from ansible_collections.reposerver.backup.plugins.module_utils.errors import SettingsError

TOKEN = "5c0ffee0-dead-4bee-f00d-7e57t0ken999"


class Receiver:
    """A recording HTTP(S) server: each request's method, path, headers and body; answers with ``status``,
    or after ``delay`` seconds (a slow receiver) ."""

    def __init__(self, status=200, delay=0.0, context=None):
        self.requests = []
        self.status = status
        self.delay = delay
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if receiver.delay:
                    receiver.release.wait(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, scheme="http", host="127.0.0.1"):
        return "%s://%s:%d/ping/%s" % (scheme, host, self.port, TOKEN)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiving(**kwargs):
    receiver = Receiver(**kwargs)
    try:
        yield receiver
    finally:
        receiver.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def use(engine, targets, budget=None):
    """Store ``targets`` where the engine reads them (as autobackup_settings does)."""
    os.makedirs(engine.paths.settings_dir, exist_ok=True)
    N.save(engine.paths.settings_dir, engine.settings.server, N.check_targets(targets), gid=os.getgid())
    if budget is not None:
        engine.notify_budget = budget
    return engine


def everything_written(engine) -> str:
    """Every file the run left (state, log, metrics) and the status report, as one text."""
    texts = [json.dumps(engine.status(), default=str)]
    folders = [engine.state_dir, engine.paths.log_dir]
    if engine.settings.metrics_file:
        folders.append(os.path.dirname(engine.settings.metrics_file))
    for folder in folders:
        for root, dummy, files in os.walk(folder):
            for name in files:
                with open(os.path.join(root, name), "rb") as handle:
                    texts.append(handle.read().decode("utf-8", "replace"))
    return "\n".join(texts)


# -- targets as settings --------------------------------------------------------------------------------------

def test_targets_are_checked_and_a_refusal_never_shows_the_token():
    targets = N.check_targets([{"url": "https://hc.example.net/ping/" + TOKEN},
                               {"url": "https://hooks.example.net/x/" + TOKEN, "style": "webhook",
                                "events": ["failure", "start"]}])
    assert [t["events"] for t in targets] == [["start", "success", "failure"], ["start", "failure"]]
    assert N.shown(targets)[0]["url"] == "https://hc.example.net"
    for bad, says in (
            ([{"url": "ftp://hc.example.net/" + TOKEN}], "notify entry 1 url ftp://hc.example.net is not allowed"),
            ([{"url": "https://user:%s@hc.example.net/" % TOKEN}], "url https://hc.example.net is not allowed"),
            ([{"url": "https://hc.example.net/a b" + TOKEN}], "without spaces"),
            ([{"url": "https://h.example/" + TOKEN, "style": "email"}], "style 'email' is not allowed"),
            ([{"url": "https://h.example/" + TOKEN, "events": ["done"]}], "events ['done'] is not allowed"),
            ([{"url": "https://h.example/" + TOKEN, "ca_file": "rel.pem"}], "ca_file 'rel.pem' is not allowed"),
            ([{"url": "https://h.example/" + TOKEN, "token": "x"}], "unknown key(s) token"),
            ("https://h.example/" + TOKEN, "use a list of {url, style, events} targets")):
        with pytest.raises(SettingsError) as caught:
            N.check_targets(bad)
        assert says in str(caught.value) and TOKEN not in str(caught.value)


def test_the_targets_file_is_not_a_server(paths, write_settings, make_settings):
    from ansible_collections.reposerver.backup.plugins.module_utils import engine as E
    write_settings(make_settings())
    N.save(paths.settings_dir, "main", N.check_targets([{"url": "https://h.example/" + TOKEN}]), gid=os.getgid())
    assert E.servers_on_host(paths) == ["main"]
    assert oct(os.stat(N.notify_file(paths.settings_dir, "main")).st_mode & 0o777) == "0o640"


# -- runs that notify ------------------------------------------------------------------------------------------

def test_a_good_run_pings_start_and_success_with_its_summary(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    with receiving() as receiver:
        engine = use(make_engine(), [{"url": receiver.url()}])
        assert engine.run(scheduled=True)["result"] == "ok"
    assert [r["path"] for r in receiver.requests] == ["/ping/%s/start" % TOKEN, "/ping/%s" % TOKEN]
    done = receiver.requests[1]
    assert done["headers"]["Content-Type"].startswith("text/plain")
    body = done["body"].decode()
    assert body.startswith("repobackup scheduled: server main on testhost: ok, 1 ok, 0 failed")
    assert "scheduled result=ok ok=1 failed=0" in body  # the log's last lines
    assert len(done["body"]) <= N.BODY_MAX
    last = engine.status()["last_notify"]
    assert last["event"] == "success"
    assert [(t["event"], t["target"], t["outcome"]) for t in last["targets"]] == [
        ("start", "http://127.0.0.1:%d" % receiver.port, "ok"), ("success", "http://127.0.0.1:%d" % receiver.port, "ok")]
    assert TOKEN not in everything_written(engine)


def test_a_run_whose_destination_is_gone_pings_fail_with_the_reason(make_engine, sqlite_root, destination):
    make_db(sqlite_root / "a", [1])
    with receiving() as receiver:
        engine = use(make_engine(), [{"url": receiver.url(), "events": ["failure"]}])
        shutil.rmtree(destination)
        assert engine.run(scheduled=True)["result"] == "failed"
    (ping,) = receiver.requests
    assert ping["path"] == "/ping/%s/fail" % TOKEN
    body = ping["body"].decode()
    assert ": failed" in body and str(destination) in body
    assert "scheduled result=failed" in body  # the log's last lines follow the summary
    assert len(ping["body"]) <= N.BODY_MAX


def test_the_webhook_posts_the_result_field_by_field(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    make_db(sqlite_root / "b", [2])
    with receiving() as receiver:
        engine = use(make_engine(repositories=["a", "b", "gone"]),
                     [{"url": receiver.url(), "style": "webhook", "events": ["success", "failure"]}])
        engine.run(scheduled=True)
    (post,) = receiver.requests
    assert post["path"] == "/ping/" + TOKEN and post["headers"]["Content-Type"] == "application/json"
    doc = json.loads(post["body"])
    assert doc["event"] == "failure" and doc["result"] == "partial"
    assert (doc["host"], doc["server"], doc["kind"], doc["trigger"]) == ("testhost", "main", "sqlite", "scheduled")
    assert doc["repositories"]["a"] == {"result": "ok", "error": None}
    assert doc["repositories"]["b"] == {"result": "ok", "error": None}
    assert doc["repositories"]["gone"] == {"result": "failed", "error": "repository 'gone' does not exist"}
    assert isinstance(doc["duration_seconds"], float) and doc["duration_seconds"] >= 0
    assert doc["next_run"] == engine.status()["next_run"]
    assert doc["start"].endswith("Z") and doc["error"] is None


@pytest.mark.parametrize("options", [{"enabled": False}, {"suspended_until": "2999-01-01"}])
def test_a_skipped_run_pings_log_only_when_skipped_is_asked_for(make_engine, options):
    with receiving() as receiver:
        engine = use(make_engine(**options), [{"url": receiver.url()}])
        assert engine.run(scheduled=True)["result"] == "skipped"
        assert receiver.requests == []  # skipped is not among the default events: a skip is no failure
        use(engine, [{"url": receiver.url(), "events": ["skipped", "failure"]}])
        engine.run(scheduled=True)
    (ping,) = receiver.requests
    assert ping["path"] == "/ping/%s/log" % TOKEN
    assert "skipped (" in ping["body"].decode()


def test_a_500_answer_is_retried_once_recorded_and_fails_nothing(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    with receiving(status=500) as receiver:
        engine = use(make_engine(), [{"url": receiver.url(), "events": ["success"]}])
        assert engine.run(scheduled=True)["result"] == "ok"
    assert len(receiver.requests) == 2
    (outcome,) = engine.status()["last_notify"]["targets"]
    assert (outcome["outcome"], outcome["error"], outcome["attempts"]) == ("failed", "HTTP 500", 2)
    log = everything_written(engine)
    assert "notify event=success target=http://127.0.0.1:%d style=healthchecks result=failed error='HTTP 500'" \
        % receiver.port in log
    assert TOKEN not in log
    assert engine.read_status()["last_run"]["result"] == "ok"


def test_a_receiver_that_is_down_fails_nothing(make_engine, sqlite_root):
    make_db(sqlite_root / "a", [1])
    engine = use(make_engine(), [{"url": "http://127.0.0.1:%d/ping/%s" % (closed_port(), TOKEN)}])
    assert engine.run(scheduled=True)["result"] == "ok"
    outcomes = engine.status()["last_notify"]["targets"]
    assert [o["outcome"] for o in outcomes] == ["failed", "failed"]
    assert "refused" in outcomes[0]["error"].lower()
    assert TOKEN not in everything_written(engine)


def test_a_receiver_that_hangs_costs_the_run_its_budget_and_no_more(make_engine, sqlite_root):
    """Two targets that never answer and one start event each: the small budget runs out, the rest is not
    sent, the backup is done and status says so."""
    make_db(sqlite_root / "a", [1])
    with receiving(delay=60) as slow:
        engine = use(make_engine(), [{"url": slow.url()}, {"url": slow.url(host="localhost")}], budget=1.0)
        assert engine.run(scheduled=True)["result"] == "ok"
        outcomes = engine.status()["last_notify"]["targets"]
    assert outcomes[0]["outcome"] == "failed" and "timed out" in outcomes[0]["error"]
    assert any("spent" in o["error"] for o in outcomes[1:])
    assert engine.notify_budget == 1.0 and engine.read_status()["last_run"]["result"] == "ok"
    assert TOKEN not in everything_written(engine)


# -- HTTPS ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def test_ca(tmp_path_factory):
    """A throwaway CA and a certificate for 127.0.0.1 and localhost it signed (openssl command line)."""
    folder = tmp_path_factory.mktemp("ca")

    def openssl(*args):
        subprocess.run(["openssl"] + list(args), cwd=str(folder), check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=repobackup test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(folder / "server.pem"), str(folder / "server.key"))
    return {"ca_file": str(folder / "ca.pem"), "context": context}


def test_https_is_verified_against_the_ca_store_or_the_targets_ca_file(make_engine, sqlite_root, test_ca):
    make_db(sqlite_root / "a", [1])
    with receiving(context=test_ca["context"]) as receiver:
        engine = use(make_engine(), [{"url": receiver.url("https"), "events": ["success"]}])
        assert engine.run(scheduled=True)["result"] == "ok"
        (refused,) = engine.status()["last_notify"]["targets"]
        assert refused["outcome"] == "failed" and "certificate" in refused["error"].lower()
        assert refused["attempts"] == 1  # an untrusted certificate is not retried
        assert receiver.requests == []
        use(engine, [{"url": receiver.url("https"), "events": ["success"], "ca_file": test_ca["ca_file"]}])
        engine.run(scheduled=True)
        (trusted,) = engine.status()["last_notify"]["targets"]
    assert (trusted["outcome"], trusted["http_status"], trusted["target"]) == (
        "ok", 200, "https://127.0.0.1:%d" % receiver.port)
    assert [r["path"] for r in receiver.requests] == ["/ping/" + TOKEN]


def test_no_token_in_the_metrics_file_either(make_engine, sqlite_root, tmp_path):
    make_db(sqlite_root / "a", [1])
    with receiving(status=404) as receiver:
        engine = use(make_engine(metrics_file=str(tmp_path / "metrics" / "repobackup.prom")),
                     [{"url": receiver.url(), "style": "webhook"}])
        engine.run(scheduled=True)
    assert engine.status()["last_notify"]["targets"][0]["error"] == "HTTP 404"
    text = everything_written(engine)
    assert "repobackup_last_failed" in text and TOKEN not in text
