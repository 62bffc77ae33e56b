# -*- coding: utf-8 -*-
"""url_passwords: the passwords a module hides from its result (older ansible-core echo every argument)."""

from __future__ import annotations

import pytest

from ansible_collections.reposerver.backup.plugins.module_utils.sftp_url import url_passwords


@pytest.mark.parametrize("value,found", [
    ("sftp://backup:hunter2@files.example.com/srv", {"hunter2"}),
    ("sftp://backup:p:q@files.example.com:2222/srv", {"p:q"}),
    ("sftp://backup@files.example.com/srv", set()),
    ("sftp://backup:@files.example.com/srv", set()),
    ("/mnt/backups", set()),
    ("http://user:pw@host/x", set()),
    (None, set()),
    (14, set()),
    ({"destination": "sftp://a:one@h/x", "servers": [{"destination": "sftp://b:two@h/y"}, "plain"]}, {"one", "two"}),
])
def test_passwords_in_sftp_urls_anywhere_in_the_arguments(value, found):
    assert url_passwords(value) == found
