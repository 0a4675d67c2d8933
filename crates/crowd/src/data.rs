//! Dense integer answers: items x workers x labels in CSR form, grouped by item.
//!
//! Each answer is one `u32` code `worker * k + label`, so the EM inner loop reads one
//! index per answer and finds the worker's confusion row with it.

use std::collections::HashMap;

use crate::{CrowdError, Result};

#[derive(Debug, Clone)]
pub struct Answers {
    pub classes: Vec<String>,
    pub items: Vec<String>,
    pub workers: Vec<String>,
    /// Answers of item `i` are `codes[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<usize>,
    /// `worker * k + label`.
    pub codes: Vec<u32>,
}

/// Most classes any model takes (EM's kernels are compiled up to this; every report holds
/// workers x classes^2 numbers).
pub const MAX_CLASSES: usize = 64;

/// What both constructors require of the classes and the workers: 2 to [`MAX_CLASSES`]
/// classes, and `worker * k + label` codes that fit a `u32`.
fn check_shape(n_workers: usize, k: usize) -> Result<()> {
    if k < 2 {
        return Err(CrowdError::Data(format!("need at least 2 classes, got {k}")));
    }
    if k > MAX_CLASSES {
        return Err(CrowdError::Data(format!("{k} classes: at most {MAX_CLASSES} are supported")));
    }
    if (n_workers as u64) * (k as u64) > u32::MAX as u64 {
        return Err(CrowdError::Data("too many workers x classes for u32 codes".into()));
    }
    Ok(())
}

/// New indices for `0..n` keeping only those `used` mentions, in order (`u32::MAX` for the
/// others): to leave out the items or workers a subset no longer refers to.
pub(crate) fn compact_ids(n: usize, used: impl IntoIterator<Item = usize>) -> Vec<u32> {
    let mut new = vec![u32::MAX; n];
    for x in used {
        new[x] = 0;
    }
    let mut next = 0u32;
    for m in new.iter_mut().filter(|m| **m == 0) {
        *m = next;
        next += 1;
    }
    new
}

impl Answers {
    pub fn n_items(&self) -> usize {
        self.items.len()
    }
    pub fn n_workers(&self) -> usize {
        self.workers.len()
    }
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }
    pub fn n_answers(&self) -> usize {
        self.codes.len()
    }
    pub fn item_codes(&self, i: usize) -> &[u32] {
        &self.codes[self.offsets[i]..self.offsets[i + 1]]
    }
    pub fn worker_of(&self, code: u32) -> usize {
        code as usize / self.n_classes()
    }
    pub fn label_of(&self, code: u32) -> usize {
        code as usize % self.n_classes()
    }

    /// From `(item, worker, label)` index triples; items/workers named by their index.
    /// At most [`MAX_CLASSES`] classes (found by a hostile pass: 10,000 labels in a 311 KB
    /// file asked for 30 GB in majority vote's per-worker matrices before EM's own limit).
    /// Order within an item follows the input; items keep their index.
    pub fn from_triples(
        n_items: usize,
        n_workers: usize,
        classes: Vec<String>,
        triples: &[(usize, usize, usize)],
    ) -> Result<Answers> {
        let k = classes.len();
        check_shape(n_workers, k)?;
        let mut counts = vec![0usize; n_items + 1];
        for (n, &(i, w, l)) in triples.iter().enumerate() {
            if i >= n_items || w >= n_workers || l >= k {
                return Err(CrowdError::Data(format!(
                    "answer {n}: item {i}, worker {w}, label {l} out of range ({n_items} items, {n_workers} workers, {k} classes)"
                )));
            }
            counts[i + 1] += 1;
        }
        for i in 0..n_items {
            counts[i + 1] += counts[i];
        }
        let offsets = counts.clone();
        let mut fill = counts;
        let mut codes = vec![0u32; triples.len()];
        for &(i, w, l) in triples {
            codes[fill[i]] = (w * k + l) as u32;
            fill[i] += 1;
        }
        Ok(Answers {
            classes,
            items: (0..n_items).map(|i| i.to_string()).collect(),
            workers: (0..n_workers).map(|w| w.to_string()).collect(),
            offsets,
            codes,
        })
    }

    /// From named items and workers and one `(item, worker, label)` index per answer, as
    /// three columns (what a streaming reader produces without building tuples). Answers of
    /// an item keep their input order.
    pub fn from_columns(
        items: Vec<String>,
        workers: Vec<String>,
        classes: Vec<String>,
        item_of: &[u32],
        worker_of: &[u32],
        label_of: &[u32],
    ) -> Result<Answers> {
        let (n_items, n_workers, k) = (items.len(), workers.len(), classes.len());
        check_shape(n_workers, k)?;
        if item_of.len() != worker_of.len() || item_of.len() != label_of.len() {
            return Err(CrowdError::Data("answer columns of different lengths".into()));
        }
        let mut offsets = vec![0usize; n_items + 1];
        for (n, ((&i, &w), &l)) in item_of.iter().zip(worker_of).zip(label_of).enumerate() {
            if i as usize >= n_items || w as usize >= n_workers || l as usize >= k {
                return Err(CrowdError::Data(format!(
                    "answer {n}: item {i}, worker {w}, label {l} out of range ({n_items} items, {n_workers} workers, {k} classes)"
                )));
            }
            offsets[i as usize + 1] += 1;
        }
        for i in 0..n_items {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut codes = vec![0u32; item_of.len()];
        for ((&i, &w), &l) in item_of.iter().zip(worker_of).zip(label_of) {
            codes[fill[i as usize]] = w * k as u32 + l;
            fill[i as usize] += 1;
        }
        Ok(Answers { classes, items, workers, offsets, codes })
    }

    /// Keep one answer per (worker, item): the first in input order, as the AMT reader does.
    /// The models assume a worker answers an item once; a repeated row (a concatenated file,
    /// a re-submitted task) would count that worker twice. Returns `(dropped, conflicting)`:
    /// the repeats removed, and how many of them disagreed with the answer kept.
    pub fn drop_repeated_workers(&mut self) -> (usize, usize) {
        let k = self.n_classes() as u32;
        let (mut dropped, mut conflicting) = (0usize, 0usize);
        let mut seen: HashMap<u32, u32> = HashMap::new();
        let mut write = 0usize;
        let mut start = 0usize;
        for i in 0..self.n_items() {
            let end = self.offsets[i + 1];
            let first = write;
            // few answers per item (3-25 here): a scan; a big item gets a map
            let big = end - start > 32;
            if big {
                // (cleared only here: clearing a grown map for every small item walks its capacity)
                seen.clear();
            }
            for r in start..end {
                let code = self.codes[r];
                let (w, l) = (code / k, code % k);
                let kept = if big {
                    seen.get(&w).copied()
                } else {
                    self.codes[first..write].iter().find(|&&c| c / k == w).map(|&c| c % k)
                };
                match kept {
                    Some(kl) => {
                        dropped += 1;
                        conflicting += usize::from(kl != l);
                    }
                    None => {
                        if big {
                            seen.insert(w, l);
                        }
                        self.codes[write] = code;
                        write += 1;
                    }
                }
            }
            start = end;
            self.offsets[i + 1] = write;
        }
        self.codes.truncate(write);
        (dropped, conflicting)
    }

    /// Answers per label, over everyone.
    pub fn label_counts(&self) -> Vec<usize> {
        let k = self.n_classes();
        let mut c = vec![0usize; k];
        for &code in &self.codes {
            c[code as usize % k] += 1;
        }
        c
    }

    /// `[worker][label]` answer counts.
    pub fn worker_label_counts(&self) -> Vec<Vec<usize>> {
        let k = self.n_classes();
        let mut c = vec![vec![0usize; k]; self.n_workers()];
        for &code in &self.codes {
            c[code as usize / k][code as usize % k] += 1;
        }
        c
    }

    /// Fraction of answers equal to another answer on the same item (pairwise agreement).
    pub fn pairwise_agreement(&self) -> f64 {
        // counted per label, not over pairs: one item with 100,000 answers took 11 s
        let (mut agree, mut pairs) = (0u64, 0u64);
        let k = self.n_classes();
        let mut per = vec![0u64; k];
        for i in 0..self.n_items() {
            let c = self.item_codes(i);
            per.iter_mut().for_each(|x| *x = 0);
            for &x in c {
                per[x as usize % k] += 1;
            }
            let n = c.len() as u64;
            pairs += n * n.saturating_sub(1) / 2;
            agree += per.iter().map(|&m| m * m.saturating_sub(1) / 2).sum::<u64>();
        }
        if pairs == 0 {
            0.0
        } else {
            agree as f64 / pairs as f64
        }
    }
}

/// Builds [`Answers`] from named items, workers and labels.
#[derive(Debug, Clone)]
pub struct AnswersBuilder {
    classes: Vec<String>,
    class_index: HashMap<String, usize>,
    items: Vec<String>,
    item_index: HashMap<String, usize>,
    workers: Vec<String>,
    worker_index: HashMap<String, usize>,
    triples: Vec<(usize, usize, usize)>,
}

impl AnswersBuilder {
    pub fn new(classes: &[String]) -> Self {
        AnswersBuilder {
            classes: classes.to_vec(),
            class_index: classes.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect(),
            items: Vec::new(),
            item_index: HashMap::new(),
            workers: Vec::new(),
            worker_index: HashMap::new(),
            triples: Vec::new(),
        }
    }
    pub fn class_index(&self, label: &str) -> Option<usize> {
        self.class_index.get(label).copied()
    }
    fn intern(names: &mut Vec<String>, index: &mut HashMap<String, usize>, s: &str) -> usize {
        if let Some(&i) = index.get(s) {
            return i;
        }
        names.push(s.to_string());
        index.insert(s.to_string(), names.len() - 1);
        names.len() - 1
    }
    /// Register an item even if it ends up without answers (keeps it in the output).
    pub fn add_item(&mut self, item: &str) -> usize {
        Self::intern(&mut self.items, &mut self.item_index, item)
    }
    /// Add one answer; `Err(label)` if the label is not a class.
    pub fn push(&mut self, item: &str, worker: &str, label: &str) -> std::result::Result<(), String> {
        let l = self.class_index(label).ok_or_else(|| label.to_string())?;
        self.push_index(item, worker, l);
        Ok(())
    }
    pub fn push_index(&mut self, item: &str, worker: &str, label: usize) {
        let i = Self::intern(&mut self.items, &mut self.item_index, item);
        let w = Self::intern(&mut self.workers, &mut self.worker_index, worker);
        self.triples.push((i, w, label));
    }
    pub fn build(self) -> Result<Answers> {
        let mut a = Answers::from_triples(self.items.len(), self.workers.len(), self.classes, &self.triples)?;
        a.items = self.items;
        a.workers = self.workers;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_64_classes_are_refused_by_every_constructor() {
        let t = vec![(0, 0, 0), (0, 1, 64)];
        let e = Answers::from_triples(1, 2, cls(65), &t).unwrap_err().to_string();
        assert!(e.contains("65 classes: at most 64"), "{e}");
        let e = Answers::from_columns(vec!["i".into()], vec!["a".into(), "b".into()], cls(65), &[0, 0], &[0, 1], &[0, 64]).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
        assert!(Answers::from_triples(1, 2, cls(64), &[(0, 0, 0), (0, 1, 63)]).is_ok());
    }

    fn cls(k: usize) -> Vec<String> {
        (0..k).map(|c| c.to_string()).collect()
    }

    #[test]
    fn repeated_answers_of_a_worker_keep_the_first() {
        // item 0: worker 0 twice (same label), item 1: worker 1 twice (different labels),
        // item 2: 40 answers of 20 workers, each twice (the map path), one conflicting
        let mut t = vec![(0, 0, 1), (0, 1, 2), (0, 0, 1), (1, 1, 0), (1, 1, 2), (1, 0, 2)];
        for w in 0..20 {
            t.push((2, w, 1));
        }
        for w in 0..20 {
            t.push((2, w, if w == 7 { 0 } else { 1 }));
        }
        let mut a = Answers::from_triples(4, 20, cls(3), &t).unwrap();
        assert_eq!(a.drop_repeated_workers(), (22, 2));
        let got: Vec<Vec<(usize, usize)>> =
            (0..4).map(|i| a.item_codes(i).iter().map(|&c| (a.worker_of(c), a.label_of(c))).collect()).collect();
        assert_eq!(got[0], vec![(0, 1), (1, 2)]);
        assert_eq!(got[1], vec![(1, 0), (0, 2)]);
        assert_eq!(got[2], (0..20).map(|w| (w, 1)).collect::<Vec<_>>());
        assert!(got[3].is_empty());
        assert_eq!(a.n_answers(), 24);
        // nothing repeated: unchanged
        let before = a.clone();
        assert_eq!(a.drop_repeated_workers(), (0, 0));
        assert_eq!((a.offsets, a.codes), (before.offsets, before.codes));
    }

    #[test]
    fn csr_groups_by_item_and_codes_decode() {
        let a = Answers::from_triples(3, 2, cls(3), &[(2, 1, 2), (0, 0, 1), (2, 0, 0), (0, 1, 1)]).unwrap();
        assert_eq!(a.offsets, vec![0, 2, 2, 4]);
        let c: Vec<(usize, usize)> = a.item_codes(2).iter().map(|&c| (a.worker_of(c), a.label_of(c))).collect();
        assert_eq!(c, vec![(1, 2), (0, 0)]);
        assert!(a.item_codes(1).is_empty());
        assert_eq!(a.label_counts(), vec![1, 2, 1]);
        assert!((a.pairwise_agreement() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn out_of_range_is_an_error() {
        assert!(Answers::from_triples(1, 1, cls(2), &[(0, 0, 2)]).is_err());
        assert!(Answers::from_triples(1, 1, cls(1), &[]).is_err());
    }

    #[test]
    fn builder_interns_names_and_rejects_unknown_labels() {
        let mut b = AnswersBuilder::new(&["x".to_string(), "y".to_string()]);
        b.push("img1", "w1", "y").unwrap();
        b.push("img2", "w1", "x").unwrap();
        assert_eq!(b.push("img1", "w2", "z"), Err("z".to_string()));
        let a = b.build().unwrap();
        assert_eq!(a.items, vec!["img1", "img2"]);
        assert_eq!(a.workers, vec!["w1"]);
        assert_eq!(a.label_of(a.item_codes(0)[0]), 1);
    }
}
