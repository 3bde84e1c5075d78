//! Per-node transparent DNS proxy enforcing CiliumNetworkPolicy DNS rules (SEMANTICS 5, 6).
//!
//! The library holds the name-pattern matcher shared by the proxy, the node-agent validator,
//! `policy explain` and `toFQDNs` selectors, the socket-free message core of the proxy
//! (module `message`: police a query, read an answer), and the proxy process itself (module
//! `app`: policy stream, listeners, upstreams, FQDN hold, flow records, metrics).

pub mod app;
pub mod message;
pub mod name_pattern;

pub use message::{
    AddressRecord, CheckedQuery, DenyRcode, QueryError, QueryVerdict, ResponseError, ResponseInfo,
    Section, WireError, WireName, fuzz_query, inspect_response, police_query, police_query_with,
    servfail, shed_answer, truncate_for_udp,
};
pub use name_pattern::{
    CompiledNameMatcher, DnsRuleSet, DnsSelectorSpec, MAX_NAME_LEN, MAX_PATTERN_LEN,
    NamePatternError, SelectorField, normalize_name, validate_match_name, validate_match_pattern,
};
