//! The few DNS messages the bench builds and reads itself: the B7 load tool's A queries and
//! what it takes from the answers, and the B7 responder's answers. hickory-proto (the same
//! codec as dns-proxy) does the encoding, so malformed input is an error, never a panic.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// First address the responder hands out: name `nI.…` answers `BASE + I`. 10.64.0.0/12 is
/// routed to the web namespace, where every address in it is local.
pub const ANSWER_BASE: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
/// Size of that range (/12): every name of a whole benchmark gets an address never
/// handed out before, so no earlier run's learning can let a connection through.
pub const ANSWER_RANGE: u32 = 1 << 20;
pub const ANSWER_PREFIX: &str = "10.64.0.0/12";

/// An A query for `name` with `id`, recursion desired (as a stub resolver sends it).
pub fn a_query(id: u16, name: &str) -> Result<Vec<u8>> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    let name = Name::from_ascii(name).with_context(|| format!("bad name {name:?}"))?;
    message.add_query(Query::query(name, RecordType::A));
    Ok(message.to_vec()?)
}

/// What the load tool needs from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// The first A record, if any.
    pub address: Option<Ipv4Addr>,
}

/// Reads an answer to the query with `id`.
pub fn read_answer(bytes: &[u8], id: u16) -> Result<Answer> {
    let message = Message::from_vec(bytes).context("unparsable answer")?;
    if message.metadata.id != id {
        bail!("answer for id {} instead of {id}", message.metadata.id);
    }
    if message.metadata.message_type != MessageType::Response {
        bail!("a query came back instead of an answer");
    }
    let address = message.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    });
    Ok(Answer {
        rcode: message.metadata.response_code,
        address,
    })
}

/// The address for name index `index` (the digits of the first label `nINDEX`).
pub fn address_of(index: u32) -> Option<Ipv4Addr> {
    (index < ANSWER_RANGE).then(|| Ipv4Addr::from(u32::from(ANSWER_BASE) + index))
}

/// The index in a first label `nDIGITS`.
fn index_of(name: &Name) -> Option<u32> {
    let first = name.iter().next()?;
    let digits = first.strip_prefix(b"n")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The responder's answer to `query`: for an A question whose first label is `nI` (I in
/// range), one A record `BASE + I` with `ttl`; NXDOMAIN for any other A question, an empty
/// NOERROR for other types, FORMERR for anything unparsable with a header. `None`: not a
/// query at all (too short, or a response), which is never answered.
pub fn respond(query: &[u8], ttl: u32) -> Option<Vec<u8>> {
    let message = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            // Echo the id of anything with a header, as a server does for garbage.
            let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if message.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut answer = Message::response(message.metadata.id, message.metadata.op_code);
    answer.metadata.authoritative = true;
    answer.metadata.recursion_desired = message.metadata.recursion_desired;
    let Some(question) = message.queries.first() else {
        answer.metadata.response_code = ResponseCode::FormErr;
        return answer.to_vec().ok();
    };
    answer.add_query(question.clone());
    if question.query_type() == RecordType::A {
        match index_of(question.name()).and_then(address_of) {
            Some(ip) => {
                answer.add_answer(Record::from_rdata(
                    question.name().clone(),
                    ttl,
                    RData::A(A(ip)),
                ));
            }
            None => answer.metadata.response_code = ResponseCode::NXDomain,
        }
    }
    answer.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_indexed_names() {
        let query = a_query(7, "n258.fqdn.test").expect("query");
        let bytes = respond(&query, 30).expect("an answer");
        let answer = read_answer(&bytes, 7).expect("parses");
        assert_eq!(answer.rcode, ResponseCode::NoError);
        assert_eq!(answer.address, Some(Ipv4Addr::new(10, 64, 1, 2)));
        assert!(read_answer(&bytes, 8).is_err(), "wrong id");
    }

    #[test]
    fn other_names_are_nxdomain() {
        for name in [
            "www.fqdn.test",
            "n.fqdn.test",
            "n99999999.fqdn.test",
            "nx1.a",
        ] {
            let query = a_query(1, name).expect("query");
            let answer = read_answer(&respond(&query, 0).expect("answer"), 1).expect("parses");
            assert_eq!(answer.rcode, ResponseCode::NXDomain, "{name}");
            assert_eq!(answer.address, None);
        }
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        assert_eq!(respond(&[1], 0), None);
        let bytes = respond(&[0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63], 0).expect("FORMERR");
        let answer = read_answer(&bytes, 9).expect("parses");
        assert_eq!(answer.rcode, ResponseCode::FormErr);
        // A response sent to the responder is not answered (no loops between servers).
        let query = a_query(3, "n1.fqdn.test").expect("query");
        let response = respond(&query, 0).expect("answer");
        assert_eq!(respond(&response, 0), None);
    }

    #[test]
    fn range_is_bounded() {
        assert_eq!(address_of(0), Some(ANSWER_BASE));
        assert_eq!(
            address_of(ANSWER_RANGE - 1),
            Some(Ipv4Addr::new(10, 79, 255, 255))
        );
        assert_eq!(address_of(ANSWER_RANGE), None);
    }
}
