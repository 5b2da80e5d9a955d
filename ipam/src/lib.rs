//! weave-ipam (placeholder)
