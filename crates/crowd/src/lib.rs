//! pipeline-crowd (being written)
