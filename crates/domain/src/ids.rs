//! Identities checked once, where a request enters, and carried as types from there on: a
//! function that takes a [`CaseId`] never has to ask whether it is well-formed.

use crate::FieldViolation;
use crate::validate::validate_case_id;
use std::fmt;

/// A case reference as the court numbers it, e.g. `LS25C00123`: 1-40 characters of letters,
/// digits, `-`, `_`, `/` and `.`, never a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(String);

impl CaseId {
    /// Checks `text`; the violations name the field `case_id` (re-point them with
    /// [`FieldViolation`]'s `field` for another place in a request).
    pub fn parse(text: &str) -> Result<CaseId, Vec<FieldViolation>> {
        let violations = validate_case_id(text);
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

#[cfg(test)]
mod tests {
    use super::*;

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
