"""autobackup_notify through the role and the host command: the URL's token reaches the targets' file and the
receiver, and nothing else: not the settings, the diff, ansible-playbook -v, status or the log."""

from __future__ import annotations

import http.server
import json
import stat
import threading
from pathlib import Path

import pytest

from test_role import SERVERS, inventory, playbook, remove_servers, repobackup, sample_repos

TOKEN = "b1ae5ec2-70ce-4e11-aaaa-n0t1fyt0ken77"
NOTIFY_FILE = Path("/etc/repobackup") / (SERVERS[0] + ".notify.json")


@pytest.fixture
def receiver():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d/ping/%s" % (server.server_address[1], TOKEN), seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def repos(tmp_path: Path):
    yield sample_repos(tmp_path)
    remove_servers(SERVERS)
    if NOTIFY_FILE.exists():
        NOTIFY_FILE.unlink()


def test_the_token_goes_to_the_targets_file_and_the_receiver_only(repos, receiver, tmp_path):
    url, seen = receiver
    values = dict(repos, autobackup_notify=[{"url": url, "events": ["start", "success", "failure"]}])
    changed, failed, out = playbook(inventory(**values), tmp_path, "-v", "--diff")
    assert failed == 0, out
    assert TOKEN not in out
    assert url.split("/ping/")[0] in out  # the target shown by scheme and host
    st = NOTIFY_FILE.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0
    assert json.loads(NOTIFY_FILE.read_text())["targets"][0]["url"] == url
    settings = Path("/etc/repobackup") / (SERVERS[0] + ".json")
    assert TOKEN not in settings.read_text()
    again = playbook(inventory(**values), tmp_path, "-v")
    assert again[:2] == (0, 0), again[2]

    done = repobackup("run", "--server", SERVERS[0])
    assert done.returncode == 0, done.stderr
    assert [path for path, dummy in seen] == ["/ping/%s/start" % TOKEN, "/ping/" + TOKEN]
    status = repobackup("status", "--server", SERVERS[0], "--json")
    assert json.loads(status.stdout)["last_notify"]["targets"][1]["outcome"] == "ok"
    log = Path("/var/log/repobackup") / (SERVERS[0] + ".log")
    for text in (done.stdout, done.stderr, status.stdout, log.read_text()):
        assert TOKEN not in text

    without = dict(repos, autobackup_notify=[])
    changed, failed, out = playbook(inventory(**without), tmp_path, "-v", "--diff")
    assert (changed, failed) == (1, 0) and TOKEN not in out
    assert not NOTIFY_FILE.exists()


def test_a_bad_target_is_refused_by_name_and_changes_nothing(repos, tmp_path):
    values = dict(repos, autobackup_notify=[{"url": "https://hc.example.net/ping/" + TOKEN, "style": "email"}])
    changed, failed, out = playbook(inventory(**values), tmp_path, "-v")
    assert failed == 1
    assert "is refused: autobackup_notify entry 1 style 'email' is not allowed" in out, out
    assert TOKEN not in out
    assert not NOTIFY_FILE.exists() and not (Path("/etc/repobackup") / (SERVERS[0] + ".json")).exists()
