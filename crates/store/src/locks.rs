//! The advisory-lock keys the store takes, in one place so that no two uses share a key.
//!
//! All use PostgreSQL's two-int4 form with the same first key ("case" in ASCII); the
//! single-int8 form belongs to the feed, whose keys are transaction promises. Operators and
//! tests find a holder in `pg_locks` by `classid` (the first key) and `objid` (the second).

/// Held for a session by the one process that runs the projections.
pub(crate) const PROJECTOR: (i32, i32) = (0x6361_7365, 1);
/// Held for a session by the one process that may rebuild.
pub(crate) const REBUILD: (i32, i32) = (0x6361_7365, 2);
/// Held by the transaction writing a read-model snapshot, so that replicas started together do
/// not all write one; it must not be the rebuild's, or a snapshot would wait on a rebuild.
pub(crate) const SNAPSHOT: (i32, i32) = (0x6361_7365, 3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lock_has_its_own_key() {
        let keys = [PROJECTOR, REBUILD, SNAPSHOT];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
