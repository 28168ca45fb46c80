//! `COPY ... FROM STDIN`: sending a prepared buffer, and the text format (one row per line,
//! fields separated by tabs).

/// Runs `statement` (a `COPY ... FROM STDIN`) with `buffer` as its whole input.
pub(crate) async fn copy_in(
    connection: &mut sqlx::PgConnection,
    statement: &str,
    buffer: Vec<u8>,
) -> Result<(), sqlx::Error> {
    let mut copy = connection.copy_in_raw(statement).await?;
    if let Err(err) = copy.send(buffer).await {
        copy.abort("send failed").await.ok();
        return Err(err);
    }
    copy.finish().await.map(|_| ())
}

/// Appends `value` escaped for the text format.
pub(crate) fn copy_text_field(buffer: &mut Vec<u8>, value: &str) {
    // Runs without a special byte (nearly every field is one run) are copied whole.
    let mut rest = value.as_bytes();
    while let Some(at) = first_special(rest) {
        buffer.extend_from_slice(&rest[..at]);
        buffer.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    buffer.extend_from_slice(rest);
}

fn is_special(byte: u8) -> bool {
    matches!(byte, b'\\' | b'\t' | b'\n' | b'\r')
}

/// Where the first byte the text format escapes is. Eight bytes are tested at a time (a byte
/// at a time, this search was a twentieth of the service's processor during batch ingest).
fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Non-zero when some byte of `word` is `byte`: the high bit survives in a byte that was
    // zero after the XOR (a borrow may also mark the byte above one, which only ends the
    // fast scan early; the bytes are then tested one by one).
    let holds = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut scanned = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_ne_bytes(word);
        if holds(word, b'\\') | holds(word, b'\t') | holds(word, b'\n') | holds(word, b'\r') != 0 {
            break;
        }
        scanned += 8;
    }
    bytes[scanned..]
        .iter()
        .position(|b| is_special(*b))
        .map(|at| scanned + at)
}

#[cfg(test)]
mod tests {
    use super::copy_text_field;

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let mut out = Vec::new();
        copy_text_field(&mut out, "a\\b\tc\nd\re\"f");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re\"f");
    }

    proptest::proptest! {
        /// Escaping eight bytes at a time writes what escaping byte by byte writes, wherever
        /// the special bytes fall (the strategy mixes them into runs of every length, beside
        /// bytes one bit away from them, which a word-at-a-time test could confuse).
        #[test]
        fn the_fast_scan_escapes_as_a_byte_by_byte_one(value in r#"[\\\t\n\r\x08\x0b\x0c\x0e\x0f\x5da-z{}"é]{0,40}"#) {
            let mut expected = Vec::new();
            for byte in value.bytes() {
                match byte {
                    b'\\' => expected.extend_from_slice(b"\\\\"),
                    b'\t' => expected.extend_from_slice(b"\\t"),
                    b'\n' => expected.extend_from_slice(b"\\n"),
                    b'\r' => expected.extend_from_slice(b"\\r"),
                    other => expected.push(other),
                }
            }
            let mut out = b"kept".to_vec();
            copy_text_field(&mut out, &value);
            proptest::prop_assert_eq!(&out[..4], b"kept");
            proptest::prop_assert_eq!(&out[4..], &expected[..]);
        }
    }
}
