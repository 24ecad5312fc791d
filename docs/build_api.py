"""Build the API reference (HTML) from the docstrings with pdoc.

Run::

    pip install -e ".[docs]"
    python docs/build_api.py            # writes docs/api/ (not committed)
    python docs/build_api.py --out DIR

``tests/test_docs.py`` runs this build, so a docstring that pdoc cannot
render fails the test suite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Every public module, in reading order: the estimator and what it returns first.
MODULES = (
    "bayesmf",
    "bayesmf.estimator",
    "bayesmf.posterior",
    "bayesmf.predictive",
    "bayesmf.coldstart",
    "bayesmf.ranking",
    "bayesmf.storage",
    "bayesmf.diagnostics",
    "bayesmf.metrics",
    "bayesmf.data",
    "bayesmf.split",
    "bayesmf.crossval",
    "bayesmf.model",
    "bayesmf.engines",
    "bayesmf.synthetic",
    "bayesmf.choices",
    "bayesmf.cli",
)


def build(out: Path) -> list[Path]:
    """Render the reference into ``out``; return the HTML files written."""
    import importlib.util

    import pdoc

    modules = [m for m in MODULES if importlib.util.find_spec(m) is not None]
    pdoc.render.configure(docformat="numpy", show_source=False, search=True)
    pdoc.pdoc(*modules, output_directory=out)
    return sorted(out.rglob("*.html"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "api")
    args = parser.parse_args(argv)
    pages = build(args.out)
    print(f"wrote {len(pages)} pages to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
