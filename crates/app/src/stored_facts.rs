//! How the case-facts projection stores a case's facts, in `case_facts` and in every
//! `case_facts_history` row: a format byte, then the facts in postcard's encoding (the read
//! model snapshot's, so the two change together, see [`FORMAT`]).
//!
//! The encoding takes about a fifth of the bytes of the facts as JSON, and PostgreSQL stores it
//! without parsing it. A `case_facts` row with nothing in `stored` (last written before
//! migration 0010) is read from its JSON column: the store hands over that JSON text, which
//! starts with `{`, never a format byte. Since migration 0011 the projector writes no JSON.

use crate::error::Error;
use crate::snapshot::FORMAT;
use caselog_projections::CaseFacts;

/// The facts as stored: the encoding's format, then the encoding.
pub fn encode(facts: &CaseFacts) -> Result<Vec<u8>, Error> {
    let format = u8::try_from(FORMAT).map_err(|_| Error::Internal(format!("format {FORMAT} does not fit a byte")))?;
    let mut out = vec![format];
    postcard::to_io(facts, &mut out)
        .map_err(|e| Error::Internal(format!("encoding the facts of {}: {e}", facts.case_id)))?;
    Ok(out)
}

/// The facts a history row holds, or `None` if they were written in another format (an
/// earlier build's: the case is then folded from the log).
pub(crate) fn decode(data: &[u8]) -> Option<CaseFacts> {
    match data.split_first() {
        Some((&format, encoded)) if i32::from(format) == FORMAT => postcard::from_bytes(encoded).ok(),
        _ => None,
    }
}

/// The facts a `case_facts` row holds: `stored` in this build's encoding, or the JSON column's
/// text where `stored` is empty.
pub fn decode_row(data: &[u8]) -> Result<CaseFacts, Error> {
    match data.first() {
        Some(b'{') => serde_json::from_slice(data).map_err(|e| Error::Internal(format!("unreadable case facts: {e}"))),
        Some(&format) if i32::from(format) == FORMAT => {
            decode(data).ok_or_else(|| Error::Internal(format!("unreadable case facts in format {FORMAT}")))
        }
        Some(&format) => Err(Error::Internal(format!(
            "case facts stored in format {format}, which this build cannot read (it reads {FORMAT} and JSON): \
             run `caselog rebuild` with this build to rewrite them"
        ))),
        None => Err(Error::Internal("empty case facts".to_owned())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use caselog_domain::{CaseHistory, EventId, EventType, HistoryEvent, Payload};
    use caselog_projections::facts_of;

    fn facts() -> CaseFacts {
        let issued = HistoryEvent {
            event_id: EventId::from(uuid::Uuid::new_v4()),
            occurred_on: chrono::NaiveDate::from_ymd_opt(2025, 4, 1).unwrap(),
            payload: Payload::from_data_text(
                EventType::CaseIssued,
                r#"{"law_type":"public","application_types":["s31_care"],"court_code":"LS","service_area":"A5","local_authority_code":"E08000035","children":[{"child_id":"c1","birth_month":"2024-11"}]}"#,
            )
            .unwrap(),
        };
        facts_of("K1", &CaseHistory::new(vec![issued])).unwrap()
    }

    #[test]
    fn rows_read_back_in_either_form_and_other_formats_are_refused() {
        let facts = facts();
        let encoded = encode(&facts).unwrap();
        assert_eq!(decode_row(&encoded).unwrap(), facts);
        // A row written before migration 0010: jsonb's text, converted to bytes.
        let json = serde_json::to_vec(&serde_json::to_value(&facts).unwrap()).unwrap();
        assert_eq!(decode_row(&json).unwrap(), facts);
        assert!(
            encoded.len() * 3 < json.len(),
            "{} against {} bytes",
            encoded.len(),
            json.len()
        );
        let mut other = encoded.clone();
        other[0] = other[0].wrapping_add(1);
        assert!(decode_row(&other).unwrap_err().detail().contains("cannot read"));
        assert!(decode_row(&[]).is_err());
        assert!(decode_row(&encoded[..encoded.len() / 2]).is_err());
    }

    #[test]
    fn a_history_row_in_another_format_is_folded_again() {
        let mut encoded = encode(&facts()).unwrap();
        assert_eq!(decode(&encoded), Some(facts()));
        encoded[0] = encoded[0].wrapping_add(1);
        assert_eq!(decode(&encoded), None);
        assert_eq!(decode(&[]), None);
    }
}
