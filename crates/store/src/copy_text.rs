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
    while let Some(at) = rest.iter().position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
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

#[cfg(test)]
mod tests {
    use super::copy_text_field;

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let mut out = Vec::new();
        copy_text_field(&mut out, "a\\b\tc\nd\re\"f");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re\"f");
    }
}
