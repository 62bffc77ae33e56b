# Entry points. Everything runs through scripts/, which set up what they need
# (scripts/setup-test-env: packages, build/venv, cron, a test sshd on :2222).

SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help setup test unit integration molecule cron-e2e lint sanity build demo bench clean

help:
	@echo "make test         the whole suite (scripts/test); last line: N passed, N failed"
	@echo "make demo         a short demonstration on this machine (scripts/demo)"
	@echo "make bench        benchmarks (scripts/bench)"
	@echo "make unit | integration | molecule | cron-e2e | lint | sanity | build   one part of the suite"
	@echo "make setup        only prepare the machine and build/venv"
	@echo "make clean        remove build/ (stops the test sshd first)"

setup:
	bash scripts/setup-test-env

test:
	bash scripts/test

unit integration molecule cron-e2e lint sanity build:
	bash scripts/test $@

demo:
	@if [ -e scripts/demo ]; then bash scripts/demo; \
	else echo "scripts/demo is not there yet"; exit 1; fi

bench:
	bash scripts/bench

clean:
	@if [ -f build/ssh/sshd.pid ]; then kill "$$(cat build/ssh/sshd.pid)" 2>/dev/null || true; fi
	rm -rf build
