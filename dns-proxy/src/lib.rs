//! Per-node transparent DNS proxy enforcing CiliumNetworkPolicy DNS rules (SEMANTICS 5, 6).
//!
//! So far the library holds the name-pattern matcher shared by the proxy, the node-agent
//! validator, `policy explain` and `toFQDNs` selectors.

pub mod name_pattern;

pub use name_pattern::{
    CompiledNameMatcher, DnsRuleSet, DnsSelectorSpec, MAX_NAME_LEN, MAX_PATTERN_LEN,
    NamePatternError, SelectorField, normalize_name, validate_match_name, validate_match_pattern,
};
