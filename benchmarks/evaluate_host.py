"""The host's share of a warm ``Posterior.evaluate``: where its Python and NumPy time goes.

Question (issue 18, item 2): on a GPU the scoring itself is fast, so a warm
``evaluate`` at ML-10M shape (1M test ratings) is mostly host work: in the
eighth H200 run (``gpu_check.py --plan eighth``) 1.5 s, of which the star
scores took 0.58 s and copying each chunk's scores into the test set's
order 0.42 s. This benchmark measures that host work on any machine by
keeping the device part short: few draws (``--draws``, default 4), ML-10M
shape, 1M known test pairs and 1,000 cold ones on the 1..5 star scale
(``make_posterior`` / ``make_test`` of ``evaluate_scale.py``). It times two
warm calls and profiles a third with cProfile; ``host_seconds`` sums the
own time of every function but the waits on the device (``numpy.asarray``
of device arrays and ``block_until_ready``), and ``top`` lists the
functions by own time.

Run::

    python benchmarks/evaluate_host.py                  # ~30 s
    python benchmarks/evaluate_host.py --tiny           # seconds, for the smoke test

Writes ``results/benchmarks/evaluate_host.json`` (override with ``--out``).
To compare trees, run it with each tree's ``bayesmf`` first on ``PYTHONPATH``
(from outside the checkout) and different ``--out`` files.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from evaluate_scale import make_posterior, make_test  # noqa: E402  (this benchmark's sibling)

# Own time of these is the host waiting for the device, not host work.
WAITS = ("<built-in method numpy.asarray>", "block_until_ready")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--num-test", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a small model, for the smoke test")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "benchmarks" / "evaluate_host.json"))
    args = parser.parse_args(argv)

    import bayesmf

    shape = dict(num_users=69_878, num_items=10_677, rank=32)
    num_test, num_cold = args.num_test, 1000
    if args.tiny:
        shape, num_test, num_cold = dict(num_users=300, num_items=200, rank=4), 5000, 20
    posterior = make_posterior(args.seed, num_draws=args.draws, **shape)
    test = make_test(args.seed, shape["num_users"], shape["num_items"], num_test, num_cold)
    calls = []
    for _ in range(3):  # the first compiles
        start = time.perf_counter()
        posterior.evaluate(test, expect_cold=True)
        calls.append(round(time.perf_counter() - start, 3))
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    posterior.evaluate(test, expect_cold=True)
    profile.disable()
    profiled = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    rows = sorted(((f"{name} ({Path(file).name}:{line})", tottime) for (file, line, name), (_, _, tottime, _, _)
                   in stats.items()), key=lambda r: -r[1])
    waits = sum(t for label, t in rows if label.startswith(WAITS))
    result = dict(
        question="the host's share of a warm evaluate (few draws, so that the device part is short, as on a GPU)",
        command="python benchmarks/evaluate_host.py" + (" --tiny" if args.tiny else ""),
        bayesmf_file=bayesmf.__file__,
        shape=dict(shape, num_draws=args.draws, num_test=num_test, num_cold=num_cold),
        call_seconds=calls[1:], first_call_seconds=calls[0], profiled_seconds=round(profiled, 3),
        host_seconds=round(sum(t for _, t in rows) - waits, 3), device_wait_seconds=round(waits, 3),
        top=[[label, round(t, 4)] for label, t in rows[:15]],
        machine=dict(cpus=os.cpu_count(), platform=platform.platform(), python=platform.python_version()),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("call_seconds", "host_seconds", "device_wait_seconds")}))
    return result


if __name__ == "__main__":
    main()
