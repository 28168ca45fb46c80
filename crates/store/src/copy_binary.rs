//! `COPY`'s binary format: writing rows for `COPY ... FROM STDIN (FORMAT binary)` and reading
//! the rows of `COPY ... TO STDOUT (FORMAT binary)`.
//!
//! Reading the log this way costs the rebuild about a third less processor time than reading it
//! as query rows: no per-row message decoding, no column lookup by name, no per-value type check.

use crate::log::ReplayRow;
use caselog_domain::{EventId, Version};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::StreamExt;
use sqlx::PgConnection;

/// The signature, flags and header-extension length that open every binary `COPY`.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A binary `COPY` input being written.
pub(crate) struct BinaryCopyWriter {
    buffer: Vec<u8>,
}

impl BinaryCopyWriter {
    pub(crate) fn with_capacity(bytes: usize) -> BinaryCopyWriter {
        let mut buffer = Vec::with_capacity(bytes + SIGNATURE.len() + 10);
        buffer.extend_from_slice(SIGNATURE);
        buffer.extend_from_slice(&0_i32.to_be_bytes()); // flags
        buffer.extend_from_slice(&0_i32.to_be_bytes()); // header extension
        BinaryCopyWriter { buffer }
    }

    pub(crate) fn start_row(&mut self, fields: i16) {
        self.buffer.extend_from_slice(&fields.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        // Fields are case ids and encoded facts: far below 2 GiB.
        self.buffer.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buffer.extend_from_slice(bytes);
    }

    pub(crate) fn null(&mut self) {
        self.buffer.extend_from_slice(&(-1_i32).to_be_bytes());
    }

    pub(crate) fn timestamp(&mut self, at: DateTime<Utc>) {
        self.bytes(&(at.timestamp_micros() - POSTGRES_EPOCH_MICROS).to_be_bytes());
    }

    /// The whole input, with its trailer.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(&(-1_i16).to_be_bytes());
        self.buffer
    }
}

/// Runs `statement`, a `COPY (...) TO STDOUT (FORMAT binary)`, and returns everything it sent.
pub(crate) async fn copy_out(connection: &mut PgConnection, statement: &str) -> Result<Vec<u8>, sqlx::Error> {
    let mut stream = connection.copy_out_raw(statement).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Why a binary `COPY` output could not be read.
#[derive(Debug)]
pub(crate) struct Malformed(String);

impl From<Malformed> for crate::Error {
    fn from(Malformed(detail): Malformed) -> crate::Error {
        crate::Error::Database(sqlx::Error::Protocol(format!("binary COPY output: {detail}")))
    }
}

/// The columns [`crate::log::REPLAY_COLUMNS`] names, in its order, parsed from a binary `COPY`.
pub(crate) fn replay_rows(input: &[u8]) -> Result<Vec<ReplayRow>, Malformed> {
    let mut reader = Reader::open(input)?;
    let mut rows = Vec::new();
    while reader.next_row(7)? {
        let case_id = reader.text()?;
        let event_id = EventId::from(uuid::Uuid::from_bytes(reader.fixed::<16>()?));
        let version = reader.int4()?;
        let version =
            Version::try_from(version).map_err(|_| Malformed(format!("version {version} is out of range")))?;
        let event_type = reader.text()?;
        let occurred_on = reader.date()?;
        let data = reader.text()?;
        let recorded_at = reader.timestamp()?;
        rows.push(ReplayRow {
            case_id,
            event_id,
            version,
            event_type,
            occurred_on,
            data,
            recorded_at,
        });
    }
    Ok(rows)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn open(input: &'a [u8]) -> Result<Reader<'a>, Malformed> {
        let rest = input
            .strip_prefix(SIGNATURE)
            .ok_or_else(|| Malformed("no binary COPY signature".into()))?;
        let mut reader = Reader { rest };
        let _flags = reader.take(4)?;
        let extension = reader.take(4)?;
        let extension = i32::from_be_bytes(extension.try_into().expect("four bytes"));
        let extension = usize::try_from(extension).map_err(|_| Malformed("negative header extension".into()))?;
        reader.take(extension)?;
        Ok(reader)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(Malformed(format!(
                "cut short: {n} bytes wanted, {} left",
                self.rest.len()
            )));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// Starts the next row (expecting `fields` fields), or reads the trailer and returns false.
    fn next_row(&mut self, fields: i16) -> Result<bool, Malformed> {
        let count = i16::from_be_bytes(self.take(2)?.try_into().expect("two bytes"));
        match count {
            -1 if self.rest.is_empty() => Ok(false),
            -1 => Err(Malformed(format!("{} bytes after the trailer", self.rest.len()))),
            n if n == fields => Ok(true),
            n => Err(Malformed(format!("a row of {n} fields, {fields} expected"))),
        }
    }

    /// The next field's bytes (a null is an error: every column read is NOT NULL).
    fn field(&mut self) -> Result<&'a [u8], Malformed> {
        let length = i32::from_be_bytes(self.take(4)?.try_into().expect("four bytes"));
        let length = usize::try_from(length).map_err(|_| Malformed("a null where none is stored".into()))?;
        self.take(length)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let field = self.field()?;
        field
            .try_into()
            .map_err(|_| Malformed(format!("a field of {} bytes, {N} expected", field.len())))
    }

    fn text(&mut self) -> Result<String, Malformed> {
        let field = self.field()?;
        String::from_utf8(field.to_vec()).map_err(|_| Malformed("text that is not UTF-8".into()))
    }

    fn int4(&mut self) -> Result<i32, Malformed> {
        Ok(i32::from_be_bytes(self.fixed::<4>()?))
    }

    fn date(&mut self) -> Result<NaiveDate, Malformed> {
        let days = self.int4()?;
        NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::try_days(days.into())?))
            .ok_or_else(|| Malformed(format!("date {days} days from 2000-01-01 is out of range")))
    }

    fn timestamp(&mut self) -> Result<DateTime<Utc>, Malformed> {
        let micros = i64::from_be_bytes(self.fixed::<8>()?);
        micros
            .checked_add(POSTGRES_EPOCH_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| Malformed(format!("timestamp {micros} µs from 2000-01-01 is out of range")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut writer = BinaryCopyWriter::with_capacity(0);
        writer.start_row(fields.len() as i16);
        for field in fields {
            match field {
                Some(bytes) => writer.bytes(bytes),
                None => writer.null(),
            }
        }
        writer.finish()
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let at = DateTime::parse_from_rfc3339("2026-03-31T23:59:59.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut writer = BinaryCopyWriter::with_capacity(0);
        writer.start_row(7);
        writer.bytes("c-1".as_bytes());
        writer.bytes(&[7; 16]);
        writer.bytes(&3_i32.to_be_bytes());
        writer.bytes(b"child_seen");
        // 2026-03-31 is 9,586 days after 2000-01-01.
        writer.bytes(&9_586_i32.to_be_bytes());
        writer.bytes(br#"{"a":"\u00e9"}"#);
        writer.timestamp(at);
        let rows = replay_rows(&writer.finish()).unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.case_id, "c-1");
        assert_eq!(uuid::Uuid::from(row.event_id), uuid::Uuid::from_bytes([7; 16]));
        assert_eq!(i32::from(row.version), 3);
        assert_eq!(row.event_type, "child_seen");
        assert_eq!(row.occurred_on, NaiveDate::from_ymd_opt(2026, 3, 31).unwrap());
        assert_eq!(row.data, r#"{"a":"\u00e9"}"#);
        assert_eq!(row.recorded_at, at);
    }

    #[test]
    fn refuses_what_is_not_a_whole_output() {
        assert!(replay_rows(b"COPY").is_err());
        let whole = one_row(&[Some(&b"x"[..]); 7]);
        // Cut inside the row, and the trailer missing.
        assert!(replay_rows(&whole[..whole.len() - 4]).is_err());
        assert!(replay_rows(&whole[..whole.len() - 2]).is_err());
        // Six fields, or a null where the log has none.
        assert!(replay_rows(&one_row(&[Some(&b"x"[..]); 6])).is_err());
        let mut with_null = vec![Some(&b"x"[..]); 7];
        with_null[5] = None;
        assert!(replay_rows(&one_row(&with_null)).is_err());
        // An empty output is no rows.
        assert!(
            replay_rows(&BinaryCopyWriter::with_capacity(0).finish())
                .unwrap()
                .is_empty()
        );
    }
}
