"""Build ``paper.pdf`` with latexmk from the LaTeX sources and the generated parts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

TEX_PACKAGES = "texlive-latex-recommended texlive-fonts-recommended latexmk"


def build_pdf(
    main_tex: str | Path, generated_dir: str | Path, out_pdf: str | Path, log_path: str | Path
) -> None:
    """Run latexmk in a scratch folder and move the PDF into place only if the build succeeded.

    ``\\input`` and ``\\includegraphics`` find files in the source folder and in ``generated_dir``
    (through TEXINPUTS), so the sources never reference the results layout.
    """
    if shutil.which("latexmk") is None:
        raise RuntimeError(f"latexmk is not installed; install it with: apt-get install {TEX_PACKAGES}")
    main_tex = Path(main_tex).resolve()
    search = os.pathsep.join([f"{main_tex.parent}//", f"{Path(generated_dir).resolve()}//", ""])
    env = {**os.environ, "TEXINPUTS": search, "BIBINPUTS": search}
    out_pdf = Path(out_pdf)
    with tempfile.TemporaryDirectory(prefix="latexmk-") as build:
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
        if result.returncode != 0:
            raise RuntimeError(f"latexmk failed (exit {result.returncode}); see {log_path}")
        staged = out_pdf.with_name(f".{out_pdf.name}.tmp")
        shutil.copyfile(Path(build) / f"{main_tex.stem}.pdf", staged)
        os.replace(staged, out_pdf)
