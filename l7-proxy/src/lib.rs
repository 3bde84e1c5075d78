//! HTTP rule matching (SEMANTICS 4).
