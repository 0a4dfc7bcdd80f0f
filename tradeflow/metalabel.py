"""The meta-labelling reviewer: how likely is the primary's call to be right over the horizon?

The primary (the RL agent, or whichever decision rule was chosen on earlier folds) proposes a side;
this secondary model estimates P(the close rises over the next ``horizon`` bars) from features the
evidence already holds (trend against the 20/50-bar averages, RSI, volatility, momentum) and the
primary's proposed side, so P(call right) is ``p`` for a long call and ``1 - p`` for an exit.

It is fitted only on *earlier* calls whose horizon has closed (``fit`` is given their labels), in
time order: a logistic regression (scikit-learn) on the older 70%, then a calibration of its scores on
the newer 30% (held out from the regression), so the stated confidence *is* a calibrated probability.

Which calibration is itself chosen on earlier calls, never on what evaluate scores: the held-out part
is split in time, each candidate is fitted on its older half and scored (Brier) on its newer half, and
the winner is refitted on the whole held-out part. The candidates: ``base_rate`` (state the prior: the
regression showed no skill it could earn), ``platt`` (a two-parameter sigmoid) and ``isotonic`` (a
monotone step map); ties go to the simpler. The base rate is a candidate because a forecast that cannot
beat it on earlier calls only adds noise to the stated probability, and noise is what an expected
calibration error measures. Whatever is chosen is then shrunk towards the prior by the number of
*independent* held-out calls (overlapping ``horizon``-bar labels: ``held_out / horizon``).

The prior is the symbol's base rate of up-moves, shrunk towards 0.5 by its own independent count; with a
universe (``evaluate`` on several symbols: :class:`UniverseRate`), it is shrunk instead towards the
universe's base rate over the same earlier bars, as far as the symbols' base rates differ by more than
their sampling noise (an empirical-Bayes, method-of-moments estimate): one stock's year of overlapping
monthly windows says little about its drift, twenty-nine stocks over the same year say more.

The fitted reviewer is plain JSON (coefficients, the calibration's parameters, the threshold): no
pickle to load, the same numbers on every machine, and ``probability_up`` needs only numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

#: the inputs, in order; every one can be computed from the bars up to the decision close
FEATURES: tuple[str, ...] = ("trend_20", "trend_50", "rsi_14", "volatility", "momentum_20", "momentum_63",
                             "proposed_long")
#: fewer closed calls than this: no reviewer (the base rate is all that can be said)
MIN_SAMPLES = 60
THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7)
HELD_OUT = 0.3
#: inverse L2 strength of both regressions: overlapping daily labels are far fewer independent calls
#: than rows, so the fit is kept close to the base rate
REGULARISATION = 0.1
#: how far a probability may go towards 0 or 1
PROBABILITY_FLOOR = 0.05
#: the calibrated probability is shrunk towards a prior as if this many independent calls said it:
#: daily labels over a ``horizon``-bar window overlap, so only ``held_out / horizon`` of the held-out
#: calls are independent. The prior is the base rate of every earlier call, itself shrunk towards 0.5
#: by its own independent count (``samples / horizon``): one year's base rate of overlapping windows
#: is noise (0.4-0.9 across the DJ30), eight years' is not. (Stating the raw base rate, or shrinking
#: towards 0.5 alone, was measured too: see docs/evaluation.md.)
PRIOR_CALLS = 8.0
#: the calibrations ``fit`` chooses among on earlier calls, simplest first (a tie goes to the first)
CALIBRATIONS: tuple[str, ...] = ("base_rate", "platt", "isotonic")


@dataclass(frozen=True)
class UniverseRate:
    """The universe's earlier record at a decision date: the base rate of up-moves over the horizon of
    every symbol's calls whose horizon had closed by then, and how far the symbols' own base rates
    differ beyond sampling noise (``between_variance``, method of moments; 0 = no demonstrated
    difference: every symbol is shrunk all the way to the universe's rate)."""

    rate: float
    between_variance: float
    symbols: int
    #: independent calls behind ``rate``: distinct closed horizons in time (the symbols move together,
    #: so they are not counted as independent of each other)
    independent_calls: float


def universe_rate(labels: Sequence[np.ndarray], *, horizon: int) -> UniverseRate | None:
    """``labels``: each symbol's closed up/down labels (1/0) up to the decision date. ``None`` with
    fewer than two symbols holding a label (a universe of one is the symbol's own base rate)."""
    rates, noise, longest = [], [], 0
    for up in labels:
        up = np.asarray(up, dtype=np.float64)
        if len(up) == 0:
            continue
        r, independent = float(up.mean()), max(1.0, len(up) / max(1, horizon))
        rates.append(r)
        noise.append(r * (1 - r) / independent)
        longest = max(longest, len(up))
    if len(rates) < 2:
        return None
    between = max(0.0, float(np.var(rates, ddof=1)) - float(np.mean(noise)))
    return UniverseRate(rate=float(np.mean(rates)), between_variance=between, symbols=len(rates),
                        independent_calls=longest / max(1, horizon))


class UniverseLabels:
    """Every symbol's up/down labels over the horizon, to ask for the universe's record at a date: only
    labels whose horizon closed on or before that date are read (``rate_at``), so a symbol's bars after
    it change nothing there."""

    def __init__(self, closes: Mapping[str, tuple[np.ndarray, np.ndarray]], *, horizon: int):
        self.horizon = horizon
        self._labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for symbol, (dates, close) in closes.items():
            close = np.asarray(close, dtype=np.float64)
            if len(close) <= horizon:
                continue
            closed_on = np.asarray(dates)[horizon:]  # the date each label's horizon closes
            self._labels[symbol] = (closed_on, (close[horizon:] > close[:-horizon]).astype(np.float64))

    def rate_at(self, date) -> UniverseRate | None:
        date = np.datetime64(date)
        labels = [up[: int(np.searchsorted(closed_on, date, side="right"))] for closed_on, up in self._labels.values()]
        return universe_rate(labels, horizon=self.horizon)


def prior_rate(up: np.ndarray, *, horizon: int, universe: UniverseRate | None = None) -> float:
    """The probability stated when nothing else is known: the symbol's base rate, shrunk towards 0.5
    by its independent count (``PRIOR_CALLS`` pseudo-calls), or, with a universe, towards the
    universe's rate (itself shrunk towards 0.5 the same way) by the empirical-Bayes weight
    ``between / (between + the symbol's sampling variance)``."""
    up = np.asarray(up, dtype=np.float64)
    every = len(up) / max(1, horizon)
    own = float(up.mean()) if len(up) else 0.5
    if universe is None:
        return (every * own + PRIOR_CALLS * 0.5) / (every + PRIOR_CALLS)
    centre = (universe.independent_calls * universe.rate + PRIOR_CALLS * 0.5) / (universe.independent_calls + PRIOR_CALLS)
    noise = own * (1 - own) / max(1.0, every)
    weight = universe.between_variance / (universe.between_variance + noise) if universe.between_variance > 0 else 0.0
    return weight * own + (1 - weight) * centre


def feature_frame(close: pd.Series | np.ndarray, periods_per_year: float = 252.0) -> pd.DataFrame:
    """The market features at every bar, from closes up to that bar only (rolling windows look back)."""
    c = pd.Series(np.asarray(close, dtype=np.float64))
    ret = c.pct_change()
    delta = c.diff()
    gain = delta.clip(lower=0).rolling(14, min_periods=14).mean()
    loss = (-delta.clip(upper=0)).rolling(14, min_periods=14).mean()
    rsi = 100 - 100 / (1 + gain / loss.replace(0, np.nan))
    return pd.DataFrame({
        "trend_20": c / c.rolling(20, min_periods=20).mean() - 1,
        "trend_50": c / c.rolling(50, min_periods=50).mean() - 1,
        "rsi_14": rsi.fillna(50.0) / 100.0,
        "volatility": ret.rolling(20, min_periods=20).std() * math.sqrt(periods_per_year),
        "momentum_20": c / c.shift(20) - 1,
        "momentum_63": c / c.shift(63) - 1,
    })


@dataclass(frozen=True)
class MetaLabeller:
    """A fitted reviewer: standardise, logistic score, the calibration chosen on earlier calls
    (``base_rate``, ``platt`` or ``isotonic``) shrunk by the number of independent held-out calls,
    acting threshold."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    platt_a: float
    platt_b: float
    threshold: float
    samples: int
    held_out: int
    base_rate: float
    held_out_brier: float
    independent_calls: float
    #: whether the regression beat the older calls' base rate on the held-out calls (shown, not used)
    skilled: bool
    #: what the probability is shrunk towards (the shrunk base rate)
    prior: float
    #: the calibration chosen on earlier calls (a reviewer.json from before the choice existed: platt)
    calibration: str = "platt"
    #: the isotonic map's knots (score -> probability), when ``calibration == "isotonic"``
    iso_x: tuple[float, ...] = ()
    iso_y: tuple[float, ...] = ()
    #: each candidate's Brier on the newer half of the held-out calls (fitted on the older half)
    selection_brier: dict[str, float] | None = None
    #: where the prior came from: ``symbol`` (its own base rate) or ``universe`` (``UniverseRate``)
    prior_source: str = "symbol"

    def score(self, inputs: Mapping[str, float]) -> float:
        x = np.array([float(inputs[f]) for f in self.features])
        z = (x - np.array(self.mean)) / np.array(self.scale)
        return float(z @ np.array(self.coef) + self.intercept)

    def probability_up(self, inputs: Mapping[str, float]) -> float:
        if self.calibration == "base_rate":
            p = self.prior
        else:
            p = _calibrated(self.calibration, np.array([self.score(inputs)]), self.platt_a, self.platt_b,
                            self.iso_x, self.iso_y)[0]
            n = self.independent_calls
            p = (n * p + PRIOR_CALLS * self.prior) / (n + PRIOR_CALLS)
        return min(1 - PROBABILITY_FLOOR, max(PROBABILITY_FLOOR, float(p)))

    def probability_right(self, inputs: Mapping[str, float], side: str) -> float:
        """P(call right): a long call is right when the close rises over the horizon, an exit when not."""
        p = self.probability_up(inputs)
        return p if side == "BUY" else 1.0 - p

    def to_dict(self) -> dict:
        return {"kind": "meta_label_logistic", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> MetaLabeller:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for k in ("features", "mean", "scale", "coef", "iso_x", "iso_y"):
            if k in fields:
                fields[k] = tuple(fields[k])
        return cls(**fields)


def _calibrated(kind: str, scores: np.ndarray, a: float, b: float, iso_x: Sequence[float],
                iso_y: Sequence[float]) -> np.ndarray:
    if kind == "isotonic":
        return np.interp(scores, np.asarray(iso_x, dtype=np.float64), np.asarray(iso_y, dtype=np.float64))
    return 1.0 / (1.0 + np.exp(-(a * scores + b)))


def _fit_calibration(kind: str, scores: np.ndarray, up: np.ndarray, seed: int) -> tuple[float, float, tuple, tuple]:
    """``(platt_a, platt_b, iso_x, iso_y)`` of ``kind`` fitted on these held-out scores."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if kind == "platt":
        platt = LogisticRegression(C=REGULARISATION, random_state=seed, max_iter=500).fit(scores[:, None], up)
        return float(platt.coef_[0][0]), float(platt.intercept_[0]), (), ()
    if kind == "isotonic":
        iso = IsotonicRegression(y_min=PROBABILITY_FLOOR, y_max=1 - PROBABILITY_FLOOR, out_of_bounds="clip").fit(scores, up)
        return 0.0, 0.0, tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_))
    return 0.0, 0.0, (), ()


def _sharpe(returns: np.ndarray) -> float:
    sd = returns.std()
    return float(returns.mean() / sd) if sd > 0 else 0.0


def fit(X: pd.DataFrame, up: np.ndarray, forward: np.ndarray, *, horizon: int, seed: int = 0,
        universe: UniverseRate | None = None) -> MetaLabeller | None:
    """Fit on earlier closed calls, in time order (rows of ``X`` oldest first).

    ``up``: 1 where the close rose over the horizon; ``forward``: that horizon's return (to choose
    the threshold by what acting would have earned on the held-out part); ``universe``: the
    universe's earlier record for the prior (``None``: the symbol's own). ``None`` when there are
    too few calls or only one outcome (nothing to learn)."""
    from sklearn.linear_model import LogisticRegression

    X = X[list(FEATURES)].to_numpy(np.float64)
    ok = np.all(np.isfinite(X), axis=1) & np.isfinite(forward)
    X, up, forward = X[ok], np.asarray(up, dtype=np.int64)[ok], np.asarray(forward)[ok]
    n = len(X)
    cut = int(n * (1 - HELD_OUT))
    if n < MIN_SAMPLES or len(set(up[:cut])) < 2 or len(set(up[cut:])) < 2:
        return None
    mean, scale = X[:cut].mean(axis=0), X[:cut].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (X - mean) / scale
    lr = LogisticRegression(C=REGULARISATION, random_state=seed, max_iter=500).fit(z[:cut], up[:cut])
    scores = z @ lr.coef_[0] + lr.intercept_[0]
    prior = prior_rate(up, horizon=horizon, universe=universe)

    def shrunk(kind: str, fitted: tuple, rows: slice, independent: float, centre: float) -> np.ndarray:
        if kind == "base_rate":
            return np.full(len(scores[rows]), centre)
        p = _calibrated(kind, scores[rows], *fitted)
        return np.clip((independent * p + PRIOR_CALLS * centre) / (independent + PRIOR_CALLS),
                       PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)

    # the calibration, chosen on earlier calls: fitted on the older half of the held-out part, scored on
    # the newer half (the prior there from the calls before that half only)
    mid = cut + (n - cut) // 2
    selection: dict[str, float] = {}
    centre = prior_rate(up[:mid], horizon=horizon, universe=universe)
    for kind in CALIBRATIONS:
        if kind != "base_rate" and len(set(up[cut:mid])) < 2:
            continue
        fitted = _fit_calibration(kind, scores[cut:mid], up[cut:mid], seed)
        p = shrunk(kind, fitted, slice(mid, n), (mid - cut) / max(1, horizon), centre)
        selection[kind] = round(float(np.mean((p - up[mid:]) ** 2)), 6)
    chosen = min(selection, key=lambda k: (selection[k], CALIBRATIONS.index(k)))
    a, b, iso_x, iso_y = _fit_calibration(chosen, scores[cut:], up[cut:], seed)
    independent = (n - cut) / max(1, horizon)
    p_hold = shrunk(chosen, (a, b, iso_x, iso_y), slice(cut, n), independent, prior)
    # skill: better than the older calls' base rate on the held-out calls (the calibration is fitted
    # there too; the older base rate is the honest no-skill forecast for them)
    skilled = bool(np.mean((p_hold - up[cut:]) ** 2) < np.mean((up[:cut].mean() - up[cut:]) ** 2))
    proposed_long = X[cut:, FEATURES.index("proposed_long")] > 0.5
    best, best_sharpe = THRESHOLDS[-1], -np.inf
    for thr in THRESHOLDS:  # exit only when P(exit right) clears thr; otherwise hold the benchmark (long)
        position = np.where(~proposed_long & ((1 - p_hold) >= thr), 0.0, 1.0)
        value = _sharpe(position * forward[cut:])
        if value > best_sharpe + 1e-12:
            best, best_sharpe = thr, value
    return MetaLabeller(
        features=FEATURES, mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
        coef=tuple(map(float, lr.coef_[0])), intercept=float(lr.intercept_[0]),
        platt_a=a, platt_b=b, threshold=float(best),
        samples=int(cut), held_out=int(n - cut), base_rate=float(up.mean()),
        held_out_brier=float(np.mean((p_hold - up[cut:]) ** 2)), independent_calls=float(independent),
        skilled=skilled, prior=float(prior), calibration=chosen, iso_x=iso_x, iso_y=iso_y,
        selection_brier=selection, prior_source="symbol" if universe is None else "universe",
    )


def describe_inputs(inputs: Mapping[str, float], names: Sequence[str] = FEATURES) -> str:
    """``trend_20 +0.021, ...``: the inputs as the key factors show them."""
    return ", ".join(f"{k} {float(inputs[k]):+.3f}" for k in names if k in inputs)
