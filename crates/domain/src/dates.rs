//! Dates as the API writes them: `YYYY-MM-DD`.

use chrono::NaiveDate;

/// Parses a date as `NaiveDate::parse_from_str(text, "%Y-%m-%d")` does. Every event of a
/// request carries one or more dates, and chrono reads its format string again for each: about
/// 6% of the service's processor time during batch ingest went there. The usual shape,
/// four digits, two and two, is read directly; anything else (`2025-7-1`, a signed year) is left
/// to chrono, so the same texts are accepted as before.
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    read_usual_shape(text).or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
}

/// A date written as four digits, two and two (`2025-07-01`), if it is one and a real day.
fn read_usual_shape(text: &str) -> Option<NaiveDate> {
    let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = text.as_bytes() else {
        return None;
    };
    let digits = [*y0, *y1, *y2, *y3, *m0, *m1, *d0, *d1];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = |slice: &[u8]| slice.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    // At most 9999: within i32.
    let year = value(&digits[..4]) as i32;
    NaiveDate::from_ymd_opt(year, value(&digits[4..6]), value(&digits[6..]))
}

/// `date` as `YYYY-MM-DD` in `buffer`, the text chrono's `Display` writes, for years 0 to 9999
/// (`None` for others, which chrono writes with a sign). Events are written by the thousand in
/// a batch, and chrono's formatting machinery took about 3% of the service's processor there.
pub fn write_date(date: NaiveDate, buffer: &mut [u8; 10]) -> Option<&str> {
    use chrono::Datelike as _;
    let year = u32::try_from(date.year()).ok().filter(|year| *year <= 9999)?;
    let mut put = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for i in (at..at + width).rev() {
            buffer[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, date.month(), 2);
    put(8, date.day(), 2);
    buffer[4] = b'-';
    buffer[7] = b'-';
    std::str::from_utf8(buffer).ok()
}

/// Serde for a `NaiveDate` field, writing and reading the same text as chrono's own
/// implementations (`#[serde(with = "caselog_domain::dates::iso")]`), without their formatting
/// and parsing machinery for the usual shape.
pub mod iso {
    use super::{read_usual_shape, write_date};
    use chrono::NaiveDate;
    use serde::{Deserializer, Serialize as _, Serializer};

    pub fn serialize<S: Serializer>(date: &NaiveDate, serializer: S) -> Result<S::Ok, S::Error> {
        match write_date(*date, &mut [0; 10]) {
            Some(text) => serializer.serialize_str(text),
            None => date.serialize(serializer),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NaiveDate, D::Error> {
        deserializer.deserialize_str(DateVisitor)
    }

    struct DateVisitor;

    impl serde::de::Visitor<'_> for DateVisitor {
        type Value = NaiveDate;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            // chrono's words, so that a refusal reads as before.
            formatter.write_str("a formatted date string")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<NaiveDate, E> {
            // Anything but a real day in the usual shape goes to chrono, for its answer and its
            // error.
            read_usual_shape(text).map_or_else(|| text.parse().map_err(E::custom), Ok)
        }
    }

    /// The same for an `Option<NaiveDate>` field.
    pub mod option {
        use chrono::NaiveDate;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(date: &Option<NaiveDate>, serializer: S) -> Result<S::Ok, S::Error> {
            match date {
                Some(date) => serializer.serialize_some(&Iso(*date)),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<NaiveDate>, D::Error> {
            Ok(Option::<Iso>::deserialize(deserializer)?.map(|Iso(date)| date))
        }

        struct Iso(NaiveDate);

        impl serde::Serialize for Iso {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                super::serialize(&self.0, serializer)
            }
        }

        impl<'de> Deserialize<'de> for Iso {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Iso, D::Error> {
                super::deserialize(deserializer).map(Iso)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Datelike;
    use proptest::prelude::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Fast {
        #[serde(with = "iso")]
        on: NaiveDate,
        #[serde(default, with = "iso::option", skip_serializing_if = "Option::is_none")]
        maybe: Option<NaiveDate>,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Chrono {
        on: NaiveDate,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maybe: Option<NaiveDate>,
    }

    #[test]
    fn a_missing_optional_date_reads_as_none_and_a_null_too() {
        let read: Fast = serde_json::from_str(r#"{"on": "2025-07-01"}"#).unwrap();
        assert_eq!(read.maybe, None);
        let read: Fast = serde_json::from_str(r#"{"on": "2025-07-01", "maybe": null}"#).unwrap();
        assert_eq!(read.maybe, None);
        assert!(serde_json::from_str::<Fast>(r#"{"on": 20250701}"#).is_err());
    }

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
        fn writes_dates_as_chrono_displays_them(days in -400_000i64..4_000_000) {
            let date = NaiveDate::MIN.with_year(1).expect("year 1") + chrono::Duration::days(days);
            let written = write_date(date, &mut [0; 10]).map(str::to_owned);
            let in_range = (0..=9999).contains(&date.year());
            prop_assert_eq!(written.is_some(), in_range);
            if let Some(written) = written {
                prop_assert_eq!(written, date.to_string());
            }
        }

        #[test]
        fn serde_writes_and_reads_as_chrono_does(days in -400_000i64..4_000_000, absent in any::<bool>()) {
            let date = NaiveDate::MIN.with_year(1).expect("year 1") + chrono::Duration::days(days);
            let ours = serde_json::to_string(&Fast { on: date, maybe: (!absent).then_some(date) }).unwrap();
            let chronos = serde_json::to_string(&Chrono { on: date, maybe: (!absent).then_some(date) }).unwrap();
            prop_assert_eq!(&ours, &chronos);
            let read: Fast = serde_json::from_str(&chronos).unwrap();
            prop_assert_eq!((read.on, read.maybe), (date, (!absent).then_some(date)));
        }

        #[test]
        fn serde_accepts_and_refuses_what_chrono_does(text in "[0-9+ -]{0,3}[0-9]{0,5}-[0-9]{0,3}-[0-9]{0,3}[ a]{0,1}") {
            let json = format!(r#"{{"on": "{text}", "maybe": "{text}"}}"#);
            let ours = serde_json::from_str::<Fast>(&json).map(|f| (f.on, f.maybe)).map_err(|e| e.to_string());
            let chronos = serde_json::from_str::<Chrono>(&json).map(|c| (c.on, c.maybe)).map_err(|e| e.to_string());
            prop_assert_eq!(ours, chronos);
        }

        #[test]
        fn reads_back_every_date_it_writes(days in 0i64..3_652_059) {
            let date = NaiveDate::MIN.with_year(1).expect("year 1") + chrono::Duration::days(days);
            prop_assert_eq!(parse_date(&date.to_string()), Some(date));
        }
    }
}
