//! "Did you mean" suggestions for misspelt names (`epoch` -> `epochs`).

/// The candidate closest to `name`, if it is close enough to be a plausible typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), strsim::jaro_winkler(name, c), c))
        .filter(|(d, jw, c)| *d <= 2.max(c.len() / 3) || *jw >= 0.88)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(closest("epoch", ["epochs", "lr", "seed"]), Some("epochs"));
        assert_eq!(closest("rotaton_range", ["rotation_range", "zoom_range"]), Some("rotation_range"));
        assert_eq!(closest("xyz", ["epochs", "batch_size"]), None);
    }
}
