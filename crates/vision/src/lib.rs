//! pipeline-vision (being written)
