# Entry points. Everything runs through scripts/, which set up what they need
# (scripts/setup-test-env: packages, build/venv, cron, a test sshd on :2222).

SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help setup test unit integration molecule cron-e2e compat lint sanity build demo bench clean docs release

help:
	@echo "make test         the whole suite (scripts/test); last line: N passed, N failed"
	@echo "make demo         a short demonstration on this machine (scripts/demo)"
	@echo "make bench        benchmarks (scripts/bench)"
	@echo "make unit | integration | molecule | cron-e2e | compat | lint | sanity | build   one part of the suite"
	@echo "make docs         the collection's docs as HTML: build/docs/html/index.html (docs/build.sh)"
	@echo "make release      a maintainer's release: changelog from the fragments, tarball, sha256 (scripts/release)"
	@echo "make setup        only prepare the machine and build/venv"
	@echo "make clean        remove build/ (stops the test sshd first)"

setup:
	bash scripts/setup-test-env

test:
	bash scripts/test

unit integration molecule cron-e2e compat lint sanity build:
	bash scripts/test $@

docs:
	bash scripts/setup-test-env
	. build/env.sh && bash docs/build.sh

# For real, in a clean work tree: removes the changelog fragments (they go
# into CHANGELOG.rst) and leaves the commit and the tag to the maintainer.
# The suite rehearses it in a copy (scripts/test release).
release:
	bash scripts/setup-test-env
	. build/env.sh && bash scripts/release

demo:
	@if [ -e scripts/demo ]; then bash scripts/demo; \
	else echo "scripts/demo is not there yet"; exit 1; fi

bench:
	bash scripts/bench

clean:
	@if [ -f build/ssh/sshd.pid ]; then kill "$$(cat build/ssh/sshd.pid)" 2>/dev/null || true; fi
	rm -rf build
