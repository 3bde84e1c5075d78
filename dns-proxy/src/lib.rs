//! DNS name patterns (SEMANTICS 5).
