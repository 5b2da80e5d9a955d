//! weave-router (placeholder)
