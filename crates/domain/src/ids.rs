//! Identities checked once, where a request enters, and carried as types from there on: a
//! function that takes a [`CaseId`] never has to ask whether it is well-formed, and a
//! [`Version`] or a [`Position`] is always one the log can hold. The conversions to and from the
//! integers of rows and of the wire are here and nowhere else; a value out of range is an error,
//! never a wrap or a cap.

use crate::FieldViolation;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

const CASE_ID_MAX: usize = 40;

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '.')
}

/// Checks an identifier (a case, child, report or practitioner id): 1 to `max` characters of
/// letters, digits, `-`, `_`, `/` and `.`, so that no name can be put where an id belongs.
pub(crate) fn check_id(out: &mut Vec<FieldViolation>, field: &str, value: &str, max: usize, what: &str) {
    if value.is_empty() {
        out.push(FieldViolation::new(field, format!("{what} is required")));
    } else if value.len() > max || !value.chars().all(is_id_char) {
        out.push(FieldViolation::new(
            field,
            format!(
                "{what} must be 1-{max} characters of A-Z, a-z, 0-9, '-', '_', '/', '.' (an identifier, never a name)"
            ),
        ));
    }
}

/// A case reference as the court numbers it, e.g. `LS25C00123`: 1-40 characters of letters,
/// digits, `-`, `_`, `/` and `.`, never a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(String);

impl CaseId {
    /// Checks `text`; the violations name the field `case_id` (re-point them with
    /// [`FieldViolation`]'s `field` for another place in a request).
    pub fn parse(text: &str) -> Result<CaseId, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        check_id(&mut violations, "case_id", text, CASE_ID_MAX, "case_id");
        if violations.is_empty() {
            Ok(CaseId(text.to_owned()))
        } else {
            Err(violations)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CaseId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A case's version: how many events are recorded for it. Its first event has version 1, so
/// [`Version::ZERO`] is a case with no events. At most [`Version::MAX`] (2^31 - 1), which is what
/// a stored row holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(u32);

/// A number outside the range of the identity it was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} is outside 0..={max}")]
pub struct OutOfRange {
    pub what: &'static str,
    pub value: i128,
    pub max: i128,
}

impl Version {
    pub const ZERO: Version = Version(0);
    pub const MAX: Version = Version(i32::MAX as u32);

    fn checked(value: impl Into<i128>) -> Result<Version, OutOfRange> {
        let value = value.into();
        match u32::try_from(value) {
            Ok(v) if v <= Version::MAX.0 => Ok(Version(v)),
            _ => Err(OutOfRange {
                what: "version",
                value,
                max: Version::MAX.0.into(),
            }),
        }
    }

    /// The version `count` events after this one: `v.after(1)` is the next event's version.
    pub fn after(self, count: usize) -> Result<Version, OutOfRange> {
        Version::checked(i128::from(self.0) + count as i128)
    }

    pub fn get(self) -> u64 {
        self.0.into()
    }
}

impl TryFrom<u64> for Version {
    type Error = OutOfRange;
    fn try_from(value: u64) -> Result<Version, OutOfRange> {
        Version::checked(value)
    }
}

impl TryFrom<i64> for Version {
    type Error = OutOfRange;
    fn try_from(value: i64) -> Result<Version, OutOfRange> {
        Version::checked(value)
    }
}

impl TryFrom<i32> for Version {
    type Error = OutOfRange;
    fn try_from(value: i32) -> Result<Version, OutOfRange> {
        Version::checked(value)
    }
}

impl TryFrom<usize> for Version {
    type Error = OutOfRange;
    fn try_from(value: usize) -> Result<Version, OutOfRange> {
        Version::checked(value as i128)
    }
}

impl From<Version> for i32 {
    fn from(version: Version) -> i32 {
        // In range by construction: a Version is at most i32::MAX.
        version.0 as i32
    }
}

impl From<Version> for i64 {
    fn from(version: Version) -> i64 {
        version.0.into()
    }
}

impl From<Version> for u64 {
    fn from(version: Version) -> u64 {
        version.0.into()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event's place in the whole log: positions increase in commit order across all cases (with
/// gaps where an append rolled back). [`Position::ZERO`] is before the first event, so "after
/// position zero" is the whole log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position(i64);

impl Position {
    pub const ZERO: Position = Position(0);
    pub const MAX: Position = Position(i64::MAX);

    fn checked(value: impl Into<i128>) -> Result<Position, OutOfRange> {
        let value = value.into();
        match i64::try_from(value) {
            Ok(v) if v >= 0 => Ok(Position(v)),
            _ => Err(OutOfRange {
                what: "position",
                value,
                max: i64::MAX.into(),
            }),
        }
    }

    /// A position from the wire, where any `u64` may arrive; past the log's range means "after
    /// everything", which is what a reader asking for it means.
    pub fn saturating_from(value: u64) -> Position {
        Position(i64::try_from(value).unwrap_or(i64::MAX))
    }

    pub fn get(self) -> u64 {
        self.0 as u64
    }

    /// The position `count` past this one, or [`Position::MAX`].
    pub fn saturating_add(self, count: u64) -> Position {
        Position(self.0.saturating_add(i64::try_from(count).unwrap_or(i64::MAX)))
    }

    /// How far this position lies past `earlier` (zero when it does not).
    pub fn since(self, earlier: Position) -> u64 {
        self.0.saturating_sub(earlier.0).max(0) as u64
    }
}

impl TryFrom<i64> for Position {
    type Error = OutOfRange;
    fn try_from(value: i64) -> Result<Position, OutOfRange> {
        Position::checked(value)
    }
}

impl TryFrom<u64> for Position {
    type Error = OutOfRange;
    fn try_from(value: u64) -> Result<Position, OutOfRange> {
        Position::checked(value)
    }
}

impl From<Position> for i64 {
    fn from(position: Position) -> i64 {
        position.0
    }
}

impl From<Position> for u64 {
    fn from(position: Position) -> u64 {
        position.0 as u64
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The sender's id for one event: the key that makes a retried append land once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub const fn from_uuid(uuid: Uuid) -> EventId {
        EventId(uuid)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The nil UUID, which no sender may choose.
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }
}

impl From<Uuid> for EventId {
    fn from(uuid: Uuid) -> EventId {
        EventId(uuid)
    }
}

impl From<EventId> for Uuid {
    fn from(id: EventId) -> Uuid {
        id.0
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> Result<EventId, uuid::Error> {
        Uuid::parse_str(text).map(EventId)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_version_is_what_a_row_holds() {
        assert_eq!(i32::from(Version::MAX), i32::MAX);
        assert!(Version::try_from(i64::from(i32::MAX) + 1).is_err());
        assert!(Version::try_from(-1_i32).is_err());
        assert!(Version::try_from(u64::MAX).is_err());
        assert_eq!(Version::ZERO.after(3).map(u64::from), Ok(3));
        assert!(Version::MAX.after(1).is_err());
        assert!(Version::ZERO.after(usize::MAX).is_err());
    }

    #[test]
    fn a_position_is_never_negative() {
        assert!(Position::try_from(-1_i64).is_err());
        assert!(Position::try_from(u64::MAX).is_err());
        assert_eq!(Position::saturating_from(u64::MAX), Position::MAX);
        assert_eq!(Position::saturating_from(7).get(), 7);
        assert_eq!(Position::MAX.saturating_add(1), Position::MAX);
        assert_eq!(Position::saturating_from(9).since(Position::saturating_from(4)), 5);
        assert_eq!(Position::ZERO.since(Position::MAX), 0);
    }

    proptest! {
        #[test]
        fn versions_convert_without_loss_or_wrap(value in any::<i64>()) {
            match Version::try_from(value) {
                Ok(version) => {
                    prop_assert_eq!(i64::from(version), value);
                    prop_assert_eq!(i64::from(i32::from(version)), value);
                    prop_assert_eq!(Version::try_from(version.get()), Ok(version));
                }
                Err(_) => prop_assert!(!(0..=i64::from(i32::MAX)).contains(&value)),
            }
        }

        #[test]
        fn after_counts_on_or_refuses(start in 0u32..=i32::MAX as u32, count in 0usize..1_000) {
            let start = Version::try_from(u64::from(start)).expect("in range by the strategy");
            match start.after(count) {
                Ok(end) => prop_assert_eq!(end.get() - start.get(), count as u64),
                Err(_) => prop_assert!(u64::from(start) + count as u64 > u64::from(Version::MAX)),
            }
        }
    }

    #[test]
    fn a_case_id_is_checked_once() {
        assert_eq!(
            CaseId::parse("LS25C00123").map(|c| c.to_string()),
            Ok("LS25C00123".to_owned())
        );
        for bad in ["", "LS 25", "Jane Smith's case", &"X".repeat(41), "LS25\u{0}"] {
            let violations = CaseId::parse(bad).expect_err("a malformed case id");
            assert_eq!(violations.len(), 1, "{bad:?}");
            assert_eq!(violations[0].field, "case_id");
        }
    }
}
