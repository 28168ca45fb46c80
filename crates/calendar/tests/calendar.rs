//! The catalogue's vectors, properties of working-day arithmetic, and a cross-check of the
//! compiled GOV.UK list against an independent rules-based source.

#![allow(clippy::unwrap_used)]

use caselog_calendar::WorkingCalendar;
use chrono::{Datelike, Duration, NaiveDate, Weekday};
use proptest::prelude::*;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn cal() -> &'static WorkingCalendar {
    WorkingCalendar::england_and_wales()
}

#[test]
fn the_catalogue_vectors() {
    // Crosses Good Friday, Easter Monday and the early May bank holiday.
    assert_eq!(cal().add_working_days(d("2025-04-17"), 15).unwrap(), d("2025-05-13"));
    // Christmas Day (Friday) and Boxing Day substituted to Monday 28th.
    assert_eq!(cal().add_working_days(d("2026-12-24"), 1).unwrap(), d("2026-12-29"));
    assert_eq!(cal().working_days_between(d("2026-12-21"), d("2027-01-04")).unwrap(), 7);
    assert_eq!(cal().working_days_between(d("2025-04-17"), d("2025-04-17")).unwrap(), 0);
}

#[test]
fn the_range_is_the_table_and_outside_it_is_an_error() {
    assert_eq!(cal().range(), (d("2012-01-01"), d("2028-12-31")));
    assert!(cal().is_working_day(d("2011-12-30")).is_err());
    assert!(cal().working_days_between(d("2028-12-01"), d("2029-01-02")).is_err());
    let err = cal().add_working_days(d("2028-12-20"), 30).unwrap_err();
    assert!(err.to_string().contains("outside the bank-holiday calendar"));
}

#[test]
fn the_data_file_agrees_with_an_independent_rules_based_source() {
    let (first, last) = cal().range();
    for day in first.iter_days().take_while(|x| *x <= last) {
        let weekend = matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
        let expected = !weekend && !bankholidays::uk::is_bankholiday(&day);
        assert_eq!(cal().is_working_day(day).unwrap(), expected, "{day}");
    }
}

#[test]
fn working_days_in_a_month() {
    // D2's reference: May 2024 had 21 working days (two bank holidays).
    assert_eq!(cal().working_days_in(d("2024-05-01"), d("2024-05-31")).unwrap(), 21);
    assert_eq!(cal().working_days_in(d("2012-01-01"), d("2012-01-31")).unwrap(), 21);
}

/// A date in the calendar, at least `margin` days before its end.
fn any_date(margin: i64) -> impl Strategy<Value = NaiveDate> {
    let days = (d("2028-12-31") - d("2012-01-01")).num_days() - margin;
    (0i64..=days).prop_map(|n| d("2012-01-01") + Duration::days(n))
}

proptest! {
    #[test]
    fn adding_n_working_days_is_n_working_days_later(a in any_date(300), n in 0u32..200) {
        let b = cal().add_working_days(a, n).unwrap();
        prop_assert_eq!(cal().working_days_between(a, b).unwrap(), i64::from(n));
        if n > 0 {
            prop_assert!(cal().is_working_day(b).unwrap());
            // b is the earliest such day: the day before it is one working day short.
            prop_assert_eq!(cal().working_days_between(a, b - Duration::days(1)).unwrap(), i64::from(n) - 1);
        }
    }

    #[test]
    fn working_days_between_is_additive_and_antisymmetric(a in any_date(0), b in any_date(0), c in any_date(0)) {
        let wd = |x, y| cal().working_days_between(x, y).unwrap();
        prop_assert_eq!(wd(a, b) + wd(b, c), wd(a, c));
        prop_assert_eq!(wd(a, b), -wd(b, a));
        prop_assert!(wd(a, b).abs() <= (b - a).num_days().abs());
    }

    #[test]
    fn working_days_between_counts_days_after_a_up_to_b(a in any_date(60), span in 0i64..60) {
        let b = a + Duration::days(span);
        let counted = (1..=span).filter(|i| cal().is_working_day(a + Duration::days(*i)).unwrap()).count() as i64;
        prop_assert_eq!(cal().working_days_between(a, b).unwrap(), counted);
    }
}
