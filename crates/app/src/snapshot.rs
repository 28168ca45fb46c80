//! The encoding of a read-model snapshot's parts: postcard (compact, positional) of the case
//! facts a few thousand at a time, then of the recording spans. A new encoding takes a new
//! [`FORMAT`]; a server ignores snapshots of other formats and loads `case_facts` instead.

use crate::as_of::Span;
use crate::error::Error;
use caselog_projections::CaseFacts;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The encoding written and read by this build.
pub(crate) const FORMAT: i32 = 1;

/// Cases per part: a part is encoded under a brief read lock of the read model, and a few
/// thousand cases take a few milliseconds.
pub(crate) const CASES_PER_PART: usize = 4_096;

pub(crate) const SPANS_PER_PART: usize = 65_536;

#[derive(Serialize)]
enum PartRef<'a> {
    Cases(&'a [CaseFacts]),
    Spans(&'a [(Arc<str>, Span)]),
}

/// One part, decoded (the same layout as [`PartRef`]).
#[derive(Deserialize)]
pub(crate) enum Part {
    Cases(Vec<CaseFacts>),
    Spans(Vec<(String, Span)>),
}

pub(crate) fn encode_cases(cases: &[CaseFacts]) -> Result<Vec<u8>, Error> {
    encode(&PartRef::Cases(cases))
}

pub(crate) fn encode_spans(spans: &[(Arc<str>, Span)]) -> Result<Vec<u8>, Error> {
    encode(&PartRef::Spans(spans))
}

fn encode(part: &PartRef<'_>) -> Result<Vec<u8>, Error> {
    postcard::to_stdvec(part).map_err(|e| Error::Internal(format!("encoding a read-model snapshot part: {e}")))
}

pub(crate) fn decode(data: &[u8]) -> Result<Part, Error> {
    postcard::from_bytes(data).map_err(|e| Error::Internal(format!("unreadable read-model snapshot part: {e}")))
}
