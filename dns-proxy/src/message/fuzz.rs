//! [`fuzz_query`]: police arbitrary bytes and check the invariants of the query path.

use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType, ResponseCode};

use super::{DenyRcode, QueryVerdict, police_query};
use crate::name_pattern::{DnsRuleSet, DnsSelectorSpec};

/// The rules `fuzz_query` polices against.
pub(super) fn fuzz_rules() -> &'static DnsRuleSet {
    static RULES: OnceLock<DnsRuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let specs = [
            DnsSelectorSpec::MatchPattern("*.example.com".to_owned()),
            DnsSelectorSpec::MatchName("allowed.test".to_owned()),
            DnsSelectorSpec::MatchPattern("**.deep.test".to_owned()),
        ];
        DnsRuleSet::compile(&specs).unwrap_or_else(|e| panic!("fuzz rules: {e}"))
    })
}

/// Run [`police_query`] on arbitrary bytes and check its invariants; panics when one breaks
/// (for a cargo-fuzz target and the mutation tests).
///
/// - it never panics itself;
/// - an allowed query's forwarded bytes parse back to one question whose wire labels are
///   exactly the checked ones (same case), with the client's ID, and a matching rule;
/// - every answer the proxy builds parses, is a response and echoes the ID; a denial echoes
///   the question.
pub fn fuzz_query(bytes: &[u8]) {
    let rules = fuzz_rules();
    let must_parse = |what: &str, wire: &[u8]| {
        Message::from_vec(wire).unwrap_or_else(|e| panic!("{what} does not parse: {e}"))
    };
    let client_id = || {
        let [hi, lo] = [bytes[0], bytes[1]];
        u16::from_be_bytes([hi, lo])
    };
    match police_query(bytes, rules, DenyRcode::Refused) {
        QueryVerdict::Allowed {
            query,
            rule,
            forward,
        } => {
            let msg = must_parse("forwarded query", &forward);
            assert_eq!(msg.metadata.id, client_id(), "forwarded ID");
            assert_eq!(msg.metadata.message_type, MessageType::Query);
            assert_eq!(msg.queries.len(), 1, "forwarded questions");
            assert!(msg.answers.is_empty() && msg.authorities.is_empty());
            assert!(msg.additionals.is_empty(), "only OPT may be forwarded");
            let sent: Vec<&[u8]> = msg.queries[0].name.iter().collect();
            let checked: Vec<&[u8]> = query.question.name.iter().collect();
            assert_eq!(sent, checked, "forwarded name differs from the checked one");
            assert_eq!(msg.queries[0].query_type, query.question.query_type);
            assert_eq!(msg.edns.is_some(), query.edns.is_some());
            assert_eq!(rules.matches_wire_labels(&sent), Some(rule));
        }
        QueryVerdict::Denied { query, answer } => {
            let msg = must_parse("denial", &answer);
            assert_eq!(msg.metadata.id, client_id(), "denial ID");
            assert_eq!(msg.metadata.message_type, MessageType::Response);
            assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
            assert_eq!(msg.queries.len(), 1);
            assert!(query.name.eq_name(&msg.queries[0].name));
            let labels: Vec<&[u8]> = query.question.name.iter().collect();
            assert_eq!(rules.matches_wire_labels(&labels), None);
        }
        QueryVerdict::Rejected { error, answer } => {
            let msg = must_parse("error answer", &answer);
            assert_eq!(msg.metadata.id, client_id(), "error answer ID");
            assert_eq!(msg.metadata.message_type, MessageType::Response);
            assert_eq!(Some(msg.metadata.response_code), error.response_code());
        }
        QueryVerdict::Dropped { error } => {
            assert_eq!(error.response_code(), None, "{error} must be answered");
        }
    }
}
