//! Holding validation items out of the training data, by item and by duplicate group.
//!
//! Used by `train` when it has no validation ImageFolder: a share of the labelled *items*
//! goes to validation with every augmented copy of them left out of training, stratified by
//! label. Items that duplicate each other (same pixels, or near: `pipeline_vision::dedup`)
//! form one group and stay on one side, so the held-out images are new to the model.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// `is_valid` per item. `labels[i]`: item i's class; `groups[i]`: its duplicate group (any
/// id shared by the group's items; the label of a group is that of its first item).
/// Per class, `round(fraction * groups of the class)` groups are drawn with `seed` (at
/// least one and at most all but one when the class has two groups or more; none when it
/// has one).
pub fn holdout_items(labels: &[usize], groups: &[usize], fraction: f64, seed: u64) -> Vec<bool> {
    assert_eq!(labels.len(), groups.len());
    let n = labels.len();
    // Group id -> first item of the group, in item order.
    let mut first_of: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        first_of.entry(g).or_insert(i);
    }
    let k = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
    let mut reps: Vec<(usize, usize)> = first_of.into_iter().collect(); // (group, first item)
    reps.sort_by_key(|&(_, first)| first);
    for &(g, first) in &reps {
        by_class[labels[first]].push(g);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7661_6c69_6421); // "valid!"
    let mut chosen = std::collections::HashSet::new();
    for groups_c in &mut by_class {
        let m = groups_c.len();
        if m < 2 || fraction <= 0.0 {
            continue;
        }
        let take = ((fraction * m as f64).round() as usize).clamp(1, m - 1);
        groups_c.shuffle(&mut rng);
        chosen.extend(groups_c[..take].iter().copied());
    }
    (0..n).map(|i| chosen.contains(&groups[i])).collect()
}

/// Fold (`0..k`) per item for a `k`-member ensemble: every duplicate group goes whole to one
/// fold, and each class's groups are dealt round the folds in a seeded order, so every fold
/// holds about `1/k` of every class. Dealing starts where the previous class stopped, which
/// keeps the folds' sizes within one of each other. A class with a single group gets fold
/// `k`, which validates no member: held out, it would leave one member without the class.
/// Same `labels`/`groups` convention as [`holdout_items`].
pub fn kfold_items(labels: &[usize], groups: &[usize], k: usize, seed: u64) -> Vec<usize> {
    assert_eq!(labels.len(), groups.len());
    assert!(k >= 1);
    let mut first_of: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        first_of.entry(g).or_insert(i);
    }
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    let mut reps: Vec<(usize, usize)> = first_of.into_iter().collect();
    reps.sort_by_key(|&(_, first)| first);
    for &(g, first) in &reps {
        by_class[labels[first]].push(g);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x666f_6c64_7321); // "folds!"
    let mut fold_of_group = std::collections::HashMap::new();
    let mut next = 0usize;
    for groups_c in &mut by_class {
        if groups_c.len() == 1 {
            fold_of_group.insert(groups_c[0], k);
            continue;
        }
        groups_c.shuffle(&mut rng);
        for &g in groups_c.iter() {
            fold_of_group.insert(g, next % k);
            next += 1;
        }
    }
    groups.iter().map(|g| fold_of_group[g]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_out_a_stratified_share_of_groups() {
        let labels: Vec<usize> = (0..700).map(|i| i / 100).collect();
        let groups: Vec<usize> = (0..700).collect();
        let v = holdout_items(&labels, &groups, 0.15, 1);
        for c in 0..7 {
            assert_eq!(v[c * 100..(c + 1) * 100].iter().filter(|&&b| b).count(), 15, "class {c}");
        }
        assert_eq!(v, holdout_items(&labels, &groups, 0.15, 1), "seeded");
        assert_ne!(v, holdout_items(&labels, &groups, 0.15, 2));
        // A duplicate group stays on one side.
        let mut groups = groups;
        for i in 0..50 {
            groups[2 * i + 1] = 2 * i; // pairs (0,1), (2,3), ... in class 0
        }
        let v = holdout_items(&labels, &groups, 0.15, 3);
        for i in 0..50 {
            assert_eq!(v[2 * i], v[2 * i + 1]);
        }
        // A class of one item keeps it for training; two items: one each side.
        let v = holdout_items(&[0, 1, 1], &[0, 1, 2], 0.15, 1);
        assert_eq!((v[0], v[1] as u8 + v[2] as u8), (false, 1));
    }
    #[test]
    fn kfold_deals_every_class_round_the_folds_and_keeps_groups_whole() {
        let labels: Vec<usize> = (0..700).map(|i| i / 100).collect();
        let mut groups: Vec<usize> = (0..700).collect();
        for i in 0..20 {
            groups[2 * i + 1] = 2 * i; // duplicate pairs in class 0
        }
        let f = kfold_items(&labels, &groups, 5, 7);
        assert_eq!(f, kfold_items(&labels, &groups, 5, 7), "seeded");
        assert_ne!(f, kfold_items(&labels, &groups, 5, 8));
        for i in 0..20 {
            assert_eq!(f[2 * i], f[2 * i + 1], "a duplicate pair split across folds");
        }
        for c in 1..7 {
            for k in 0..5 {
                let n = (c * 100..(c + 1) * 100).filter(|&i| f[i] == k).count();
                assert_eq!(n, 20, "class {c} fold {k}");
            }
        }
        let sizes: Vec<usize> = (0..5).map(|k| f.iter().filter(|&&x| x == k).count()).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 20, "{sizes:?}");
        // Four items, three folds: every fold gets one, whatever their classes.
        let mut one = kfold_items(&[0, 0, 1, 1], &[0, 1, 2, 3], 3, 1);
        one.sort();
        one.dedup();
        assert_eq!(one, vec![0, 1, 2]);
        // A class with one item (class 0 here) validates no member: every member trains on it.
        let f = kfold_items(&[0, 1, 1, 1, 1], &[0, 1, 2, 3, 4], 2, 3);
        assert_eq!(f[0], 2, "{f:?}");
        assert_eq!(f[1..].iter().filter(|&&x| x == 0).count(), 2, "{f:?}");
    }
}
