//! The server's side: check an answer against the forwarded query and extract what the FQDN
//! cache needs (SEMANTICS 6.2); truncation for UDP; SERVFAIL for upstream timeouts.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};

use super::{CheckedQuery, HEADER_LEN, MIN_UDP_LIMIT, WireError, WireName};

/// Longest CNAME chain followed from the question name; longer chains are cut there.
pub const MAX_CNAME_CHAIN: usize = 16;

/// Why a server's answer is not relayed (the proxy answers the client SERVFAIL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Fewer bytes than a header.
    #[error("header truncated: {len} bytes, a DNS header has {HEADER_LEN}")]
    HeaderTruncated { len: usize },
    /// hickory-proto could not parse it.
    #[error("malformed answer: {0}")]
    Malformed(WireError),
    /// QR is clear or the opcode is not QUERY.
    #[error("not a response to a standard query")]
    NotAResponse,
    /// Not the ID of the forwarded query.
    #[error("answer ID {got} does not match query ID {expected}")]
    IdMismatch { expected: u16, got: u16 },
    /// Not exactly one question, where the rcode requires one.
    #[error("answer has {0} questions")]
    QuestionCount(usize),
    /// The question is not the forwarded one (name ignoring ASCII case, type, class).
    #[error("answer question {got} does not match the query")]
    QuestionMismatch { got: String },
    /// The truncated answer could not be encoded.
    #[error("encoding the truncated answer failed: {0}")]
    Encode(String),
}

/// One A or AAAA record counted for the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRecord {
    /// Owner name: the question name or a name of its CNAME chain.
    pub name: WireName,
    pub ip: IpAddr,
    pub ttl: u32,
}

/// What a server's answer says, for flow records and the FQDN cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseInfo {
    /// The rcode, EDNS extended bits merged.
    pub rcode: ResponseCode,
    /// TC was set.
    pub truncated: bool,
    /// The question name, lower-cased (SEMANTICS 6.2: IPs are tied to it).
    pub name: WireName,
    /// The CNAME chain from the question name, in order: each target.
    pub cnames: Vec<WireName>,
    /// A/AAAA records owned by the question name or a name of its chain, in answer order.
    pub addresses: Vec<AddressRecord>,
    /// Minimum TTL over the counted A, AAAA and CNAME records (SEMANTICS 6.2); `None` when
    /// none was counted.
    pub min_ttl: Option<u32>,
    /// Answer-section records not counted (other names, other types, a chain past
    /// [`MAX_CNAME_CHAIN`]).
    pub ignored: usize,
}

impl ResponseInfo {
    /// All counted IPs, in answer order (tied to [`ResponseInfo::name`]).
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().map(|a| a.ip)
    }

    /// Whether this answer feeds the FQDN cache: NOERROR with at least one address.
    pub fn feeds_fqdn_cache(&self) -> bool {
        self.rcode == ResponseCode::NoError && !self.addresses.is_empty()
    }
}

/// Check a server's answer against the forwarded query and extract [`ResponseInfo`].
pub fn inspect_response(
    query: &CheckedQuery,
    response: &[u8],
) -> Result<ResponseInfo, ResponseError> {
    let msg = parse(response)?;
    if msg.metadata.message_type != MessageType::Response || msg.metadata.op_code != OpCode::Query {
        return Err(ResponseError::NotAResponse);
    }
    if msg.metadata.id != query.id() {
        return Err(ResponseError::IdMismatch {
            expected: query.id(),
            got: msg.metadata.id,
        });
    }
    let rcode = msg.metadata.response_code;
    match msg.queries.as_slice() {
        [q] => {
            let ours = query.question();
            if !query.name().eq_name(&q.name)
                || q.query_type != ours.query_type
                || q.query_class != ours.query_class
            {
                return Err(ResponseError::QuestionMismatch {
                    got: format!(
                        "{} {} {}",
                        WireName::from_name(&q.name),
                        q.query_class,
                        q.query_type
                    ),
                });
            }
        }
        // Servers may omit the question in error answers (FORMERR, SERVFAIL, REFUSED, ...);
        // NOERROR and NXDOMAIN speak about a name and must carry it.
        [] if !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) => {}
        other => return Err(ResponseError::QuestionCount(other.len())),
    }

    let name = query.name().clone();
    let mut used = vec![false; msg.answers.len()];
    let mut min_ttl: Option<u32> = None;
    let mut cnames = Vec::new();
    let mut current = name.clone();
    while cnames.len() < MAX_CNAME_CHAIN {
        let next = msg
            .answers
            .iter()
            .enumerate()
            .find_map(|(i, r)| match &r.data {
                RData::CNAME(target) if !used[i] && current.eq_name(&r.name) => {
                    Some((i, r, target))
                }
                _ => None,
            });
        let Some((i, record, target)) = next else {
            break;
        };
        used[i] = true;
        min_ttl = Some(min_ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        current = WireName::from_name(&target.0);
        cnames.push(current.clone());
    }

    let mut addresses = Vec::new();
    for (i, record) in msg.answers.iter().enumerate() {
        let Some(ip) = address(record) else { continue };
        let owner = WireName::from_name(&record.name);
        if owner != name && !cnames.contains(&owner) {
            continue;
        }
        used[i] = true;
        min_ttl = Some(min_ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        addresses.push(AddressRecord {
            name: owner,
            ip,
            ttl: record.ttl,
        });
    }

    Ok(ResponseInfo {
        rcode,
        truncated: msg.metadata.truncation,
        name,
        cnames,
        addresses,
        min_ttl,
        ignored: used.iter().filter(|u| !**u).count(),
    })
}

fn address(record: &Record) -> Option<IpAddr> {
    match (&record.data, record.record_type()) {
        (RData::A(a), RecordType::A) => Some(IpAddr::V4(a.0)),
        (RData::AAAA(a), RecordType::AAAA) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

fn parse(response: &[u8]) -> Result<Message, ResponseError> {
    if response.len() < HEADER_LEN {
        return Err(ResponseError::HeaderTruncated {
            len: response.len(),
        });
    }
    Message::from_vec(response).map_err(|e| ResponseError::Malformed(e.into()))
}

/// `Ok(None)` when `response` fits the client's UDP limit (see [`CheckedQuery::udp_limit`];
/// values under 512 count as 512), else `Ok(Some(answer))`, at most 512 bytes: the header with
/// TC=1, the (first) question and the OPT record (without its options should they not fit), no records. The client then
/// retries over TCP.
pub fn truncate_for_udp(
    response: &[u8],
    client_limit: u16,
) -> Result<Option<Vec<u8>>, ResponseError> {
    let limit = usize::from(client_limit.max(MIN_UDP_LIMIT));
    if response.len() <= limit {
        return Ok(None);
    }
    let mut cut = parse(response)?.truncate();
    // A checked answer has one question; keep at most one so the result always fits.
    cut.queries.truncate(1);
    let mut out = cut
        .to_vec()
        .map_err(|e| ResponseError::Encode(e.to_string()))?;
    if out.len() > limit {
        if let Some(edns) = cut.edns.as_mut() {
            edns.options_mut().options.clear();
        }
        out = cut
            .to_vec()
            .map_err(|e| ResponseError::Encode(e.to_string()))?;
    }
    Ok(Some(out))
}

/// SERVFAIL for `query` (upstream timeout, malformed upstream answer): ID and question
/// echoed, RD/CD echoed, RA set, OPT when the query had one.
pub fn servfail(query: &CheckedQuery) -> Vec<u8> {
    query.local_answer(ResponseCode::ServFail)
}
