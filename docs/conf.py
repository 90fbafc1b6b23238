"""Sphinx configuration for sdekit.

The API reference is generated at build time: every public module of the ``sdekit`` package found by
``pkgutil`` gets a page under ``gen_modules/`` (git-ignored), so a new module appears without anyone
editing a list. The example gallery executes only ``examples/plot_*.py``.
"""

import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
# examples run headless during the build, single-threaded: their tensors are small, and on a shared
# machine extra torch threads oversubscribe the cores and slow them down several times over
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sdekit

project = "sdekit"
author = "sdekit developers"
copyright = "2026, sdekit developers"
release = sdekit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.py", "auto_examples/*.ipynb"]
html_theme = "alabaster"
html_static_path = []

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# ``Attributes:`` as :ivar: fields: no second description next to autodoc's own (dataclass fields)
napoleon_use_ivar = True

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    # only plot_*.py execute; demo and train_* scripts are rendered but not run
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "image_scrapers": ("matplotlib",),
}


def _public_modules(package) -> list[str]:
    """Dotted names of ``package`` and every submodule whose name has no leading underscore."""
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _top_level_table() -> list[str]:
    """Links from each name in ``sdekit.__all__`` to the page where it is documented."""
    lines = ["Exported at the top level (``import sdekit``):", ""]
    for name in sdekit.__all__:
        obj = getattr(sdekit, name)
        summary = (inspect.getdoc(obj) or "").split("\n")[0]
        if inspect.ismodule(obj):
            lines.append(f"* :py:mod:`sdekit.{name} <{obj.__name__}>` — {summary}")
            continue
        target = f"{obj.__module__}.{obj.__qualname__}"
        lines.append(f"* :py:obj:`sdekit.{name} <{target}>` — {summary}")
    return lines + [""]


def _write_api_pages(app) -> None:
    """Write one page per public module to ``gen_modules/``, removing pages of vanished modules."""
    out = DOCS / "gen_modules"
    out.mkdir(exist_ok=True)
    wanted = {}
    for name in _public_modules(sdekit):
        title = f"``{name}``"
        body = [title, "=" * len(title), ""]
        module = importlib.import_module(name)
        if name == "sdekit":
            body += [".. automodule:: sdekit", "   :no-members:", "", *_top_level_table()]
        elif hasattr(module, "__path__"):
            # a subpackage: its docstring here, its modules on their own pages
            body += [f".. automodule:: {name}", "   :no-members:", ""]
        else:
            body += [f".. automodule:: {name}", ""]
        wanted[f"{name}.rst"] = "\n".join(body)
    for stale in out.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    for fname, text in wanted.items():
        path = out / fname
        # rewrite only on change so incremental builds stay incremental
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def setup(app):
    app.connect("builder-inited", _write_api_pages)
