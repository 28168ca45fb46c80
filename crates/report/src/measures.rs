//! The measures a board report shows: every figure of the catalogue, report-level figures for the
//! report types the organisation publishes.

use caselog_domain::event::ReportType;
use caselog_projections::MetricId;
use caselog_projections::metrics::report_type_name;

/// One line of the headline table: a figure of the catalogue, for one report type where the
/// figure is per report type (T6-T8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    pub metric: MetricId,
    pub report_type: Option<ReportType>,
    pub title: &'static str,
}

impl Measure {
    /// "T4", or "T6 section7" for a figure of one report type.
    pub fn key(&self) -> String {
        match self.report_type {
            Some(report_type) => format!("{} {}", self.metric.id(), report_type_name(report_type)),
            None => self.metric.id().to_owned(),
        }
    }
}

const fn measure(metric: MetricId, title: &'static str) -> Measure {
    Measure {
        metric,
        report_type: None,
        title,
    }
}

const fn of_type(metric: MetricId, report_type: ReportType, title: &'static str) -> Measure {
    Measure {
        metric,
        report_type: Some(report_type),
        title,
    }
}

/// The board pack's measures, in the catalogue's order.
pub const BOARD_MEASURES: [Measure; 27] = [
    measure(MetricId::T1, "Average duration of s31 applications"),
    measure(MetricId::T2, "s31 applications concluded within 26 weeks"),
    measure(MetricId::T3, "Child arrangements (s8) cases concluded within 26 weeks"),
    measure(
        MetricId::T4,
        "Children seen within 15 working days of first lead allocation",
    ),
    measure(MetricId::T5, "Cases allocated within 2 working days"),
    measure(MetricId::T5MeanWorkingDays, "Average working days to allocation"),
    of_type(
        MetricId::T6,
        ReportType::SafeguardingLetter,
        "Working weeks to file safeguarding letters",
    ),
    of_type(
        MetricId::T6,
        ReportType::Section7,
        "Working weeks to file section 7 reports",
    ),
    of_type(
        MetricId::T6,
        ReportType::FinalAnalysis,
        "Working weeks to file public law final analyses",
    ),
    of_type(MetricId::T7, ReportType::Section7, "Section 7 reports extended"),
    of_type(MetricId::T8, ReportType::Section7, "Section 7 reports filed late"),
    measure(MetricId::E1, "Children seen in person before closure"),
    measure(MetricId::E2, "Child engagement records completed"),
    measure(MetricId::E3, "Personalised letters of introduction sent"),
    measure(MetricId::E4, "Recommendations shared with the child"),
    measure(MetricId::S1Cases, "Open cases"),
    measure(MetricId::S1Children, "Children in open cases"),
    measure(MetricId::S2CasesOver52, "Cases open over 52 weeks"),
    measure(MetricId::S2ChildrenOver52, "Children in cases open over 52 weeks"),
    measure(MetricId::S2CasesOver100, "Cases open over 100 weeks"),
    measure(MetricId::S2ChildrenOver100, "Children in cases open over 100 weeks"),
    measure(MetricId::D1Cases, "New cases"),
    measure(MetricId::D1Children, "Children in new cases"),
    measure(MetricId::D2, "New cases per working day"),
    measure(MetricId::W1Mean, "Average caseload per practitioner"),
    measure(MetricId::W1Share20Plus, "Practitioners with 20 or more cases"),
    measure(MetricId::W1Share25Plus, "Practitioners with 25 or more cases"),
];

/// The figures the measures need, each once, in the measures' order.
pub fn metrics_of(measures: &[Measure]) -> Vec<MetricId> {
    let mut metrics = Vec::new();
    for measure in measures {
        if !metrics.contains(&measure.metric) {
            metrics.push(measure.metric);
        }
    }
    metrics
}
