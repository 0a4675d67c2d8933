//! Class balancing plan: which originals to keep and which copies to make.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::VisionError;

/// What happens to a class that already has more than `per_class` items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BalanceMode {
    /// Keep every original (the class ends above `per_class`).
    #[default]
    Keep,
    /// Keep a seeded random subset of exactly `per_class` originals.
    SampleDown,
}

/// One output image: `source` indexes the input items; `copy` is `None` for the original
/// itself, `Some(k)` for the k-th transformed copy of that source (k from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub source: usize,
    pub class: usize,
    pub copy: Option<u32>,
}

/// Plan for items with class `labels[i]`: every class ends with exactly `per_class` items
/// (or more, with `Keep`, if it had more). Originals come first, in input order; class `c`
/// with `n < per_class` originals gets `per_class - n` copies cycling over its sources in
/// order (source `k % n` gets copy index `k / n`). Output is grouped by class.
/// A class with no items at all is an error (nothing to copy from), unless `per_class` is 0.
pub fn plan_balance(
    labels: &[usize],
    n_classes: usize,
    per_class: usize,
    mode: BalanceMode,
    seed: u64,
) -> Result<Vec<PlanItem>, VisionError> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (item, &label) in labels.iter().enumerate() {
        by_class
            .get_mut(label)
            .ok_or(VisionError::BadLabel { item, label, n_classes })?
            .push(item);
    }
    let mut plan = Vec::with_capacity(n_classes * per_class.max(1));
    for (class, mut items) in by_class.into_iter().enumerate() {
        if items.is_empty() && per_class > 0 {
            return Err(VisionError::EmptyClass { class, per_class });
        }
        if items.len() > per_class && mode == BalanceMode::SampleDown {
            // Per-class stream, so one class's choice does not depend on the others.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x5ca1_ab1e_u64.wrapping_mul(class as u64 + 1)));
            items.shuffle(&mut rng);
            items.truncate(per_class);
            items.sort_unstable();
        }
        plan.extend(items.iter().map(|&source| PlanItem { source, class, copy: None }));
        let n = items.len();
        for k in 0..per_class.saturating_sub(n) {
            plan.push(PlanItem { source: items[k % n], class, copy: Some((k / n) as u32) });
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn class_counts_exact(
            labels in proptest::collection::vec(0usize..7, 7..200),
            per_class in 1usize..120,
            down in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut labels = labels;
            labels.extend(0..7); // every class present
            let mode = if down { BalanceMode::SampleDown } else { BalanceMode::Keep };
            let plan = plan_balance(&labels, 7, per_class, mode, seed).unwrap();
            for c in 0..7 {
                let have = labels.iter().filter(|&&l| l == c).count();
                let got: Vec<_> = plan.iter().filter(|p| p.class == c).collect();
                let want = if down { per_class } else { per_class.max(have) };
                prop_assert_eq!(got.len(), want);
                // Originals kept (all, or N of them) and all from the class itself.
                let originals = got.iter().filter(|p| p.copy.is_none()).count();
                prop_assert_eq!(originals, have.min(want));
                prop_assert!(got.iter().all(|p| labels[p.source] == c));
            }
            // No (source, copy) pair twice: each copy gets its own random stream.
            let mut keys: Vec<_> = plan.iter().map(|p| (p.source, p.copy)).collect();
            keys.sort();
            keys.dedup();
            prop_assert_eq!(keys.len(), plan.len());
        }
    }

    #[test]
    fn copies_cycle_over_sources() {
        let labels = [0, 1, 0, 0];
        let plan = plan_balance(&labels, 2, 8, BalanceMode::Keep, 0).unwrap();
        let class0: Vec<_> = plan.iter().filter(|p| p.class == 0).map(|p| (p.source, p.copy)).collect();
        assert_eq!(
            class0,
            vec![(0, None), (2, None), (3, None), (0, Some(0)), (2, Some(0)), (3, Some(0)), (0, Some(1)), (2, Some(1))]
        );
        assert!(plan_balance(&[0, 0], 2, 3, BalanceMode::Keep, 0).unwrap_err().to_string().contains("class 1"));
        assert!(plan_balance(&[0, 5], 2, 3, BalanceMode::Keep, 0).is_err());
    }
}
