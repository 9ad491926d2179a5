# Two commands do all the set-up on a fresh machine:
#   make paper   venv + pinned dependencies + TeX, then snakemake builds paper.pdf
#   make test    the same set-up, then the test suite and the linters
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
TEX_PACKAGES := texlive-latex-recommended texlive-fonts-recommended latexmk poppler-utils

.PHONY: paper test lint format setup tex clean

# The venv (pip, mostly unpacking torch) and TeX (apt) install side by side.
paper:
	$(MAKE) --no-print-directory -j2 setup tex
	$(BIN)/snakemake --cores $(CORES) paper.pdf

test:
	$(MAKE) --no-print-directory -j2 setup tex
	$(BIN)/pytest
	$(MAKE) lint

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile rules

setup: $(VENV)/.installed

# Reinstall when the pins change. pip (not uv) finds the torch wheels that lie on this disk.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# latexmk builds the paper and pdftotext reads it in the tests.
tex:
	@if command -v latexmk >/dev/null && command -v pdftotext >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "Installing TeX: $(TEX_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEX_PACKAGES) >/dev/null; \
	else \
		echo "TeX is missing. Install it with: sudo apt-get install $(TEX_PACKAGES)" >&2; exit 1; \
	fi

clean:
	rm -rf results resources paper.pdf .snakemake
