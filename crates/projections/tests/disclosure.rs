//! An adversary against small-number suppression: a client whose figures are suppressed asks
//! random grouped and filtered questions over a small random dataset, and combines every figure
//! it was shown by addition and subtraction (linear algebra over the finest cells). No count of
//! 1-4 below national level, in any cross-classification, may be determined.

#![allow(clippy::unwrap_used)]

use caselog_calendar::WorkingCalendar;
use caselog_domain::event::{ApplicationType, BirthMonth, LawType};
use caselog_projections::facts::{ChildFacts, ChildRecords};
use caselog_projections::metrics::Settings;
use caselog_projections::{CaseFacts, Dimension, MetricId, MetricsQuery, Period, Row, compute};
use chrono::NaiveDate;
use proptest::prelude::*;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// The dimensions the adversary may use, with every value a unit can take in this dataset.
const AXES: [(Dimension, &[&str]); 5] = [
    (Dimension::LawType, &["public", "private"]),
    // Every reference service area: a suppressed table has a row for each, zero or not.
    (
        Dimension::ServiceArea,
        &[
            "A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9", "A10", "A11", "A12", "A13", "A14", "A15A", "A15B",
            "A16", "A17",
        ],
    ),
    (Dimension::Court, &["C1", "C2", "C3"]),
    (Dimension::LocalAuthority, &["L1", "L2", "not_applicable"]),
    (
        Dimension::AgeBand,
        &["under_1", "1_4", "5_9", "10_15", "16_plus", "not_applicable"],
    ),
];

fn atom_count() -> usize {
    AXES.iter().map(|(_, values)| values.len()).product()
}

/// The coordinates (value index per axis) of atom `i`.
fn coordinates(mut i: usize) -> [usize; 5] {
    let mut out = [0; 5];
    for (axis, (_, values)) in AXES.iter().enumerate().rev() {
        out[axis] = i % values.len();
        i /= values.len();
    }
    out
}

/// A selection per axis: `None` for any value, else the allowed value indices.
type Selection = [Option<Vec<usize>>; 5];

fn vector(selection: &Selection) -> Vec<u64> {
    (0..atom_count())
        .map(|i| {
            let c = coordinates(i);
            u64::from(
                selection
                    .iter()
                    .zip(c)
                    .all(|(allowed, v)| allowed.as_ref().is_none_or(|a| a.contains(&v))),
            )
        })
        .collect()
}

const P: u64 = (1 << 31) - 1;

fn mul(a: u64, b: u64) -> u64 {
    (a * b) % P
}

fn inverse(a: u64) -> u64 {
    let (mut result, mut base, mut exp) = (1u64, a, P - 2);
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    result
}

/// Row-reduced equations over GF(2^31-1): exact, and for these 0/1 systems the rank is the rank
/// over the rationals unless the prime divides a minor, a vanishing chance.
#[derive(Default)]
struct Knowledge {
    /// (pivot column, row with 1 at the pivot and 0 at every other pivot)
    rows: Vec<(usize, Vec<u64>)>,
}

impl Knowledge {
    fn reduce(&self, mut v: Vec<u64>) -> Vec<u64> {
        for (pivot, row) in &self.rows {
            let factor = v[*pivot];
            if factor != 0 {
                for (x, r) in v.iter_mut().zip(row) {
                    *x = (*x + P - mul(factor, *r)) % P;
                }
            }
        }
        v
    }

    fn learn(&mut self, v: Vec<u64>) {
        let mut v = self.reduce(v);
        let Some(pivot) = v.iter().position(|x| *x != 0) else {
            return;
        };
        let scale = inverse(v[pivot]);
        for x in &mut v {
            *x = mul(*x, scale);
        }
        for (_, row) in &mut self.rows {
            let factor = row[pivot];
            if factor != 0 {
                for (x, r) in row.iter_mut().zip(&v) {
                    *x = (*x + P - mul(factor, *r)) % P;
                }
            }
        }
        self.rows.push((pivot, v));
    }

    fn determines(&self, v: Vec<u64>) -> bool {
        self.reduce(v).iter().all(|x| *x == 0)
    }
}

#[derive(Debug, Clone)]
struct Case {
    public: bool,
    area: usize,
    court: usize,
    authority: usize,
    closed: bool,
    children: Vec<(i32, bool)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        0..3usize,
        0..3usize,
        0..2usize,
        any::<bool>(),
        prop::collection::vec((2009..2025i32, any::<bool>()), 1..3),
    )
        .prop_map(|(public, area, court, authority, closed, children)| Case {
            public,
            area,
            court,
            authority,
            closed,
            children,
        })
}

fn facts(i: usize, case: &Case) -> CaseFacts {
    CaseFacts {
        case_id: format!("C{i}").into(),
        law_type: if case.public { LawType::Public } else { LawType::Private },
        application_types: vec![if case.public {
            ApplicationType::S31Care
        } else {
            ApplicationType::S8ChildArrangements
        }]
        .into(),
        court_code: AXES[2].1[case.court].into(),
        service_area: AXES[1].1[case.area].into(),
        local_authority_code: case.public.then(|| AXES[3].1[case.authority].into()),
        issued_on: d("2025-04-01"),
        received_on: None,
        closed_on: case.closed.then(|| d("2025-06-02")),
        lead_allocations: vec![(d("2025-04-02"), "fca-1".into())].into(),
        children: case
            .children
            .iter()
            .enumerate()
            .map(|(c, (born, seen))| {
                ChildFacts::from(ChildRecords {
                    child_id: format!("C{i}-{c}"),
                    birth_month: BirthMonth { year: *born, month: 6 },
                    joined_on: None,
                    seen_in_person: if *seen { vec![d("2025-04-10")] } else { vec![] },
                    seen_virtually: vec![],
                    engagement_records: vec![],
                    letters: vec![],
                    recommendations_shared: vec![],
                })
            })
            .collect(),
        reports: Box::default(),
    }
}

/// How a question uses one axis: not at all, grouped, filtered to some values, or both.
#[derive(Debug, Clone)]
enum Use {
    None,
    Group,
    Filter(Vec<usize>),
    GroupAndFilter(Vec<usize>),
}

fn usage(values: usize) -> impl Strategy<Value = Use> {
    prop_oneof![
        Just(Use::None),
        Just(Use::Group),
        prop::collection::btree_set(0..values, 1..=values).prop_map(|s| Use::Filter(s.into_iter().collect())),
        prop::collection::btree_set(0..values, 1..=values).prop_map(|s| Use::GroupAndFilter(s.into_iter().collect())),
    ]
}

/// A question: law type and one other axis (what a suppressed caller may ask), or a forbidden
/// one (two other axes) that must be refused.
fn question() -> impl Strategy<Value = (Use, usize, Use, Option<(usize, Use)>)> {
    (usage(2), 1..5usize).prop_flat_map(|(law, other)| {
        let values = AXES[other].1.len();
        (
            Just(law),
            Just(other),
            usage(values),
            prop::option::weighted(0.15, (1..5usize, usage(3))),
        )
    })
}

const METRICS: [MetricId; 3] = [MetricId::S1Cases, MetricId::S1Children, MetricId::E1];

fn ask(uses: &[(usize, &Use)], cases: &[CaseFacts]) -> Result<Vec<caselog_projections::MetricResult>, String> {
    let mut query = MetricsQuery {
        metrics: METRICS.to_vec(),
        period: Period::month(2025, 6).unwrap(),
        snapshot: None,
        group_by: vec![],
        filters: vec![],
        suppress_small_numbers: true,
        settings: Settings::default(),
    };
    for (axis, usage) in uses {
        let (dimension, values) = AXES[*axis];
        let names = |s: &[usize]| s.iter().map(|v| values[*v].to_owned()).collect::<Vec<_>>();
        match usage {
            Use::None => {}
            Use::Group => query.group_by.push(dimension),
            Use::Filter(s) => query.filters.push((dimension, names(s))),
            Use::GroupAndFilter(s) => {
                query.group_by.push(dimension);
                query.filters.push((dimension, names(s)));
            }
        }
    }
    compute(&query, cases, WorkingCalendar::england_and_wales()).map_err(|e| e.to_string())
}

/// The atoms a shown row sums: its group values, and the filters of the question.
fn selection_of(row: &Row, uses: &[(usize, &Use)]) -> Selection {
    let mut selection: Selection = Default::default();
    for (axis, usage) in uses {
        if let Use::Filter(s) | Use::GroupAndFilter(s) = usage {
            selection[*axis] = Some(s.clone());
        }
    }
    for (dimension, value) in &row.group {
        let axis = AXES.iter().position(|(d, _)| d == dimension).unwrap();
        let index = AXES[axis].1.iter().position(|v| v == value).unwrap();
        selection[axis] = Some(vec![index]);
    }
    selection
}

/// The selection of every row a question could return: each combination of its grouped axes'
/// values (within its filters).
fn groups_asked(uses: &[(usize, &Use)]) -> Vec<Selection> {
    let mut base: Selection = Default::default();
    for (axis, usage) in uses {
        if let Use::Filter(s) | Use::GroupAndFilter(s) = usage {
            base[*axis] = Some(s.clone());
        }
    }
    let mut out = vec![base];
    for (axis, usage) in uses {
        let values: Vec<usize> = match usage {
            Use::Group => (0..AXES[*axis].1.len()).collect(),
            Use::GroupAndFilter(s) => s.clone(),
            _ => continue,
        };
        out = out
            .into_iter()
            .flat_map(|sel| {
                values.iter().map(move |v| {
                    let mut with = sel.clone();
                    with[*axis] = Some(vec![*v]);
                    with
                })
            })
            .collect();
    }
    out
}

/// Every cell of every cross-classification below national level: a value for each axis of a
/// non-empty set of axes.
fn all_cells() -> Vec<Selection> {
    let mut cells: Vec<Selection> = vec![Default::default()];
    for (axis, (_, values)) in AXES.iter().enumerate() {
        cells = cells
            .into_iter()
            .flat_map(|cell| {
                let mut out = vec![cell.clone()];
                for v in 0..values.len() {
                    let mut with = cell.clone();
                    with[axis] = Some(vec![v]);
                    out.push(with);
                }
                out
            })
            .collect();
    }
    cells.retain(|c| c.iter().any(Option::is_some));
    cells
}

/// The true (numerator, denominator) of `metric` in a cell, from an unsuppressed computation.
fn truth(metric: MetricId, cell: &Selection, cases: &[CaseFacts]) -> (f64, f64) {
    let mut query = MetricsQuery {
        metrics: vec![metric],
        period: Period::month(2025, 6).unwrap(),
        snapshot: None,
        group_by: vec![],
        filters: vec![],
        suppress_small_numbers: false,
        settings: Settings::default(),
    };
    for (axis, allowed) in cell.iter().enumerate() {
        // (an empty selection is the national figure)
        if let Some(allowed) = allowed {
            let (dimension, values) = AXES[axis];
            query
                .filters
                .push((dimension, allowed.iter().map(|v| values[*v].to_owned()).collect()));
        }
    }
    let row = compute(&query, cases, WorkingCalendar::england_and_wales())
        .unwrap()
        .remove(0)
        .rows
        .remove(0);
    (row.numerator, row.denominator)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_of_answers_determines_a_small_cell(
        dataset in prop::collection::vec(case(), 1..30),
        questions in prop::collection::vec(question(), 1..25),
    ) {
        let cases: Vec<CaseFacts> = dataset.iter().enumerate().map(|(i, c)| facts(i, c)).collect();
        let mut knowledge: Vec<Knowledge> = METRICS.iter().map(|_| Knowledge::default()).collect();
        // National figures are published: the adversary knows them.
        for k in &mut knowledge {
            k.learn(vec![1; atom_count()]);
        }
        for (law, other, other_use, forbidden) in &questions {
            let mut uses = vec![(0, law), (*other, other_use)];
            if let Some((third, third_use)) = forbidden
                && *third != *other
                && !matches!(third_use, Use::None)
                && !matches!(other_use, Use::None)
            {
                uses.push((*third, third_use));
                prop_assert!(ask(&uses, &cases).is_err(), "two dimensions besides law type must be refused");
                continue;
            }
            let answers = ask(&uses, &cases).unwrap();
            for (k, result) in knowledge.iter_mut().zip(&answers) {
                for row in result.rows.iter().filter(|r| !r.suppressed) {
                    // A shown figure is the figure: the same as counting its cell directly.
                    let selection = selection_of(row, &uses);
                    prop_assert_eq!(
                        (row.numerator, row.denominator),
                        truth(result.metric, &selection, &cases),
                        "{:?} {:?}", result.metric, row
                    );
                    k.learn(vector(&selection));
                }
                // A group that has no row has no units: the adversary learns a zero.
                for absent in groups_asked(&uses)
                    .into_iter()
                    .filter(|g| result.rows.iter().all(|r| selection_of(r, &uses) != *g))
                {
                    k.learn(vector(&absent));
                }
            }
        }
        let national: Vec<(f64, f64)> = METRICS.iter().map(|m| truth(*m, &Default::default(), &cases)).collect();
        for cell in all_cells() {
            for ((k, metric), national) in knowledge.iter().zip(METRICS).zip(&national) {
                let (numerator, denominator) = truth(metric, &cell, &cases);
                // A cell holding every unit (a court that is the only court in the log) is the
                // national figure, which is published.
                if (numerator, denominator) == *national {
                    continue;
                }
                let small = |x: f64| (1.0..=4.0).contains(&x);
                let at_risk = if metric == MetricId::E1 {
                    small(numerator) || small(denominator) || small(denominator - numerator)
                } else {
                    small(numerator)
                };
                if at_risk {
                    prop_assert!(
                        !k.determines(vector(&cell)),
                        "{metric:?}: cell {cell:?} ({numerator}/{denominator}) is determined by the answers"
                    );
                }
            }
        }
    }
}

#[test]
fn a_suppressed_query_keeps_every_dimension_it_grouped_by() {
    let cases: Vec<CaseFacts> = (0..12)
        .map(|i| {
            facts(
                i,
                &Case {
                    public: i % 2 == 0,
                    area: i % 2,
                    court: 0,
                    authority: 0,
                    closed: false,
                    children: vec![(2015, true)],
                },
            )
        })
        .collect();
    let query = MetricsQuery {
        metrics: vec![MetricId::S1Cases],
        period: Period::month(2025, 6).unwrap(),
        snapshot: None,
        group_by: vec![Dimension::ReportType, Dimension::ServiceArea],
        filters: vec![(Dimension::ServiceArea, vec!["A1".into(), "A2".into()])],
        suppress_small_numbers: true,
        settings: Settings::default(),
    };
    let rows = compute(&query, &cases, WorkingCalendar::england_and_wales())
        .unwrap()
        .remove(0)
        .rows;
    let groups: Vec<Vec<(Dimension, &str)>> = rows
        .iter()
        .map(|r| r.group.iter().map(|(d, v)| (*d, v.as_str())).collect())
        .collect();
    assert_eq!(
        groups,
        [
            vec![
                (Dimension::ServiceArea, "A1"),
                (Dimension::ReportType, "not_applicable")
            ],
            vec![
                (Dimension::ServiceArea, "A2"),
                (Dimension::ReportType, "not_applicable")
            ],
        ]
    );
    assert_eq!(
        rows.iter().map(|r| (r.suppressed, r.numerator)).collect::<Vec<_>>(),
        [(false, 6.0), (false, 6.0)]
    );
}
