"""The paper's templates, the TeX they need, LaTeX's overfull-box report and the supplement's
per-seed curves (the builds themselves are in test_end_to_end.py)."""

import copy
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from vitpeft import config as study_config
from vitpeft import paper
from vitpeft.analysis.seed_curves import seed_curves
from vitpeft.analysis.style import method_label, method_sort_key
from vitpeft.config import ConfigError

SCHEMA = yaml.safe_load((REPO / "vitpeft" / "schemas" / "config.schema.yaml").read_text())


def test_every_template_of_the_schema_has_its_file_and_its_tex_needs():
    names = SCHEMA["properties"]["paper"]["properties"]["template"]["enum"]
    assert sorted(names) == sorted(paper.TEMPLATES)
    for name in names:
        files = paper.template_files(name)
        assert files[0] == REPO / "paper" / "templates" / f"{name}.tex"
        assert all(f.exists() for f in files), files
    # what a template reads is one of the paper rules' inputs: the two-column ones share the floats
    assert [f.name for f in paper.template_files("ieee")] == [
        "ieee.tex",
        "line_breaks.tex",
        "wide_floats.tex",
    ]
    assert [f.name for f in paper.template_files("article")] == ["article.tex", "line_breaks.tex"]


def test_the_template_defaults_to_article_and_an_unknown_one_is_refused_naming_it(demo_config):
    assert demo_config["paper"] == {"template": "article"}
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["paper"] = {"template": "neurips"}
    with pytest.raises(ConfigError, match="'neurips' is not one of") as refused:
        study_config.load(copy.deepcopy(config))
    assert "['paper']['template']" in str(refused.value)
    with pytest.raises(ValueError, match="paper.template: unknown template 'neurips'"):
        paper.missing_packages("neurips")


def test_only_what_the_setup_reads_is_part_of_what_the_tables_are_written_from(demo_config):
    """The tables rule's param: an edit elsewhere (the template, another study, a model or dataset
    the study does not use, the scheduling) neither reruns the tables nor prints its reason."""
    other = copy.deepcopy(demo_config)
    other["paper"]["template"] = "acm"
    other["studies"]["full"]["seeds"] = [7]
    other["models"]["deit_tiny"] = {"img_size": 32, "backbone": {"source": "timm"}}
    other["datasets"]["cifar10"]["val_fraction"] = 0.5
    other["baselines"]["max_train_images"] = 5
    other["threads"] = 2
    assert study_config.results_view(other) == study_config.results_view(demo_config)
    view = study_config.results_view(demo_config)
    assert set(view["models"]) == {"vit_w64_d4"} and set(view["datasets"]) == {"digits", "glyphs"}
    other["train"]["epochs"] = 31
    assert study_config.results_view(other) != view


def test_missing_tex_is_named_by_its_debian_package(monkeypatch):
    monkeypatch.setenv("PATH", "")  # neither latexmk nor kpsewhich can be found
    assert paper.missing_packages("article") == [
        "latexmk",
        "poppler-utils",
        "texlive-fonts-recommended",
        "texlive-latex-base",
        "texlive-latex-recommended",
    ]
    acm = {"texlive-publishers", "texlive-latex-extra", "texlive-plain-generic", "texlive-fonts-extra"}
    assert acm <= set(paper.missing_packages("acm"))
    assert not acm - {"texlive-publishers"} & set(paper.missing_packages("ieee"))
    assert set(paper.missing_packages("all")) == set(paper.missing_packages("acm"))


def test_overfull_boxes_are_read_from_a_latex_log():
    log = (
        "Overfull \\hbox (12.34pt too wide) in paragraph at lines 3--4\n"
        "Underfull \\hbox (badness 10000) in paragraph at lines 5--6\n"
        "Overfull \\vbox (0.5pt too high) has occurred while \\output is active\n"
        "Overfull \\hbox (3pt too wide) detected at line 9\n"
    )
    assert paper.overfull_boxes(log) == [12.34, 0.5, 3.0]
    assert paper.overfull_boxes("no boxes here") == []


def test_seed_curves_draw_one_panel_per_method_and_one_line_per_seed(tmp_path):
    methods, seeds, epochs = ["full", "lora_r8", "qlora4_r8", "linear"], [0, 1, 2], 5
    rows, curves = [], {}
    for method in methods:
        for seed in seeds:
            run_dir = f"runs/digits/{method}/vit/seed{seed}"
            rows.append(
                {"dataset": "digits", "model": "vit", "method": method, "seed": seed, "run_dir": run_dir}
            )
            curves[run_dir] = {
                "val_top1": list(np.linspace(50, 90, epochs) + seed),
                "train_loss": [1.0] * epochs,
            }
    fig = seed_curves(pd.DataFrame(rows), curves, "val_top1", None)
    drawn = [ax for ax in fig.axes if ax.lines]
    assert len(drawn) == len(methods)  # a 2 x 3 grid: the two empty panels are hidden
    assert sum(not ax.axison for ax in fig.axes) == 2
    for ax in drawn:
        assert [line.get_label() for line in ax.lines] == [f"seed {s}" for s in seeds]
        assert list(ax.lines[2].get_ydata()) == pytest.approx(list(np.linspace(50, 90, epochs) + 2))
    # in the paper's method order, named as in the paper
    assert [ax.get_title() for ax in drawn] == [method_label(m) for m in sorted(methods, key=method_sort_key)]


def test_every_float_of_the_paper_may_go_to_a_float_page():
    """A float placed [t] only that is taller than a page's top area (Figure 1's two plots, the
    longer tables) waits for the end of the document, and every later float of its kind waits
    behind it: the demo's figures all landed on pages 9-11 while the text citing them was on 4-7."""
    sources = [REPO / "paper" / "sections" / "results.tex", REPO / "paper" / "main.tex"]
    sources += sorted((REPO / "vitpeft" / "templates").glob("*.tex.j2"))
    floats = [
        (source.name, match[1], match[2])
        for source in sources
        for match in re.finditer(r"\\begin\{(figure|table)\}\[(\w*)\]", source.read_text())
    ]
    assert len(floats) >= 12, floats  # the results section's 5 figures and the generated tables
    assert [f for f in floats if "p" not in f[2]] == []


@pytest.mark.parametrize("template", ["article", "ieee", "acm"])
def test_an_anonymous_paper_names_no_author_in_any_template(tmp_path, template):
    """paper.anonymous: for double-blind review the PDF holds no author name; otherwise it does."""
    import subprocess

    main = tmp_path / "main.tex"
    main.write_text(
        "\\input{template}\n\\title{A study}\n\\begin{document}\n\\PaperFrontMatter{An abstract.}\n"
        "Text.\n\\end{document}\n"
    )
    authors = r"Jane Q. Researcher and Ada Lovelace-Byron"
    for anonymous in (False, True):
        pdf = tmp_path / f"{anonymous}.pdf"
        paper.build_pdf(
            main,
            tmp_path,
            pdf,
            tmp_path / "latexmk.log",
            template=paper.TEMPLATE_DIR / f"{template}.tex",
            authors=authors,
            anonymous=anonymous,
        )
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
        named = [name for name in ("Researcher", "Lovelace") if name in text]
        assert named == ([] if anonymous else ["Researcher", "Lovelace"]), (template, anonymous)


def test_the_bibliography_covers_the_visual_peft_work_and_every_entry_is_cited():
    """VPT, SSF, AdaptFormer, VTAB and NOAH are in refs.bib, and no entry sits there uncited."""
    bib = (REPO / "paper" / "refs.bib").read_text()
    keys = re.findall(r"^@\w+\{([^,]+),", bib, re.M)
    sources = [*(REPO / "paper").rglob("*.tex"), *(REPO / "vitpeft" / "templates").glob("*.j2")]
    sources += [REPO / "vitpeft" / "analysis" / name for name in ("tables.py", "published.py")]
    text = "\n".join(path.read_text() for path in sources)
    cited = {key.strip() for group in re.findall(r"\\cite\w*\{([^}]*)\}", text) for key in group.split(",")}
    cited |= set(re.findall(r'"(\w+\d{4}\w*)"', text))  # keys the generators insert (DATASET_CITATIONS, ...)
    for key in ("jia2022vpt", "lian2022ssf", "chen2022adaptformer", "zhai2019vtab", "zhang2022noah"):
        assert key in keys and key in cited, key
    assert sorted(set(keys) - cited) == []
