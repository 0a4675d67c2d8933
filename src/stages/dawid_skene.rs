//! Stage `dawid_skene` (being written; registered in mod.rs once it runs).
