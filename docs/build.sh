#!/usr/bin/env bash
# The collection's docs as HTML: build/docs/html/index.html (make docs).
#
# antsibull-docs renders the modules' DOCUMENTATION and the role's
# meta/argument_specs.yml to reStructuredText under build/docs/rst, beside the
# hand-written pages of docs/sphinx/rst; Sphinx makes HTML of them with the
# settings in docs/sphinx/conf.py. Offline (no intersphinx), and every warning
# fails the build. Needs scripts/setup-test-env (build/venvs/tools, build/env.sh).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BUILD="$REPO_ROOT/build"
TOOLS="$BUILD/venvs/tools/bin"
OUT="$BUILD/docs"

[ -x "$TOOLS/sphinx-build" ] || { echo "docs: build/venvs/tools is missing: run scripts/setup-test-env" >&2; exit 1; }
# shellcheck source=/dev/null
[ -n "${ANSIBLE_COLLECTIONS_PATH:-}" ] || . "$BUILD/env.sh"

rm -rf "$OUT"
mkdir -p "$OUT"
cp -r "$REPO_ROOT/docs/sphinx/rst" "$OUT/rst"
chmod -R og-w "$OUT/rst"  # antsibull-docs wants its folder writable by itself only
# ansible-doc of build/venv (ansible-core 2.21) reads the collection through
# ANSIBLE_COLLECTIONS_PATH (build/collections links to this work tree).
"$TOOLS/antsibull-docs" --config-file "$REPO_ROOT/docs/sphinx/antsibull-docs.cfg" \
    collection --use-current --fail-on-error --dest-dir "$OUT/rst" reposerver.backup \
    2> >(grep -v "does not have a MANIFEST.json file, nor has it galaxy.yml" >&2)
"$TOOLS/sphinx-build" -b html -W --keep-going -q -c "$REPO_ROOT/docs/sphinx" -d "$OUT/doctrees" "$OUT/rst" "$OUT/html"
for page in index collections/reposerver/backup/autobackup_role collections/reposerver/backup/autobackup_settings_module; do
    [ -s "$OUT/html/$page.html" ] || { echo "docs: $page.html was not written" >&2; exit 1; }
done
echo "docs: build/docs/html/index.html"
