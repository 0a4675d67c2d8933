//! The EM loop and its fused kernel: a pass over items computes each item's posterior from
//! the current parameters and immediately adds it into the expected confusion counts of the
//! next M-step, so no posterior matrix is stored while iterating and each iteration reads the
//! answers once. Probabilities are multiplied (no `exp`), and the log-likelihood is
//! accumulated as a mantissa/exponent product (no `ln` per item). The only `unsafe` code of
//! the crate (an AVX2 build of the pass, a prefetch hint) is here.

use rayon::prelude::*;

use crate::data::Answers;
use crate::{CrowdError, Result};

use super::mstep::{class_totals, counts_from_posteriors, m_step, per_worker_matrices, vote_counts, Model};
use super::logprod::LogProd;
use super::types::EmOptions;

/// Where EM starts.
#[derive(Clone, Copy)]
pub(crate) enum Init<'a> {
    /// Majority-vote fractions (computed on the fly, never stored).
    Votes,
    /// These posteriors (`k` per item).
    Posteriors(&'a [f64]),
}

pub(crate) struct EmOut {
    pub(crate) posteriors: Vec<f64>,
    pub(crate) prior: Vec<f64>,
    pub(crate) matrices: Vec<f64>,
    pub(crate) pooled: Vec<f64>,
    pub(crate) objective: Vec<f64>,
    pub(crate) converged: bool,
}

/// EM of `model` from `init`, in the pass compiled for the number of classes (rounded up to
/// a power of two lanes).
pub(crate) fn run(a: &Answers, model: Model, init: Init, o: &EmOptions, prior_fixed: Option<&[f64]>) -> Result<EmOut> {
    run_with(a, model, init, o, prior_fixed, false)
}

/// [`run`], with over-relaxed steps when `accel` (see [`run_em_in`]).
pub(crate) fn run_with(a: &Answers, model: Model, init: Init, o: &EmOptions, prior_fixed: Option<&[f64]>, accel: bool) -> Result<EmOut> {
    let k = a.n_classes();
    let n = k.next_power_of_two().max(2);
    match n {
        2 => Ok(run_em_acc::<2>(a, model, init, o, prior_fixed, accel)),
        4 => Ok(run_em_acc::<4>(a, model, init, o, prior_fixed, accel)),
        8 => Ok(run_em_acc::<8>(a, model, init, o, prior_fixed, accel)),
        16 => Ok(run_em_acc::<16>(a, model, init, o, prior_fixed, accel)),
        32 => Ok(run_em_acc::<32>(a, model, init, o, prior_fixed, accel)),
        64 => Ok(run_em_acc::<64>(a, model, init, o, prior_fixed, accel)),
        _ => Err(CrowdError::Data(format!("{k} classes: at most 64 are supported"))),
    }
}


/// The pass's number type: `f32` on large data (half the cache footprint of the scattered
/// parameter rows), `f64` on small data, where speed does not matter and single precision's
/// rounding, amplified by EM near flat or saddle points of tiny crowds, would make the
/// result depend on the order of the items.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// Rescale a long item's running product below this (before it underflows).
    const RESCALE_BELOW: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn is_finite(self) -> bool;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const RESCALE_BELOW: f32 = 1e-20;
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const RESCALE_BELOW: f64 = 1e-200;
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
}

/// Below this many answers EM runs in `f64` on one thread; above, in `f32` on all threads.
pub(crate) const SMALL_ANSWERS: usize = 50_000;

/// Above `SMALL_ANSWERS`, items are split into parts of about this many answers, each with
/// its own count buffers, merged in part order. The split depends on the data only, never on
/// the thread count, so every machine computes the same bytes (an output must depend on its
/// cache key alone: a 2-core laptop, a 64-core Slurm node and a remote-cache reader agree).
const PART_ANSWERS: usize = 1 << 17;
/// At most this many parts, and at most `PART_ROWS` buffer rows over all parts (each part
/// holds one row per worker x label: a crowd of a million workers gets few parts).
const MAX_PARTS: usize = 32;
const PART_ROWS: usize = 1 << 23;

/// One worker x answer row: its likelihood per true class and the expected counts the
/// pass accumulates, side by side so each answer touches one cache line (f32, N = 8: 64 bytes).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Row<T, const N: usize> {
    p: [T; N],
    c: [T; N],
}

#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Answers ahead whose parameter rows are prefetched: the rows are scattered (one per
/// worker x label), so without it the pass waits on memory.
pub(crate) const PREFETCH_ANSWERS: usize = 16;

/// Pairwise sum (vectorises; a left fold of floats does not).
#[inline(always)]
pub(crate) fn tree_sum<T: Real, const N: usize>(p: &[T; N]) -> T {
    let mut v = *p;
    let mut n = N;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            v[j] += v[j + n];
        }
    }
    v[0]
}

/// One pass over items `lo..hi`: posteriors under (`tab`, `prior`), accumulated into
/// `counts`/`class`; optionally written to `post` (`k` per item). Returns the log-likelihood.
/// Parameters and counts are `T` (see [`Real`]); the log-likelihood and the class totals
/// are accumulated in `f64`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pass<T: Real, const N: usize>(
    a: &Answers,
    lo: usize,
    hi: usize,
    rows: &mut [Row<T, N>],
    prior: &[T; N],
    class: &mut [f64; N],
    post: Option<&mut [f64]>,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { pass_avx2::<T, N>(a, lo, hi, rows, prior, class, post) };
    }
    pass_body::<T, N>(a, lo, hi, rows, prior, class, post)
}

/// The same pass compiled for AVX2 (measured 10 % faster on the scale case). No FMA and no
/// reassociation, so the results are bit-identical to the portable build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pass_avx2<T: Real, const N: usize>(
    a: &Answers,
    lo: usize,
    hi: usize,
    rows: &mut [Row<T, N>],
    prior: &[T; N],
    class: &mut [f64; N],
    post: Option<&mut [f64]>,
) -> f64 {
    pass_body::<T, N>(a, lo, hi, rows, prior, class, post)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pass_body<T: Real, const N: usize>(
    a: &Answers,
    lo: usize,
    hi: usize,
    rows: &mut [Row<T, N>],
    prior: &[T; N],
    class: &mut [f64; N],
    mut post: Option<&mut [f64]>,
) -> f64 {
    let k = a.n_classes();
    let mut prod = LogProd::new();
    let mut extra = 0.0;
    let codes_all = &a.codes[..];
    let mut block = [T::ZERO; N];
    for i in lo..hi {
        let (s, e) = (a.offsets[i], a.offsets[i + 1]);
        for t in s..e {
            if let Some(&c) = codes_all.get(t + PREFETCH_ANSWERS) {
                prefetch(rows.as_ptr().wrapping_add(c as usize));
            }
        }
        let codes = &codes_all[s..e];
        let mut p = *prior;
        for (t, &c) in codes.iter().enumerate() {
            let r = &rows[c as usize].p;
            for j in 0..N {
                p[j] *= r[j];
            }
            if t & 7 == 7 {
                // long items: rescale before the product underflows
                let m = p.iter().cloned().fold(T::ZERO, |a, b| if b > a { b } else { a });
                if m > T::ZERO && m < T::RESCALE_BELOW {
                    let inv = T::ONE / m;
                    for x in p.iter_mut() {
                        *x *= inv;
                    }
                    extra += m.to_f64().ln();
                }
            }
        }
        let z: T = tree_sum(&p);
        if !(z > T::ZERO && z.is_finite()) {
            // Impossible under the parameters (cannot happen with smoothing > 0): keep the prior.
            p = *prior;
            extra += f64::NEG_INFINITY;
        } else {
            prod.mul(z.to_f64());
            let inv = T::ONE / z;
            for x in p.iter_mut() {
                *x *= inv;
            }
        }
        for &c in codes {
            let r = &mut rows[c as usize].c;
            for j in 0..N {
                r[j] += p[j];
            }
        }
        // class totals: `T` within a block of items, flushed to f64
        for j in 0..N {
            block[j] += p[j];
        }
        if (i - lo) & 1023 == 1023 {
            for j in 0..N {
                class[j] += block[j].to_f64();
            }
            block = [T::ZERO; N];
        }
        if let Some(out) = post.as_deref_mut() {
            let row = &mut out[(i - lo) * k..(i - lo + 1) * k];
            // renormalise in f64 so rows sum to 1 to double precision
            let zz: f64 = p[..k].iter().map(|&x| x.to_f64()).sum();
            for j in 0..k {
                row[j] = p[j].to_f64() / zz;
            }
        }
    }
    for j in 0..N {
        class[j] += block[j].to_f64();
    }
    prod.ln() + extra
}

/// A thread's buffers before a pass: likelihoods from `tab`, counts and class totals zeroed.
pub(crate) fn load_rows<T: Real, const N: usize>(rows: &mut [Row<T, N>], class: &mut [f64; N], tab: &[[T; N]]) {
    for (r, t) in rows.iter_mut().zip(tab) {
        r.p = *t;
        r.c = [T::ZERO; N];
    }
    *class = [0.0; N];
}

#[cfg(test)]
pub(crate) fn run_em<const N: usize>(a: &Answers, model: Model, init: Init, o: &EmOptions, prior_fixed: Option<&[f64]>) -> EmOut {
    run_em_acc::<N>(a, model, init, o, prior_fixed, false)
}

fn run_em_acc<const N: usize>(a: &Answers, model: Model, init: Init, o: &EmOptions, prior_fixed: Option<&[f64]>, accel: bool) -> EmOut {
    if a.n_answers() < SMALL_ANSWERS {
        run_em_in::<f64, N>(a, model, init, o, prior_fixed, accel)
    } else {
        run_em_in::<f32, N>(a, model, init, o, prior_fixed, accel)
    }
}

/// EM of `model` from `init`. With `accel`, over-relaxed EM (Salakhutdinov & Roweis 2003)
/// in the space of expected counts: the M-step is fed `c + eta * (c' - c)` (`c` the counts of
/// the last accepted step, `c'` the E-step's counts under its parameters; clamped at 0, so
/// the parameters stay valid), `eta` grows while the objective rises and falls back to 1 (a
/// plain EM step, which never lowers it) after a step that lowered it, which is dropped. Only
/// accepted steps are recorded in the objective; the convergence test is the same.
pub(crate) fn run_em_in<T: Real, const N: usize>(
    a: &Answers,
    model: Model,
    init: Init,
    o: &EmOptions,
    prior_fixed: Option<&[f64]>,
    accel: bool,
) -> EmOut {
    let k = a.n_classes();
    let nc = a.n_workers() * k;
    let n_items = a.n_items();
    // Contiguous item ranges balanced by answers; how many depends on the data alone.
    let parts = if a.n_answers() < SMALL_ANSWERS {
        1
    } else {
        a.n_answers().div_ceil(PART_ANSWERS).min(MAX_PARTS).min((PART_ROWS / nc.max(1)).max(1)).max(1)
    };
    let mut bounds = vec![0usize];
    for p in 1..parts {
        let target = a.n_answers() * p / parts;
        let i = a.offsets.partition_point(|&x| x < target).min(n_items);
        bounds.push(i.max(*bounds.last().unwrap()));
    }
    bounds.push(n_items);
    let zero = Row::<T, N> { p: [T::ZERO; N], c: [T::ZERO; N] };
    let mut bufs: Vec<(Vec<Row<T, N>>, [f64; N])> = (0..parts).map(|_| (vec![zero; nc], [0.0; N])).collect();

    let mut tab = vec![[T::ZERO; N]; nc];
    let mut prior_n = [T::ZERO; N];
    let (mut counts, mut class_counts) = match init {
        Init::Votes => vote_counts(a),
        Init::Posteriors(p) => (counts_from_posteriors(a, p), class_totals(p, k)),
    };
    let mut objective = Vec::new();
    let mut converged = false;
    let mut mats = Vec::new();
    let mut prior = Vec::new();
    if !accel {
        for it in 0..o.max_iter.max(1) {
            let (m, p, log_prior) = m_step(&model, &counts, &class_counts, k, o, prior_fixed);
            mats = m;
            prior = p;
            load_params(&mut tab, &mut prior_n, &mats, &prior, k);
            let ll = e_step(a, &bounds, &mut bufs, &tab, &prior_n, &mut counts, &mut class_counts);
            let obj = ll + log_prior;
            objective.push(obj);
            if it > 0 {
                let prev = objective[it - 1];
                let d = obj - prev;
                // A dip (d < 0, rounding) never stops the loop.
                if d >= 0.0 && d <= o.tol * prev.abs() {
                    converged = true;
                    break;
                }
            }
        }
    } else {
        // (acc_in, acc_cl_in): what the accepted parameters were computed from; (counts,
        // class_counts): the E-step's counts under them.
        let (mut acc_in, mut acc_cl_in) = (counts.clone(), class_counts.clone());
        let (mut out_c, mut out_cl) = (vec![0.0; counts.len()], vec![0.0; k]);
        let (mut in_c, mut in_cl) = (vec![0.0; counts.len()], vec![0.0; k]);
        let mut eta = 1.0f64;
        for _ in 0..o.max_iter.max(1) {
            let first = objective.is_empty();
            let mix = |x: f64, y: f64| (x + eta * (y - x)).max(0.0);
            if first || eta == 1.0 {
                in_c.copy_from_slice(&counts);
                in_cl.copy_from_slice(&class_counts);
            } else {
                for ((z, &x), &y) in in_c.iter_mut().zip(&acc_in).zip(&counts) {
                    *z = mix(x, y);
                }
                for ((z, &x), &y) in in_cl.iter_mut().zip(&acc_cl_in).zip(&class_counts) {
                    *z = mix(x, y);
                }
            }
            let (m, p, log_prior) = m_step(&model, &in_c, &in_cl, k, o, prior_fixed);
            load_params(&mut tab, &mut prior_n, &m, &p, k);
            let ll = e_step(a, &bounds, &mut bufs, &tab, &prior_n, &mut out_c, &mut out_cl);
            let obj = ll + log_prior;
            let prev = objective.last().copied();
            if eta > 1.0 && prev.is_some_and(|pv| !(obj >= pv)) {
                // Lower than the last accepted step: drop it, take a plain step next.
                eta = 1.0;
                continue;
            }
            mats = m;
            prior = p;
            std::mem::swap(&mut acc_in, &mut in_c);
            std::mem::swap(&mut acc_cl_in, &mut in_cl);
            std::mem::swap(&mut counts, &mut out_c);
            std::mem::swap(&mut class_counts, &mut out_cl);
            objective.push(obj);
            if let Some(pv) = prev {
                let d = obj - pv;
                if d >= 0.0 && d <= o.tol * pv.abs() {
                    converged = true;
                    break;
                }
                eta = (eta * 2.0).min(64.0);
            }
        }
        // the table of the accepted parameters (a dropped step may have loaded another)
        load_params(&mut tab, &mut prior_n, &mats, &prior, k);
    }
    // Final posteriors under the last parameters (the ones the last objective scored).
    // Same item ranges as the iterations; each part writes its own rows.
    let mut post = vec![0.0; n_items * k];
    let mut slices = Vec::with_capacity(parts);
    let mut rest = &mut post[..];
    for pi in 0..parts {
        let (head, tail) = rest.split_at_mut((bounds[pi + 1] - bounds[pi]) * k);
        slices.push(head);
        rest = tail;
    }
    bufs.par_iter_mut().zip(slices).enumerate().for_each(|(pi, ((cb, cl), out))| {
        load_rows(cb, cl, &tab);
        pass::<T, N>(a, bounds[pi], bounds[pi + 1], cb, &prior_n, cl, Some(out));
    });
    let pooled = match &model {
        Model::Pooled => mats[..k * k].to_vec(),
        _ => {
            // the answers of everyone against the final posteriors
            let mut c = vec![0.0; k * k];
            for (cb, _) in &bufs {
                for code in 0..nc {
                    let l = code % k;
                    for j in 0..k {
                        c[l * k + j] += cb[code].c[j].to_f64();
                    }
                }
            }
            per_worker_matrices(&c, k, o.smoothing)
        }
    };
    EmOut { posteriors: post, prior, matrices: mats, pooled, objective, converged }
}

/// The pass's parameter table and prior from worker matrices `[w][answer][true]` and a prior.
fn load_params<T: Real, const N: usize>(tab: &mut [[T; N]], prior_n: &mut [T; N], mats: &[f64], prior: &[f64], k: usize) {
    for (code, row) in tab.iter_mut().enumerate() {
        let (w, l) = (code / k, code % k);
        for j in 0..k {
            row[j] = T::from_f64(mats[w * k * k + l * k + j]);
        }
    }
    for j in 0..k {
        prior_n[j] = T::from_f64(prior[j]);
    }
}

/// One E-step over all parts: expected counts and class totals into `counts`/`class_counts`
/// (overwritten); returns the log-likelihood. Per-part sums are collected, then added in part
/// order (a parallel sum's order would follow the scheduling).
#[allow(clippy::too_many_arguments)]
fn e_step<T: Real, const N: usize>(
    a: &Answers,
    bounds: &[usize],
    bufs: &mut [(Vec<Row<T, N>>, [f64; N])],
    tab: &[[T; N]],
    prior_n: &[T; N],
    counts: &mut [f64],
    class_counts: &mut [f64],
) -> f64 {
    let k = a.n_classes();
    let nc = tab.len();
    let lls: Vec<f64> = bufs
        .par_iter_mut()
        .enumerate()
        .map(|(pi, (cb, cl))| {
            load_rows(cb, cl, tab);
            pass::<T, N>(a, bounds[pi], bounds[pi + 1], cb, prior_n, cl, None)
        })
        .collect();
    let ll: f64 = lls.iter().sum();
    counts.iter_mut().for_each(|x| *x = 0.0);
    class_counts.iter_mut().for_each(|x| *x = 0.0);
    for (cb, cl) in bufs.iter() {
        for code in 0..nc {
            for j in 0..k {
                counts[code * k + j] += cb[code].c[j].to_f64();
            }
        }
        for j in 0..k {
            class_counts[j] += cl[j];
        }
    }
    ll
}

pub(crate) fn final_objective(o: &EmOut) -> f64 {
    o.objective.last().copied().unwrap_or(f64::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_fits_do_not_depend_on_the_thread_count() {
        // Above SMALL_ANSWERS the EM runs in parts; the bytes must be the same on any machine.
        let cfg = crate::sim::SimConfig { n_items: 100_000, n_workers: 300, worker_concentration: Some(20.0), ..crate::sim::SimConfig::sparse_round2(5) };
        let sim = crate::sim::simulate(&cfg);
        let classes: Vec<String> = (0..7).map(|c| format!("c{c}")).collect();
        let a = Answers::from_triples(cfg.n_items, sim.n_workers, classes, &sim.answers).unwrap();
        assert!(a.n_answers() > 2 * PART_ANSWERS, "the case must be split into several parts");
        let fit = |threads: usize, m: crate::Method| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| crate::aggregate(&a, m, &crate::EmOptions::default()).unwrap())
        };
        for m in [crate::Method::DawidSkene, crate::Method::Shrunk, crate::Method::Auto] {
            let (one, three) = (fit(1, m), fit(3, m));
            let bits = |r: &crate::Aggregation| r.posteriors.iter().chain(&r.worker_matrices).chain(&r.objective).map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&one) == bits(&three), "{m}: 1 and 3 threads differ");
            let sel = |r: &crate::Aggregation| r.selection.as_ref().map(|s| s.candidates.iter().map(|c| c.heldout_loglik.to_bits()).collect::<Vec<_>>());
            assert_eq!(sel(&one), sel(&three), "{m}: selection scores differ");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_pass_is_bit_identical_to_the_portable_one() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let sim = crate::sim::simulate(&crate::sim::SimConfig::sparse_round2(3));
        let classes: Vec<String> = (0..7).map(|c| format!("c{c}")).collect();
        let a = Answers::from_triples(700, sim.n_workers, classes, &sim.answers).unwrap();
        let nc = a.n_workers() * 7;
        let rows: Vec<Row<f32, 8>> = (0..nc)
            .map(|c| Row { p: std::array::from_fn(|j| 0.05 + ((c * 31 + j * 7) % 13) as f32 / 20.0), c: [0.0; 8] })
            .collect();
        let prior = [1.0f32 / 7.0; 8];
        let run = |avx: bool| {
            let (mut r, mut cl, mut post) = (rows.clone(), [0.0f64; 8], vec![0.0; 700 * 7]);
            let ll = if avx {
                // SAFETY: AVX2 was detected above.
                unsafe { pass_avx2::<f32, 8>(&a, 0, 700, &mut r, &prior, &mut cl, Some(&mut post)) }
            } else {
                pass_body::<f32, 8>(&a, 0, 700, &mut r, &prior, &mut cl, Some(&mut post))
            };
            let counts: Vec<u32> = r.iter().flat_map(|x| x.c.map(f32::to_bits)).collect();
            (ll.to_bits(), cl.map(f64::to_bits), post.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), counts)
        };
        assert!(run(true) == run(false));
    }

    #[test]
    fn logprod_matches_sum_of_logs() {
        let mut p = LogProd::new();
        let mut s = 0.0;
        for i in 1..5000 {
            let z = (i as f64 * 0.37).sin().abs() * 1e-3 + 1e-301 * (i % 2) as f64;
            p.mul(z);
            s += z.ln();
        }
        assert!((p.ln() - s).abs() < 1e-9 * s.abs());
    }
}
