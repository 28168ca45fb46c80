//! Small-number suppression that holds across queries.
//!
//! A service that answers any grouping and any filter is a flexible table builder: answers that
//! are each safe can be combined (national total minus the shown areas, one multi-value filter
//! minus another, the same cell asked through two groupings) to recover a hidden count. So an
//! answer for a suppressed caller is never suppressed on its own. It is read from a fixed
//! **table**, suppressed once and deterministically, and a figure is shown only if every cell it
//! is made of is shown in that table:
//!
//! - the dimensions a query involves are those it groups **or** filters by; report type is part
//!   of T6-T8 (the catalogue publishes them by type) and splits every table into strata;
//! - a suppressed caller may involve law type and at most one other dimension `d` (not
//!   application type: a case with two application types counts under both, so its cells
//!   overlap and cannot be protected by cell suppression);
//! - the table for `d` is law type × `d` with its margins: the cells, the `d` totals, the law
//!   type totals and the national total. Law-type totals are suppressed once, alone, and are
//!   the same in every table; the national total is never suppressed;
//! - primary suppression: a cell whose counted units are 1-4, or for a share whose numerator
//!   or denominator minus numerator is 1-4 (a share of 97 in 100 tells that 3 were not);
//! - secondary suppression: with every margin known, a hidden cell can be recomputed exactly
//!   when it lies on no cycle of hidden cells (rows, columns and totals as the two sides of a
//!   graph whose edges are the hidden cells, a bridge is determined). Cells are hidden, smallest
//!   first, until no hidden cell is a bridge.
//!
//! Two tables share only the law-type totals and the national total, which are suppressed the
//! same way in each, so answers from different tables add no equation that one table's own
//! pattern does not already withstand.

use crate::facts::CaseFacts;
use crate::metrics::{Dimension, MetricId, MetricResult, MetricsQuery, NOT_APPLICABLE, Row};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Every value each dimension can take: a table holds a cell for each, zero or not, so that a
/// zero is a cell like any other (it can be hidden to protect a neighbour) and the absence of a
/// row never tells more than a shown zero would.
#[derive(Debug, Clone, Default)]
pub struct Universe {
    values: BTreeMap<Dimension, BTreeSet<String>>,
}

impl Universe {
    /// The law types, and the values `other` can take: the reference data's (service areas, age
    /// bands) and those the cases carry (courts, local authorities).
    pub fn of<'a>(cases: impl IntoIterator<Item = &'a CaseFacts>, other: Option<Dimension>) -> Universe {
        let mut values: BTreeMap<Dimension, BTreeSet<String>> = BTreeMap::new();
        values.insert(
            Dimension::LawType,
            ["public", "private"].into_iter().map(str::to_owned).collect(),
        );
        let Some(other) = other else {
            return Universe { values };
        };
        let mut seen: BTreeSet<String> = match other {
            Dimension::AgeBand => crate::metrics::AGE_BANDS
                .iter()
                .chain([&NOT_APPLICABLE])
                .map(|b| (*b).to_owned())
                .collect(),
            Dimension::ServiceArea => caselog_domain::reference::service_areas()
                .iter()
                .map(|a| a.code.clone())
                .collect(),
            Dimension::LocalAuthority => BTreeSet::from([NOT_APPLICABLE.to_owned()]),
            _ => BTreeSet::new(),
        };
        let value = |case: &'a CaseFacts| -> Option<&'a str> {
            match other {
                Dimension::ServiceArea => Some(&case.service_area),
                Dimension::Court => Some(&case.court_code),
                Dimension::LocalAuthority => case.local_authority_code.as_deref(),
                _ => None,
            }
        };
        for case in cases {
            // Looked up before it is copied: a million cases hold a few hundred codes.
            if let Some(v) = value(case)
                && !seen.contains(v)
            {
                seen.insert(v.to_owned());
            }
        }
        values.insert(other, seen);
        Universe { values }
    }

    fn values(&self, d: Dimension) -> impl Iterator<Item = &String> {
        self.values.get(&d).into_iter().flatten()
    }
}

/// Why a query cannot be answered to a caller whose figures are suppressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "figures below national level come from tables of law type and one other dimension; this query involves {0} (grouped or filtered): ask for one of them at a time"
    )]
    CrossClassified(String),
    #[error(
        "application_type cannot be used where small numbers are suppressed: a case with several application types counts under each, so its cells overlap and could be recovered by subtraction"
    )]
    OverlappingDimension,
}

/// The dimensions below national level that `query` involves (grouped or filtered), report type
/// aside.
pub fn involved(query: &MetricsQuery) -> BTreeSet<Dimension> {
    query
        .group_by
        .iter()
        .copied()
        .chain(query.filters.iter().map(|(d, _)| *d))
        .filter(|d| *d != Dimension::ReportType)
        .collect()
}

/// The table a suppressed caller's query is read from: law type × `Some(d)`, or law type alone.
pub fn table_of(query: &MetricsQuery) -> Result<Option<Dimension>, Refusal> {
    let dimensions = involved(query);
    if dimensions.contains(&Dimension::ApplicationType) {
        return Err(Refusal::OverlappingDimension);
    }
    let others: Vec<Dimension> = dimensions.into_iter().filter(|d| *d != Dimension::LawType).collect();
    match others.as_slice() {
        [] => Ok(None),
        [d] => Ok(Some(*d)),
        many => Err(Refusal::CrossClassified(
            many.iter().map(|d| d.name()).collect::<Vec<_>>().join(", "),
        )),
    }
}

/// Answers `query` (with `suppress_small_numbers` set) from its table. `count(q, rollups)`
/// computes `q` without suppression over the same cases, adding the rows of each coarser
/// grouping in `rollups` (totals of its own groups); it is asked once, for the table's cells
/// and totals.
pub fn answer<E>(
    query: &MetricsQuery,
    universe: impl FnOnce(Option<Dimension>) -> Universe,
    mut count: impl FnMut(&MetricsQuery, &[Vec<Dimension>]) -> Result<Vec<MetricResult>, E>,
) -> Result<Vec<MetricResult>, E>
where
    E: From<Refusal>,
{
    let other = table_of(query)?;
    let mut plain = query.clone();
    plain.suppress_small_numbers = false;
    // Report type stays as asked: it selects and splits strata, it is not a cell dimension.
    plain.filters.retain(|(d, _)| *d == Dimension::ReportType);
    if involved(query).is_empty() {
        return count(&plain, &[]);
    }
    // The table's cells are counted, and its totals rolled up from them in the same pass.
    let by_report_type = query.group_by.contains(&Dimension::ReportType);
    let grouping = |dimensions: &[Dimension]| -> Vec<Dimension> {
        dimensions
            .iter()
            .copied()
            .chain(by_report_type.then_some(Dimension::ReportType))
            .collect()
    };
    plain.group_by = match other {
        Some(d) => grouping(&[Dimension::LawType, d]),
        None => grouping(&[Dimension::LawType]),
    };
    let rollups: Vec<Vec<Dimension>> = match other {
        Some(d) => vec![grouping(&[]), grouping(&[Dimension::LawType]), grouping(&[d])],
        None => vec![grouping(&[])],
    };
    let universe = universe(other);
    let results = count(&plain, &rollups)?
        .into_iter()
        .map(|counted| {
            let mut table = Table::new(counted.metric, other.is_some());
            table.fill(&counted.rows, other);
            table.complete(&universe, other);
            table.suppress();
            MetricResult {
                rows: table.rows_for(query, other),
                ..counted
            }
        })
        .collect();
    Ok(results)
}

/// A position in a table: a value, or the total over the dimension.
type Coordinate = Option<String>;

/// (report type stratum, law type, other dimension).
type CellKey = (Option<String>, Coordinate, Coordinate);

#[derive(Debug, Clone, Copy)]
struct Cell {
    numerator: f64,
    denominator: f64,
    hidden: bool,
}

struct Table {
    metric: MetricId,
    /// Without one, the table is the law-type totals alone (no cells to sum along them).
    has_other_dimension: bool,
    cells: BTreeMap<CellKey, Cell>,
}

impl Table {
    fn new(metric: MetricId, has_other_dimension: bool) -> Table {
        Table {
            metric,
            has_other_dimension,
            cells: BTreeMap::new(),
        }
    }

    /// Places counted rows by the dimensions their group has: law type, `other`, both or
    /// neither (a total).
    fn fill(&mut self, rows: &[Row], other: Option<Dimension>) {
        for row in rows {
            let stratum = row.group.get(&Dimension::ReportType).cloned();
            let law = row.group.get(&Dimension::LawType).cloned();
            let other = other.and_then(|d| row.group.get(&d).cloned());
            self.cells.insert(
                (stratum, law, other),
                Cell {
                    numerator: row.numerator,
                    denominator: row.denominator,
                    hidden: false,
                },
            );
        }
    }

    /// Adds a zero cell for every value of the universe that has none, in every stratum.
    fn complete(&mut self, universe: &Universe, other: Option<Dimension>) {
        let strata: BTreeSet<Option<String>> = self.cells.keys().map(|k| k.0.clone()).collect();
        let laws: Vec<Coordinate> = universe.values(Dimension::LawType).cloned().map(Some).collect();
        let others: Vec<Coordinate> = match other {
            Some(d) => universe.values(d).cloned().map(Some).collect(),
            None => Vec::new(),
        };
        let zero = Cell {
            numerator: 0.0,
            denominator: 0.0,
            hidden: false,
        };
        for stratum in strata {
            for law in laws.iter().chain([&None]) {
                for value in others.iter().chain([&None]) {
                    self.cells
                        .entry((stratum.clone(), law.clone(), value.clone()))
                        .or_insert(zero);
                }
            }
        }
    }

    fn suppress(&mut self) {
        let metric = self.metric;
        for (key, cell) in &mut self.cells {
            let national = key.1.is_none() && key.2.is_none();
            cell.hidden = !national && metric.unsafe_figure(cell.numerator, cell.denominator);
        }
        let strata: BTreeSet<Option<String>> = self.cells.keys().map(|k| k.0.clone()).collect();
        for stratum in strata {
            self.suppress_law_type_totals(&stratum);
            if !self.has_other_dimension {
                continue;
            }
            while let Some(bridge) = self.bridge(&stratum) {
                if !self.protect(&stratum, bridge) {
                    break;
                }
            }
        }
    }

    /// Law-type totals are shared by every table, so they are decided alone: if exactly one is
    /// hidden, the smallest other one is hidden too.
    fn suppress_law_type_totals(&mut self, stratum: &Option<String>) {
        let totals: Vec<CellKey> = self
            .cells
            .keys()
            .filter(|k| &k.0 == stratum && k.1.is_some() && k.2.is_none())
            .cloned()
            .collect();
        if totals.iter().filter(|k| self.cells[*k].hidden).count() == 1
            && let Some(next) = self.smallest(totals.iter().filter(|k| !self.cells[*k].hidden))
        {
            self.hide(&next);
        }
    }

    fn hide(&mut self, key: &CellKey) {
        if let Some(cell) = self.cells.get_mut(key) {
            cell.hidden = true;
        }
    }

    fn units(&self, key: &CellKey) -> f64 {
        let cell = &self.cells[key];
        self.metric.counted_units(cell.numerator, cell.denominator)
    }

    /// The cell to hide next among `keys`: the smallest that has units, a zero only when none
    /// has (a zero hidden beside a cell of 2 would tell that the cell is at most 2).
    fn smallest<'k>(&self, keys: impl Iterator<Item = &'k CellKey>) -> Option<CellKey> {
        let order = |k: &CellKey| (self.units(k) == 0.0, self.units(k));
        keys.min_by(|a, b| {
            let (a_zero, a_units) = order(a);
            let (b_zero, b_units) = order(b);
            a_zero
                .cmp(&b_zero)
                .then(a_units.total_cmp(&b_units))
                .then_with(|| a.cmp(b))
        })
        .cloned()
    }

    /// The hidden cells of a stratum as edges between a row node (other dimension's value or
    /// its total) and a column node (law type or its total). The national total is known.
    fn hidden_edges(&self, stratum: &Option<String>) -> Vec<CellKey> {
        self.cells
            .iter()
            .filter(|(k, c)| &k.0 == stratum && c.hidden && !(k.1.is_none() && k.2.is_none()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A hidden cell that no cycle of hidden cells goes through: it follows from the margins.
    fn bridge(&self, stratum: &Option<String>) -> Option<CellKey> {
        let edges = self.hidden_edges(stratum);
        edges
            .iter()
            .find(|edge| {
                let (row, column) = nodes(edge);
                !component(&edges, Node::Row(row), edge).contains(&Node::Column(column))
            })
            .cloned()
    }

    /// Hides one more cell so that `bridge` lies on a cycle, or comes closer to one. Returns
    /// false when no cell is left to hide.
    fn protect(&mut self, stratum: &Option<String>, bridge: CellKey) -> bool {
        let edges = self.hidden_edges(stratum);
        let (row, column) = nodes(&bridge);
        let row_side = component(&edges, Node::Row(row), &bridge);
        let column_side = component(&edges, Node::Column(column), &bridge);
        // The national total is known and law-type totals were decided alone: neither is hidden
        // here.
        let candidates: Vec<CellKey> = self
            .cells
            .iter()
            .filter(|(k, c)| &k.0 == stratum && !c.hidden && k.2.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let joins = |a: &BTreeSet<Node>, b: &BTreeSet<Node>, k: &CellKey| {
            let (r, c) = nodes(k);
            a.contains(&Node::Row(r)) && b.contains(&Node::Column(c))
        };
        // A cell joining the two sides closes a cycle through the bridge.
        let closing = candidates
            .iter()
            .filter(|k| joins(&row_side, &column_side, k) || joins(&column_side, &row_side, k));
        let near = candidates.iter().filter(|k| {
            let (r, c) = nodes(k);
            let on =
                |side: &BTreeSet<Node>| side.contains(&Node::Row(r.clone())) || side.contains(&Node::Column(c.clone()));
            on(&row_side) || on(&column_side)
        });
        match self
            .smallest(closing)
            .or_else(|| self.smallest(near))
            .or_else(|| self.smallest(candidates.iter()))
        {
            Some(key) => {
                self.hide(&key);
                true
            }
            None => false,
        }
    }

    /// The rows the query asked for, each the sum of the table's cells it covers, shown only if
    /// every one of them is shown.
    fn rows_for(&self, query: &MetricsQuery, other: Option<Dimension>) -> Vec<Row> {
        let selection = |d: Dimension| -> Selection {
            let filtered = query
                .filters
                .iter()
                .find(|(f, _)| *f == d)
                .map(|(_, values)| values.iter().cloned().collect());
            match (query.group_by.contains(&d), filtered) {
                (true, filtered) => Selection::Each(filtered),
                (false, Some(values)) => Selection::Among(values),
                (false, None) => Selection::All,
            }
        };
        let law = selection(Dimension::LawType);
        let rest = other.map_or(Selection::All, selection);
        let mut rows: BTreeMap<BTreeMap<Dimension, String>, (f64, f64, bool)> = BTreeMap::new();
        for (key, cell) in &self.cells {
            let (Some(law_key), Some(other_key)) = (law.coordinate(&key.1), rest.coordinate(&key.2)) else {
                continue;
            };
            let mut group = BTreeMap::new();
            if let Some(stratum) = &key.0 {
                group.insert(Dimension::ReportType, stratum.clone());
            }
            if let Some(v) = law_key {
                group.insert(Dimension::LawType, v);
            }
            if let (Some(v), Some(d)) = (other_key, other) {
                group.insert(d, v);
            }
            let row = rows.entry(group).or_insert((0.0, 0.0, false));
            row.0 += cell.numerator;
            row.1 += cell.denominator;
            row.2 |= cell.hidden;
        }
        let mut out: Vec<Row> = rows
            .into_iter()
            .map(|(group, (numerator, denominator, suppressed))| {
                if suppressed {
                    Row {
                        group,
                        numerator: 0.0,
                        denominator: 0.0,
                        value: None,
                        suppressed: true,
                    }
                } else {
                    Row {
                        group,
                        numerator,
                        denominator,
                        value: self.metric.value(numerator, denominator),
                        suppressed: false,
                    }
                }
            })
            .collect();
        if out.is_empty() && !query.group_by.iter().any(|d| *d != Dimension::ReportType) {
            out.push(Row {
                group: BTreeMap::new(),
                numerator: 0.0,
                denominator: 0.0,
                value: self.metric.value(0.0, 0.0),
                suppressed: false,
            });
        }
        out
    }
}

/// How a query selects along one dimension of a table.
enum Selection {
    /// Grouped by it: every value (or those of its filter), each its own row.
    Each(Option<BTreeSet<String>>),
    /// Filtered: the listed values, summed.
    Among(BTreeSet<String>),
    /// Neither: the total.
    All,
}

impl Selection {
    /// Whether a cell at `coordinate` is part of the selection, and the group value it gives.
    fn coordinate(&self, coordinate: &Coordinate) -> Option<Option<String>> {
        match (self, coordinate) {
            (Selection::Each(among), Some(v)) if among.as_ref().is_none_or(|a| a.contains(v)) => Some(Some(v.clone())),
            (Selection::Among(values), Some(v)) if values.contains(v) => Some(None),
            (Selection::All, None) => Some(None),
            _ => None,
        }
    }
}

/// A row node (`Some` value of the other dimension, `None` its total) and a column node (law
/// type, `None` its total) of a cell.
fn nodes(key: &CellKey) -> (Coordinate, Coordinate) {
    (key.2.clone(), key.1.clone())
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Row(Coordinate),
    Column(Coordinate),
}

/// The nodes reachable from `start` over `edges` without using `skip`.
fn component(edges: &[CellKey], start: Node, skip: &CellKey) -> BTreeSet<Node> {
    let mut seen = BTreeSet::from([start.clone()]);
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for edge in edges.iter().filter(|e| *e != skip) {
            let (r, c) = nodes(edge);
            let next = match &node {
                Node::Row(row) if *row == r => Node::Column(c),
                Node::Column(column) if *column == c => Node::Row(r),
                _ => continue,
            };
            if seen.insert(next.clone()) {
                queue.push_back(next);
            }
        }
    }
    seen
}
