//! Stage `demo_data` (being written; registered in mod.rs once it runs).
