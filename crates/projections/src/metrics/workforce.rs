//! Workforce (W1): practitioners' caseloads at the snapshot. Counting gathers each group's open
//! cases per practitioner; the figures (a mean and two shares over practitioners) exist only
//! once every case has been counted, in `finish`.

use super::{Caseloads, Collector, Counting, Kind, MetricId, MetricsError, Spec, Unit, flag};

pub(super) const W1_MEAN: Spec = Spec {
    id: "W1.mean",
    unit: "practitioner",
    kind: Kind::Mean("cases per practitioner"),
    stock: true,
    days_per_unit: 1.0,
    definition: |_| {
        "open cases at the snapshot per practitioner of their latest lead or guardian allocation on or before it; mean over practitioners with at least one".into()
    },
};
pub(super) const W1_SHARE_20_PLUS: Spec = Spec {
    id: "W1.share_20_plus",
    unit: "practitioner",
    kind: Kind::Share,
    stock: true,
    days_per_unit: 1.0,
    definition: |_| "share of those practitioners with 20 or more such cases".into(),
};
pub(super) const W1_SHARE_25_PLUS: Spec = Spec {
    id: "W1.share_25_plus",
    unit: "practitioner",
    kind: Kind::Share,
    stock: true,
    days_per_unit: 1.0,
    definition: |_| "share of those practitioners with 25 or more such cases".into(),
};

fn wanted(c: &Collector<'_>) -> bool {
    [MetricId::W1Mean, MetricId::W1Share20Plus, MetricId::W1Share25Plus]
        .into_iter()
        .any(|m| c.wants(m))
}

/// Counts an open case towards its lead practitioner's caseload in each of its groups.
pub(super) fn count<'a>(
    c: &mut Collector<'a>,
    cx: &mut Counting<'_, 'a>,
    caseloads: &mut Caseloads<'a>,
) -> Result<(), MetricsError> {
    let (query, case, case_keys) = cx.unit();
    let snapshot = query.snapshot_date();
    if wanted(c)
        && case.open_on(snapshot)
        && let Some(practitioner) = case.lead_practitioner_on(snapshot)
    {
        for &group in c.case_keys(case_keys, query, case) {
            *caseloads.entry(group).or_default().entry(practitioner).or_default() += 1;
        }
    }
    Ok(())
}

/// Turns each group's caseloads into W1's figures.
pub(super) fn finish(c: &mut Collector<'_>, caseloads: &Caseloads<'_>) {
    // A group's figures are added at once; a drill-down lists its practitioners instead.
    let mut traced = c.traced.take();
    for (group, loads) in caseloads {
        let practitioners = loads.len() as f64;
        let total: u32 = loads.values().sum();
        let at_least = |n: u32| loads.values().filter(|l| **l >= n).count() as f64;
        let group = std::slice::from_ref(group);
        let whole_group = || Unit::practitioner("");
        c.add(MetricId::W1Mean, group, f64::from(total), practitioners, whole_group);
        c.add(MetricId::W1Share20Plus, group, at_least(20), practitioners, whole_group);
        c.add(MetricId::W1Share25Plus, group, at_least(25), practitioners, whole_group);
        if let Some((metric, units)) = &mut traced {
            let figure = |load: u32| match metric {
                MetricId::W1Mean => Some(f64::from(load)),
                MetricId::W1Share20Plus => Some(flag(load >= 20)),
                MetricId::W1Share25Plus => Some(flag(load >= 25)),
                _ => None,
            };
            for (practitioner, load) in loads {
                if let Some(numerator) = figure(*load) {
                    units.push(Unit {
                        numerator,
                        denominator: 1.0,
                        ..Unit::practitioner(practitioner)
                    });
                }
            }
        }
    }
    c.traced = traced;
}
