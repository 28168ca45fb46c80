//! `COPY`'s binary format: writing rows for `COPY ... FROM STDIN (FORMAT binary)` and reading
//! the rows of `COPY ... TO STDOUT (FORMAT binary)`.
//!
//! Reading the log this way spares the rebuild what decoding query rows cost it (about a third
//! of its processor time): per-row messages, column lookups by name, a type check per value.

use crate::log::ReplayRow;
use caselog_domain::{EventId, Version};
use chrono::{DateTime, NaiveDate, Utc};

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

/// Why a binary `COPY` output could not be read.
#[derive(Debug)]
pub(crate) struct Malformed(String);

impl From<Malformed> for crate::Error {
    fn from(Malformed(detail): Malformed) -> crate::Error {
        crate::Error::Database(sqlx::Error::Protocol(format!("binary COPY output: {detail}")))
    }
}

/// Why a row could not be taken from what has arrived so far.
enum Short {
    /// More bytes are needed.
    Incomplete,
    Malformed(String),
}

/// The rows of a binary `COPY` output with the columns [`crate::log::REPLAY_COLUMNS`] names, in
/// its order, read as the output arrives in chunks of any size.
#[derive(Default)]
pub(crate) struct ReplayRowReader {
    buffer: Vec<u8>,
    /// Where the unread bytes start.
    at: usize,
    header_read: bool,
    ended: bool,
}

impl ReplayRowReader {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        // Keep the buffer as small as the last partial row: move it to the front first.
        self.buffer.drain(..self.at);
        self.at = 0;
        self.buffer.extend_from_slice(chunk);
    }

    /// The next whole row that has arrived, or `None` until more arrives (or after the trailer).
    pub(crate) fn next_row(&mut self) -> Result<Option<ReplayRow>, Malformed> {
        if self.ended {
            return Ok(None);
        }
        let mut reader = Reader {
            rest: &self.buffer[self.at..],
        };
        let parsed = (|| {
            if !self.header_read {
                reader.header()?;
            }
            if !reader.next_row(7)? {
                return Ok(None);
            }
            Ok(Some(reader.replay_row()?))
        })();
        match parsed {
            Err(Short::Incomplete) => Ok(None),
            Err(Short::Malformed(detail)) => Err(Malformed(detail)),
            Ok(row) => {
                self.header_read = true;
                self.ended |= row.is_none();
                self.at = self.buffer.len() - reader.rest.len();
                Ok(row)
            }
        }
    }

    /// Checks that the output ended with its trailer and nothing after it.
    pub(crate) fn finish(mut self) -> Result<(), Malformed> {
        if !self.ended {
            self.next_row()?;
        }
        match (self.ended, self.buffer.len() - self.at) {
            (true, 0) => Ok(()),
            (true, extra) => Err(Malformed(format!("{extra} bytes after the trailer"))),
            (false, left) => Err(Malformed(format!("cut short, {left} bytes of a row left"))),
        }
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn header(&mut self) -> Result<(), Short> {
        let signature = self.take(SIGNATURE.len())?;
        if signature != SIGNATURE {
            return Err(Short::Malformed("no binary COPY signature".into()));
        }
        let _flags = self.take(4)?;
        let extension = i32::from_be_bytes(self.array::<4>()?);
        let extension = usize::try_from(extension).map_err(|_| Short::Malformed("negative header extension".into()))?;
        self.take(extension)?;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.rest.len() < n {
            return Err(Short::Incomplete);
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Starts the next row (expecting `fields` fields), or reads the trailer and returns false.
    fn next_row(&mut self, fields: i16) -> Result<bool, Short> {
        match i16::from_be_bytes(self.array::<2>()?) {
            -1 => Ok(false),
            n if n == fields => Ok(true),
            n => Err(Short::Malformed(format!("a row of {n} fields, {fields} expected"))),
        }
    }

    fn replay_row(&mut self) -> Result<ReplayRow, Short> {
        let case_id = self.text()?;
        let event_id = EventId::from(uuid::Uuid::from_bytes(self.fixed::<16>()?));
        let version = self.int4()?;
        let version =
            Version::try_from(version).map_err(|_| Short::Malformed(format!("version {version} is out of range")))?;
        let event_type = self.text()?;
        let occurred_on = self.date()?;
        let data = self.text()?;
        let recorded_at = self.timestamp()?;
        Ok(ReplayRow {
            case_id,
            event_id,
            version,
            event_type,
            occurred_on,
            data,
            recorded_at,
        })
    }

    /// The next field's bytes (a null is an error: every column read is NOT NULL).
    fn field(&mut self) -> Result<&'a [u8], Short> {
        let length = i32::from_be_bytes(self.array::<4>()?);
        let length = usize::try_from(length).map_err(|_| Short::Malformed("a null where none is stored".into()))?;
        self.take(length)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let field = self.field()?;
        field
            .try_into()
            .map_err(|_| Short::Malformed(format!("a field of {} bytes, {N} expected", field.len())))
    }

    fn text(&mut self) -> Result<String, Short> {
        let field = self.field()?;
        String::from_utf8(field.to_vec()).map_err(|_| Short::Malformed("text that is not UTF-8".into()))
    }

    fn int4(&mut self) -> Result<i32, Short> {
        Ok(i32::from_be_bytes(self.fixed::<4>()?))
    }

    fn date(&mut self) -> Result<NaiveDate, Short> {
        let days = self.int4()?;
        NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::try_days(days.into())?))
            .ok_or_else(|| Short::Malformed(format!("date {days} days from 2000-01-01 is out of range")))
    }

    fn timestamp(&mut self) -> Result<DateTime<Utc>, Short> {
        let micros = i64::from_be_bytes(self.fixed::<8>()?);
        micros
            .checked_add(POSTGRES_EPOCH_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| Short::Malformed(format!("timestamp {micros} µs from 2000-01-01 is out of range")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every row of `output`, fed to a reader `chunk` bytes at a time.
    fn read_all(output: &[u8], chunk: usize) -> Result<Vec<ReplayRow>, Malformed> {
        let mut reader = ReplayRowReader::default();
        let mut rows = Vec::new();
        for piece in output.chunks(chunk) {
            reader.push(piece);
            while let Some(row) = reader.next_row()? {
                rows.push(row);
            }
        }
        reader.finish()?;
        Ok(rows)
    }

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

    fn replay_output(case_ids: &[&str], at: DateTime<Utc>) -> Vec<u8> {
        let mut writer = BinaryCopyWriter::with_capacity(0);
        for (i, case_id) in case_ids.iter().enumerate() {
            writer.start_row(7);
            writer.bytes(case_id.as_bytes());
            writer.bytes(&[i as u8; 16]);
            writer.bytes(&(i as i32 + 1).to_be_bytes());
            writer.bytes(b"child_seen");
            // 2026-03-31 is 9,586 days after 2000-01-01.
            writer.bytes(&9_586_i32.to_be_bytes());
            writer.bytes(br#"{"a":"\u00e9"}"#);
            writer.timestamp(at);
        }
        writer.finish()
    }

    #[test]
    fn reads_back_what_the_writer_wrote_in_chunks_of_any_size() {
        let at = DateTime::parse_from_rfc3339("2026-03-31T23:59:59.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let output = replay_output(&["c-1", "c-1", "c-2"], at);
        for chunk in [1, 2, 3, 7, 64, output.len()] {
            let rows = read_all(&output, chunk).unwrap();
            assert_eq!(rows.len(), 3, "chunks of {chunk}");
            let row = &rows[1];
            assert_eq!(row.case_id, "c-1");
            assert_eq!(uuid::Uuid::from(row.event_id), uuid::Uuid::from_bytes([1; 16]));
            assert_eq!(i32::from(row.version), 2);
            assert_eq!(row.event_type, "child_seen");
            assert_eq!(row.occurred_on, NaiveDate::from_ymd_opt(2026, 3, 31).unwrap());
            assert_eq!(row.data, r#"{"a":"\u00e9"}"#);
            assert_eq!(row.recorded_at, at);
            assert_eq!(rows[2].case_id, "c-2");
        }
    }

    #[test]
    fn refuses_what_is_not_a_whole_output() {
        assert!(read_all(b"COPY", 4).is_err());
        let whole = replay_output(&["c"], Utc::now());
        assert_eq!(read_all(&whole, 5).unwrap().len(), 1);
        // Cut inside the row, and the trailer missing.
        assert!(read_all(&whole[..whole.len() - 4], 5).is_err());
        assert!(read_all(&whole[..whole.len() - 2], 5).is_err());
        // Bytes after the trailer.
        assert!(read_all(&[&whole[..], b"x"].concat(), 5).is_err());
        // Six fields, or a null where the log has none.
        assert!(read_all(&one_row(&[Some(&b"x"[..]); 6]), 5).is_err());
        let mut with_null = vec![Some(&b"x"[..]); 7];
        with_null[0] = None;
        assert!(read_all(&one_row(&with_null), 5).is_err());
        // An empty output is no rows.
        assert!(
            read_all(&BinaryCopyWriter::with_capacity(0).finish(), 3)
                .unwrap()
                .is_empty()
        );
    }
}
