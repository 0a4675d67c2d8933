//! pipeline-model (being written)
