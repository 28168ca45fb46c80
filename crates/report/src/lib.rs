//! The board performance report, from metric results the read model computed.
//!
//! A [`Report`] holds, for each measure of [`BOARD_MEASURES`], the figure of the report period
//! against its target, the change from the previous period and from the same period a year
//! before, the figure of every period of the window (the trend), and the figure of each service
//! area (suppressed exactly as a reporting client gets it: the caller asks the read model so).
//! It is built from results alone ([`Report::assemble`]) and written as one self-contained HTML
//! file (inline CSS and SVG, no scripts, fonts or links out: reports are read offline and hold
//! sensitive figures), as CSV, or as JSON.

mod charts;
pub mod measures;

pub use charts::ChartError;
pub use measures::{BOARD_MEASURES, Measure, metrics_of};

use caselog_projections::metrics::report_type_name;
use caselog_projections::targets::{Better, Status, Targets};
use caselog_projections::{Dimension, MetricResult, Period, Row};
use serde::Serialize;

/// What a report is built from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub measures: &'a [Measure],
    /// The national results of every period of the window, oldest first: for each period, one
    /// result per metric of [`metrics_of`]`(measures)` in that order.
    pub window: &'a [MetricResult],
    /// The report period's results grouped by service area, suppressed for a reporting client.
    pub by_service_area: &'a [MetricResult],
    /// The service areas of the breakdown (code, name), in the order shown.
    pub service_areas: &'a [(String, String)],
    /// Periods in a year for the window's kind (12 months, 4 quarters, 1 year): how far back
    /// "the same period last year" is.
    pub periods_per_year: usize,
    pub targets: &'a Targets,
    /// The instant the figures were cut at, if not now (RFC 3339).
    pub as_of: Option<String>,
    pub generated_at: String,
    /// The projection position the figures reflect (0 for an as-of report).
    pub position: u64,
    /// How a reader who may see units drills into a service area's figure (`{metric}` (with
    /// the report type's filter for T6-T8), `{period}` and `{area}` replaced), or nothing.
    pub drill_down: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub period: PeriodOut,
    pub window: Vec<PeriodOut>,
    pub previous_period: Option<String>,
    pub same_period_last_year: Option<String>,
    pub as_of: Option<String>,
    pub generated_at: String,
    pub position: u64,
    pub suppression_rule: &'static str,
    pub measures: Vec<MeasureReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodOut {
    pub label: String,
    /// The label without its kind: "2024-25 Q3", "2025-03".
    pub short: String,
    pub first: String,
    pub last: String,
}

impl From<&Period> for PeriodOut {
    fn from(period: &Period) -> PeriodOut {
        PeriodOut {
            label: period.label.clone(),
            short: short_label(&period.label),
            first: period.first.to_string(),
            last: period.last.to_string(),
        }
    }
}

fn short_label(label: &str) -> String {
    [
        "month ",
        "financial quarter ",
        "financial year ",
        "calendar quarter ",
        "custom range ",
    ]
    .iter()
    .find_map(|kind| label.strip_prefix(kind))
    .unwrap_or(label)
    .to_owned()
}

#[derive(Debug, Clone, Serialize)]
pub struct MeasureReport {
    /// "T4", or "T6 section7".
    pub key: String,
    pub metric_id: &'static str,
    pub report_type: Option<&'static str>,
    pub title: &'static str,
    pub unit: &'static str,
    pub value_unit: &'static str,
    pub definition: String,
    /// For stock figures: the day they are counted on (the period's last day).
    pub snapshot_date: Option<String>,
    pub current: Figure,
    pub previous: Option<Figure>,
    pub same_period_last_year: Option<Figure>,
    /// Current minus previous, in the figure's unit (percentage points for shares).
    pub change_from_previous: Option<f64>,
    pub change_from_last_year: Option<f64>,
    pub target: Option<TargetOut>,
    pub status: Option<Status>,
    pub trend: Vec<Figure>,
    pub by_service_area: Vec<AreaFigure>,
    pub drill_down: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetOut {
    pub value: f64,
    pub near: f64,
    pub better: Better,
    pub rule: String,
    pub source: String,
}

/// One figure: its period, value (absent when nothing was counted or when suppressed) and the
/// numerator and denominator it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub period: String,
    pub value: Option<f64>,
    /// Rounded to 1 decimal place; "suppressed", or "" when nothing was counted.
    pub display: String,
    pub numerator: f64,
    pub denominator: f64,
    pub suppressed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AreaFigure {
    pub service_area: String,
    pub name: String,
    pub figure: Figure,
    pub drill_down: Option<String>,
}

/// The rule applied to the service-area breakdown, stated in every report.
pub const SUPPRESSION_RULE: &str = "Figures below national level are suppressed where 1-4 units are counted (for a share, 1-4 meeting or not meeting the condition), with further cells suppressed so that none can be worked out from totals; national figures are not suppressed.";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the window's results do not match its measures: {0}")]
    Inputs(String),
    #[error(transparent)]
    Chart(#[from] ChartError),
    #[error("rendering the report failed: {0}")]
    Template(#[from] minijinja::Error),
}

impl Report {
    pub fn assemble(inputs: &Inputs<'_>) -> Result<Report, ReportError> {
        let metrics = metrics_of(inputs.measures);
        if metrics.is_empty() || inputs.window.is_empty() || !inputs.window.len().is_multiple_of(metrics.len()) {
            return Err(ReportError::Inputs(format!(
                "{} results for {} metrics",
                inputs.window.len(),
                metrics.len()
            )));
        }
        let periods: Vec<&[MetricResult]> = inputs.window.chunks(metrics.len()).collect();
        let window: Vec<PeriodOut> = periods
            .iter()
            .map(|results| PeriodOut::from(&results[0].period))
            .collect();
        let last = periods.len() - 1;
        let previous = last.checked_sub(1);
        let last_year = last.checked_sub(inputs.periods_per_year.max(1));
        let measures = inputs
            .measures
            .iter()
            .map(|measure| {
                let slot = metrics.iter().position(|m| *m == measure.metric).unwrap_or_default();
                let trend: Vec<Figure> = periods
                    .iter()
                    .map(|results| figure_of(measure, &results[slot], None))
                    .collect();
                let current = trend[last].clone();
                let at = |i: Option<usize>| i.map(|i| trend[i].clone());
                let change = |other: &Option<Figure>| Some(current.value? - other.as_ref()?.value?);
                let target = inputs.targets.of(measure.metric, measure.report_type);
                let result = &periods[last][slot];
                let grouped = inputs.by_service_area.iter().find(|r| r.metric == measure.metric);
                let period_short = short_label(&result.period.label);
                let hint = |area: &str| {
                    inputs.drill_down.map(|text| {
                        let metric = match measure.report_type {
                            Some(t) => format!("{} --filter report_type={}", measure.metric.id(), report_type_name(t)),
                            None => measure.metric.id().to_owned(),
                        };
                        text.replace("{metric}", &metric)
                            .replace("{period}", &period_short)
                            .replace("{area}", area)
                    })
                };
                let by_service_area = inputs
                    .service_areas
                    .iter()
                    .map(|(code, name)| AreaFigure {
                        service_area: code.clone(),
                        name: name.clone(),
                        figure: match grouped {
                            Some(grouped) => figure_of(measure, grouped, Some(code)),
                            None => empty_figure(&period_short),
                        },
                        drill_down: hint(code),
                    })
                    .collect();
                let previous = at(previous);
                let same_period_last_year = at(last_year);
                MeasureReport {
                    key: measure.key(),
                    metric_id: measure.metric.id(),
                    report_type: measure.report_type.map(report_type_name),
                    title: measure.title,
                    unit: result.unit,
                    value_unit: result.value_unit,
                    definition: result.definition.clone(),
                    snapshot_date: result.snapshot.map(|d| d.to_string()),
                    change_from_previous: change(&previous),
                    change_from_last_year: change(&same_period_last_year),
                    status: target.zip(current.value).map(|(t, v)| t.status(v)),
                    target: target.map(|t| TargetOut {
                        value: t.value,
                        near: t.near,
                        better: t.better,
                        rule: t.rule(),
                        source: t.source.clone(),
                    }),
                    current,
                    previous,
                    same_period_last_year,
                    trend,
                    by_service_area,
                    drill_down: hint("<service area>"),
                }
            })
            .collect();
        let period = window[last].clone();
        Ok(Report {
            title: format!("Performance report: {}", period.label),
            previous_period: previous.map(|i| window[i].label.clone()),
            same_period_last_year: last_year.map(|i| window[i].label.clone()),
            period,
            window,
            as_of: inputs.as_of.clone(),
            generated_at: inputs.generated_at.clone(),
            position: inputs.position,
            suppression_rule: SUPPRESSION_RULE,
            measures,
        })
    }

    pub fn to_json(&self) -> String {
        // A report is plain data (strings, numbers, options): serialising it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Long format, one figure per line: the headline (report period), every period of the
    /// trend, and every service area.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "section,measure,title,period,service_area,value,display,numerator,denominator,suppressed,target,status\n",
        );
        for m in &self.measures {
            let target = m.target.as_ref().map(|t| number(t.value)).unwrap_or_default();
            let status = m.status.map(Status::label).unwrap_or_default();
            let mut line = |section: &str, area: &str, figure: &Figure, target: &str, status: &str| {
                let fields = [
                    section,
                    &m.key,
                    m.title,
                    &figure.period,
                    area,
                    &figure.value.map(number).unwrap_or_default(),
                    &figure.display,
                    &number(figure.numerator),
                    &number(figure.denominator),
                    if figure.suppressed { "true" } else { "false" },
                    target,
                    status,
                ];
                let fields: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&fields.join(","));
                out.push('\n');
            };
            line("headline", "", &m.current, &target, status);
            for figure in &m.trend {
                line("trend", "", figure, "", "");
            }
            for area in &m.by_service_area {
                line("service_area", &area.service_area, &area.figure, "", "");
            }
        }
        out
    }

    /// One HTML file: inline CSS, an SVG chart per trend and per breakdown, no scripts.
    pub fn to_html(&self) -> Result<String, ReportError> {
        let labels: Vec<String> = self.window.iter().map(|p| p.short.clone()).collect();
        let mut charts = Vec::with_capacity(self.measures.len());
        for m in &self.measures {
            let values: Vec<Option<f64>> = m.trend.iter().map(|f| f.value).collect();
            let target = m.target.as_ref().map(|t| t.value);
            let areas: Vec<String> = m.by_service_area.iter().map(|a| a.service_area.clone()).collect();
            let area_values: Vec<Option<f64>> = m.by_service_area.iter().map(|a| a.figure.value).collect();
            // Drawn by plotters from numbers only: safe to embed as they are.
            charts.push(minijinja::context! {
                trend => minijinja::Value::from_safe_string(charts::trend(&labels, &values, target)?),
                bars => minijinja::Value::from_safe_string(charts::bars(&areas, &area_values, target)?),
            });
        }
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        env.add_filter("signed", |x: Option<f64>| match x {
            // Rounded first, so that a change too small to show reads 0.0, not -0.0.
            Some(x) => match (x * 10.0).round() / 10.0 {
                x if x > 0.0 => format!("+{x:.1}"),
                x if x < 0.0 => format!("{x:.1}"),
                _ => "0.0".to_owned(),
            },
            None => "–".to_owned(),
        });
        // Numerators in weeks are sums of sevenths: shown to one decimal place, whole numbers
        // as they are.
        env.add_filter("amount", |x: f64| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        });
        env.add_filter(
            "figure",
            |display: String| {
                if display.is_empty() { "–".to_owned() } else { display }
            },
        );
        env.add_template("report.html", include_str!("../templates/report.html"))?;
        let template = env.get_template("report.html")?;
        Ok(template.render(minijinja::context! {
            report => minijinja::Value::from(minijinja::value::Serde(self)),
            charts,
        })?)
    }
}

fn number(x: f64) -> String {
    format!("{x}")
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn empty_figure(period: &str) -> Figure {
    Figure {
        period: period.to_owned(),
        value: None,
        display: String::new(),
        numerator: 0.0,
        denominator: 0.0,
        suppressed: false,
    }
}

/// The row of `result` for `measure` (its report type, if any) and, when given, one service area.
fn figure_of(measure: &Measure, result: &MetricResult, area: Option<&str>) -> Figure {
    let wanted_type = measure.report_type.map(report_type_name);
    let matches = |row: &&Row| {
        row.group.get(&Dimension::ReportType).map(String::as_str) == wanted_type
            && row.group.get(&Dimension::ServiceArea).map(String::as_str) == area
    };
    let period = short_label(&result.period.label);
    match result.rows.iter().find(matches) {
        Some(row) => Figure {
            period,
            value: row.value,
            display: row.display(),
            numerator: row.numerator,
            denominator: row.denominator,
            suppressed: row.suppressed,
        },
        None => empty_figure(&period),
    }
}
