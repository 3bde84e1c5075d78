use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::*;
use crate::name_pattern::DnsSelectorSpec;

/// A query in wire form, built by hand so the tests control every byte.
struct Wire {
    id: u16,
    flags: [u8; 2],
    qdcount: Option<u16>,
    questions: Vec<Vec<u8>>,
    additional: Vec<Vec<u8>>,
}

impl Wire {
    fn query(labels: &[&[u8]]) -> Self {
        Self {
            id: 0xbeef,
            flags: [0x01, 0x00], // RD
            qdcount: None,
            questions: vec![question(&name(labels), 1)],
            additional: Vec::new(),
        }
    }

    fn with_opt(mut self, payload: u16, dnssec_ok: bool, options: &[u8]) -> Self {
        let mut rr = vec![0]; // root owner
        rr.extend_from_slice(&41u16.to_be_bytes());
        rr.extend_from_slice(&payload.to_be_bytes());
        rr.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
        rr.extend_from_slice(&u16::try_from(options.len()).unwrap_or(0).to_be_bytes());
        rr.extend_from_slice(options);
        self.additional.push(rr);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.id.to_be_bytes().to_vec();
        out.extend_from_slice(&self.flags);
        let qd = self
            .qdcount
            .unwrap_or(u16::try_from(self.questions.len()).unwrap_or(0));
        out.extend_from_slice(&qd.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(
            &u16::try_from(self.additional.len())
                .unwrap_or(0)
                .to_be_bytes(),
        );
        for q in self.questions.iter().chain(&self.additional) {
            out.extend_from_slice(q);
        }
        out
    }
}

fn name(labels: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in labels {
        out.push(u8::try_from(l.len()).unwrap_or(0));
        out.extend_from_slice(l);
    }
    out.push(0);
    out
}

fn question(name: &[u8], qtype: u16) -> Vec<u8> {
    let mut out = name.to_vec();
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out
}

fn rules(specs: &[DnsSelectorSpec]) -> DnsRuleSet {
    DnsRuleSet::compile(specs).unwrap_or_else(|e| panic!("{e}"))
}

fn name_rule(s: &str) -> DnsSelectorSpec {
    DnsSelectorSpec::MatchName(s.to_owned())
}

fn pattern_rule(s: &str) -> DnsSelectorSpec {
    DnsSelectorSpec::MatchPattern(s.to_owned())
}

fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).unwrap_or_else(|e| panic!("{e}"))
}

fn police(bytes: &[u8], set: &DnsRuleSet) -> QueryVerdict {
    fuzz_query(bytes);
    police_query(bytes, set, DenyRcode::Refused)
}

fn allowed(v: QueryVerdict) -> (CheckedQuery, usize, Vec<u8>) {
    match v {
        QueryVerdict::Allowed {
            query,
            rule,
            forward,
        } => (query, rule, forward),
        other => panic!("expected allowed, got {other:?}"),
    }
}

fn denied(v: QueryVerdict) -> Message {
    match v {
        QueryVerdict::Denied { answer, .. } => parse(&answer),
        other => panic!("expected denied, got {other:?}"),
    }
}

fn rejected(v: QueryVerdict) -> (QueryError, Message) {
    match v {
        QueryVerdict::Rejected { error, answer } => (error, parse(&answer)),
        other => panic!("expected rejected, got {other:?}"),
    }
}

fn dropped(v: QueryVerdict) -> QueryError {
    match v {
        QueryVerdict::Dropped { error } => error,
        other => panic!("expected dropped, got {other:?}"),
    }
}

#[test]
fn match_name_allows_exact_name_only() {
    let set = rules(&[name_rule("example.com")]);
    let (query, rule, forward) = allowed(police(&Wire::query(&[b"example", b"com"]).bytes(), &set));
    assert_eq!(rule, 0);
    assert_eq!(query.id(), 0xbeef);
    assert_eq!(query.name().to_string(), "example.com.");
    let sent = parse(&forward);
    assert_eq!(sent.metadata.id, 0xbeef);
    assert!(sent.metadata.recursion_desired);
    assert_eq!(sent.queries.len(), 1);
    assert!(sent.edns.is_none());
    // Re-encoded, but an uncompressed one-question query comes out byte-identical.
    assert_eq!(forward, Wire::query(&[b"example", b"com"]).bytes());

    let answer = denied(police(
        &Wire::query(&[b"www", b"example", b"com"]).bytes(),
        &set,
    ));
    assert_eq!(answer.metadata.id, 0xbeef);
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert!(answer.metadata.recursion_desired && answer.metadata.recursion_available);
    assert_eq!(answer.queries.len(), 1);
    assert_eq!(answer.queries[0].name.to_ascii(), "www.example.com.");
    assert!(answer.answers.is_empty());
}

#[test]
fn denial_rcode_is_configurable() {
    let set = rules(&[name_rule("example.com")]);
    let bytes = Wire::query(&[b"other", b"com"]).bytes();
    let answer = denied(police_query(&bytes, &set, DenyRcode::NxDomain));
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(answer.metadata.id, 0xbeef);
}

#[test]
fn match_pattern_star_label() {
    let set = rules(&[name_rule("allowed.test"), pattern_rule("*.example.com")]);
    let (_, rule, _) = allowed(police(
        &Wire::query(&[b"a", b"example", b"com"]).bytes(),
        &set,
    ));
    assert_eq!(rule, 1);
    denied(police(
        &Wire::query(&[b"a", b"b", b"example", b"com"]).bytes(),
        &set,
    ));
    denied(police(&Wire::query(&[b"example", b"com"]).bytes(), &set));
}

#[test]
fn match_pattern_star_allows_everything() {
    let set = rules(&[pattern_rule("*")]);
    for labels in [
        &[b"a".as_slice(), b"example", b"com"][..],
        &[b"we\xc3\xafrd", b"test"],
        &[b"a.b", b"c"],
        &[],
    ] {
        let (query, _, forward) = allowed(police(&Wire::query(labels).bytes(), &set));
        let sent = parse(&forward);
        let got: Vec<&[u8]> = sent.queries[0].name.iter().collect();
        assert_eq!(got, labels);
        assert_eq!(query.name().labels().count(), labels.len());
    }
}

#[test]
fn mixed_case_matches_and_is_forwarded_as_received() {
    let set = rules(&[name_rule("WWW.example.COM")]);
    let wire = Wire::query(&[b"wWw", b"ExAmPlE", b"cOm"]).bytes();
    let (query, _, forward) = allowed(police(&wire, &set));
    assert_eq!(query.name().to_string(), "www.example.com.");
    let sent = parse(&forward);
    let got: Vec<&[u8]> = sent.queries[0].name.iter().collect();
    assert_eq!(got, [b"wWw".as_slice(), b"ExAmPlE", b"cOm"]);
}

#[test]
fn xn_labels_are_matched_as_wire_ascii() {
    // Rule in punycode: the wire label matches, whatever hickory would display.
    let set = rules(&[name_rule("xn--bcher-kva.example")]);
    let wire = Wire::query(&[b"xn--bcher-kva", b"example"]).bytes();
    let (_, _, forward) = allowed(police(&wire, &set));
    assert_eq!(forward, wire);
    // The same name as raw UTF-8 on the wire is another name: only `*` matches it.
    denied(police(
        &Wire::query(&["bücher".as_bytes(), b"example"]).bytes(),
        &set,
    ));
}

#[test]
fn full_width_letters_never_fold_to_ascii() {
    let set = rules(&[name_rule("example.com")]);
    // "ｅｘａｍｐｌｅ" in full-width letters (UTF-8 on the wire): text parsing would map it
    // to "example"; the wire matcher must not.
    let full_width = "ｅｘａｍｐｌｅ".as_bytes();
    denied(police(&Wire::query(&[full_width, b"com"]).bytes(), &set));
    // One full-width letter is enough.
    denied(police(
        &Wire::query(&["exａmple".as_bytes(), b"com"]).bytes(),
        &set,
    ));
}

#[test]
fn label_with_a_dot_byte_is_one_label() {
    let set = rules(&[name_rule("a.example.com"), pattern_rule("*.com")]);
    denied(police(&Wire::query(&[b"a.example", b"com"]).bytes(), &set));
}

#[test]
fn two_questions_are_formerr_and_never_forwarded() {
    let set = rules(&[pattern_rule("*")]);
    let mut wire = Wire::query(&[b"allowed", b"test"]);
    wire.questions
        .push(question(&name(&[b"secret", b"example"]), 1));
    let (error, answer) = rejected(police(&wire.bytes(), &set));
    assert_eq!(error, QueryError::QuestionCount(2));
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(answer.metadata.id, 0xbeef);
    assert!(answer.queries.is_empty());
}

#[test]
fn qdcount_zero_is_formerr() {
    let set = rules(&[pattern_rule("*")]);
    let mut wire = Wire::query(&[]);
    wire.questions.clear();
    let (error, answer) = rejected(police(&wire.bytes(), &set));
    assert_eq!(error, QueryError::QuestionCount(0));
    assert_eq!(answer.metadata.id, 0xbeef);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn compression_loop_is_formerr() {
    let set = rules(&[pattern_rule("*")]);
    let mut wire = Wire::query(&[]);
    // A pointer to itself at offset 12, then one to the next label pointing back.
    wire.questions = vec![question(&[0xc0, 12], 1)];
    let (error, answer) = rejected(police(&wire.bytes(), &set));
    assert_eq!(
        error,
        QueryError::Malformed {
            section: Section::Question,
            error: WireError::CompressionPointer
        }
    );
    assert_eq!(answer.metadata.id, 0xbeef);
    // A pointer into the header would read the ID and flags as labels.
    wire.questions = vec![question(&[3, b'w', b'w', b'w', 0xc0, 0], 1)];
    let (error, _) = rejected(police(&wire.bytes(), &set));
    assert!(matches!(
        error,
        QueryError::Malformed {
            error: WireError::CompressionPointer,
            ..
        }
    ));
    // A forward pointer (to bytes after the name) is refused the same way.
    wire.questions = vec![question(&[1, b'a', 0xc0, 20], 1)];
    let (error, _) = rejected(police(&wire.bytes(), &set));
    assert!(matches!(
        error,
        QueryError::Malformed {
            error: WireError::CompressionPointer,
            ..
        }
    ));
}

#[test]
fn truncated_packets() {
    let set = rules(&[pattern_rule("*")]);
    let full = Wire::query(&[b"example", b"com"]).bytes();
    for len in 0..HEADER_LEN {
        let error = dropped(police(&full[..len], &set));
        assert_eq!(error, QueryError::HeaderTruncated { len });
    }
    for len in HEADER_LEN..full.len() {
        let (error, answer) = rejected(police(&full[..len], &set));
        assert!(
            matches!(
                error,
                QueryError::Malformed {
                    section: Section::Question,
                    error: WireError::Truncated
                }
            ),
            "{len}: {error}"
        );
        assert_eq!(answer.metadata.id, 0xbeef);
    }
}

#[test]
fn huge_names_and_bad_labels_are_formerr() {
    let set = rules(&[pattern_rule("*")]);
    let labels: Vec<&[u8]> = std::iter::repeat_n(b"abcdefghi".as_slice(), 30).collect();
    let (error, _) = rejected(police(&Wire::query(&labels).bytes(), &set));
    assert_eq!(
        error,
        QueryError::Malformed {
            section: Section::Question,
            error: WireError::NameTooLong
        }
    );
    let mut wire = Wire::query(&[]);
    wire.questions = vec![question(&[0x80, b'a', 0], 1)];
    let (error, _) = rejected(police(&wire.bytes(), &set));
    assert!(matches!(
        error,
        QueryError::Malformed {
            error: WireError::BadLabel(_),
            ..
        }
    ));
}

#[test]
fn responses_are_dropped_and_other_opcodes_notimp() {
    let set = rules(&[pattern_rule("*")]);
    let mut wire = Wire::query(&[b"example", b"com"]);
    wire.flags = [0x81, 0x80];
    assert_eq!(dropped(police(&wire.bytes(), &set)), QueryError::NotAQuery);
    wire.flags = [0x04 << 3, 0]; // NOTIFY
    let (error, answer) = rejected(police(&wire.bytes(), &set));
    assert_eq!(error, QueryError::UnsupportedOpcode(4));
    assert_eq!(answer.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(answer.metadata.id, 0xbeef);
}

#[test]
fn edns_is_preserved() {
    let set = rules(&[pattern_rule("*.example.com")]);
    // A COOKIE option (code 10), 8 bytes of client cookie.
    let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let wire = Wire::query(&[b"a", b"example", b"com"])
        .with_opt(4096, true, &cookie)
        .bytes();
    let (query, _, forward) = allowed(police(&wire, &set));
    assert_eq!(query.udp_limit(), 4096);
    let sent = parse(&forward);
    let edns = sent.edns.unwrap_or_else(|| panic!("OPT lost"));
    assert_eq!(edns.max_payload(), 4096);
    assert!(edns.flags().dnssec_ok);
    assert!(edns.option(EdnsCode::Cookie).is_some(), "cookie lost");
    // Question and OPT re-encoded as received: the same bytes.
    assert_eq!(forward, wire);
    // A denial carries an OPT record too (RFC 6891 6.1.1).
    let answer = denied(police(
        &Wire::query(&[b"x", b"test"])
            .with_opt(1232, false, &[])
            .bytes(),
        &set,
    ));
    assert!(answer.edns.is_some());
    // Payload under 512 counts as 512; no OPT means 512.
    let (q, _, _) = allowed(police(
        &Wire::query(&[b"a", b"example", b"com"])
            .with_opt(100, false, &[])
            .bytes(),
        &set,
    ));
    assert_eq!(q.udp_limit(), 512);
    let (q, _, _) = allowed(police(
        &Wire::query(&[b"a", b"example", b"com"]).bytes(),
        &set,
    ));
    assert_eq!(q.udp_limit(), 512);
}

#[test]
fn two_opt_records_are_formerr() {
    let set = rules(&[pattern_rule("*")]);
    let wire = Wire::query(&[b"a", b"com"])
        .with_opt(1232, false, &[])
        .with_opt(1232, false, &[])
        .bytes();
    let (error, _) = rejected(police(&wire, &set));
    assert_eq!(
        error,
        QueryError::Malformed {
            section: Section::Additional,
            error: WireError::DuplicateOpt
        }
    );
}

fn checked(labels: &[&[u8]], qtype: u16, edns: bool) -> CheckedQuery {
    let mut wire = Wire::query(&[]);
    wire.questions = vec![question(&name(labels), qtype)];
    if edns {
        wire = wire.with_opt(1232, false, &[]);
    }
    allowed(police(&wire.bytes(), &DnsRuleSet::allow_all())).0
}

fn record(owner: &str, ttl: u32, data: RData) -> Record {
    let name = Name::from_ascii(owner).unwrap_or_else(|e| panic!("{e}"));
    Record::from_rdata(name, ttl, data)
}

fn response_to(query: &CheckedQuery) -> Message {
    let mut msg = Message::response(query.id(), OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.metadata.recursion_available = true;
    msg.add_query(query.question().clone());
    msg
}

fn cname(target: &str) -> RData {
    RData::CNAME(CNAME(
        Name::from_ascii(target).unwrap_or_else(|e| panic!("{e}")),
    ))
}

fn wire_name(s: &str) -> WireName {
    WireName::from_name(&Name::from_ascii(s).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn response_with_cname_chain_several_a_and_aaaa() {
    let query = checked(&[b"WWW", b"Example", b"com"], 1, false);
    let mut msg = response_to(&query);
    msg.add_answers([
        record("www.example.com.", 300, cname("web.cdn.net.")),
        record("web.cdn.net.", 60, cname("edge.cdn.net.")),
        record(
            "edge.cdn.net.",
            120,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ),
        record(
            "EDGE.cdn.net.",
            30,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 2))),
        ),
        record("edge.cdn.net.", 90, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))),
        // Not on the chain: not counted.
        record(
            "evil.example.",
            5,
            RData::A(A(Ipv4Addr::new(203, 0, 113, 9))),
        ),
    ]);
    let bytes = msg.to_vec().unwrap_or_else(|e| panic!("{e}"));
    let info = inspect_response(&query, &bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.rcode, ResponseCode::NoError);
    assert_eq!(info.name.to_string(), "www.example.com.");
    assert_eq!(
        info.cnames,
        [wire_name("web.cdn.net."), wire_name("edge.cdn.net.")]
    );
    let ips: Vec<_> = info.ips().collect();
    assert_eq!(
        ips,
        [
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ]
    );
    assert_eq!(info.addresses[1].ttl, 30);
    assert_eq!(info.addresses[1].name, wire_name("edge.cdn.net."));
    assert_eq!(info.min_ttl, Some(30));
    assert_eq!(info.ignored, 1);
    assert!(info.feeds_fqdn_cache());
}

#[test]
fn response_nxdomain_and_error_without_question() {
    let query = checked(&[b"nope", b"test"], 28, true);
    let mut msg = response_to(&query);
    msg.metadata.response_code = ResponseCode::NXDomain;
    let info = inspect_response(&query, &msg.to_vec().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.rcode, ResponseCode::NXDomain);
    assert!(!info.feeds_fqdn_cache());
    assert_eq!(info.min_ttl, None);

    let mut msg = Message::error_msg(query.id(), OpCode::Query, ResponseCode::ServFail);
    msg.metadata.recursion_available = true;
    let info = inspect_response(&query, &msg.to_vec().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.rcode, ResponseCode::ServFail);
}

#[test]
fn response_mismatches_and_malformed() {
    let query = checked(&[b"a", b"example", b"com"], 1, false);
    let mut msg = response_to(&query);
    msg.metadata.id = 7;
    let bytes = msg.to_vec().unwrap_or_default();
    assert_eq!(
        inspect_response(&query, &bytes),
        Err(ResponseError::IdMismatch {
            expected: 0xbeef,
            got: 7
        })
    );

    let mut msg = response_to(&query);
    msg.queries[0].query_type = RecordType::AAAA;
    let bytes = msg.to_vec().unwrap_or_default();
    assert!(matches!(
        inspect_response(&query, &bytes),
        Err(ResponseError::QuestionMismatch { .. })
    ));

    let mut msg = response_to(&query);
    msg.queries[0].name = Name::from_ascii("b.example.com.").unwrap_or_else(|e| panic!("{e}"));
    let bytes = msg.to_vec().unwrap_or_default();
    assert!(matches!(
        inspect_response(&query, &bytes),
        Err(ResponseError::QuestionMismatch { .. })
    ));

    let mut msg = response_to(&query);
    msg.queries.clear();
    let bytes = msg.to_vec().unwrap_or_default();
    assert_eq!(
        inspect_response(&query, &bytes),
        Err(ResponseError::QuestionCount(0))
    );

    let mut msg = response_to(&query);
    msg.metadata.message_type = MessageType::Query;
    let bytes = msg.to_vec().unwrap_or_default();
    assert_eq!(
        inspect_response(&query, &bytes),
        Err(ResponseError::NotAResponse)
    );

    let mut msg = response_to(&query);
    msg.add_answer(record(
        "a.example.com.",
        1,
        RData::A(A(Ipv4Addr::LOCALHOST)),
    ));
    let bytes = msg.to_vec().unwrap_or_default();
    assert!(matches!(
        inspect_response(&query, &bytes[..bytes.len() - 2]),
        Err(ResponseError::Malformed(_))
    ));
    // Cut inside the record header.
    assert_eq!(
        inspect_response(&query, &bytes[..bytes.len() - 8]),
        Err(ResponseError::Malformed(WireError::Truncated))
    );
    assert_eq!(
        inspect_response(&query, &bytes[..5]),
        Err(ResponseError::HeaderTruncated { len: 5 })
    );
}

#[test]
fn cname_loop_in_answer_terminates() {
    let query = checked(&[b"a", b"test"], 1, false);
    let mut msg = response_to(&query);
    msg.add_answers([
        record("a.test.", 10, cname("b.test.")),
        record("b.test.", 10, cname("a.test.")),
        record("a.test.", 10, RData::A(A(Ipv4Addr::LOCALHOST))),
    ]);
    let info = inspect_response(&query, &msg.to_vec().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.cnames.len(), 2);
    assert_eq!(info.addresses.len(), 1);
}

#[test]
fn truncation_for_udp() {
    let query = checked(&[b"big", b"example", b"com"], 1, false);
    let mut msg = response_to(&query);
    for i in 0..100u8 {
        msg.add_answer(record(
            "big.example.com.",
            60,
            RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
        ));
    }
    let bytes = msg.to_vec().unwrap_or_default();
    assert!(bytes.len() > 512 && bytes.len() < 4096);
    let cut = truncate_for_udp(&bytes, query.udp_limit())
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("not truncated"));
    assert!(cut.len() <= 512);
    let parsed = parse(&cut);
    assert!(parsed.metadata.truncation);
    assert_eq!(parsed.metadata.id, query.id());
    assert_eq!(parsed.queries.len(), 1);
    assert!(parsed.answers.is_empty());
    let info = inspect_response(&query, &cut).unwrap_or_else(|e| panic!("{e}"));
    assert!(info.truncated);
    // A client that announced 4096 gets it whole; below 512 counts as 512.
    assert_eq!(truncate_for_udp(&bytes, 4096), Ok(None));
    assert!(matches!(truncate_for_udp(&bytes, 100), Ok(Some(_))));
    let small = response_to(&query).to_vec().unwrap_or_default();
    assert_eq!(truncate_for_udp(&small, 512), Ok(None));
}

#[test]
fn servfail_echoes_id_and_question() {
    let query = checked(&[b"Slow", b"test"], 28, true);
    let answer = parse(&servfail(&query));
    assert_eq!(answer.metadata.id, query.id());
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert!(answer.metadata.recursion_available && answer.metadata.recursion_desired);
    assert_eq!(answer.queries[0].name.to_ascii(), "Slow.test.");
    assert_eq!(answer.queries[0].query_type, RecordType::AAAA);
    assert_eq!(answer.queries[0].query_class, DNSClass::IN);
    assert!(answer.edns.is_some());
}

#[test]
fn hickory_query_type_roundtrip_via_builder() {
    // A query built by hickory (as a client library would) is policed like a hand-made one.
    let mut msg = Message::query();
    msg.metadata.id = 42;
    msg.add_query(Query::query(
        Name::from_ascii("a.example.com.").unwrap_or_else(|e| panic!("{e}")),
        RecordType::A,
    ));
    msg.set_edns(Edns::new());
    let bytes = msg.to_vec().unwrap_or_default();
    let (query, _, _) = allowed(police(&bytes, &rules(&[pattern_rule("*.example.com")])));
    assert_eq!(query.id(), 42);
}

/// xorshift64: deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

#[test]
fn fuzz_query_random_mutations() {
    let seeds = [
        Wire::query(&[b"a", b"example", b"com"]).bytes(),
        Wire::query(&[b"allowed", b"test"])
            .with_opt(4096, true, &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
            .bytes(),
        Wire::query(&[b"x", b"y", b"deep", b"test"]).bytes(),
        Wire::query(&[b"denied", b"org"]).bytes(),
        {
            // A compressed name in the additional section pointing at the question.
            let mut w = Wire::query(&[b"b", b"example", b"com"]).with_opt(1232, false, &[]);
            w.additional
                .push(vec![0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
            w.bytes()
        },
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut verdicts = [0usize; 4];
    // DNS_PROXY_FUZZ_CASES raises the count for a longer local run.
    let cases = std::env::var("DNS_PROXY_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000);
    for case in 0..cases {
        let mut bytes = seeds[case % seeds.len()].clone();
        for _ in 0..=rng.below(4) {
            match rng.below(5) {
                0 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes[at] = u8::try_from(rng.next() & 0xff).unwrap_or(0);
                }
                1 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                2 => {
                    let len = rng.below(bytes.len() + 1);
                    bytes.truncate(len);
                }
                3 => {
                    let at = rng.below(bytes.len() + 1);
                    bytes.insert(at, u8::try_from(rng.next() & 0xff).unwrap_or(0));
                }
                _ if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        fuzz_query(&bytes);
        let kind = match police_query(&bytes, super::fuzz::fuzz_rules(), DenyRcode::Refused) {
            QueryVerdict::Allowed { .. } => 0,
            QueryVerdict::Denied { .. } => 1,
            QueryVerdict::Rejected { .. } => 2,
            QueryVerdict::Dropped { .. } => 3,
        };
        verdicts[kind] += 1;
    }
    // The mutations reach every outcome.
    assert!(verdicts.iter().all(|&n| n > 10), "{verdicts:?}");
}

#[test]
fn inspect_response_random_mutations() {
    let query = checked(&[b"www", b"example", b"com"], 1, true);
    let mut msg = response_to(&query);
    msg.set_edns(Edns::new());
    msg.add_answer(record("www.example.com.", 300, cname("edge.cdn.net.")));
    for i in 0..40u8 {
        msg.add_answer(record(
            "edge.cdn.net.",
            60,
            RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
        ));
    }
    let seed = msg.to_vec().unwrap_or_default();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut ok = 0;
    for _ in 0..3000 {
        let mut bytes = seed.clone();
        for _ in 0..=rng.below(3) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = u8::try_from(rng.next() & 0xff).unwrap_or(0),
                1 => bytes[at] ^= 1 << rng.below(8),
                _ => bytes.truncate(at.max(1)),
            }
        }
        if let Ok(info) = inspect_response(&query, &bytes) {
            ok += 1;
            assert!(info.addresses.len() <= 40);
            assert!(info.cnames.len() <= MAX_CNAME_CHAIN);
        }
        if let Ok(Some(cut)) = truncate_for_udp(&bytes, 512) {
            let parsed = parse(&cut);
            assert!(parsed.metadata.truncation);
            assert!(parsed.answers.is_empty());
            assert!(cut.len() <= 512 && parsed.queries.len() <= 1);
        }
    }
    assert!(ok > 100, "{ok}");
}
