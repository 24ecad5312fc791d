"""Every command the README shows runs, so the README cannot drift from the code again.

(``bayesmf demo --data ml-100k`` once failed with ``unknown split None``.)

- Each ``bayesmf ...`` line of the README, in its code blocks and in inline
  code, runs through ``bayesmf.cli.main`` on a small data set written in the
  ml-100k layout (placeholders such as ``DIR``, ``FILE``, ``U`` filled in,
  ``[optional]`` parts taken, the first of ``a|b`` alternatives), with flags
  appended that make the fits small (later flags win in argparse).
- Each Python block runs in a fresh namespace with MovieLens-100K from
  ``BAYESMF_DATA`` (skipped with a reason where it is absent), with sample
  counts and folds scaled down by substitution.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from bayesmf import cli, synthetic

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()

FAST = ["--rank", "2", "--num-samples", "10", "--num-warmup", "5", "--no-progress", "--no-tune"]
FITTING = {"demo", "evaluate", "fit"}


def code_blocks(language: str) -> list[str]:
    """The fenced blocks of one language (``""`` for plain fences), in order."""
    blocks, current, lang = [], None, None
    for line in TEXT.splitlines():
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang == language:
                    blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def cli_lines() -> list[str]:
    lines = []
    for block in code_blocks(""):
        lines += [line.strip() for line in block.splitlines() if line.strip().startswith("bayesmf ")]
    lines += re.findall(r"`(bayesmf [^`]+)`", TEXT)
    return list(dict.fromkeys(line for line in lines if "..." not in line and "COMMAND" not in line))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small data set in the ml-100k layout (u.data, u1.base/u1.test, u.item), a ';' file, a new user's ratings
    and pairs to predict."""
    root = tmp_path_factory.mktemp("readme")
    sim = synthetic.movielens_like(5, num_users=60, num_items=45, num_ratings=1500, rank=2, min_per_user=10)
    frame = sim.ratings.to_dataframe().astype({"rating": int})
    frame["timestamp"] = np.arange(len(frame)) + 880_000_000
    rows = frame[["user", "item", "rating", "timestamp"]]
    small = root / "small"
    small.mkdir()
    rows.to_csv(small / "u.data", sep="\t", header=False, index=False)
    test = rows.sample(frac=0.2, random_state=0)
    rows.drop(test.index).to_csv(small / "u1.base", sep="\t", header=False, index=False)
    test.to_csv(small / "u1.test", sep="\t", header=False, index=False)
    items = np.unique(rows["item"])
    (small / "u.item").write_text("".join(f"{i}|Movie {i} (1999)|01-Jan-1999||http://x|0|1\n" for i in items),
                                  encoding="latin-1")
    shop = rows.rename(columns={"user": "customer", "item": "product", "rating": "stars"})[["customer", "product", "stars"]]
    shop.to_csv(root / "shop.csv", sep=";", index=False)
    (root / "new_user.csv").write_text("item,rating\n" + "".join(f"{i},{r}\n" for i, r in zip(items[:3], (5, 4, 1))))
    (root / "pairs.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in zip(rows["user"][:4], items[:4])))
    return dict(root=root, small=small, user=str(rows["user"].iloc[0]), item=str(items[0]))


def concrete(line: str, ws: dict) -> list[str]:
    """A README command line as argv for cli.main."""
    line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)  # [--json], [--split u1], [--data ml-100k] ...
    line = re.sub(r"([\w-]+)(\|[\w-]+)+", lambda m: m.group(1), line)  # gibbs|map|nuts|svi -> gibbs
    argv = shlex.split(line)[1:]
    files = iter([ws["small"] / "u1.base", ws["small"] / "u1.test"])
    out = []
    for token in argv:
        if token in ("DIR", "DIR_OR_NAME", "ml-100k"):
            token = str(ws["small"])
        elif token == "FILE":
            token = str(ws["root"] / "shop.csv") if "--sep" in argv else str(next(files))
        elif token in ("model.nc", "updated.nc", "serve.nc", "run.ckpt.npz"):
            token = str(ws["root"] / token)
        elif token == "U":
            token = ws["user"]
        elif token == "I":
            token = ws["item"]
        elif token in ("new_user.csv", "pairs.csv", "predictions.csv", "top10.csv"):
            token = str(ws["root"] / token)
        out.append(token)
    if out and out[0] in FITTING:
        out += FAST
        if "--keep-draws" in out:  # a README's draws kept, scaled down with FAST's draws
            out[out.index("--keep-draws") + 1] = "4"
    return out


LINES = cli_lines()


def test_the_readme_shows_commands():
    assert any(line.startswith("bayesmf evaluate") for line in LINES) and "bayesmf demo --data ml-100k" in LINES


@pytest.mark.parametrize("line", LINES)
def test_readme_command_runs(line, workspace):
    argv = concrete(line, workspace)
    if argv[0] in ("predict", "recommend", "similar") and not (workspace["root"] / "model.nc").exists():
        assert cli.main(concrete("bayesmf fit --data DIR --out model.nc", workspace)) == 0
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # --version, --help
            code = exc.code
    assert code == 0, f"{line!r} -> {argv}: exit {code}\n{err.getvalue()}"
    assert out.getvalue().strip(), f"{line!r} printed nothing"


def scaled_down(code: str) -> str:
    code = re.sub(r"num_samples=\d+", "num_samples=10", code)
    code = re.sub(r"num_warmup=\d+", "num_warmup=5", code)
    code = re.sub(r"folds=\d+", "folds=2", code)
    code = re.sub(r"rank=\d+", "rank=2", code)
    return code.replace('method="map"', 'method="map", tune=False')


@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_readme_python_block_runs(index, ml100k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESMF_DATA", str(ml100k_dir.parent.resolve()))
    monkeypatch.chdir(tmp_path)
    code = scaled_down(code_blocks("python")[index])
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
