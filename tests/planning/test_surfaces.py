import numpy as np
import pytest

from app.planning.surfaces import (EXTRAPOLATED, INTERPOLATED, MEASURED, Surface, fit_roofline, guided_pchip,
                                   leave_one_out)

RNG = np.random.default_rng(0)


def _transformer_decode(ragged: bool = True):
    """Decode steps of a 2.47 GB model with 32 KiB of KV per token at 3 TB/s; the big corner OOMs when ragged."""
    B, L, T, NB, FL = [], [], [], [], []
    for b in (1, 4, 16, 64, 128):
        for c in (512, 1024, 2048, 4096, 8192, 16384):
            if ragged and b * c * 32768 > 40e9:
                continue
            nb, fl = 2.47e9 + b * c * 32768, b * (2.47e9 + 1.3e5 * c)
            B.append(b), L.append(c), NB.append(nb), FL.append(fl)
            T.append(0.05 + nb / 3e9 + fl / 795e9)
    return [np.array(x, dtype=float) for x in (B, L, T, NB, FL)]


@pytest.mark.parametrize("ragged", [False, True], ids=["full-grid", "ragged-grid"])
def test_exact_and_labelled_measured_at_every_point(ragged):
    b, L, t, nb, fl = _transformer_decode(ragged)
    s = Surface("decode", b, L, t, nb, fl)
    for bi, Li, ti in zip(b, L, t):
        v, lab = s.latency_ms(bi, Li)
        assert v[0] == pytest.approx(ti, rel=1e-12)
        assert lab[0] == MEASURED


def test_labels_inside_between_and_beyond():
    b, L, t, nb, fl = _transformer_decode()
    s = Surface("decode", b, L, t, nb, fl)
    _, lab = s.latency_ms(16, [700, 3000, 100, 65536])
    assert lab.tolist() == [INTERPOLATED, INTERPOLATED, EXTRAPOLATED, EXTRAPOLATED]
    _, lab = s.latency_ms([8, 256], [2048, 2048])
    assert lab.tolist() == [INTERPOLATED, EXTRAPOLATED]
    # ragged corner: batch 128 was measured only up to 8192 tokens (40 GB of KV), so 128 × 16384 lies outside
    _, lab = s.latency_ms(128, 16384)
    assert lab[0] == EXTRAPOLATED


def test_roofline_recovers_the_generating_model_and_extrapolates_it():
    b, L, t, nb, fl = _transformer_decode()
    s = Surface("decode", b, L, t, nb, fl)
    r = s.roofline
    assert r.bw_bytes_per_s == pytest.approx(3e12, rel=1e-6)
    assert r.flops_per_s == pytest.approx(795e12, rel=1e-6)
    assert r.t0_ms == pytest.approx(0.05, rel=1e-6)
    # beyond the grid the surface follows the same physics
    for bq, cq in ((256, 4096), (128, 16384), (2, 65536)):
        nbq, flq = 2.47e9 + bq * cq * 32768, bq * (2.47e9 + 1.3e5 * cq)
        v, lab = s.latency_ms(bq, cq)
        assert lab[0] == EXTRAPOLATED
        assert v[0] == pytest.approx(0.05 + nbq / 3e9 + flq / 795e9, rel=1e-2)


def test_monotone_between_points():
    b, L, t, nb, fl = _transformer_decode(ragged=False)
    s = Surface("decode", b, L, t, nb, fl)
    fine = np.geomspace(512, 16384, 400)
    for bq in (1, 3, 16, 50, 128):
        v, _ = s.latency_ms(bq, fine)
        assert np.all(np.diff(v) >= -1e-12), f"latency falls with context at batch {bq}"
    for cq in (512, 3000, 16384):
        v, _ = s.latency_ms(np.geomspace(1, 128, 200), cq)
        assert np.all(np.diff(v) >= -1e-12), f"latency falls with batch at context {cq}"


def pchip(xs, ys, xq):
    """The Fritsch–Carlson core alone: guided_pchip with a flat fit."""
    m = np.size(xq)
    ys = np.broadcast_to(np.asarray(ys, dtype=float)[:, None], (len(ys), m))
    return guided_pchip(np.asarray(xs), ys, np.zeros_like(ys), np.asarray(xq, dtype=float), np.zeros(m))


@pytest.mark.parametrize("seed", range(5))
def test_pchip_no_overshoot(seed):
    rng = np.random.default_rng(seed)
    xs = np.sort(rng.uniform(0, 10, 8))
    ys = np.cumsum(rng.uniform(0, 1, 8))  # increasing, with flat-ish and steep parts
    xq = np.linspace(xs[0], xs[-1], 500)
    v = pchip(xs, ys, xq)
    assert np.all(np.diff(v) >= -1e-12)
    assert v.min() >= ys.min() - 1e-12 and v.max() <= ys.max() + 1e-12
    np.testing.assert_allclose(pchip(xs, ys, xs), ys, rtol=1e-12)


def test_repeats_use_the_median():
    s = Surface("decode", [1, 1, 1, 4], [512, 512, 512, 512], [1.0, 5.0, 2.0, 3.0], [1e9] * 4, [1e9] * 4)
    assert s.n_points == 2
    assert s.latency_ms(1, 512)[0][0] == 2.0


def test_unusable_points_are_refused():
    with pytest.raises(ValueError, match="no usable"):
        Surface("decode", [1], [512], [np.nan], [1e9], [1e9])


def test_leave_one_out_is_small_on_smooth_data():
    b, L, t, nb, fl = _transformer_decode(ragged=False)
    t = t * np.exp(RNG.normal(0, 0.01, t.size))
    res = leave_one_out(Surface("decode", b, L, t, nb, fl))
    inner = [r.rel_error for r in res if r.label == INTERPOLATED]
    edge = [r.rel_error for r in res if r.label == EXTRAPOLATED]
    assert len(inner) == 26 and len(edge) == 4  # only a dropped corner leaves the measured domain
    assert np.median(inner) < 0.05
    assert np.median(edge) < 0.10


def test_fit_needs_no_negative_coefficients():
    # latency that falls with bytes cannot be explained by a roofline: the fit must not go negative
    r = fit_roofline("decode", np.array([1.0, 2.0, 4.0]), np.array([512.0] * 3), np.array([3.0, 2.0, 1.0]),
                     np.array([1e9, 2e9, 4e9]), np.array([1e9, 2e9, 4e9]))
    assert r.t0_ms >= 0 and r.ms_per_byte >= 0 and r.ms_per_flop >= 0


def test_a_sparse_grid_interpolates_along_the_roofline_shape():
    """On the quick sweep's 3 × 3 grid a decode step is affine in batch, not a power law: a held-out middle
    point is predicted from its neighbours through the fitted roofline's shape, not a straight line in
    log-log (which misses it by tens of percent)."""
    B, L, T, NB, FL = [], [], [], [], []
    for b in (1, 16, 128):
        for c in (512, 4096, 16384):
            nb, fl = 2.47e9 + b * c * 32768, b * (2.47e9 + 1.3e5 * c)
            B.append(b), L.append(c), NB.append(nb), FL.append(fl)
            T.append(0.3 + nb / 3e9 + fl / 795e9)
    b, L, t, nb, fl = (np.array(x, dtype=float) for x in (B, L, T, NB, FL))
    res = [r for r in leave_one_out(Surface("decode", b, L, t, nb, fl)) if r.label == INTERPOLATED]
    assert res and max(r.rel_error for r in res) < 0.02
    straight = np.exp(np.interp(np.log(16), np.log([1, 128]), np.log([T[1], T[7]])))  # b 1 and 128 at 4096
    assert abs(straight - T[4]) / T[4] > 0.2  # what log-log interpolation alone would have said


def test_interpolation_stays_between_its_bracketing_points_when_the_roofline_disagrees():
    """A step measured flat at 10 ms while the cost model's bytes grow with batch: the roofline's shape
    must not carry the surface below (or above) the two measured points around a query."""
    b = np.array([1, 1, 64, 64], dtype=float)
    L = np.array([100, 10000] * 2, dtype=float)
    nb = 2e9 + b * L * 1000
    s = Surface("decode", b, L, np.full(4, 10.0), nb, b * 3e9, peak_bw=3.35e12, peak_flops=989e12)
    for Lq in (100, 1000, 10000):
        v, _ = s.latency_ms(np.geomspace(1, 64, 60), Lq)
        assert np.all(np.abs(v - 10.0) <= 1e-9), (Lq, v.min(), v.max())
