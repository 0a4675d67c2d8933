//! Simulated crowds: workers drawn around a confusion matrix, spammers, and AMT
//! batch-results CSV text in the real download's exact format.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::EMOTIONS;

/// Round-2 answers vs true class from SEED-FACTS (`[answer][true]`, columns sum to 300).
pub const ROUND2_COUNTS: [[u32; 7]; 7] = [
    [130, 27, 42, 2, 13, 25, 19],
    [22, 90, 16, 1, 10, 16, 13],
    [19, 18, 96, 3, 18, 22, 36],
    [19, 32, 29, 257, 34, 22, 43],
    [52, 71, 41, 22, 177, 45, 22],
    [48, 57, 59, 6, 43, 169, 8],
    [10, 5, 17, 9, 5, 1, 159],
];

/// Round-1 (no hint), same layout.
pub const ROUND1_COUNTS: [[u32; 7]; 7] = [
    [127, 28, 64, 2, 14, 19, 25],
    [14, 43, 17, 0, 15, 15, 15],
    [11, 18, 31, 1, 7, 16, 21],
    [28, 34, 30, 263, 33, 28, 52],
    [51, 92, 51, 19, 164, 61, 31],
    [57, 74, 83, 6, 58, 156, 18],
    [12, 11, 24, 9, 9, 5, 138],
];

/// Column-normalised `k x k` matrix (`[answer][true]`, flat).
pub fn column_normalize(counts: &[[u32; 7]; 7]) -> Vec<f64> {
    let mut m = vec![0.0; 49];
    for j in 0..7 {
        let s: u32 = (0..7).map(|l| counts[l][j]).sum();
        for l in 0..7 {
            m[l * 7 + j] = counts[l][j] as f64 / s as f64;
        }
    }
    m
}

pub fn round2_matrix() -> Vec<f64> {
    column_normalize(&ROUND2_COUNTS)
}
pub fn round1_matrix() -> Vec<f64> {
    column_normalize(&ROUND1_COUNTS)
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub n_items: usize,
    pub n_classes: usize,
    /// Honest workers (spammers come on top).
    pub n_workers: usize,
    pub answers_per_item: usize,
    /// `[answer][true]`, columns sum to 1.
    pub matrix: Vec<f64>,
    /// Dirichlet concentration of each worker's columns around `matrix`;
    /// `None` = every worker uses `matrix` exactly.
    pub worker_concentration: Option<f64>,
    /// Workers who always answer this label.
    pub constant_spammers: Vec<usize>,
    /// Workers who answer uniformly at random.
    pub random_clickers: usize,
    /// Items per class are balanced (true class = item index mod k, shuffled) when true;
    /// otherwise drawn uniformly.
    pub balanced: bool,
    pub seed: u64,
}

impl SimConfig {
    /// The sparse case: 700 items x 3 answers, 30 workers, round-2 matrix.
    pub fn sparse_round2(seed: u64) -> SimConfig {
        SimConfig {
            n_items: 700,
            n_classes: 7,
            n_workers: 30,
            answers_per_item: 3,
            matrix: round2_matrix(),
            worker_concentration: None,
            constant_spammers: Vec::new(),
            random_clickers: 0,
            balanced: true,
            seed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimData {
    pub truth: Vec<usize>,
    /// `(item, worker, label)`.
    pub answers: Vec<(usize, usize, usize)>,
    pub n_workers: usize,
    /// Each worker's true matrix (`[answer][true]`).
    pub worker_matrices: Vec<Vec<f64>>,
}

fn sample_categorical(rng: &mut ChaCha8Rng, p: &[f64]) -> usize {
    let u: f64 = rng.gen();
    let mut acc = 0.0;
    for (i, x) in p.iter().enumerate() {
        acc += x;
        if u < acc {
            return i;
        }
    }
    p.len() - 1
}

fn dirichlet(rng: &mut ChaCha8Rng, alpha: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = alpha
        .iter()
        .map(|&a| Gamma::new(a.max(1e-3), 1.0).map(|g| g.sample(rng)).unwrap_or(0.0))
        .collect();
    let s: f64 = v.iter().sum();
    if s > 0.0 {
        v.iter_mut().for_each(|x| *x /= s);
    } else {
        let n = v.len() as f64;
        v.iter_mut().for_each(|x| *x = 1.0 / n);
    }
    v
}

/// Simulate a crowd. Each item gets `answers_per_item` distinct workers chosen uniformly
/// among all workers (honest, spammers and clickers alike).
pub fn simulate(cfg: &SimConfig) -> SimData {
    let k = cfg.n_classes;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut truth: Vec<usize> = if cfg.balanced {
        (0..cfg.n_items).map(|i| i % k).collect()
    } else {
        (0..cfg.n_items).map(|_| rng.gen_range(0..k)).collect()
    };
    truth.shuffle(&mut rng);
    let mut mats: Vec<Vec<f64>> = Vec::new();
    for _ in 0..cfg.n_workers {
        let m = match cfg.worker_concentration {
            None => cfg.matrix.clone(),
            Some(c) => {
                let mut m = vec![0.0; k * k];
                for j in 0..k {
                    let alpha: Vec<f64> = (0..k).map(|l| c * cfg.matrix[l * k + j]).collect();
                    let col = dirichlet(&mut rng, &alpha);
                    for l in 0..k {
                        m[l * k + j] = col[l];
                    }
                }
                m
            }
        };
        mats.push(m);
    }
    for &label in &cfg.constant_spammers {
        let mut m = vec![0.0; k * k];
        for j in 0..k {
            m[label.min(k - 1) * k + j] = 1.0;
        }
        mats.push(m);
    }
    for _ in 0..cfg.random_clickers {
        mats.push(vec![1.0 / k as f64; k * k]);
    }
    let nw = mats.len();
    // columns as contiguous rows for sampling
    let cols: Vec<Vec<Vec<f64>>> =
        mats.iter().map(|m| (0..k).map(|j| (0..k).map(|l| m[l * k + j]).collect()).collect()).collect();
    let per = cfg.answers_per_item.min(nw);
    let mut answers = Vec::with_capacity(cfg.n_items * per);
    let mut pool: Vec<usize> = (0..nw).collect();
    for (i, &t) in truth.iter().enumerate() {
        let (chosen, _) = pool.partial_shuffle(&mut rng, per);
        for &w in chosen.iter() {
            let l = sample_categorical(&mut rng, &cols[w][t]);
            answers.push((i, w, l));
        }
    }
    SimData { truth, answers, n_workers: nw, worker_matrices: mats }
}

/// The real batch-results header (31 columns), as in the study's download.
pub const AMT_HEADER: [&str; 31] = [
    "HITId", "HITTypeId", "Title", "Description", "Keywords", "Reward", "CreationTime", "MaxAssignments",
    "RequesterAnnotation", "AssignmentDurationInSeconds", "AutoApprovalDelayInSeconds", "Expiration",
    "NumberOfSimilarHITs", "LifetimeInSeconds", "AssignmentId", "WorkerId", "AssignmentStatus", "AcceptTime",
    "SubmitTime", "AutoApprovalTime", "ApprovalTime", "RejectionTime", "RequesterFeedback", "WorkTimeInSeconds",
    "LifetimeApprovalRate", "Last30DaysApprovalRate", "Last7DaysApprovalRate", "Input.image_url",
    "Answer.category.label", "Approve", "Reject",
];

/// AMT's date format: `Mon Mar 01 20:48:54 PST 2021` (timestamps are in PST, UTC-8).
pub fn amt_date(unix_utc: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let t = unix_utc - 8 * 3600;
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = crate::civil_from_days(days);
    format!(
        "{} {} {:02} {:02}:{:02}:{:02} PST {}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        y
    )
}

fn amt_id(rng: &mut ChaCha8Rng, len: usize) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..len).map(|_| A[rng.gen_range(0..A.len())] as char).collect()
}

/// Simulated AMT batch-results CSV for the study's 7 classes: `workers` honest workers
/// around the round-2 matrix (with per-worker variation), plus one spammer who always
/// answers "happy" and one random clicker; `answers_per_item` assignments per item; a few
/// of the spammer's assignments are `Rejected`. Same header and quoting as the real
/// download, data rows 2 fields shorter than the header (no Approve/Reject), as AMT writes.
pub fn simulate_amt_batch(items: &[(String, usize)], workers: usize, answers_per_item: usize, seed: u64) -> String {
    let k = EMOTIONS.len();
    let happy = EMOTIONS.iter().position(|e| *e == "happy").unwrap_or(3);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA3C5_0000_0000_0001);
    let n_honest = workers.max(1);
    let mut mats: Vec<Vec<f64>> = Vec::new();
    let base = round2_matrix();
    for _ in 0..n_honest {
        let mut m = vec![0.0; k * k];
        for j in 0..k {
            let alpha: Vec<f64> = (0..k).map(|l| 40.0 * base[l * k + j]).collect();
            let col = dirichlet(&mut rng, &alpha);
            for l in 0..k {
                m[l * k + j] = col[l];
            }
        }
        mats.push(m);
    }
    let spammer = mats.len();
    let mut m = vec![0.0; k * k];
    for j in 0..k {
        m[happy * k + j] = 1.0;
    }
    mats.push(m);
    mats.push(vec![1.0 / k as f64; k * k]);
    let nw = mats.len();
    let worker_ids: Vec<String> = (0..nw).map(|_| format!("A{}", amt_id(&mut rng, 13))).collect();
    let hit_type = amt_id(&mut rng, 30);
    let batch_start: i64 = 1_614_660_534; // 2021-03-02 04:48:54 UTC, like the study's batch
    let mut w = csv::WriterBuilder::new().quote_style(csv::QuoteStyle::Always).flexible(true).from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = w.write_record(AMT_HEADER);
    let per = answers_per_item.min(nw);
    let mut pool: Vec<usize> = (0..nw).collect();
    let mut submitted_per_worker = vec![0u32; nw];
    for (n, (url, truth)) in items.iter().enumerate() {
        let t = (*truth).min(k - 1);
        let hit = amt_id(&mut rng, 30);
        let created = batch_start + 4 * n as i64;
        let (chosen, _) = pool.partial_shuffle(&mut rng, per);
        let chosen: Vec<usize> = chosen.to_vec();
        for wk in chosen {
            let col: Vec<f64> = (0..k).map(|l| mats[wk][l * k + t]).collect();
            let label = sample_categorical(&mut rng, &col);
            let accept = created + rng.gen_range(60..7200);
            let work = rng.gen_range(3..40) as i64;
            let submit = accept + work;
            let rejected = wk == spammer && rng.gen_bool(0.2);
            submitted_per_worker[wk] += 1;
            let c = submitted_per_worker[wk];
            let rate = format!("100% ({c}/{c})");
            let rec: Vec<String> = vec![
                hit.clone(),
                hit_type.clone(),
                "Classification regarding with Facial Expression".into(),
                "Categorize the given content based on the provided criteria".into(),
                "categorize, image".into(),
                "$0.01".into(),
                amt_date(created),
                per.to_string(),
                "BatchId:4350992;OriginalHitTemplateId:928390873;".into(),
                "3600".into(),
                "259200".into(),
                amt_date(created + 7 * 86_400),
                String::new(),
                String::new(),
                amt_id(&mut rng, 30),
                worker_ids[wk].clone(),
                if rejected { "Rejected".into() } else { "Submitted".into() },
                amt_date(accept),
                amt_date(submit),
                amt_date(submit + 3 * 86_400),
                String::new(),
                if rejected { amt_date(submit + 3600) } else { String::new() },
                String::new(),
                work.to_string(),
                rate.clone(),
                rate.clone(),
                rate,
                url.clone(),
                EMOTIONS[label].to_string(),
            ];
            let _ = w.write_record(&rec);
        }
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amt_date_matches_the_real_file() {
        // "Mon Mar 01 20:48:54 PST 2021" is 2021-03-02T04:48:54Z
        assert_eq!(amt_date(1_614_660_534), "Mon Mar 01 20:48:54 PST 2021");
        assert_eq!(amt_date(1_614_660_534 + 7 * 86_400), "Mon Mar 08 20:48:54 PST 2021");
    }

    #[test]
    fn round2_matrix_columns_sum_to_one_and_match_the_reported_accuracy() {
        let m = round2_matrix();
        for j in 0..7 {
            let s: f64 = (0..7).map(|l| m[l * 7 + j]).sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
        // 1078 / 2100 right answers in round 2
        let acc: f64 = (0..7).map(|j| m[j * 7 + j]).sum::<f64>() / 7.0;
        assert!((acc - 1078.0 / 2100.0).abs() < 1e-9);
    }

    #[test]
    fn simulate_gives_distinct_workers_per_item_and_balanced_classes() {
        let d = simulate(&SimConfig::sparse_round2(3));
        assert_eq!(d.answers.len(), 2100);
        for i in 0..700 {
            let mut ws: Vec<usize> = d.answers.iter().filter(|a| a.0 == i).map(|a| a.1).collect();
            ws.sort();
            ws.dedup();
            assert_eq!(ws.len(), 3);
        }
        for c in 0..7 {
            assert_eq!(d.truth.iter().filter(|&&t| t == c).count(), 100);
        }
        let right = d.answers.iter().filter(|a| d.truth[a.0] == a.2).count() as f64 / 2100.0;
        assert!((right - 0.513).abs() < 0.05, "per-answer accuracy {right}");
    }

    #[test]
    fn amt_batch_has_the_real_header_and_short_rows() {
        let items: Vec<(String, usize)> =
            (0..50).map(|i| (format!("https://x/results/{}/{}_{i}.jpg", EMOTIONS[i % 7], EMOTIONS[i % 7]), i % 7)).collect();
        let text = simulate_amt_batch(&items, 10, 3, 1);
        let real_header = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/datasets/seed-study/amt/Batch_4350992_batch_results.csv"
        ))
        .ok()
        .map(|s| s.lines().next().unwrap_or("").to_string());
        let first = text.lines().next().unwrap();
        if let Some(h) = real_header {
            assert_eq!(first, h);
        }
        let mut r = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        assert_eq!(rows.len(), 150);
        assert!(rows.iter().all(|r| r.len() == 29));
        assert!(text.lines().nth(1).unwrap().starts_with('"'));
        assert_eq!(simulate_amt_batch(&items, 10, 3, 1), text, "deterministic for a seed");
    }
}
