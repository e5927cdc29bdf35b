#!/usr/bin/env python3
"""Stress cases for the SVGD golden test, in the schema of shared/testdata/svgd_golden.json.

An implementation independent of the Rust code: numpy float64 straight from spec §2-§4, every
distance and every kernel-weighted difference by direct subtraction ([N, M, D] broadcasts), no
Gram expansion, no shortcut. Inputs are float32 values (stored exactly), so a float32 reader gets
the very inputs the float64 reference used; any error is the implementation's, not the file's.

The regimes the shared file does not reach: every kernel row tiny (far particles, nothing but the
particle itself within reach), near-duplicate particles, coordinates far from the origin, D up to
1024 with unit features at small and realistic temperatures, and shards of those.

    python3 scripts/golden/svgd_stress.py > trainer/tests/data/svgd_stress.json
"""

import json
import sys

import numpy as np

Z_CLAMP = 1e-6


def f32(a):
    """float32 values as float64 (exactly representable in float32)."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def sq_dist(a, b):
    diff = a[:, None, :] - b[None, :, :]
    return (diff * diff).sum(-1), diff


def prior_score(x, y, temps):
    d2, diff = sq_dist(x, y)  # diff = x_i - y_j
    num = np.zeros_like(x)
    z = np.zeros(x.shape[0])
    for tau in temps:
        k = np.exp(-d2 / tau)
        num += (2.0 / tau) * (k[:, :, None] * -diff).sum(1)
        z += k.sum(1)
    return num / np.maximum(z, Z_CLAMP)[:, None], z


def prior_score_toy(x, y, tau):
    d2, _ = sq_dist(x, y)
    k = np.exp(-d2 / tau)
    z = k.sum(1)
    return (2.0 / tau) * ((k @ y) / np.maximum(z, Z_CLAMP)[:, None] - x)


def stein(x_rows, x_all, u_all, temps, n_global):
    d2, diff = sq_dist(x_rows, x_all)  # diff = x_i - x_j
    ks = np.zeros_like(d2)
    rep = np.zeros_like(x_rows)
    for t in temps:
        k = np.exp(-d2 / t)
        ks += k
        rep += (1.0 / t) * (k[:, :, None] * diff).sum(1)
    return ks @ u_all / n_global, rep / n_global


def case(name, description, x, y, g, beta, temps_kde, temps_stein, shard_g=()):
    x, y, g = f32(x), f32(y), f32(g)
    n, d = x.shape
    s, z = prior_score(x, y, temps_kde)
    u = s + beta * g
    driving, rep = stein(x, x, u, temps_stein, n)
    v = driving + rep
    out = {
        "name": name,
        "description": description,
        "inputs": {
            "gen": x.tolist(),
            "ref": y.tolist(),
            "reward_grad": g.tolist(),
            "beta": beta,
            "temps_kde": temps_kde,
            "temps_stein": temps_stein,
        },
        "outputs": {
            "prior_score": s.tolist(),
            "total_score": u.tolist(),
            "driving": driving.tolist(),
            "repulsive": rep.tolist(),
            "velocity": v.tolist(),
            "loss": float((v * v).mean()),
            "grad_wrt_gen": (-2.0 * v / (n * d)).tolist(),
        },
        "variants": {
            "kde_normalizer": z.tolist(),
            "clamped_rows": [int(i) for i in np.nonzero(z < Z_CLAMP)[0]],
            "repulsive_two_sided": (2.0 * rep).tolist(),
            "velocity_two_sided": (driving + 2.0 * rep).tolist(),
            "prior_score_toy_clamp": prior_score_toy(x, y, temps_kde[0]).tolist() if len(temps_kde) == 1 else None,
        },
    }
    if shard_g:
        out["sharding"] = [shards(x, y, g, u, beta, temps_kde, temps_stein, gr, v) for gr in shard_g]
    return out


def shards(x, y, g, u_global, beta, temps_kde, temps_stein, ranks, v_global, micro=3, prompts=1):
    n, d = x.shape
    own = n // ranks
    u_parts = []
    for r in range(ranks):
        rows = slice(r * own, (r + 1) * own)
        s, _ = prior_score(x[rows], y, temps_kde)
        u_parts.append(s + beta * g[rows])
    u_all = np.concatenate(u_parts)
    assert np.allclose(u_all, u_global, rtol=1e-12, atol=0)
    out = []
    for r in range(ranks):
        a, b = r * own, (r + 1) * own
        driving, rep = stein(x[a:b], x, u_all, temps_stein, n)
        v = driving + rep
        assert np.allclose(v, v_global[a:b], rtol=1e-12, atol=1e-300)
        chunks = []
        for cs in range(a, b, micro):
            ce = min(cs + micro, b)
            m = ce - cs
            vc = v[cs - a : ce - a]
            grad = -2.0 * vc / (m * d)
            scale = ranks * m / (n * prompts)
            chunks.append(
                {
                    "row_start": cs,
                    "row_end": ce,
                    "loss_local": float((vc * vc).mean()),
                    "grad_local": grad.tolist(),
                    "loss_scale": scale,
                    "grad_scaled": (scale * grad).tolist(),
                }
            )
        out.append(
            {
                "rank": r,
                "row_start": a,
                "row_end": b,
                "total_score": u_parts[r].tolist(),
                "driving": driving.tolist(),
                "repulsive": rep.tolist(),
                "velocity": v.tolist(),
                "chunks": chunks,
            }
        )
    return {"G": ranks, "micro_batch_size": micro, "prompts_per_step_C": prompts, "shards": out}


def unit(rng, n, d):
    a = rng.standard_normal((n, d))
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def toy_energy(x):
    """The 8-gaussians reward of spec §10.2: r, grad r and grad log max(r, 1e-10)."""
    h = np.sqrt(0.5)
    dirs = np.array([[0, 1], [-h, h], [-1, 0], [-h, -h], [0, -1], [h, -h], [1, 0], [h, h]])
    c = 4 * h * dirs
    rho = np.arange(8) / 7.0
    e = -((x[:, None, :] - c[None]) ** 2).sum(-1)
    w = np.exp(e - e.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    r = w @ rho
    gam = -2 * (x[:, None, :] - c[None])
    gbar = (w[:, :, None] * gam).sum(1)
    grad_r = (rho[None, :, None] * w[:, :, None] * (gam - gbar[:, None, :])).sum(1)
    grad_log_r = np.where(r[:, None] >= 1e-10, grad_r / np.maximum(r, 1e-10)[:, None], 0.0)
    return r, grad_r, grad_log_r


def toy_grad(x):
    """grad log r of the toy reward, a realistic g for the 2-D cases."""
    return toy_energy(x)[2]


def mmd_check(x, y):
    """Biased MMD² (spec §10.5): sigma = lower median of the pairwise Euclidean distances."""
    x, y = f32(x), f32(y)
    z = np.concatenate([x, y])
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    pairs = np.sort(d[np.triu_indices(len(z), 1)])
    sigma = max(pairs[(len(pairs) - 1) // 2], 1e-8)

    def mmd(s):
        k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * s * s))
        return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()

    return {"x": x.tolist(), "y": y.tolist(), "sigma_median_heuristic": sigma, "mmd2": mmd(sigma),
            "mmd2_sigma_1": mmd(1.0)}


def rounded(v):
    """Floats to 9 significant digits: float32 inputs round-trip exactly, outputs keep ~1e-9
    relative accuracy (the test allows 1e-4), and the file stays small."""
    if isinstance(v, float):
        return float(f"{v:.9g}")
    if isinstance(v, list):
        return [rounded(e) for e in v]
    if isinstance(v, dict):
        return {k: rounded(e) for k, e in v.items()}
    return v


def main():
    rng = np.random.default_rng(20261202)
    cases = []

    # Every row sparse: 12 particles on the toy circle 0.5 apart in angle (squared distances
    # >= 2, so every off-diagonal Stein kernel is below exp(-40) at tau = 0.05), references
    # scattered so that some rows clamp. The largest repulsion in the array is itself tiny, so
    # the atol term protects nothing: a self term that does not cancel exactly shows.
    ang = np.arange(12) * 0.52 + 0.1
    x = 2.83 * np.stack([np.cos(ang), np.sin(ang)], 1) + 0.01 * rng.standard_normal((12, 2))
    y = 2.83 * np.stack([np.cos(ang + 0.09), np.sin(ang + 0.09)], 1)[:10] + 0.02 * rng.standard_normal((10, 2))
    x = f32(x)
    cases.append(case("d2_toy_every_row_sparse", "D=2, N=12, M=10, tau 0.05: particles far apart "
                      "(every off-diagonal Stein kernel < 1e-17), references beside some of them (some rows "
                      "clamp); toy grad log r", x, y, toy_grad(x), 1.0, [0.05], [0.05]))

    # Near-duplicate pairs: 6 pairs 1e-3 apart on the toy circle, plus references nearby.
    base = 2.83 * np.stack([np.cos(np.arange(6) * 1.05), np.sin(np.arange(6) * 1.05)], 1)
    x = f32(np.concatenate([base, base + 1e-3 * rng.standard_normal((6, 2))]))
    y = base[rng.integers(0, 6, 14)] + 0.15 * rng.standard_normal((14, 2))
    cases.append(case("d2_near_duplicate_pairs", "D=2, N=12, M=14, tau 0.05: six pairs of particles "
                      "~1e-3 apart, each pair far from the others", x, y, toy_grad(x), 1.0, [0.05], [0.05]))

    # Far from the origin: a cluster at (1000, -700), spread 0.3 (coordinates 3000x the spread).
    centre = np.array([1000.0, -700.0])
    x = centre + 0.3 * rng.standard_normal((10, 2))
    y = centre + 0.3 * rng.standard_normal((12, 2))
    cases.append(case("d2_large_coordinates", "D=2, N=10, M=12, particles and references around "
                      "(1000, -700) with spread 0.3; tau 0.5, Stein temperatures 0.2 and 1.0", x, y,
                      rng.standard_normal((10, 2)), 1.0, [0.5], [0.2, 1.0]))

    # D = 8 (largest dimension of the direct-difference path), isolated particles at tau 0.1.
    # Scaled so the closest pair has d²/tau = 35: the largest off-diagonal kernel is ~6e-16, and
    # still a float32 normal number (a reference below ~1e-38 no float32 code could meet).
    x = rng.standard_normal((16, 8))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1) + np.eye(16) * 1e9
    x *= np.sqrt(35 * 0.1 / d2.min())
    y = x[:12] + 0.2 * rng.standard_normal((12, 8))
    cases.append(case("d8_isolated_particles", "D=8, N=16, M=12, tau 0.1: closest pair at d²/tau = 35 "
                      "(largest off-diagonal Stein kernel ~6e-16), references beside the first 12 (the last "
                      "4 rows clamp)", x, y, rng.standard_normal((16, 8)), 1.0, [0.1], [0.1]))

    # D = 12 (smallest dimension of the Gram path) far from the origin: offset 50, spread 1.
    x = 50.0 + rng.standard_normal((12, 12))
    y = 50.0 + rng.standard_normal((10, 12))
    cases.append(case("d12_offset_coordinates", "D=12, N=12, M=10, every coordinate near 50 with "
                      "spread 1; KDE temperatures 4 and 16, Stein 8", x, y, rng.standard_normal((12, 12)),
                      0.5, [4.0, 16.0], [8.0]))

    # D = 64 unit features (the learned image reward's particles) at tau = 0.05: every
    # off-diagonal kernel is ~exp(-40); references near half of the particles.
    x = unit(rng, 16, 64)
    y = x[:8] + 0.05 * rng.standard_normal((8, 64)) / 8
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    cases.append(case("d64_unit_features_tiny_rows", "D=64, N=16, M=8, unit features, tau 0.05: no two "
                      "particles within reach of each other; references beside the first 8",
                      x, y, rng.standard_normal((16, 64)), 10.0, [0.05], [0.05], shard_g=(2, 4)))

    # D = 1024 (ViT-H/14 features, HPSv2): unit features, tau 0.3, beta 100, the same reward
    # gradient for every particle (HPS: g = t_c).
    x = unit(rng, 6, 1024)
    y = unit(rng, 6, 1024)
    t_c = unit(rng, 1, 1024)
    cases.append(case("d1024_unit_features_hps_like", "D=1024, N=M=6, unit features, tau 0.3, beta 100, "
                      "g = the same unit text direction for every particle",
                      x, y, np.repeat(t_c, 6, 0), 100.0, [0.3], [0.3]))

    # D = 1024 at tau 0.05: every kernel row is the particle alone; two near-duplicates.
    x = unit(rng, 4, 1024)
    x[3] = x[2] + 1e-3 * rng.standard_normal(1024) / 32
    x[3] /= np.linalg.norm(x[3])
    y = unit(rng, 4, 1024)
    cases.append(case("d1024_tiny_rows_near_duplicate", "D=1024, N=M=4, unit features, tau 0.05: rows 0 and "
                      "1 alone, rows 2 and 3 near-duplicates (distance ~1e-3); every KDE row clamps; shards G=2",
                      x, y, rng.standard_normal((4, 1024)), 1.0, [0.05], [0.05, 0.5], shard_g=(2,)))

    # The reward at cluster centres, between clusters, and far out where r < 1e-10 (grad log r = 0).
    pts = f32(np.concatenate([
        2.83 * np.stack([np.cos(np.arange(8) * np.pi / 4 + 0.3), np.sin(np.arange(8) * np.pi / 4 + 0.3)], 1),
        [[0.0, 0.0], [1.2, -0.4], [0.0, 20.0], [0.0, 12.0]],
    ]))
    r, grad_r, grad_log_r = toy_energy(pts)
    energy = {"points": pts.tolist(), "r": r.tolist(), "grad_r": grad_r.tolist(), "grad_log_r": grad_log_r.tolist()}
    mmd = [mmd_check(rng.standard_normal((12, 2)), 0.5 + rng.standard_normal((9, 2))),
           mmd_check(2.83 + 0.3 * rng.standard_normal((6, 2)), 2.83 + 0.3 * rng.standard_normal((10, 2)))]

    tolerance = {
        "rule": "elementwise |got - want| <= rtol*|want| + atol_scale*max(|want| over that output array); "
        "scalars: |got-want| <= rtol*|want|",
        "rtol": 1e-4,
        "atol_scale": 1e-5,
        "note": "the tolerance of shared/testdata/svgd_golden.json",
    }
    doc = {
        "schema": "as shared/testdata/svgd_golden.json (spec §15); stress cases made by "
        "scripts/golden/svgd_stress.py (numpy float64, direct differences, float32-exact inputs)",
        "tolerance": tolerance,
        "constants": {"z_clamp": Z_CLAMP},
        "cases": cases,
        "toy_energy_checks": energy,
        "mmd_checks": mmd,
    }
    json.dump(rounded(doc), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
