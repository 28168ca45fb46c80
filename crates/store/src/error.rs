//! Store errors: what a caller can act on (a conflict, a duplicate, an outage), and the rest.

use caselog_domain::{EventId, OutOfRange, Position, Version};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another append took one of the case versions this append wanted.
    #[error("case {case_id} already has an event at one of versions {first_version}..")]
    VersionConflict { case_id: String, first_version: Version },
    /// One of the event ids is already recorded (by an append that committed meanwhile).
    #[error("an event id of the batch is already recorded")]
    DuplicateEventId,
    /// The database could not be reached or did not answer in time.
    #[error("the event store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("{0:?} is not a database role name this tool will grant to (lower-case letters, digits, '_')")]
    InvalidRoleName(String),
    #[error("a batch of {rows} events after version {after} passes the largest version a case can have ({max})", max = Version::MAX)]
    VersionOutOfRange { after: Version, rows: usize },
    /// A row holds a version or a position no append writes: the table was changed by hand.
    #[error("a stored row is out of range: {0}")]
    StoredOutOfRange(#[from] OutOfRange),
    #[error("the group appender has stopped")]
    AppenderStopped,
    #[error("the grouped case reader has stopped")]
    ReaderStopped,
    #[error("stored event {event_id} cannot be read: {message}")]
    Corrupt { event_id: EventId, message: String },
}

impl Error {
    pub(crate) fn from_sqlx(err: sqlx::Error, case_id: &str, first_version: Version) -> Error {
        if let Some(db) = err.as_database_error()
            && db.is_unique_violation()
        {
            return match db.constraint() {
                Some("events_case_version_key") => Error::VersionConflict {
                    case_id: case_id.to_owned(),
                    first_version,
                },
                _ => Error::DuplicateEventId,
            };
        }
        Error::from(err)
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        if is_outage(&err) {
            Error::Unavailable(err)
        } else {
            Error::Database(err)
        }
    }
}

/// Whether the database could not be reached or did not answer in time, rather than refusing
/// the statement.
pub(crate) fn is_outage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| means_unavailable(&code)),
        _ => false,
    }
}

/// Whether a SQLSTATE says the database is (for now) not there to answer, rather than that the
/// statement was wrong: the server shutting down or restarting (57P01-57P03, 57P05), a lost
/// connection (class 08), no connection slots left (53300), or a standby that cannot serve
/// writes (25006). A caller may retry these.
pub(crate) fn means_unavailable(sqlstate: &str) -> bool {
    sqlstate.starts_with("08") || matches!(sqlstate, "57P01" | "57P02" | "57P03" | "57P05" | "53300" | "25006")
}

/// The first version a batch of `rows` events after `after` takes, and its row count as the
/// rows' integers: the one check that a batch (up to its last version) fits the versions a case
/// can have.
pub(crate) fn batch_versions(after: Version, rows: usize) -> Result<(Version, i32), Error> {
    let out_of_range = || Error::VersionOutOfRange { after, rows };
    let first = after.after(1).map_err(|_| out_of_range())?;
    after.after(rows).map_err(|_| out_of_range())?;
    let count = i32::try_from(rows).map_err(|_| out_of_range())?;
    Ok((first, count))
}

/// A position read from a row or a function of the database.
pub(crate) fn stored_position(value: i64) -> Result<Position, Error> {
    Ok(Position::try_from(value)?)
}

/// A version read from a row.
pub(crate) fn stored_version(value: i32) -> Result<Version, Error> {
    Ok(Version::try_from(value)?)
}

#[cfg(test)]
mod tests {
    use super::means_unavailable;

    #[test]
    fn connection_loss_and_shutdown_are_outages_not_faults() {
        for code in ["57P01", "57P02", "57P03", "08006", "08003", "53300", "25006"] {
            assert!(means_unavailable(code), "{code}");
        }
        for code in ["23505", "42P01", "22003", "40001", "57014", "CL001"] {
            assert!(!means_unavailable(code), "{code}");
        }
    }
}
