"""Build the paper and its supplement with latexmk, in the template that ``paper.template`` names.

A template (``paper/templates/<name>.tex``) is the preamble: class, fonts, layout, bibliography
style and the order of the front matter. The documents (``main.tex``, ``supplement.tex``) open
with ``\\input{template}``; :func:`build_pdf` puts the chosen template there.

Run as ``python -m vitpeft.paper missing-packages config.yaml [template]`` it prints the Debian
packages that the chosen template still needs (``make tex`` installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# What every template needs: a program or TeX file (found by kpsewhich) -> the Debian package.
BASE_NEEDS = {
    "latexmk": "latexmk",
    "pdftotext": "poppler-utils",  # the tests read the PDF back
    "article.cls": "texlive-latex-base",
    "booktabs.sty": "texlive-latex-recommended",
    "lmodern.sty": "texlive-fonts-recommended",
}
# What each template needs beyond that.
TEMPLATES = {
    "article": {"plainnat.bst": "texlive-latex-recommended"},
    "ieee": {"IEEEtran.cls": "texlive-publishers", "IEEEtranN.bst": "texlive-publishers"},
    "acm": {
        "acmart.cls": "texlive-publishers",
        "ACM-Reference-Format.bst": "texlive-publishers",
        "xstring.sty": "texlive-latex-extra",  # one of the many packages acmart loads
        "binhex.tex": "texlive-plain-generic",  # read by acmart's hyperxmp
        # acmart's fonts: without them it falls back to Computer Modern with a warning
        "libertine.sty": "texlive-fonts-extra",
        "zi4.sty": "texlive-fonts-extra",
        "newtxmath.sty": "texlive-fonts-extra",
    },
}
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "paper" / "templates"
# LaTeX's report of a line or box it could not fit: "Overfull \hbox (12.3pt too wide) in ..."
OVERFULL = re.compile(r"^Overfull \\[hv]box \((\d+(?:\.\d+)?)pt too (?:wide|high)\)", re.M)


def missing_packages(template: str) -> list[str]:
    """The Debian packages that ``template`` (or ``"all"`` templates) needs and whose files are not
    installed, sorted."""
    if template != "all" and template not in TEMPLATES:
        raise ValueError(f"paper.template: unknown template {template!r}; one of {sorted(TEMPLATES)}")
    needs = dict(BASE_NEEDS)
    for name in TEMPLATES if template == "all" else [template]:
        needs |= TEMPLATES[name]
    missing = set()
    for need, package in needs.items():
        if "." not in need:
            found = shutil.which(need) is not None
        else:
            kpsewhich = shutil.which("kpsewhich")
            found = kpsewhich is not None and bool(
                subprocess.run([kpsewhich, need], capture_output=True, text=True).stdout.strip()
            )
        if not found:
            missing.add(package)
    return sorted(missing)


def template_files(template: str, template_dir: str | Path = TEMPLATE_DIR) -> list[Path]:
    """``template``'s file in ``template_dir`` and the files of that folder it ``\\input``s (e.g.
    ``wide_floats.tex``): what a build in that template reads of the templates."""
    main = Path(template_dir) / f"{template}.tex"
    inputs = re.findall(r"^\\input\{([\w.-]+?)(?:\.tex)?\}", main.read_text(), re.M)
    return [main, *(Path(template_dir) / f"{name}.tex" for name in inputs)]


def overfull_boxes(latex_log: str) -> list[float]:
    """How far (pt) each overfull box that a LaTeX log reports sticks out."""
    return [float(points) for points in OVERFULL.findall(latex_log)]


def build_pdf(
    main_tex: str | Path,
    generated_dir: str | Path,
    out_pdf: str | Path,
    log_path: str | Path,
    template: str | Path = TEMPLATE_DIR / "article.tex",
    latex_log: str | Path | None = None,
    figure_dirs: list[str | Path] = (),
) -> None:
    """Run latexmk in a scratch folder and move the PDF into place only if the build succeeded.

    ``\\input`` and ``\\includegraphics`` find files in the source folder, in ``generated_dir`` and
    in ``figure_dirs`` (through TEXINPUTS), so the sources never reference the results layout.

    Args:
        main_tex: the document (``paper/main.tex`` or ``paper/supplement.tex``).
        generated_dir: the folder of the generated parts (tables, macros, figures).
        out_pdf: the PDF to write.
        log_path: where latexmk's output goes.
        template: the template's file, ``<name>.tex`` for a key of :data:`TEMPLATES`; it is
            staged as ``template.tex``, and the files it inputs are found beside it.
        latex_log: where to keep LaTeX's own log of the last pass (its overfull-box warnings).
        figure_dirs: further folders searched for inputs and figures.
    """
    template = Path(template).resolve()
    missing = missing_packages(template.stem)
    if missing:
        raise RuntimeError(
            f"paper.template {template.stem!r} needs TeX packages that are not installed; "
            f"install them with: apt-get install {' '.join(missing)} (or run make tex)"
        )
    main_tex = Path(main_tex).resolve()
    out_pdf = Path(out_pdf)
    with tempfile.TemporaryDirectory(prefix="latexmk-") as build:
        shutil.copyfile(template, Path(build) / "template.tex")
        folders = [build, template.parent, main_tex.parent, generated_dir, *figure_dirs]
        search = os.pathsep.join([*(f"{Path(f).resolve()}//" for f in folders), ""])
        env = {**os.environ, "TEXINPUTS": search, "BIBINPUTS": search}
        result = subprocess.run(
            [
                "latexmk",
                "-pdf",
                "-interaction=nonstopmode",
                "-halt-on-error",
                f"-outdir={build}",
                str(main_tex),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(log_path).write_text(result.stdout + result.stderr)
        tex_log = Path(build) / f"{main_tex.stem}.log"
        if latex_log is not None and tex_log.exists():
            shutil.copyfile(tex_log, latex_log)
        if result.returncode != 0:
            raise RuntimeError(f"latexmk failed (exit {result.returncode}); see {log_path}")
        staged = out_pdf.with_name(f".{out_pdf.name}.tmp")
        shutil.copyfile(Path(build) / f"{main_tex.stem}.pdf", staged)
        os.replace(staged, out_pdf)


def main(argv: list[str]) -> int:
    """``missing-packages CONFIG [TEMPLATE]``: print what ``make tex`` must install (may be nothing)
    for TEMPLATE (a template or ``all``), by default the config's ``paper.template``."""
    import yaml

    if len(argv) not in (2, 3) or argv[0] != "missing-packages":
        print("usage: python -m vitpeft.paper missing-packages CONFIG [TEMPLATE]", file=sys.stderr)
        return 2
    config = yaml.safe_load(Path(argv[1]).read_text())
    template = argv[2] if len(argv) == 3 and argv[2] else config.get("paper", {}).get("template", "article")
    try:
        print(" ".join(missing_packages(template)))
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
