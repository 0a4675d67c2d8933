//! The shrunk model's Dirichlet prior: its strengths per true class by empirical Bayes.

use rayon::prelude::*;

/// Hyperparameter estimates (from the pooled fit, then twice from the shrunk fit's own
/// posteriors), each followed by a MAP EM.
pub(crate) const EB_ROUNDS: usize = 3;

/// ln Gamma(x) for x > 0: Stirling's series from 10 up (one `ln`; the strength grid calls
/// this for every worker, class pair and strength, mostly on counts far above 10), Lanczos
/// below. Both ~1e-15 relative.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    if x >= 10.0 {
        ln_gamma_stirling(x)
    } else {
        ln_gamma_lanczos(x)
    }
}

/// Stirling's series to the x^-9 term: the next one is below 2e-14 for x >= 10.
fn ln_gamma_stirling(x: f64) -> f64 {
    let r = 1.0 / x;
    let r2 = r * r;
    let series = r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 * (1.0 / 1260.0 - r2 * (1.0 / 1680.0 - r2 / 1188.0))));
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + series
}

/// Lanczos, g = 7, n = 9; ~1e-15 relative.
fn ln_gamma_lanczos(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma_lanczos(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Per true class `j`, the Dirichlet concentration `s_j` (shared by all workers) that
/// maximises the Dirichlet-multinomial likelihood of the workers' expected answer counts
/// for items of class `j`, with mean `center[.][j]`; searched on a log grid from 0.25 to
/// 4096. Per class because workers agree on some classes (happy) far more than on others
/// (fear vs surprise): one shared strength over-shrinks the first or under-shrinks the second.
pub(crate) fn estimate_concentrations(counts: &[f64], center: &[f64], k: usize) -> Vec<f64> {
    let mut grid = Vec::new();
    let mut s = 0.25f64;
    while s <= 4096.0 {
        grid.push(s);
        s *= 2f64.sqrt();
    }
    // Every (class, strength) score on its own, in parallel; the ln Gamma terms that do not
    // depend on the worker are computed once per score (the same values, summed in the same
    // order, as computing them per worker).
    let score = |j: usize, s: f64| -> f64 {
        let lg_s = ln_gamma(s);
        let lg_a: Vec<f64> = (0..k).map(|l| ln_gamma(s * center[l * k + j])).collect();
        let mut ll = 0.0;
        for c in counts.chunks(k * k) {
            let n: f64 = (0..k).map(|l| c[l * k + j]).sum();
            if n < 1e-9 {
                continue;
            }
            ll += lg_s - ln_gamma(n + s);
            for l in 0..k {
                let a = s * center[l * k + j];
                ll += ln_gamma(c[l * k + j] + a) - lg_a[l];
            }
        }
        ll
    };
    let g = grid.len();
    let scores: Vec<f64> = (0..k * g).into_par_iter().map(|x| score(x / g, grid[x % g])).collect();
    (0..k)
        .map(|j| {
            let mut best = (f64::NEG_INFINITY, 1.0);
            for (&s, &v) in grid.iter().zip(&scores[j * g..(j + 1) * g]) {
                // A larger strength must win by more than rounding: where the likelihood
                // is flat (few answers), rounding alone would pick the point, and a mere
                // reordering of the items could change it.
                if best.0 == f64::NEG_INFINITY || v > best.0 + 1e-9 * best.0.abs() {
                    best = (v, s);
                }
            }
            best.1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_stirling_agrees_with_lanczos_where_it_takes_over() {
        let mut x = 10.0;
        while x < 1e7 {
            let (a, b) = (ln_gamma_stirling(x), ln_gamma_lanczos(x));
            assert!((a - b).abs() <= 1e-13 * b.abs().max(1.0), "x {x}: {a} vs {b}");
            x *= 1.07;
        }
        // ln 9! = ln Gamma(10), either side of the switch
        let f9 = (1..=9).map(|i| (i as f64).ln()).sum::<f64>();
        assert!((ln_gamma(10.0) - f9).abs() < 1e-13 && (ln_gamma_lanczos(10.0) - f9).abs() < 1e-13);
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(0.01) - 4.599_479_878_042_02).abs() < 1e-9);
    }

    #[test]
    fn concentration_is_estimated_per_true_class() {
        // 40 workers, 2 classes. Class 0: every worker answers 0 with the centre's 0.8
        // (little spread: a strong prior fits). Class 1: half the workers are always right,
        // half always wrong (much spread: a weak prior fits).
        let k = 2;
        let mut counts = Vec::new();
        for w in 0..40 {
            let (right1, wrong1) = if w % 2 == 0 { (20.0, 0.0) } else { (0.0, 20.0) };
            // [answer][true]: c[0][0], c[0][1], c[1][0], c[1][1]
            counts.extend_from_slice(&[16.0, wrong1, 4.0, right1]);
        }
        let center = [0.8, 0.5, 0.2, 0.5];
        let s = estimate_concentrations(&counts, &center, k);
        assert!(s[0] > 100.0, "class 0 workers agree with the centre: {s:?}");
        assert!(s[1] < 1.0, "class 1 workers split: {s:?}");
    }
}
