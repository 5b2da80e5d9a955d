//! weave-dns (placeholder)
