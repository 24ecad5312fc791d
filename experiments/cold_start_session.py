"""A simulated cold-start session: does uncertainty-aware recommendation pay off for a new user?

Question
    A new user arrives with no ratings and rates one recommended movie at a
    time; after each rating the user is folded into the fitted posterior again
    (no refit) and the next movie is recommended. Does exploring by posterior
    uncertainty (Thompson sampling, UCB) reach good movies with less
    cumulative regret over 50 steps than greedily recommending the highest
    predictive mean?

Simulation
    Gibbs (BPMF) is fitted once on MovieLens-100K u1 train (``--tiny``: small
    synthetic data). Each simulated user picks one posterior draw ``s``
    uniformly and draws factors from that draw's user prior
    ``N(mu_L^s, (Lambda_L^s)^-1)`` (``FoldIn.sample_factors`` on an empty
    fold-in); the user's true mean ratings are that draw's model mean
    ``m^s + R^s . L`` for every movie. At each step the strategy picks one
    unseen movie with ``bayesmf.recommend`` on the folded-in user
    (``exclude_seen``); the user reveals a rating: the true mean plus
    ``N(0, 1/alpha^s)`` noise, rounded to the rating scale's grid and clipped
    to it (fold-in accepts on-scale ratings only), and is folded in again.
    Regret at a step is the best unseen movie's true mean minus the chosen
    movie's true mean; it is accumulated over the steps and averaged over
    ``--num-users`` simulated users (the same users for every strategy:
    common random numbers). Strategies: ``mean`` (greedy), ``thompson``,
    ``ucb`` (mean + beta x epistemic sd), and ``random`` as a reference.

Outputs (``--out``, default ``results/cold_start_session/``)
    ``regret.csv`` (every step of every user and strategy), ``metrics.csv``
    (strategy x step, bucket ``all``: mean and standard error over users of
    the cumulative regret), ``config.json``, ``summary.md``,
    ``cumulative_regret.png`` (mean +- 1 standard error band).

Run::

    python experiments/cold_start_session.py --data ../shared/data
    python experiments/cold_start_session.py --plot-only
    python experiments/cold_start_session.py --tiny --out /tmp/session
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as common
else:
    from experiments import _common as common

NAME = "cold_start_session"
STRATEGIES = ("mean", "thompson", "ucb", "random")
METRIC_COLUMNS = ("step", "num_users", "mean_regret", "mean_cum_regret", "se_cum_regret")


def build_parser():
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--num-users", type=int, default=None, help="simulated users (default 20; tiny 3)")
    p.add_argument("--steps", type=int, default=None, help="ratings per session (default 50; tiny 6)")
    p.add_argument("--strategies", type=common.str_list, default=list(STRATEGIES), help=",".join(STRATEGIES))
    p.add_argument("--beta", type=float, default=1.0, help="UCB width in epistemic sds")
    p.add_argument("--rank", type=int, default=None, help="rank D (default 10; tiny 2)")
    p.add_argument("--num-samples", type=int, default=None, help="Gibbs draws kept (default 100; tiny 20)")
    p.add_argument("--num-warmup", type=int, default=None, help="Gibbs burn-in sweeps (default 50; tiny 10)")
    return p


def resolve(args):
    for key, full, small in (("num_users", 20, 3), ("steps", 50, 6), ("rank", 10, 2), ("num_samples", 100, 20),
                             ("num_warmup", 50, 10)):
        if getattr(args, key) is None:
            setattr(args, key, small if args.tiny else full)
    bad = sorted(set(args.strategies) - set(STRATEGIES))
    if bad:
        raise SystemExit(f"unknown strategies {bad}; expected a subset of {STRATEGIES}")
    return args


def fit(args):
    from bayesmf import split

    if args.tiny:
        from bayesmf import synthetic

        train = synthetic.movielens_like(args.seed, num_users=60, num_items=40, num_ratings=900, rank=2,
                                         min_per_user=6).ratings
    else:
        train = split.make_split(common.ml100k_dir(args), "u1").train
    BayesMF = common.get_estimator()
    model = BayesMF(rank=args.rank, method="gibbs", num_samples=args.num_samples, num_warmup=args.num_warmup,
                    progress_bar=not args.no_progress)
    return model.fit(args.seed, train)


def simulated_user(posterior, j: int, seed: int):
    """(true mean rating of every movie (num_items,), noise sd) of simulated user j."""
    import jax

    from bayesmf.coldstart import fold_in_users

    empty = fold_in_users(posterior, [(np.zeros(0, np.int64), np.zeros(0))])
    s, factors = empty.sample_factors(jax.random.fold_in(jax.random.PRNGKey(seed), j), 0)
    flat = posterior.flat_draws()
    # The simulator's ground truth (not a model of ours): draw s's mean rating m_v + R_v . L for every movie.
    true = np.asarray(flat.item_offsets[s], np.float64) + np.asarray(flat.item_factors[s], np.float64) @ factors
    return true, float(1.0 / np.sqrt(flat.noise_precision[s]))


def on_scale(x: float, scale) -> float:
    """A simulated rating on the scale's grid (fold-in validates ratings against the scale)."""
    if scale.step:
        x = scale.low + scale.step * np.round((x - scale.low) / scale.step)
    return float(scale.clip(np.asarray([x]))[0])


def session(posterior, strategy: str, true: np.ndarray, noise_sd: float, j: int, args) -> list[dict]:
    import jax

    from bayesmf.coldstart import fold_in_users
    from bayesmf import recommend

    ids = posterior.item_vocab.ids
    rng = np.random.default_rng([args.seed, j, 1])  # rating noise: the same stream for every strategy
    pick_rng = np.random.default_rng([args.seed, j, 2])  # the random reference's choices
    key = jax.random.fold_in(jax.random.PRNGKey(args.seed + 1), j)
    noise = rng.normal(0.0, noise_sd, size=args.steps)
    seen = np.zeros(ids.shape[0], bool)
    given_items, given_ratings, rows, cum = [], [], [], 0.0
    for t in range(args.steps):
        if strategy == "random":
            idx = int(pick_rng.choice(np.flatnonzero(~seen)))
        else:
            fold = fold_in_users(posterior, [(np.asarray(given_items), np.asarray(given_ratings, np.float64))])
            key, sub = jax.random.split(key)
            rec = recommend(fold, 0, k=1, strategy=strategy, beta=args.beta, exclude_seen=True,
                            rng_key=sub if strategy == "thompson" else None)
            idx = int(posterior.item_vocab.index(rec["item"].to_numpy()[:1])[0])
        if seen[idx]:
            raise RuntimeError(f"{strategy} recommended an already rated movie {ids[idx]} (exclude_seen failed)")
        best = float(true[~seen].max())
        regret = best - float(true[idx])
        cum += regret
        rating = on_scale(true[idx] + noise[t], posterior.scale)
        rows.append(dict(strategy=strategy, user=j, step=t + 1, item=ids[idx].item() if hasattr(ids[idx], "item") else ids[idx],
                         true_mean=float(true[idx]), best_unseen=best, regret=regret, cum_regret=cum, rating=rating))
        seen[idx] = True
        given_items.append(ids[idx])
        given_ratings.append(rating)
    return rows


def summarize(raw: pd.DataFrame) -> pd.DataFrame:
    g = raw.groupby(["strategy", "step"])
    out = pd.DataFrame(dict(
        num_users=g["user"].nunique(),
        mean_regret=g["regret"].mean(),
        mean_cum_regret=g["cum_regret"].mean(),
        se_cum_regret=g["cum_regret"].std(ddof=1).fillna(0.0) / np.sqrt(g["user"].nunique()),
        mean_true_rating=g["true_mean"].mean(),
    )).reset_index()
    out.insert(0, "bucket", "all")
    return out


def draw(out: Path) -> Path:
    plt = common.plt()
    m = pd.read_csv(out / "metrics.csv")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for strategy in [s for s in STRATEGIES if s in set(m["strategy"])]:
        part = m[m["strategy"] == strategy].sort_values("step")
        c = common.color(strategy)
        ls = "--" if strategy == "random" else "-"
        ax1.plot(part["step"], part["mean_cum_regret"], color=c, ls=ls, label=strategy)
        ax1.fill_between(part["step"], part["mean_cum_regret"] - part["se_cum_regret"],
                         part["mean_cum_regret"] + part["se_cum_regret"], color=c, alpha=0.2)
        ax2.plot(part["step"], part["mean_regret"], color=c, ls=ls, label=strategy)
    n = int(m["num_users"].max())
    ax1.set_xlabel("step (ratings given by the new user)")
    ax1.set_ylabel("cumulative regret (stars of true mean rating)")
    ax1.set_title(f"cumulative regret ({n} users, mean ± 1 s.e.)")
    ax1.legend(loc="upper left")
    ax2.set_xlabel("step")
    ax2.set_ylabel("per-step regret (best unseen − chosen true mean)")
    ax2.set_title("per-step regret (mean over users)")
    ax2.legend(loc="upper right")
    return common.savefig(fig, out / "cumulative_regret.png")


def write_summary(out: Path, args, wall) -> Path:
    m = pd.read_csv(out / "metrics.csv")
    last = m[m["step"] == m["step"].max()].set_index("strategy")
    steps = sorted({min(10, int(m["step"].max())), int(m["step"].max())})
    table = pd.DataFrame({"strategy": last.index})
    for step in steps:
        at = m[m["step"] == step].set_index("strategy")
        table[f"cum. regret @ step {step}"] = [
            f"{at.loc[s, 'mean_cum_regret']:.2f} ± {at.loc[s, 'se_cum_regret']:.2f}" for s in last.index]
    table["mean true rating of picks"] = [f"{m[m['strategy'] == s]['mean_true_rating'].mean():.3f}" for s in last.index]
    best = last["mean_cum_regret"].idxmin()
    text = [f"# Simulated cold-start session ({'synthetic tiny data' if args.tiny else 'MovieLens-100K u1, Gibbs'})", "",
            f"Rank {args.rank}, {args.num_samples} posterior draws; {int(m['num_users'].max())} simulated users x "
            f"{int(m['step'].max())} steps; UCB beta = {args.beta}; seed {args.seed}. "
            + (f"Wall time {wall / 60:.1f} min." if wall else ""), "",
            "Cumulative regret (mean ± s.e. over users):", "", common.markdown_table(table), "",
            f"Lowest cumulative regret after {int(m['step'].max())} steps: `{best}`.", "",
            "Figure: `cumulative_regret.png`.", ""]
    path = out / "summary.md"
    path.write_text("\n".join(text))
    return path


def main(argv=None) -> int:
    args = resolve(build_parser().parse_args(argv))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.plot_only:
        draw(out)
        write_summary(out, args, None)
        return 0
    common.enable_compile_cache()
    for stale in ("regret.csv", "metrics.csv"):
        (out / stale).unlink(missing_ok=True)
    status = "ok"
    extra = {}
    try:
        with common.watchdog(args.timeout):
            posterior = fit(args)
            extra["fit_seconds"] = posterior.timing.get("fit_seconds")
            if args.steps > len(posterior.item_vocab):
                raise SystemExit(f"--steps {args.steps} exceeds the {len(posterior.item_vocab)} movies")
            plan = [(j, s) for j in range(args.num_users) for s in args.strategies]
            users = {}
            bar = common.progress(plan, desc="sessions", disable=args.no_progress)
            for j, strategy in bar:
                bar.set_postfix_str(f"user {j} {strategy}")
                if j not in users:
                    users[j] = simulated_user(posterior, j, args.seed)
                common.append_rows(out / "regret.csv", session(posterior, strategy, *users[j], j, args))
    except common.WatchdogTimeout as exc:
        status = f"timeout: {exc}"
        print(status, file=sys.stderr)
    finally:
        wall = time.perf_counter() - start
        common.finish_run(out, args, argv, start, status, extra)
    if (out / "regret.csv").exists():
        summarize(pd.read_csv(out / "regret.csv")).to_csv(out / "metrics.csv", index=False)
        draw(out)
        write_summary(out, args, wall)
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
