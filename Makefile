# Two commands do all the set-up on a fresh machine:
#   make paper   venv + pinned dependencies + TeX, then snakemake builds paper.pdf and supplement.pdf
#   make test    the same set-up (TeX for every template) and the test tools, then the test suite and
#                the linters
# make paper TEMPLATE=ieee typesets in another template (article | ieee | acm) than config.yaml's
# paper.template, installing what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
TEMPLATE ?=
# pip byte-compiles what it installs on one core; compileall does it on all of them, and like pip it
# passes over the few files that are not Python 3.11 (torch's py312 test helpers). The packages' own
# test suites (a fifth of the source; no job imports them) are left out.
BYTE_COMPILE := $(BIN)/python -c 'import compileall, re, sysconfig; compileall.compile_dir(sysconfig.get_path("purelib"), quiet=2, workers=0, rx=re.compile(r"/tests?/"))'
SNAKEMAKE_CONFIG := $(if $(TEMPLATE),--config 'paper={template: $(TEMPLATE)}')

.PHONY: paper test lint format setup setup-dev tex clean

# A failed checklist still builds both PDFs, marked DRAFT; make then lists the failed checks and fails.
paper: setup tex
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_CONFIG) paper.pdf supplement.pdf
	$(BIN)/python -m vitpeft.analysis.checklist results/analysis/checklist.json

# the end-to-end tests build the paper in every template
test: TEMPLATE = all
test: setup-dev tex
	$(BIN)/pytest
	$(MAKE) lint

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

format: setup-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile rules

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

# Reinstall when the pins change. pip (not uv) finds the torch wheels that lie on this disk.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -r requirements.txt -c constraints.txt
	$(BYTE_COMPILE)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet --no-compile -r requirements-dev.txt -c constraints.txt
	$(BYTE_COMPILE)
	# in a git checkout, commits run the linters (.pre-commit-config.yaml) from this venv
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then $(BIN)/pre-commit install; fi
	touch $@

# latexmk builds the paper and pdftotext reads it in the tests. What the template needs beyond
# that (vitpeft.paper.TEMPLATES): IEEEtran and acmart from texlive-publishers, acmart's fonts.
tex: setup
	@missing="$$($(BIN)/python -m vitpeft.paper missing-packages config.yaml $(TEMPLATE))" || exit 1; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "Installing TeX: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "TeX is missing. Install it with: sudo apt-get install $$missing" >&2; exit 1; \
	fi

clean:
	rm -rf results resources paper.pdf supplement.pdf .snakemake
