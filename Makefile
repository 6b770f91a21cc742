# Convenience entries; the README's two commands are the reference.
LAB_BUDGET ?= 3600

.PHONY: setup test lab lint

setup:
	scripts/setup.sh --test

test:
	.venv/bin/python -m pytest

# The hardware-in-the-loop set: real boards named by BITCHAT_HIL_* variables, and the emulated box.
lab:
	BITCHAT_HIL_EMUBOX=1 timeout --signal=INT $(LAB_BUDGET) .venv/bin/python -m pytest hil_tests -v

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
