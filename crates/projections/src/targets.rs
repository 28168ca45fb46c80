//! Targets for the figures a board report shows, and the rule that turns a figure into on track,
//! near or off track.
//!
//! The defaults are the targets the metric catalogue names (every case within the 26-week limit,
//! every public-law child seen within 15 working days, 70% of cases allocated within 2 working
//! days, every child seen before closure, caseload bands of 20 and 25). The "near" thresholds
//! are the product's own convention. An organisation overrides them with a JSON file (see
//! [`Targets::from_json`]).

use crate::metrics::{MetricId, report_type_name, report_type_named};
use caselog_domain::event::ReportType;
use serde::{Deserialize, Serialize};

/// Which way a figure should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// Where a figure stands against its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    OnTrack,
    Near,
    OffTrack,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::OnTrack => "on track",
            Status::Near => "near",
            Status::OffTrack => "off track",
        }
    }
}

/// One figure's target: on track when the figure reaches `value`, near when it reaches `near`,
/// off track otherwise ("reaches" in the direction `better`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A figure id of the catalogue, e.g. "T4" or "W1.mean".
    pub metric: String,
    /// For T6-T8, whose figures are per report type: the type this target is for (e.g.
    /// "section7"); absent: every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_type: Option<String>,
    pub value: f64,
    pub near: f64,
    pub better: Better,
    /// Where the target comes from, shown beside it.
    #[serde(default)]
    pub source: String,
}

impl Target {
    pub fn status(&self, figure: f64) -> Status {
        let reaches = |threshold: f64| match self.better {
            Better::Higher => figure >= threshold,
            Better::Lower => figure <= threshold,
        };
        if reaches(self.value) {
            Status::OnTrack
        } else if reaches(self.near) {
            Status::Near
        } else {
            Status::OffTrack
        }
    }

    /// The rule in words, e.g. "on track at 70 or more; near at 65 or more; otherwise off track".
    pub fn rule(&self) -> String {
        let side = match self.better {
            Better::Higher => "or more",
            Better::Lower => "or less",
        };
        format!(
            "on track at {} {side}; near at {} {side}; otherwise off track",
            trim(self.value),
            trim(self.near)
        )
    }

    fn applies_to(&self, metric: MetricId, report_type: Option<ReportType>) -> bool {
        self.metric == metric.id()
            && match (&self.report_type, report_type) {
                (None, _) => true,
                (Some(wanted), Some(actual)) => wanted == report_type_name(actual),
                (Some(_), None) => false,
            }
    }
}

/// 70.0 as "70", 92.5 as "92.5".
fn trim(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// The targets in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    pub targets: Vec<Target>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("the targets file is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("target {index}: {problem}")]
    Invalid { index: usize, problem: String },
}

impl Targets {
    /// The targets of the metric catalogue.
    pub fn catalogue() -> Targets {
        let target = |metric: &str, value: f64, near: f64, better: Better, source: &str| Target {
            metric: metric.to_owned(),
            report_type: None,
            value,
            near,
            better,
            source: source.to_owned(),
        };
        let limit = "26-week limit (Children Act 1989 s32(1)(a)): every case";
        Targets {
            targets: vec![
                target(
                    "T1",
                    26.0,
                    30.0,
                    Better::Lower,
                    "26-week limit; near: product convention",
                ),
                target("T2", 100.0, 90.0, Better::Higher, limit),
                target("T3", 100.0, 90.0, Better::Higher, limit),
                target(
                    "T4",
                    100.0,
                    95.0,
                    Better::Higher,
                    "policy: every public-law child seen within 15 working days of first lead allocation",
                ),
                target(
                    "T5",
                    70.0,
                    65.0,
                    Better::Higher,
                    "historic target: 70% allocated within 2 working days",
                ),
                target("E1", 100.0, 95.0, Better::Higher, "policy: every child seen"),
                target(
                    "W1.mean",
                    20.0,
                    25.0,
                    Better::Lower,
                    "caseload bands: 20 and 25 cases per practitioner",
                ),
            ],
        }
    }

    /// Targets from a JSON file's text: `{"targets": [{"metric": "T5", "value": 70, "near": 65,
    /// "better": "higher", "source": "..."}]}`, each figure id from the catalogue, thresholds
    /// finite and `near` on the far side of `value`.
    pub fn from_json(text: &str) -> Result<Targets, TargetsError> {
        let targets: Targets = serde_json::from_str(text)?;
        for (index, target) in targets.targets.iter().enumerate() {
            let problem = |problem: String| TargetsError::Invalid { index, problem };
            let metric = MetricId::ALL.iter().find(|m| m.id() == target.metric).ok_or_else(|| {
                problem(format!(
                    "{:?} is not a figure id of the catalogue (e.g. \"T4\", \"W1.mean\")",
                    target.metric
                ))
            })?;
            if let Some(report_type) = &target.report_type {
                let by_type = matches!(metric, MetricId::T6 | MetricId::T7 | MetricId::T8);
                let known = report_type_named(report_type).is_some();
                if !by_type || !known {
                    return Err(problem(format!(
                        "report_type {report_type:?} applies only to T6-T8 and must be a report type such as \"section7\""
                    )));
                }
            }
            if !target.value.is_finite() || !target.near.is_finite() {
                return Err(problem("value and near must be numbers".into()));
            }
            let near_on_far_side = match target.better {
                Better::Higher => target.near <= target.value,
                Better::Lower => target.near >= target.value,
            };
            if !near_on_far_side {
                return Err(problem(format!(
                    "near ({}) must be {} value ({}) when {} is better",
                    target.near,
                    match target.better {
                        Better::Higher => "at most",
                        Better::Lower => "at least",
                    },
                    target.value,
                    match target.better {
                        Better::Higher => "higher",
                        Better::Lower => "lower",
                    },
                )));
            }
        }
        Ok(targets)
    }

    /// The target of a figure (of one report type for T6-T8): the most specific one given.
    pub fn of(&self, metric: MetricId, report_type: Option<ReportType>) -> Option<&Target> {
        let mut applicable = self.targets.iter().filter(|t| t.applies_to(metric, report_type));
        let first = applicable.next()?;
        Some(
            std::iter::once(first)
                .chain(applicable)
                .find(|t| t.report_type.is_some())
                .unwrap_or(first),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn catalogue_targets_parse_back_from_their_json() {
        let catalogue = Targets::catalogue();
        let text = serde_json::to_string(&catalogue).unwrap_or_default();
        assert_eq!(Targets::from_json(&text).ok(), Some(catalogue));
    }

    #[test]
    fn a_target_names_a_figure_of_the_catalogue_and_a_consistent_near() {
        let bad = [
            r#"{"targets":[{"metric":"T9","value":1,"near":0,"better":"higher"}]}"#,
            r#"{"targets":[{"metric":"T5","value":70,"near":75,"better":"higher"}]}"#,
            r#"{"targets":[{"metric":"W1.mean","value":20,"near":15,"better":"lower"}]}"#,
            r#"{"targets":[{"metric":"T4","report_type":"section7","value":1,"near":0,"better":"higher"}]}"#,
            r#"{"targets":[{"metric":"T6","report_type":"essay","value":1,"near":2,"better":"lower"}]}"#,
            r#"{"targets":[{"metric":"T5","value":70,"near":65,"better":"higher","colour":"red"}]}"#,
        ];
        for text in bad {
            assert!(Targets::from_json(text).is_err(), "{text}");
        }
        let good = r#"{"targets":[{"metric":"T6","report_type":"section7","value":12,"near":14,"better":"lower"}]}"#;
        let targets = Targets::from_json(good).unwrap_or_else(|e| panic!("{e}"));
        assert!(targets.of(MetricId::T6, Some(ReportType::Section7)).is_some());
        assert!(targets.of(MetricId::T6, Some(ReportType::SafeguardingLetter)).is_none());
    }

    #[test]
    fn a_report_type_target_wins_over_one_for_every_type() {
        let text = r#"{"targets":[
            {"metric":"T8","value":10,"near":20,"better":"lower"},
            {"metric":"T8","report_type":"section7","value":5,"near":8,"better":"lower"}]}"#;
        let targets = Targets::from_json(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            targets.of(MetricId::T8, Some(ReportType::Section7)).map(|t| t.value),
            Some(5.0)
        );
        assert_eq!(
            targets
                .of(MetricId::T8, Some(ReportType::FinalAnalysis))
                .map(|t| t.value),
            Some(10.0)
        );
        assert_eq!(targets.of(MetricId::T8, None).map(|t| t.value), Some(10.0));
    }

    proptest! {
        /// The status moves one way with the figure: a better figure never has a worse status.
        #[test]
        fn a_better_figure_never_has_a_worse_status(
            value in -1000.0..1000.0f64, gap in 0.0..100.0f64, a in -1500.0..1500.0f64, b in -1500.0..1500.0f64,
            higher in any::<bool>(),
        ) {
            let (better, near) = if higher { (Better::Higher, value - gap) } else { (Better::Lower, value + gap) };
            let target = Target { metric: "T5".into(), report_type: None, value, near, better, source: String::new() };
            let rank = |s: Status| match s { Status::OnTrack => 2, Status::Near => 1, Status::OffTrack => 0 };
            let (worse, better_figure) = if (a <= b) == higher { (a, b) } else { (b, a) };
            prop_assert!(rank(target.status(better_figure)) >= rank(target.status(worse)));
            prop_assert_eq!(target.status(value), Status::OnTrack);
            prop_assert_ne!(target.status(near), Status::OffTrack);
        }
    }
}
