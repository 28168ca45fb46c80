//! The civil date in England for a UTC instant.
//!
//! UK summer time (BST, UTC+1) runs from 01:00 UTC on the last Sunday of March to 01:00 UTC on
//! the last Sunday of October (Summer Time Order 2002). Computing it here keeps the domain free
//! of a time-zone database; the rule has not changed since 1981 for the dates caselog records.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};

/// The date in England at the instant `now`.
pub fn date_in_england(now: DateTime<Utc>) -> NaiveDate {
    let year = now.year();
    let starts = last_sunday(year, 3).and_hms_opt(1, 0, 0).map(|t| t.and_utc());
    let ends = last_sunday(year, 10).and_hms_opt(1, 0, 0).map(|t| t.and_utc());
    let summer = matches!((starts, ends), (Some(s), Some(e)) if now >= s && now < e);
    if summer {
        (now + Duration::hours(1)).date_naive()
    } else {
        now.date_naive()
    }
}

fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let last_day = if month == 12 {
        NaiveDate::from_ymd_opt(year, 12, 31)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1).and_then(|d| d.pred_opt())
    }
    .unwrap_or(NaiveDate::MIN);
    let back = last_day.weekday().num_days_from_sunday();
    last_day - Duration::days(i64::from(back))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Weekday};

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .expect("valid instant")
    }

    #[test]
    fn last_sundays_match_published_clock_changes() {
        assert_eq!(
            last_sunday(2025, 3),
            NaiveDate::from_ymd_opt(2025, 3, 30).expect("date")
        );
        assert_eq!(
            last_sunday(2025, 10),
            NaiveDate::from_ymd_opt(2025, 10, 26).expect("date")
        );
        assert_eq!(
            last_sunday(2026, 3),
            NaiveDate::from_ymd_opt(2026, 3, 29).expect("date")
        );
        assert_eq!(
            last_sunday(2026, 10),
            NaiveDate::from_ymd_opt(2026, 10, 25).expect("date")
        );
        assert_eq!(last_sunday(2026, 3).weekday(), Weekday::Sun);
    }

    #[test]
    fn late_evening_utc_in_summer_is_the_next_day_in_england() {
        assert_eq!(
            date_in_england(at(2025, 6, 30, 23, 30)),
            NaiveDate::from_ymd_opt(2025, 7, 1).expect("date")
        );
        assert_eq!(
            date_in_england(at(2025, 6, 30, 22, 59)),
            NaiveDate::from_ymd_opt(2025, 6, 30).expect("date")
        );
    }

    #[test]
    fn winter_dates_follow_utc() {
        assert_eq!(
            date_in_england(at(2025, 12, 31, 23, 59)),
            NaiveDate::from_ymd_opt(2025, 12, 31).expect("date")
        );
    }

    #[test]
    fn clock_change_boundaries() {
        // 2025-03-30 01:00 UTC: clocks go forward, 23:30 UTC that day is already 31 March in England.
        assert_eq!(
            date_in_england(at(2025, 3, 30, 23, 30)),
            NaiveDate::from_ymd_opt(2025, 3, 31).expect("date")
        );
        assert_eq!(
            date_in_england(at(2025, 3, 29, 23, 30)),
            NaiveDate::from_ymd_opt(2025, 3, 29).expect("date")
        );
        // 2025-10-26 01:00 UTC: clocks go back.
        assert_eq!(
            date_in_england(at(2025, 10, 25, 23, 30)),
            NaiveDate::from_ymd_opt(2025, 10, 26).expect("date")
        );
        assert_eq!(
            date_in_england(at(2025, 10, 26, 23, 30)),
            NaiveDate::from_ymd_opt(2025, 10, 26).expect("date")
        );
    }
}
