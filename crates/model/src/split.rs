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
}
