//! Working days in England and Wales: Monday to Friday, except the bank holidays of the GOV.UK
//! list (`data/bank-holidays-england-and-wales.csv`), compiled into the binary so that replaying
//! history always yields the same deadlines. Asking about a year outside the list is an error,
//! never a guess.
//!
//! Definitions (the metric catalogue's):
//! - `working_days_between(a, b)`: the number of working days `d` with `a < d <= b` (0 when
//!   `a == b`, negative when `b < a`);
//! - `add_working_days(a, n)`: the n-th working day after `a` (`a` itself for `n == 0`), so that
//!   "within N working days of a" means `b <= add_working_days(a, N)`.

use chrono::{Datelike, NaiveDate, Weekday};
use std::sync::OnceLock;

const ENGLAND_AND_WALES_CSV: &str = include_str!("../data/bank-holidays-england-and-wales.csv");

/// A date the calendar has no bank-holiday data for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{date} is outside the bank-holiday calendar, which covers {first} to {last}")]
pub struct OutOfRange {
    pub date: NaiveDate,
    pub first: NaiveDate,
    pub last: NaiveDate,
}

/// A working-day calendar over whole years.
#[derive(Debug, Clone)]
pub struct WorkingCalendar {
    first: NaiveDate,
    last: NaiveDate,
    /// `worked_through[i]`: working days in `first ..= first + i`.
    worked_through: Vec<u32>,
    /// Every working day in order, for adding working days in constant time.
    working_days: Vec<NaiveDate>,
}

impl WorkingCalendar {
    /// England and Wales, from the compiled GOV.UK list (every year it names, in full).
    pub fn england_and_wales() -> &'static WorkingCalendar {
        static CALENDAR: OnceLock<WorkingCalendar> = OnceLock::new();
        CALENDAR.get_or_init(|| {
            let holidays: Vec<NaiveDate> = ENGLAND_AND_WALES_CSV
                .lines()
                .skip(1)
                .filter_map(|line| line.split(',').next())
                .filter_map(|date| NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").ok())
                .collect();
            WorkingCalendar::from_holidays(&holidays)
        })
    }

    /// A calendar covering every full year from the earliest to the latest holiday given.
    pub fn from_holidays(holidays: &[NaiveDate]) -> WorkingCalendar {
        let first_year = holidays.iter().map(|d| d.year()).min().unwrap_or(2000);
        let last_year = holidays.iter().map(|d| d.year()).max().unwrap_or(2000);
        let first = NaiveDate::from_ymd_opt(first_year, 1, 1).unwrap_or(NaiveDate::MIN);
        let last = NaiveDate::from_ymd_opt(last_year, 12, 31).unwrap_or(NaiveDate::MIN);
        let mut worked_through = Vec::new();
        let mut working_days = Vec::new();
        for day in first.iter_days().take_while(|d| *d <= last) {
            let weekend = matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
            if !weekend && !holidays.contains(&day) {
                working_days.push(day);
            }
            worked_through.push(working_days.len() as u32);
        }
        WorkingCalendar {
            first,
            last,
            worked_through,
            working_days,
        }
    }

    /// The first and last date covered.
    pub fn range(&self) -> (NaiveDate, NaiveDate) {
        (self.first, self.last)
    }

    fn index(&self, date: NaiveDate) -> Result<usize, OutOfRange> {
        if date < self.first || date > self.last {
            return Err(OutOfRange {
                date,
                first: self.first,
                last: self.last,
            });
        }
        Ok((date - self.first).num_days() as usize)
    }

    /// Working days from the start of the calendar up to and including `date`.
    fn rank(&self, date: NaiveDate) -> Result<u32, OutOfRange> {
        Ok(self.worked_through[self.index(date)?])
    }

    pub fn is_working_day(&self, date: NaiveDate) -> Result<bool, OutOfRange> {
        let i = self.index(date)?;
        let before = if i == 0 { 0 } else { self.worked_through[i - 1] };
        Ok(self.worked_through[i] > before)
    }

    /// `wd(a, b)`: working days `d` with `a < d <= b`; negative when `b < a`.
    pub fn working_days_between(&self, a: NaiveDate, b: NaiveDate) -> Result<i64, OutOfRange> {
        Ok(i64::from(self.rank(b)?) - i64::from(self.rank(a)?))
    }

    /// The `n`-th working day after `a` (`a` itself when `n == 0`).
    pub fn add_working_days(&self, a: NaiveDate, n: u32) -> Result<NaiveDate, OutOfRange> {
        if n == 0 {
            self.index(a)?;
            return Ok(a);
        }
        let target = self.rank(a)? as usize + n as usize;
        self.working_days.get(target - 1).copied().ok_or(OutOfRange {
            date: self.last + chrono::Duration::days(1),
            first: self.first,
            last: self.last,
        })
    }

    /// Working days in `from ..= to` (0 when `to < from`).
    pub fn working_days_in(&self, from: NaiveDate, to: NaiveDate) -> Result<i64, OutOfRange> {
        if to < from {
            return Ok(0);
        }
        let before = from.pred_opt().unwrap_or(from);
        if before < self.first {
            self.index(from)?;
            return Ok(i64::from(self.rank(to)?));
        }
        self.working_days_between(before, to)
    }
}
