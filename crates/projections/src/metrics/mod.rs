//! The metric catalogue (`docs/metrics.md`) over case facts.
//!
//! Every metric is computed by visiting the cases once and adding each unit (case, child, report,
//! practitioner) to the accumulators of the groups it belongs to. Each family owns its metrics
//! whole, in one file: what each figure is (its [`Spec`]: id, unit, kind, definition with the
//! product's conventions, which every result carries) and how a case counts towards it —
//! `timeliness` (T1-T8), `engagement` (E1-E4), `stock` (S1, S2), `demand` (D1, D2) and
//! `workforce` (W1). This file holds what they share: periods, dimensions and grouping, the
//! collector, parallel counting, roll-ups and finishing.

mod demand;
mod engagement;
mod stock;
mod timeliness;
mod workforce;

use crate::facts::{CaseFacts, ChildFacts, Reach, ReportFacts};
use caselog_calendar::{OutOfRange, WorkingCalendar};
use caselog_domain::event::{ApplicationType, LawType, ReportType};
use chrono::{Datelike, Months, NaiveDate};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A period: inclusive first and last day, and how it was asked for (stated in every result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub first: NaiveDate,
    pub last: NaiveDate,
    pub label: String,
}

impl Period {
    pub fn contains(&self, day: NaiveDate) -> bool {
        self.first <= day && day <= self.last
    }

    pub fn month(year: i32, month: u32) -> Option<Period> {
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let last = first.checked_add_months(Months::new(1))?.pred_opt()?;
        Some(Period {
            first,
            last,
            label: format!("month {year:04}-{month:02}"),
        })
    }

    /// Financial year starting 1 April of `start_year` (labelled e.g. 2024-25).
    pub fn financial_year(start_year: i32) -> Option<Period> {
        let first = NaiveDate::from_ymd_opt(start_year, 4, 1)?;
        let last = NaiveDate::from_ymd_opt(start_year + 1, 3, 31)?;
        Some(Period {
            first,
            last,
            label: format!("financial year {start_year}-{:02}", (start_year + 1) % 100),
        })
    }

    /// Financial quarter `q` (1: Apr-Jun .. 4: Jan-Mar) of the financial year starting in `start_year`.
    pub fn financial_quarter(start_year: i32, q: u32) -> Option<Period> {
        let label = format!("financial quarter {start_year}-{:02} Q{q}", (start_year + 1) % 100);
        Period::quarter(NaiveDate::from_ymd_opt(start_year, 4, 1)?, q, label)
    }

    /// Calendar quarter `q` (1: Jan-Mar .. 4: Oct-Dec) of `year`.
    pub fn calendar_quarter(year: i32, q: u32) -> Option<Period> {
        Period::quarter(
            NaiveDate::from_ymd_opt(year, 1, 1)?,
            q,
            format!("calendar quarter {year} Q{q}"),
        )
    }

    /// Quarter `q` (1-4) of the year starting on `year_start`.
    fn quarter(year_start: NaiveDate, q: u32, label: String) -> Option<Period> {
        if !(1..=4).contains(&q) {
            return None;
        }
        let first = year_start.checked_add_months(Months::new(3 * (q - 1)))?;
        let last = first.checked_add_months(Months::new(3))?.pred_opt()?;
        Some(Period { first, last, label })
    }

    pub fn custom(first: NaiveDate, last: NaiveDate) -> Option<Period> {
        (first <= last).then(|| Period {
            first,
            last,
            label: format!("custom range {first} to {last}"),
        })
    }
}

/// What rows can be grouped and filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    LawType,
    ApplicationType,
    ServiceArea,
    Court,
    LocalAuthority,
    /// Children only: under 1, 1-4, 5-9, 10-15, 16+ at the metric's reference date.
    AgeBand,
    /// Reports only (T6-T8 are always grouped by it).
    ReportType,
}

impl Dimension {
    pub fn name(self) -> &'static str {
        match self {
            Dimension::LawType => "law_type",
            Dimension::ApplicationType => "application_type",
            Dimension::ServiceArea => "service_area",
            Dimension::Court => "court",
            Dimension::LocalAuthority => "local_authority",
            Dimension::AgeBand => "age_band",
            Dimension::ReportType => "report_type",
        }
    }
}

/// Value of a dimension that does not apply to a unit (age band of a case, say).
pub const NOT_APPLICABLE: &str = "not_applicable";

/// The metrics of the catalogue; ids with a suffix are one figure of a catalogue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricId {
    T1,
    T2,
    T3,
    T4,
    T5,
    T5MeanWorkingDays,
    T6,
    T7,
    T8,
    E1,
    E2,
    E3,
    E4,
    S1Cases,
    S1Children,
    S2CasesOver52,
    S2ChildrenOver52,
    S2CasesOver100,
    S2ChildrenOver100,
    D1Cases,
    D1Children,
    D2,
    W1Mean,
    W1Share20Plus,
    W1Share25Plus,
}

impl MetricId {
    pub const ALL: [MetricId; 25] = [
        MetricId::T1,
        MetricId::T2,
        MetricId::T3,
        MetricId::T4,
        MetricId::T5,
        MetricId::T5MeanWorkingDays,
        MetricId::T6,
        MetricId::T7,
        MetricId::T8,
        MetricId::E1,
        MetricId::E2,
        MetricId::E3,
        MetricId::E4,
        MetricId::S1Cases,
        MetricId::S1Children,
        MetricId::S2CasesOver52,
        MetricId::S2ChildrenOver52,
        MetricId::S2CasesOver100,
        MetricId::S2ChildrenOver100,
        MetricId::D1Cases,
        MetricId::D1Children,
        MetricId::D2,
        MetricId::W1Mean,
        MetricId::W1Share20Plus,
        MetricId::W1Share25Plus,
    ];

    /// What the catalogue says of this figure; each family's file holds its own.
    fn spec(self) -> &'static Spec {
        match self {
            MetricId::T1 => &timeliness::T1,
            MetricId::T2 => &timeliness::T2,
            MetricId::T3 => &timeliness::T3,
            MetricId::T4 => &timeliness::T4,
            MetricId::T5 => &timeliness::T5,
            MetricId::T5MeanWorkingDays => &timeliness::T5_MEAN_WORKING_DAYS,
            MetricId::T6 => &timeliness::T6,
            MetricId::T7 => &timeliness::T7,
            MetricId::T8 => &timeliness::T8,
            MetricId::E1 => &engagement::E1,
            MetricId::E2 => &engagement::E2,
            MetricId::E3 => &engagement::E3,
            MetricId::E4 => &engagement::E4,
            MetricId::S1Cases => &stock::S1_CASES,
            MetricId::S1Children => &stock::S1_CHILDREN,
            MetricId::S2CasesOver52 => &stock::S2_CASES_OVER_52,
            MetricId::S2ChildrenOver52 => &stock::S2_CHILDREN_OVER_52,
            MetricId::S2CasesOver100 => &stock::S2_CASES_OVER_100,
            MetricId::S2ChildrenOver100 => &stock::S2_CHILDREN_OVER_100,
            MetricId::D1Cases => &demand::D1_CASES,
            MetricId::D1Children => &demand::D1_CHILDREN,
            MetricId::D2 => &demand::D2,
            MetricId::W1Mean => &workforce::W1_MEAN,
            MetricId::W1Share20Plus => &workforce::W1_SHARE_20_PLUS,
            MetricId::W1Share25Plus => &workforce::W1_SHARE_25_PLUS,
        }
    }

    pub fn id(self) -> &'static str {
        self.spec().id
    }

    /// The metrics a requested id names: an exact id, or a catalogue id ("S1") for all its figures.
    pub fn parse(id: &str) -> Vec<MetricId> {
        MetricId::ALL
            .into_iter()
            .filter(|m| m.id() == id || m.id().split('.').next() == Some(id))
            .collect()
    }

    pub fn unit(self) -> &'static str {
        self.spec().unit
    }

    fn kind(self) -> Kind {
        self.spec().kind
    }

    /// Whether the metric is a snapshot (stock) taken at `MetricsQuery::snapshot`.
    pub fn is_stock(self) -> bool {
        self.spec().stock
    }

    /// The definition used, including the product's own conventions.
    pub fn definition(self, settings: &Settings) -> String {
        (self.spec().definition)(settings)
    }
}

/// What the catalogue says of one figure.
#[derive(Debug)]
struct Spec {
    /// As requested and reported, e.g. "T5.mean_working_days".
    id: &'static str,
    /// What is counted: application, case, child, report or practitioner.
    unit: &'static str,
    kind: Kind,
    /// A snapshot taken at `MetricsQuery::snapshot` rather than a flow over the period.
    stock: bool,
    /// Numerators are gathered in days (exact sums of integers) and divided by this at the end:
    /// 7 for weeks, 5 for working weeks.
    days_per_unit: f64,
    definition: fn(&Settings) -> String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// numerator / denominator * 100, in percent.
    Share,
    /// numerator / denominator, in the given unit.
    Mean(&'static str),
    /// numerator alone.
    Count,
}

/// Configurable conventions.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The last day inside the 26-week limit is issue + this (181: the issue day is day 1).
    pub twenty_six_week_limit_days: i64,
    /// Whether a virtual visit counts as seen for T4 and E1.
    pub virtual_visits_count: bool,
}

impl Settings {
    /// How a child must have been seen to count as seen (T4, E1).
    fn seen_as(&self) -> &'static str {
        if self.virtual_visits_count {
            "in person or virtually"
        } else {
            "in person"
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            twenty_six_week_limit_days: 181,
            virtual_visits_count: false,
        }
    }
}

/// A question to the metrics.
#[derive(Debug, Clone)]
pub struct MetricsQuery {
    pub metrics: Vec<MetricId>,
    pub period: Period,
    /// For stock metrics; the period's last day when not given.
    pub snapshot: Option<NaiveDate>,
    pub group_by: Vec<Dimension>,
    /// Every listed dimension must take one of the listed values.
    pub filters: Vec<(Dimension, Vec<String>)>,
    /// Answer from suppressed tables (see [`crate::disclosure`]): any figure below national
    /// level, grouped or filtered, hides counts of 1-4 consistently across queries.
    pub suppress_small_numbers: bool,
    pub settings: Settings,
}

/// One group of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub group: BTreeMap<Dimension, String>,
    pub numerator: f64,
    pub denominator: f64,
    /// `None` when suppressed or when the denominator is 0.
    pub value: Option<f64>,
    pub suppressed: bool,
}

impl Row {
    /// The value as presented: rounded to 1 decimal place, "suppressed", or "" when nothing was
    /// counted.
    pub fn display(&self) -> String {
        match (self.suppressed, self.value) {
            (true, _) => "suppressed".to_owned(),
            (false, Some(v)) => format!("{v:.1}"),
            (false, None) => String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    pub metric: MetricId,
    pub unit: &'static str,
    pub value_unit: &'static str,
    pub definition: String,
    pub period: Period,
    pub snapshot: Option<NaiveDate>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("the working-day calendar does not cover a date this query needs: {0}")]
    Calendar(#[from] OutOfRange),
    #[error(transparent)]
    NotDisclosable(#[from] crate::disclosure::Refusal),
    #[error("the units of a figure are listed for one figure id, not grouped")]
    NotOneFigure,
}

type GroupKey = BTreeMap<Dimension, String>;

/// Numerators are gathered in whole days (T1) and working days (T6), so that they are sums of
/// integers, exact in any order (shares counted on several threads add up to the same figure),
/// and turned into weeks once, at the end.
#[derive(Debug, Default, Clone, Copy)]
struct Acc {
    numerator: f64,
    denominator: f64,
}

impl MetricId {
    fn in_unit(self, acc: Acc) -> Acc {
        Acc {
            numerator: acc.numerator / self.spec().days_per_unit,
            ..acc
        }
    }
}

/// Accumulates contributions per metric and group. Group keys are interned once per unit (a
/// query visits every case, and comparing keys per contribution dominated its cost).
struct Collector<'a> {
    /// Indexed by `MetricId as usize`.
    wanted: [bool; MetricId::ALL.len()],
    groups: Vec<UnitKey<'a>>,
    /// Looked up for every unit a query counts: a fast hash, not a DoS-resistant one (the keys
    /// are reference codes, not attacker-chosen strings).
    ids: HashMap<InternedKey<'a>, GroupId, foldhash::fast::FixedState>,
    /// `[metric][group]`: `Some` once the group has had a unit of the metric.
    acc: Vec<Vec<Option<Acc>>>,
    /// Whether a child's keys can differ from its case's (only by age band).
    by_age: bool,
    /// The units added to this metric, when a drill-down asks for them (see [`units_of`]).
    traced: Option<(MetricId, Vec<Unit>)>,
}

type GroupId = usize;

/// A group key while counting: the value of each dimension by `Dimension as usize`, "" where
/// the query does not group by it. Borrowed from the cases, so building one allocates nothing.
type UnitKey<'a> = [&'a str; DIMENSIONS];

/// A [`UnitKey`] as the interning map holds it, compared by address before content: most values
/// are the same few static strings ("", the type names) and the rest mostly differ in length,
/// so a lookup rarely compares bytes (comparing seven strings byte-wise on each of a million
/// lookups was half of a query's time).
#[derive(Clone, Copy)]
struct InternedKey<'a>(UnitKey<'a>);

impl PartialEq for InternedKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .all(|(a, b)| a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b))
    }
}

impl Eq for InternedKey<'_> {}

impl std::hash::Hash for InternedKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}
const DIMENSIONS: usize = 7;
const ALL_DIMENSIONS: [Dimension; DIMENSIONS] = [
    Dimension::LawType,
    Dimension::ApplicationType,
    Dimension::ServiceArea,
    Dimension::Court,
    Dimension::LocalAuthority,
    Dimension::AgeBand,
    Dimension::ReportType,
];

fn group_key(key: &UnitKey<'_>) -> GroupKey {
    ALL_DIMENSIONS
        .iter()
        .zip(key)
        .filter(|(_, value)| !value.is_empty())
        .map(|(dimension, value)| (*dimension, (*value).to_owned()))
        .collect()
}

impl<'a> Collector<'a> {
    fn new(query: &MetricsQuery) -> Collector<'a> {
        let mut wanted = [false; MetricId::ALL.len()];
        for metric in &query.metrics {
            wanted[*metric as usize] = true;
        }
        Collector {
            wanted,
            groups: Vec::new(),
            ids: HashMap::default(),
            acc: vec![Vec::new(); MetricId::ALL.len()],
            by_age: query.group_by.contains(&Dimension::AgeBand)
                || query.filters.iter().any(|(d, _)| *d == Dimension::AgeBand),
            traced: None,
        }
    }

    fn wants(&self, metric: MetricId) -> bool {
        self.wanted[metric as usize]
    }

    fn intern(&mut self, keys: Vec<UnitKey<'a>>) -> Vec<GroupId> {
        keys.iter().map(|key| self.intern_one(key)).collect()
    }

    fn intern_one(&mut self, key: &UnitKey<'a>) -> GroupId {
        match self.ids.get(&InternedKey(*key)) {
            Some(id) => *id,
            None => {
                let id = self.groups.len();
                self.groups.push(*key);
                self.ids.insert(InternedKey(*key), id);
                id
            }
        }
    }

    /// The interned keys of a unit (see [`keys`]).
    fn keys(
        &mut self,
        query: &MetricsQuery,
        case: &'a CaseFacts,
        child_age: Option<(&ChildFacts, NaiveDate)>,
        report_type: Option<ReportType>,
    ) -> Vec<GroupId> {
        self.intern(keys(query, case, child_age, report_type))
    }

    /// Adds one unit to `metric`: `numerator` and `denominator` are its contributions, and
    /// `unit` says which unit it is and the dates its rule used (asked only by a drill-down).
    fn add(
        &mut self,
        metric: MetricId,
        groups: &[GroupId],
        numerator: f64,
        denominator: f64,
        unit: impl FnOnce() -> Unit,
    ) {
        if !self.wants(metric) {
            return;
        }
        if let Some((traced, units)) = &mut self.traced
            && *traced == metric
            && !groups.is_empty()
        {
            units.push(Unit {
                numerator,
                denominator,
                ..unit()
            });
        }
        let row = &mut self.acc[metric as usize];
        for &group in groups {
            if row.len() <= group {
                row.resize(group + 1, None);
            }
            let acc = row[group].get_or_insert_default();
            acc.numerator += numerator;
            acc.denominator += denominator;
        }
    }

    /// Adds one unit of the case itself (keys built the first time the case counts).
    fn add_case(
        &mut self,
        metric: MetricId,
        case_keys: &mut CaseKeys,
        (query, case): (&MetricsQuery, &'a CaseFacts),
        numerator: f64,
        denominator: f64,
        dates: impl FnOnce(Unit) -> Unit,
    ) {
        if self.wants(metric) {
            let groups = self.case_keys(case_keys, query, case);
            self.add(metric, groups, numerator, denominator, || dates(Unit::case(case)));
        }
    }

    /// The keys of a child unit with its age taken on `on`: its case's keys unless the query
    /// groups or filters by age band.
    fn child_keys<'k>(
        &mut self,
        case_keys: &'k mut CaseKeys,
        (query, case): (&MetricsQuery, &'a CaseFacts),
        child: &ChildFacts,
        on: NaiveDate,
    ) -> Cow<'k, [GroupId]> {
        if self.by_age {
            Cow::Owned(self.keys(query, case, Some((child, on)), None))
        } else {
            Cow::Borrowed(self.case_keys(case_keys, query, case))
        }
    }

    fn case_keys<'k>(
        &mut self,
        case_keys: &'k mut CaseKeys,
        query: &MetricsQuery,
        case: &'a CaseFacts,
    ) -> &'k [GroupId] {
        if case_keys.0.is_none() {
            case_keys.0 = Some(self.keys(query, case, None, None));
        }
        case_keys.0.as_deref().unwrap_or_default()
    }

    /// The groups of `metric` in key order.
    fn take(&mut self, metric: MetricId) -> Vec<(GroupKey, Acc)> {
        let row = std::mem::take(&mut self.acc[metric as usize]);
        let mut out: Vec<(GroupKey, Acc)> = row
            .into_iter()
            .enumerate()
            .filter_map(|(group, acc)| Some((group_key(&self.groups[group]), acc?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// One unit of a figure, as a drill-down lists it: which case, child, report or practitioner
/// it is, what it added to the figure, and the dates the rule used.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Absent for practitioners (W1).
    pub case_id: Option<Arc<str>>,
    pub child_id: Option<Box<str>>,
    pub report_id: Option<Box<str>>,
    pub practitioner_id: Option<Box<str>>,
    /// What the unit adds to the figure's numerator, in the figure's unit (weeks for T1,
    /// working weeks for T6; 1 or 0 for a share: whether it met the condition).
    pub numerator: f64,
    /// What it adds to the denominator (1 for a share or a mean; 0 for a count).
    pub denominator: f64,
    /// The dates the rule used, by name, e.g. ("deadline", 2025-05-13).
    pub dates: Vec<(&'static str, NaiveDate)>,
}

impl Unit {
    fn case(case: &CaseFacts) -> Unit {
        Unit {
            case_id: Some(case.case_id.clone()),
            child_id: None,
            report_id: None,
            practitioner_id: None,
            numerator: 0.0,
            denominator: 0.0,
            dates: Vec::new(),
        }
    }

    fn child(case: &CaseFacts, child: &ChildFacts) -> Unit {
        Unit {
            child_id: Some(child.child_id.clone()),
            ..Unit::case(case)
        }
    }

    fn report(case: &CaseFacts, report: &ReportFacts) -> Unit {
        Unit {
            report_id: Some(report.report_id.clone()),
            ..Unit::case(case)
        }
    }

    fn practitioner(practitioner: &str) -> Unit {
        Unit {
            case_id: None,
            practitioner_id: Some(practitioner.into()),
            numerator: 0.0,
            denominator: 0.0,
            child_id: None,
            report_id: None,
            dates: Vec::new(),
        }
    }

    fn date(mut self, name: &'static str, day: NaiveDate) -> Unit {
        self.dates.push((name, day));
        self
    }

    fn date_if(self, name: &'static str, day: Option<NaiveDate>) -> Unit {
        match day {
            Some(day) => self.date(name, day),
            None => self,
        }
    }
}

/// A case's own group keys, interned the first time a metric counts the case.
#[derive(Default)]
struct CaseKeys(Option<Vec<GroupId>>);

/// The group keys a unit belongs to (several when grouping by application type), or none when
/// it is filtered out. `child_age` gives the child and the date for the age band.
fn keys<'a>(
    query: &MetricsQuery,
    case: &'a CaseFacts,
    child_age: Option<(&ChildFacts, NaiveDate)>,
    report_type: Option<ReportType>,
) -> Vec<UnitKey<'a>> {
    let law = match case.law_type {
        LawType::Public => "public",
        LawType::Private => "private",
    };
    let apps = || case.application_types.iter().map(|a| application_type_name(*a));
    let age = child_age.map_or(NOT_APPLICABLE, |(child, on)| age_band(child, on));
    let report = report_type.map_or(NOT_APPLICABLE, report_type_name);
    let single = |d: Dimension| -> &'a str {
        match d {
            Dimension::LawType => law,
            Dimension::ServiceArea => &case.service_area,
            Dimension::Court => &case.court_code,
            Dimension::LocalAuthority => case.local_authority_code.as_deref().unwrap_or(NOT_APPLICABLE),
            Dimension::AgeBand => age,
            Dimension::ReportType => report,
            Dimension::ApplicationType => NOT_APPLICABLE,
        }
    };
    for (dimension, allowed) in &query.filters {
        let matches = match dimension {
            Dimension::ApplicationType => apps().any(|a| allowed.iter().any(|v| v == a)),
            d => allowed.iter().any(|v| v == single(*d)),
        };
        if !matches {
            return Vec::new();
        }
    }
    let report_dimension =
        (report_type.is_some() && !query.group_by.contains(&Dimension::ReportType)).then_some(Dimension::ReportType);
    let mut out: Vec<UnitKey<'a>> = vec![[""; DIMENSIONS]];
    for dimension in query.group_by.iter().copied().chain(report_dimension) {
        if dimension == Dimension::ApplicationType {
            out = out
                .into_iter()
                .flat_map(|key| {
                    apps().map(move |app| {
                        let mut key = key;
                        key[Dimension::ApplicationType as usize] = app;
                        key
                    })
                })
                .collect();
        } else {
            for key in &mut out {
                key[dimension as usize] = single(dimension);
            }
        }
    }
    out
}

/// The age bands, youngest first.
pub const AGE_BANDS: [&str; 5] = ["under_1", "1_4", "5_9", "10_15", "16_plus"];

/// Age band at `on` from the birth month (full years, by month).
pub fn age_band(child: &ChildFacts, on: NaiveDate) -> &'static str {
    let months = (on.year() * 12 + on.month() as i32) - (child.birth_month.year * 12 + child.birth_month.month as i32);
    match months.div_euclid(12) {
        i32::MIN..=0 => "under_1",
        1..=4 => "1_4",
        5..=9 => "5_9",
        10..=15 => "10_15",
        _ => "16_plus",
    }
}

pub fn application_type_name(a: ApplicationType) -> &'static str {
    match a {
        ApplicationType::S31Care => "s31_care",
        ApplicationType::S31Supervision => "s31_supervision",
        ApplicationType::S8ChildArrangements => "s8_child_arrangements",
        ApplicationType::S8ProhibitedSteps => "s8_prohibited_steps",
        ApplicationType::S8SpecificIssue => "s8_specific_issue",
        ApplicationType::SpecialGuardianship => "special_guardianship",
        ApplicationType::EmergencyProtection => "emergency_protection",
        ApplicationType::Other => "other",
    }
}

pub fn report_type_name(r: ReportType) -> &'static str {
    match r {
        ReportType::SafeguardingLetter => "safeguarding_letter",
        ReportType::Section7 => "section7",
        ReportType::Section7Addendum => "section7_addendum",
        ReportType::Rule16_4Analysis => "rule16_4_analysis",
        ReportType::InitialAnalysis => "initial_analysis",
        ReportType::FinalAnalysis => "final_analysis",
        ReportType::ChildImpactReport => "child_impact_report",
    }
}

/// The report type a row names (the inverse of [`report_type_name`]).
pub fn report_type_named(name: &str) -> Option<ReportType> {
    ReportType::ALL.into_iter().find(|t| report_type_name(*t) == name)
}

/// The days `child` was seen on, as the settings count seeing (T4, E1).
fn seen_dates<'a>(child: &'a ChildFacts, settings: &Settings) -> impl Iterator<Item = NaiveDate> + 'a {
    let virtually: &[NaiveDate] = if settings.virtual_visits_count {
        child.seen_virtually()
    } else {
        &[]
    };
    child.seen_in_person().iter().chain(virtually).copied()
}

/// Whether a case closed on `closed` concluded within the 26-week limit (T2, T3).
fn within_limit(case: &CaseFacts, closed: NaiveDate, settings: &Settings) -> bool {
    (closed - case.issued_on).num_days() <= settings.twenty_six_week_limit_days
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn is_s31(a: ApplicationType) -> bool {
    matches!(a, ApplicationType::S31Care | ApplicationType::S31Supervision)
}

fn is_s8(a: ApplicationType) -> bool {
    matches!(
        a,
        ApplicationType::S8ChildArrangements | ApplicationType::S8ProhibitedSteps | ApplicationType::S8SpecificIssue
    )
}

/// Computes the asked metrics over `cases`.
impl MetricsQuery {
    /// The day stock metrics are counted on: the snapshot asked for, else the period's last day.
    fn snapshot_date(&self) -> NaiveDate {
        self.snapshot.unwrap_or(self.period.last)
    }

    /// Whether a case with this reach can count in this query: an anchor date in the period, or
    /// open at the snapshot. Leaving out the cases for which this is false changes no figure of
    /// [`compute`].
    pub fn may_count(&self, reach: &Reach) -> bool {
        let snapshot = self.snapshot.unwrap_or(self.period.last);
        (reach.first <= self.period.last && reach.last >= self.period.first) || reach.open_on(snapshot)
    }
}

/// Computes `query` over `cases`; with `suppress_small_numbers`, from the suppressed tables of
/// [`crate::disclosure`].
pub fn compute<'a>(
    query: &MetricsQuery,
    cases: impl IntoIterator<Item = &'a CaseFacts> + Clone,
    calendar: &WorkingCalendar,
) -> Result<Vec<MetricResult>, MetricsError> {
    if query.suppress_small_numbers {
        let universe = |other| crate::disclosure::Universe::of(cases.clone(), other);
        return crate::disclosure::answer(query, universe, |q, rollups| {
            compute_plain(q, rollups, cases.clone(), calendar)
        });
    }
    compute_plain(query, &[], cases, calendar)
}

/// The rows of `query` without suppression, and with them the rows of each grouping in
/// `rollups` (coarser than `query.group_by`; see [`Counts::roll_up`]).
fn compute_plain<'a>(
    query: &MetricsQuery,
    rollups: &[Vec<Dimension>],
    cases: impl IntoIterator<Item = &'a CaseFacts>,
    calendar: &WorkingCalendar,
) -> Result<Vec<MetricResult>, MetricsError> {
    let mut counts = Counts::new(query);
    counts.count(query, cases, calendar)?;
    counts.roll_up(rollups);
    counts.finish(query, rollups, calendar)
}

/// [`compute`] on `threads` threads, each counting a share of `cases`.
pub fn compute_parallel(
    query: &MetricsQuery,
    cases: &[&CaseFacts],
    calendar: &WorkingCalendar,
    threads: usize,
) -> Result<Vec<MetricResult>, MetricsError> {
    if query.suppress_small_numbers {
        let universe = |other| crate::disclosure::Universe::of(cases.iter().copied(), other);
        return crate::disclosure::answer(query, universe, |q, rollups| {
            compute_parallel_plain(q, rollups, cases, calendar, threads)
        });
    }
    compute_parallel_plain(query, &[], cases, calendar, threads)
}

/// The units behind the figure of `query`, which asks for one metric and groups by nothing (its
/// filters name the group: e.g. service area A5, report type section7), with that figure
/// (never suppressed: units are for those who may see them). Units are ordered by case id, then
/// child or report id; practitioners (W1) by id.
pub fn units_of<'a>(
    query: &MetricsQuery,
    cases: impl IntoIterator<Item = &'a CaseFacts>,
    calendar: &WorkingCalendar,
) -> Result<(Vec<Unit>, MetricResult), MetricsError> {
    let [metric] = query.metrics[..] else {
        return Err(MetricsError::NotOneFigure);
    };
    if !query.group_by.is_empty() {
        return Err(MetricsError::NotOneFigure);
    }
    let query = &MetricsQuery {
        suppress_small_numbers: false,
        ..query.clone()
    };
    let mut counts = Counts::new(query);
    counts.c.traced = Some((metric, Vec::new()));
    counts.count(query, cases, calendar)?;
    let (mut results, units) = counts.finish_traced(query, &[], calendar)?;
    let mut units = units.unwrap_or_default();
    units.sort_by(|a, b| {
        (&a.case_id, &a.child_id, &a.report_id, &a.practitioner_id).cmp(&(
            &b.case_id,
            &b.child_id,
            &b.report_id,
            &b.practitioner_id,
        ))
    });
    for unit in &mut units {
        unit.numerator = metric
            .in_unit(Acc {
                numerator: unit.numerator,
                denominator: unit.denominator,
            })
            .numerator;
    }
    let result = results.pop().ok_or(MetricsError::NotOneFigure)?;
    Ok((units, result))
}

fn compute_parallel_plain(
    query: &MetricsQuery,
    rollups: &[Vec<Dimension>],
    cases: &[&CaseFacts],
    calendar: &WorkingCalendar,
    threads: usize,
) -> Result<Vec<MetricResult>, MetricsError> {
    let share = cases.len().div_ceil(threads.max(1)).max(1);
    let partials: Vec<Result<Counts<'_>, MetricsError>> = std::thread::scope(|scope| {
        let running: Vec<_> = cases
            .chunks(share)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut counts = Counts::new(query);
                    counts.count(query, chunk.iter().copied(), calendar)?;
                    Ok(counts)
                })
            })
            .collect();
        running
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    let mut total = Counts::new(query);
    for partial in partials {
        total.merge(partial?);
    }
    total.roll_up(rollups);
    total.finish(query, rollups, calendar)
}

/// What counting some cases gathered: contributions per metric and group, and the caseloads
/// (which only become W1 figures once every case has been counted).
struct Counts<'a> {
    c: Collector<'a>,
    caseloads: Caseloads<'a>,
}

/// Group -> practitioner -> open cases at the snapshot, for W1.
type Caseloads<'a> = HashMap<GroupId, HashMap<&'a str, u32, foldhash::fast::FixedState>>;

/// One case being counted: the query, the case, its group keys once built, and the calendar.
struct Counting<'q, 'a> {
    query: &'q MetricsQuery,
    case: &'a CaseFacts,
    case_keys: CaseKeys,
    calendar: &'q WorkingCalendar,
}

impl<'q, 'a> Counting<'q, 'a> {
    /// The query, the case, and the case's group keys (built the first time a unit needs them).
    fn unit(&mut self) -> (&'q MetricsQuery, &'a CaseFacts, &mut CaseKeys) {
        (self.query, self.case, &mut self.case_keys)
    }
}

/// How a family adds a case's units.
type CountFamily =
    for<'q, 'a> fn(&mut Collector<'a>, &mut Counting<'q, 'a>, &mut Caseloads<'a>) -> Result<(), MetricsError>;

/// Every family, in the order a case is counted (any order gives the same figures: the sums
/// are of integers).
const FAMILIES: [CountFamily; 5] = [
    timeliness::count,
    engagement::count,
    stock::count,
    demand::count,
    workforce::count,
];

impl<'a> Counts<'a> {
    fn new(query: &MetricsQuery) -> Counts<'a> {
        Counts {
            c: Collector::new(query),
            caseloads: HashMap::new(),
        }
    }

    /// Adds, for each grouping in `rollups`, the totals of the groups counted so far, each
    /// counted group into the group of that grouping it falls in (report type is never rolled
    /// up). Exact, and the same as counting that grouping, only when every unit is in exactly
    /// one counted group, i.e. when the query does not group by application type; practitioners'
    /// caseloads add up too, a practitioner's cases in the total being those in each group.
    fn roll_up(&mut self, rollups: &[Vec<Dimension>]) {
        let counted: Vec<UnitKey<'a>> = self.c.groups.clone();
        for grouping in rollups {
            let into: Vec<GroupId> = counted
                .iter()
                .map(|key| {
                    let mut total = *key;
                    for (slot, dimension) in ALL_DIMENSIONS.iter().enumerate() {
                        if *dimension != Dimension::ReportType && !grouping.contains(dimension) {
                            total[slot] = "";
                        }
                    }
                    self.c.intern_one(&total)
                })
                .collect();
            for row in &mut self.c.acc {
                for (group, &target) in into.iter().enumerate() {
                    let Some(acc) = row.get(group).copied().flatten() else {
                        continue;
                    };
                    if row.len() <= target {
                        row.resize(target + 1, None);
                    }
                    let total = row[target].get_or_insert_default();
                    total.numerator += acc.numerator;
                    total.denominator += acc.denominator;
                }
            }
            let rolled: Vec<(GroupId, Vec<(&'a str, u32)>)> = self
                .caseloads
                .iter()
                .filter(|(group, _)| **group < counted.len())
                .map(|(group, loads)| (into[*group], loads.iter().map(|(p, n)| (*p, *n)).collect()))
                .collect();
            for (target, loads) in rolled {
                let total = self.caseloads.entry(target).or_default();
                for (practitioner, cases) in loads {
                    *total.entry(practitioner).or_default() += cases;
                }
            }
        }
    }

    /// Adds another share's counts to these.
    fn merge(&mut self, other: Counts<'a>) {
        let ids: Vec<GroupId> = other.c.groups.iter().map(|key| self.c.intern_one(key)).collect();
        for (metric, row) in other.c.acc.into_iter().enumerate() {
            let mine = &mut self.c.acc[metric];
            for (group, acc) in row.into_iter().enumerate() {
                let Some(acc) = acc else { continue };
                let id = ids[group];
                if mine.len() <= id {
                    mine.resize(id + 1, None);
                }
                let total = mine[id].get_or_insert_default();
                total.numerator += acc.numerator;
                total.denominator += acc.denominator;
            }
        }
        for (group, loads) in other.caseloads {
            let mine = self.caseloads.entry(ids[group]).or_default();
            for (practitioner, cases) in loads {
                *mine.entry(practitioner).or_default() += cases;
            }
        }
    }

    fn count(
        &mut self,
        query: &MetricsQuery,
        cases: impl IntoIterator<Item = &'a CaseFacts>,
        calendar: &WorkingCalendar,
    ) -> Result<(), MetricsError> {
        let Counts { c, caseloads } = self;
        for case in cases {
            let mut counting = Counting {
                query,
                case,
                case_keys: CaseKeys::default(),
                calendar,
            };
            for family in FAMILIES {
                family(c, &mut counting, caseloads)?;
            }
        }
        Ok(())
    }

    fn finish(
        self,
        query: &MetricsQuery,
        rollups: &[Vec<Dimension>],
        calendar: &WorkingCalendar,
    ) -> Result<Vec<MetricResult>, MetricsError> {
        Ok(self.finish_traced(query, rollups, calendar)?.0)
    }

    /// The results, and the units traced while counting (see [`units_of`]).
    fn finish_traced(
        self,
        query: &MetricsQuery,
        rollups: &[Vec<Dimension>],
        calendar: &WorkingCalendar,
    ) -> Result<(Vec<MetricResult>, Option<Vec<Unit>>), MetricsError> {
        let Counts { mut c, caseloads } = self;
        let period = &query.period;
        let snapshot = query.snapshot_date();
        let settings = &query.settings;
        demand::finish(&mut c, query, calendar)?;
        workforce::finish(&mut c, &caseloads);
        let national = query.group_by.is_empty() || rollups.iter().any(Vec::is_empty);
        let results = query
            .metrics
            .iter()
            .map(|metric| {
                let groups = c.take(*metric);
                let mut rows: Vec<Row> = groups
                    .into_iter()
                    .map(|(group, acc)| (group, metric.in_unit(acc)))
                    .map(|(group, acc)| Row {
                        value: value_of(metric.kind(), acc),
                        group,
                        numerator: acc.numerator,
                        denominator: acc.denominator,
                        suppressed: false,
                    })
                    .collect();
                if rows.is_empty() && national {
                    let empty = Acc::default();
                    rows.push(Row {
                        group: GroupKey::new(),
                        numerator: 0.0,
                        denominator: empty.denominator,
                        value: value_of(metric.kind(), empty),
                        suppressed: false,
                    });
                }
                MetricResult {
                    metric: *metric,
                    unit: metric.unit(),
                    value_unit: match metric.kind() {
                        Kind::Share => "percent",
                        Kind::Mean(unit) => unit,
                        Kind::Count => metric.unit(),
                    },
                    definition: metric.definition(settings),
                    period: period.clone(),
                    snapshot: metric.is_stock().then_some(snapshot),
                    rows,
                }
            })
            .collect();
        Ok((results, c.traced.map(|(_, units)| units)))
    }
}

fn value_of(kind: Kind, acc: Acc) -> Option<f64> {
    match kind {
        Kind::Count => Some(acc.numerator),
        Kind::Share if acc.denominator > 0.0 => Some(100.0 * acc.numerator / acc.denominator),
        Kind::Mean(_) if acc.denominator > 0.0 => Some(acc.numerator / acc.denominator),
        _ => None,
    }
}

impl MetricId {
    /// The units a figure counts (cases, children, reports, practitioners): what small-number
    /// suppression is decided on.
    pub(crate) fn counted_units(self, numerator: f64, denominator: f64) -> f64 {
        match self.kind() {
            Kind::Count => numerator,
            // D2's denominator is working days; its units are the cases received.
            Kind::Mean(_) if self == MetricId::D2 => numerator,
            _ => denominator,
        }
    }

    /// Whether a figure below national level must be suppressed: 1-4 units, or for a share 1-4
    /// units counted or not counted in its numerator.
    pub(crate) fn unsafe_figure(self, numerator: f64, denominator: f64) -> bool {
        let small = |x: f64| (1.0..=4.0).contains(&x);
        small(self.counted_units(numerator, denominator))
            || (self.kind() == Kind::Share && (small(numerator) || small(denominator - numerator)))
    }

    /// The figure of a numerator and denominator in the metric's unit.
    pub(crate) fn value(self, numerator: f64, denominator: f64) -> Option<f64> {
        value_of(self.kind(), Acc { numerator, denominator })
    }
}

#[cfg(test)]
mod unit_key_tests {
    use super::{ALL_DIMENSIONS, group_key};

    #[test]
    fn unit_key_slots_follow_the_dimension_order() {
        for (slot, dimension) in ALL_DIMENSIONS.iter().enumerate() {
            assert_eq!(*dimension as usize, slot, "{dimension:?}");
            let mut key = [""; ALL_DIMENSIONS.len()];
            key[slot] = "x";
            assert_eq!(group_key(&key).get(dimension).map(String::as_str), Some("x"));
        }
    }
}

#[cfg(test)]
mod spec_tests {
    use super::{MetricId, Settings};

    #[test]
    fn every_figure_has_its_own_id_unit_and_definition() {
        let mut ids: Vec<&str> = MetricId::ALL.iter().map(|m| m.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), MetricId::ALL.len(), "two figures share an id");
        for metric in MetricId::ALL {
            let named = MetricId::parse(metric.id());
            assert!(named.contains(&metric), "{}", metric.id());
            if metric.id().contains('.') {
                assert_eq!(named, [metric], "a figure id names that figure alone");
            }
            assert!(!metric.unit().is_empty() && !metric.definition(&Settings::default()).is_empty());
        }
        assert_eq!(MetricId::parse("S2").len(), 4);
    }
}
