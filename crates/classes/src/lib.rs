//! The study's seven emotion classes, in the order of its labelling UI (options 1-7).
//!
//! A crate of its own because it sits below every other one: the crowd crate (AMT defaults,
//! simulations) and the vision crate (synthetic faces, augment's fallback) do not depend on
//! each other, and `pipeline-model` and the stages use them through those.
//! Where the data names its classes (a `summary.json`, an augment manifest), the data wins.

pub const CLASSES: [&str; 7] = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"];

/// Longest class name taken, in bytes: a name is a directory name (`augment`'s
/// `images/<class>/`) with file names under it.
pub const MAX_CLASS_NAME: usize = 100;

/// Why `name` cannot be a class name, or `None`. Class names become directory names and CSV
/// fields: `"../../x"` as a class made `augment` write (and overwrite) files outside its
/// output (found by a hostile pass). One plain path part, no surrounding spaces (labels are
/// matched trimmed), no control characters.
pub fn bad_class_name(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("an empty name".into());
    }
    if name.trim() != name {
        return Some("spaces around it".into());
    }
    if name == "." || name == ".." || name.contains(['/', '\\']) {
        return Some("not a plain name (`/`, `\\`, `.` and `..` are path syntax)".into());
    }
    // a hidden directory: image folders skip those, and the class would read as empty
    if name.starts_with('.') {
        return Some("starts with `.` (a hidden directory's name)".into());
    }
    if name.chars().any(char::is_control) {
        return Some("control characters".into());
    }
    if name.len() > MAX_CLASS_NAME {
        return Some(format!("{} bytes, over {MAX_CLASS_NAME}", name.len()));
    }
    None
}

/// The first problem of a list of class names: a bad name, or two names that differ only in
/// case (labels are matched without case, so `Happy` and `happy` would be one class).
pub fn check_classes<S: AsRef<str>>(names: &[S]) -> Result<(), String> {
    let mut seen = std::collections::HashMap::new();
    for n in names {
        let n = n.as_ref();
        if let Some(why) = bad_class_name(n) {
            return Err(format!("{n:?}: {why}"));
        }
        if let Some(first) = seen.insert(n.to_lowercase(), n) {
            return Err(if first == n { format!("{n:?} is listed twice") } else { format!("{first:?} and {n:?} differ only in case") });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_plain_names() {
        assert!(check_classes(&CLASSES).is_ok());
        assert!(check_classes(&["a b", "ünïcode", "x-1"]).is_ok());
        for bad in ["", " ", ".x", "../../x", "a/b", "a\\b", ".", "..", " happy", "happy ", "a\nb", "a\u{7}"] {
            assert!(bad_class_name(bad).is_some(), "{bad:?}");
        }
        assert!(bad_class_name(&"x".repeat(101)).is_some());
        assert!(check_classes(&["happy", "sad", "happy"]).unwrap_err().contains("listed twice"));
        assert!(check_classes(&["Happy", "happy"]).unwrap_err().contains("differ only in case"));
    }
}
