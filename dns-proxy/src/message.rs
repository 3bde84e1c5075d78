//! The socket-free core of the DNS proxy: police a client's query (SEMANTICS 5), build the
//! answers the proxy gives itself, and read a server's answer for the FQDN cache (SEMANTICS 6).
//!
//! # What is checked, and on which form of the name
//!
//! The question name is matched on its wire labels, as received (the matcher lower-cases ASCII
//! itself), never on hickory's display form, which shows `xn--` labels as Unicode; a label
//! holding a `.` byte or a byte outside `[-a-zA-Z0-9_]` is matched only by `*`.
//!
//! # What is forwarded
//!
//! An allowed query is re-encoded from what was parsed and checked: the header flags and ID,
//! the one question (original case), and the EDNS OPT record when there was one. Any other
//! record of the query (answer, authority, non-OPT additional, TSIG) and any trailing bytes are
//! not forwarded.
//!
//! # Malformed queries (SEMANTICS 5.5)
//!
//! | input | outcome |
//! | --- | --- |
//! | fewer than 12 bytes (no header) | dropped |
//! | QR set (a response sent to us) | dropped: answering a response invites loops |
//! | opcode other than QUERY | NOTIMP, ID echoed (RFC 1035 4.1.1) |
//! | QDCOUNT 0 or more than 1 | FORMERR, ID echoed |
//! | anything unparsable after the header (truncated, bad label code, label over 63 bytes, name over 255 bytes, any compression pointer in the question name — it could only point into the header, at itself or forwards —, elsewhere a pointer that is not strictly backwards — the only way to loop —, two OPT records) | FORMERR, ID echoed |
//!
//! An answer the proxy builds for a query it could not parse carries no question.

use std::fmt;

use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError};

use crate::name_pattern::DnsRuleSet;

mod fuzz;
mod response;

pub use fuzz::fuzz_query;

pub use response::{
    AddressRecord, MAX_CNAME_CHAIN, ResponseError, ResponseInfo, inspect_response, servfail,
    truncate_for_udp,
};

/// Length of the DNS header.
pub const HEADER_LEN: usize = 12;

/// UDP payload a client without EDNS accepts (RFC 1035 4.2.1), and the floor of an EDNS one
/// (RFC 6891 6.2.5).
pub const MIN_UDP_LIMIT: u16 = 512;

/// UDP payload size the proxy advertises in the OPT record of answers it builds itself.
pub const PROXY_EDNS_PAYLOAD: u16 = 1232;

/// Rcode of the answer to a denied query (SEMANTICS 5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyRcode {
    /// REFUSED, the default.
    #[default]
    Refused,
    /// NXDOMAIN.
    NxDomain,
}

impl DenyRcode {
    fn response_code(self) -> ResponseCode {
        match self {
            Self::Refused => ResponseCode::Refused,
            Self::NxDomain => ResponseCode::NXDomain,
        }
    }
}

/// The message section a parse error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Question,
    Answer,
    Authority,
    Additional,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Question => "question",
            Self::Answer => "answer",
            Self::Authority => "authority",
            Self::Additional => "additional",
        })
    }
}

/// What was wrong in the bytes after the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ends inside a name or record.
    #[error("message truncated")]
    Truncated,
    /// A compression pointer that does not point strictly backwards: a loop, or a forward
    /// reference that could become one.
    #[error("bad compression pointer (loop or forward reference)")]
    CompressionPointer,
    /// A label length byte with the reserved `01`/`10` high bits, or a label over 63 bytes.
    #[error("bad label: {0}")]
    BadLabel(String),
    /// A name longer than 255 bytes on the wire.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// More than one OPT record (RFC 6891 6.1.1).
    #[error("more than one OPT record")]
    DuplicateOpt,
    /// Anything else hickory-proto refused.
    #[error("{0}")]
    Other(String),
}

impl From<DecodeError> for WireError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::InsufficientBytes => Self::Truncated,
            DecodeError::PointerNotPriorToLabel { .. }
            | DecodeError::LabelOverlapsWithOther { .. } => Self::CompressionPointer,
            DecodeError::LabelBytesTooLong(_) | DecodeError::UnrecognizedLabelCode(_) => {
                Self::BadLabel(e.to_string())
            }
            DecodeError::DomainNameTooLong(_) => Self::NameTooLong,
            DecodeError::DuplicateEdns => Self::DuplicateOpt,
            other => Self::Other(other.to_string()),
        }
    }
}

/// Why a client's query was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Fewer bytes than a header: dropped.
    #[error("header truncated: {len} bytes, a DNS header has {HEADER_LEN}")]
    HeaderTruncated { len: usize },
    /// QR is set: dropped.
    #[error("QR bit set: a response, not a query")]
    NotAQuery,
    /// Opcode other than QUERY: NOTIMP.
    #[error("opcode {0} is not QUERY (0)")]
    UnsupportedOpcode(u8),
    /// QDCOUNT is not 1: FORMERR.
    #[error("QDCOUNT {0}: exactly one question is required")]
    QuestionCount(u16),
    /// Unparsable after the header: FORMERR.
    #[error("malformed {section} section: {error}")]
    Malformed { section: Section, error: WireError },
    /// The checked query could not be re-encoded: SERVFAIL.
    #[error("re-encoding the query failed: {0}")]
    Encode(String),
}

impl QueryError {
    /// The rcode the proxy answers with, or `None` when the query is dropped (SEMANTICS 5.5).
    pub fn response_code(&self) -> Option<ResponseCode> {
        match self {
            Self::HeaderTruncated { .. } | Self::NotAQuery => None,
            Self::UnsupportedOpcode(_) => Some(ResponseCode::NotImp),
            Self::QuestionCount(_) | Self::Malformed { .. } => Some(ResponseCode::FormErr),
            Self::Encode(_) => Some(ResponseCode::ServFail),
        }
    }
}

/// A name as its wire labels, ASCII lower-cased, root label excluded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireName(Vec<Box<[u8]>>);

impl WireName {
    /// Lower-cased labels of a parsed name (its raw bytes, never the display form).
    pub fn from_name(name: &Name) -> Self {
        Self(name.iter().map(|l| l.to_ascii_lowercase().into()).collect())
    }

    /// The labels, left to right.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|l| &**l)
    }

    /// Whether a parsed name has these labels, ignoring ASCII case.
    pub fn eq_name(&self, name: &Name) -> bool {
        name.iter().len() == self.0.len()
            && name
                .iter()
                .zip(&self.0)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

/// Fully qualified text; bytes outside `[-a-z0-9_]` (and `.` inside a label) are escaped as
/// `\DDD` / `\.`, so the text never reads as other labels.
impl fmt::Display for WireName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for label in &self.0 {
            for &b in label.iter() {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    write!(f, "{}", char::from(b))?;
                } else if b == b'.' || b == b'\\' {
                    write!(f, "\\{}", char::from(b))?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
            f.write_str(".")?;
        }
        Ok(())
    }
}

/// A parsed client query: the one question and what the proxy keeps of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedQuery {
    metadata: Metadata,
    question: Query,
    name: WireName,
    edns: Option<Edns>,
}

impl CheckedQuery {
    /// The client's ID.
    pub fn id(&self) -> u16 {
        self.metadata.id
    }

    /// The question as received (original case).
    pub fn question(&self) -> &Query {
        &self.question
    }

    /// The question name, lower-cased wire labels.
    pub fn name(&self) -> &WireName {
        &self.name
    }

    /// The client's EDNS OPT record, if any.
    pub fn edns(&self) -> Option<&Edns> {
        self.edns.as_ref()
    }

    /// Header flags as received.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Largest UDP answer the client accepts: 512 without EDNS, the OPT payload size (at least
    /// 512) with it.
    pub fn udp_limit(&self) -> u16 {
        self.edns
            .as_ref()
            .map_or(MIN_UDP_LIMIT, |e| e.max_payload().max(MIN_UDP_LIMIT))
    }

    /// The same query under another ID: what the proxy sends upstream, so that answers are
    /// checked against the ID the server saw.
    pub fn with_id(&self, id: u16) -> Self {
        let mut query = self.clone();
        query.metadata.id = id;
        query
    }

    /// The query to forward, encoded from what was checked.
    pub fn encode(&self) -> Result<Vec<u8>, QueryError> {
        let mut msg = Message::new(self.metadata.id, MessageType::Query, OpCode::Query);
        msg.metadata = self.metadata;
        msg.add_query(self.question.clone());
        if let Some(edns) = &self.edns {
            msg.set_edns(edns.clone());
        }
        msg.to_vec().map_err(|e| QueryError::Encode(e.to_string()))
    }

    /// An answer from the proxy itself: ID, opcode, RD and CD echoed, RA set (we answer as the
    /// resolver the client addressed), the question echoed, an OPT record when the query had
    /// one (RFC 6891 6.1.1).
    pub(crate) fn local_answer(&self, rcode: ResponseCode) -> Vec<u8> {
        let mut msg = response_for(&self.metadata, rcode);
        msg.add_query(self.question.clone());
        if let Some(edns) = &self.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(PROXY_EDNS_PAYLOAD);
            ours.set_dnssec_ok(edns.flags().dnssec_ok);
            msg.set_edns(ours);
        }
        encode_answer(&msg)
    }
}

/// What to do with a client's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryVerdict {
    /// Forward `forward` (re-encoded from `query`) to the server the client addressed.
    Allowed {
        query: CheckedQuery,
        /// Index of the lowest matching rule.
        rule: usize,
        forward: Vec<u8>,
    },
    /// No rule matched: send `answer` (REFUSED or NXDOMAIN) to the client.
    Denied {
        query: CheckedQuery,
        answer: Vec<u8>,
    },
    /// Malformed with a readable header: send `answer` (FORMERR, NOTIMP or SERVFAIL).
    Rejected { error: QueryError, answer: Vec<u8> },
    /// Malformed without a usable header: send nothing, count it.
    Dropped { error: QueryError },
}

/// Police one client query (SEMANTICS 5.4, 5.5) against the rules of its (endpoint, port,
/// protocol, DNS server peer).
pub fn police_query(bytes: &[u8], rules: &DnsRuleSet, deny: DenyRcode) -> QueryVerdict {
    police_query_with(bytes, deny, |labels| rules.matches_wire_labels(labels))
}

/// [`police_query`] with the rule lookup left to `matcher`, which gets the question's wire
/// labels (as received) and returns the index of the rule that allows them, if any. The
/// proxy uses it to try the rule sets of several policy entries in one pass.
pub fn police_query_with(
    bytes: &[u8],
    deny: DenyRcode,
    matcher: impl FnOnce(&[&[u8]]) -> Option<usize>,
) -> QueryVerdict {
    let header = match read_header(bytes) {
        Ok(header) => header,
        Err(error) => return QueryVerdict::Dropped { error },
    };
    let query = match parse_query(bytes, &header) {
        Ok(query) => query,
        Err(error) => return reject(&header.metadata, error),
    };
    let labels: Vec<&[u8]> = query.question.name.iter().collect();
    match matcher(&labels) {
        Some(rule) => match query.encode() {
            Ok(forward) => QueryVerdict::Allowed {
                query,
                rule,
                forward,
            },
            Err(error) => reject(&header.metadata, error),
        },
        None => {
            let answer = query.local_answer(deny.response_code());
            QueryVerdict::Denied { query, answer }
        }
    }
}

/// SERVFAIL for a query the proxy will not process (overload), built as cheaply as the
/// bytes allow: the question echoed when the query parses, the bare header otherwise, and
/// `None` when there is no usable header (such a query would be dropped anyway).
pub fn shed_answer(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = read_header(bytes).ok()?;
    Some(match parse_query(bytes, &header) {
        Ok(query) => query.local_answer(ResponseCode::ServFail),
        Err(_) => encode_answer(&response_for(&header.metadata, ResponseCode::ServFail)),
    })
}

fn read_header(bytes: &[u8]) -> Result<Header, QueryError> {
    if bytes.len() < HEADER_LEN {
        return Err(QueryError::HeaderTruncated { len: bytes.len() });
    }
    let header = Header::read(&mut BinDecoder::new(bytes))
        .map_err(|_| QueryError::HeaderTruncated { len: bytes.len() })?;
    if header.metadata.message_type == MessageType::Response {
        return Err(QueryError::NotAQuery);
    }
    Ok(header)
}

fn parse_query(bytes: &[u8], header: &Header) -> Result<CheckedQuery, QueryError> {
    if header.metadata.op_code != OpCode::Query {
        return Err(QueryError::UnsupportedOpcode(u8::from(
            header.metadata.op_code,
        )));
    }
    if header.counts.queries != 1 {
        return Err(QueryError::QuestionCount(header.counts.queries));
    }
    question_without_pointer(bytes)?;
    let mut decoder = BinDecoder::new(bytes);
    // Cannot fail: read_header read the same 12 bytes.
    Header::read(&mut decoder).map_err(|e| malformed(Section::Question, e))?;
    let question = Query::read(&mut decoder).map_err(|e| malformed(Section::Question, e))?;
    let counts = &header.counts;
    let sections = [
        (Section::Answer, counts.answers, false),
        (Section::Authority, counts.authorities, false),
        (Section::Additional, counts.additionals, true),
    ];
    let mut edns = None;
    for (section, count, additional) in sections {
        let (_, opt, _) =
            Message::read_records(&mut decoder, usize::from(count), additional, OpCode::Query)
                .map_err(|e| malformed(section, e))?;
        edns = edns.or(opt);
    }
    let mut metadata = header.metadata;
    if let Some(edns) = &edns {
        metadata.merge_response_code(edns.rcode_high());
    }
    Ok(CheckedQuery {
        metadata,
        name: WireName::from_name(&question.name),
        question,
        edns,
    })
}

/// The question is the first name of a query, so a compression pointer in it can only point
/// into the header, at itself or forwards: none is a name. hickory-proto would read header
/// bytes as labels for the first kind; refuse all three.
fn question_without_pointer(bytes: &[u8]) -> Result<(), QueryError> {
    let mut at = HEADER_LEN;
    while let Some(&len) = bytes.get(at) {
        match len {
            0 => break,
            0xc0.. => {
                return Err(QueryError::Malformed {
                    section: Section::Question,
                    error: WireError::CompressionPointer,
                });
            }
            // Reserved label types: hickory reports them.
            0x40.. => break,
            _ => at += 1 + usize::from(len),
        }
    }
    Ok(())
}

fn malformed(section: Section, e: DecodeError) -> QueryError {
    QueryError::Malformed {
        section,
        error: e.into(),
    }
}

fn reject(metadata: &Metadata, error: QueryError) -> QueryVerdict {
    match error.response_code() {
        Some(rcode) => QueryVerdict::Rejected {
            answer: encode_answer(&response_for(metadata, rcode)),
            error,
        },
        None => QueryVerdict::Dropped { error },
    }
}

/// A response header echoing the query's ID, opcode, RD and CD, with RA set.
fn response_for(query: &Metadata, rcode: ResponseCode) -> Message {
    let mut msg = Message::error_msg(query.id, query.op_code, rcode);
    msg.metadata.recursion_desired = query.recursion_desired;
    msg.metadata.checking_disabled = query.checking_disabled;
    msg.metadata.recursion_available = true;
    msg
}

/// Encode an answer the proxy built; should hickory refuse it, fall back to the bare header
/// (no question, no OPT) so the client still gets an answer.
fn encode_answer(msg: &Message) -> Vec<u8> {
    msg.to_vec().unwrap_or_else(|_| {
        let mut bare = Message::new(msg.metadata.id, MessageType::Response, msg.metadata.op_code);
        bare.metadata = msg.metadata;
        let mut out = bare.to_vec().unwrap_or_default();
        if out.len() < HEADER_LEN {
            // Hand-made header: ID, QR, opcode, RD/RA and the low rcode bits.
            let [hi, lo] = msg.metadata.id.to_be_bytes();
            let op = u8::from(msg.metadata.op_code) & 0x0f;
            let rd = u8::from(msg.metadata.recursion_desired);
            let rcode = u16::from(msg.metadata.response_code) as u8 & 0x0f;
            out = vec![
                hi,
                lo,
                0x80 | (op << 3) | rd,
                0x80 | rcode,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
        }
        out
    })
}

#[cfg(test)]
mod tests;
