//! Stage `augment` (being written; registered in mod.rs once it runs).
