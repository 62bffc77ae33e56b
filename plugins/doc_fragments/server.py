# -*- coding: utf-8 -*-
# Copyright: reposerver.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    """The option every module shares: which repository server on the host (the table's ``server_name``)."""

    # One repository server: autobackup_settings, repository_export, repository_import.
    DOCUMENTATION = r"""
options:
  server_name:
    description:
      - Name of the repository server on the host, 1 to 32 characters from C(a-z), C(0-9) and C(_).
      - It names the server's settings C(/etc/repobackup/<server>.json), cron file, state folder, log and
        backup folder. Every module but M(reposerver.backup.autobackup_settings) needs those settings to exist.
    type: str
    default: main
"""

    # One repository server, or every one on the host (autobackup_info).
    ANY = r"""
options:
  server_name:
    description:
      - Name of one repository server on the host, 1 to 32 characters from C(a-z), C(0-9) and C(_).
      - Default is every server that has settings on the host.
    type: str
"""
