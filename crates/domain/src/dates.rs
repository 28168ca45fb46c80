//! Dates as the API writes them: `YYYY-MM-DD`.

use chrono::NaiveDate;

/// Parses a date as `NaiveDate::parse_from_str(text, "%Y-%m-%d")` does. Every event of a
/// request carries one or more dates, and chrono reads its format string again for each: about
/// 6% of the service's processor time during batch ingest went there. The usual shape,
/// four digits, two and two, is read directly; anything else (`2025-7-1`, a signed year) is left
/// to chrono, so the same texts are accepted as before.
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    if let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = text.as_bytes() {
        let digits = [*y0, *y1, *y2, *y3, *m0, *m1, *d0, *d1];
        if digits.iter().all(u8::is_ascii_digit) {
            let value = |slice: &[u8]| slice.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            // At most 9999: within i32.
            let year = value(&digits[..4]) as i32;
            return NaiveDate::from_ymd_opt(year, value(&digits[4..6]), value(&digits[6..]));
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;
    use proptest::prelude::*;

    fn chrono_parse(text: &str) -> Option<NaiveDate> {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
    }

    #[test]
    fn reads_dates_and_refuses_what_chrono_refuses() {
        assert_eq!(parse_date("2025-07-01"), NaiveDate::from_ymd_opt(2025, 7, 1));
        assert_eq!(parse_date("2024-02-29"), NaiveDate::from_ymd_opt(2024, 2, 29));
        for text in [
            "2025-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-01-32",
            "2025-01-00",
            "20250101",
            "",
        ] {
            assert_eq!(parse_date(text), None, "{text}");
        }
        assert_eq!(parse_date("2025-7-1"), chrono_parse("2025-7-1"));
    }

    proptest! {
        #[test]
        fn agrees_with_chrono_on_every_shape(text in "[0-9+ -]{0,3}[0-9]{0,5}-[0-9]{0,3}-[0-9]{0,3}[ a]{0,1}") {
            prop_assert_eq!(parse_date(&text), chrono_parse(&text));
        }

        #[test]
        fn agrees_with_chrono_on_ten_character_texts(year in 0u32..10_000, month in 0u32..100, day in 0u32..100) {
            let text = format!("{year:04}-{month:02}-{day:02}");
            prop_assert_eq!(parse_date(&text), chrono_parse(&text));
        }

        #[test]
        fn reads_back_every_date_it_writes(days in 0i64..3_652_059) {
            let date = NaiveDate::MIN.with_year(1).expect("year 1") + chrono::Duration::days(days);
            prop_assert_eq!(parse_date(&date.to_string()), Some(date));
        }
    }
}
