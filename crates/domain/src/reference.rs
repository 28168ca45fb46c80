//! Reference data compiled into the binary: Cafcass service areas and when each became valid.
//! (Working days live in `caselog-calendar`.)
//! Compiled in (not fetched) so that replaying history always validates against the same table.

use chrono::NaiveDate;
use std::sync::OnceLock;

const SERVICE_AREAS_CSV: &str = include_str!("../data/service-areas.csv");

/// A Cafcass operational service area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceArea {
    pub code: String,
    pub name: String,
    pub valid_from: NaiveDate,
}

/// Every service area in the compiled table.
pub fn service_areas() -> &'static [ServiceArea] {
    static AREAS: OnceLock<Vec<ServiceArea>> = OnceLock::new();
    AREAS.get_or_init(|| parse_service_areas(SERVICE_AREAS_CSV))
}

/// The service area with this code, if it exists and is valid on `on`.
pub fn service_area_valid_on(code: &str, on: NaiveDate) -> Option<&'static ServiceArea> {
    service_areas()
        .iter()
        .find(|area| area.code == code && area.valid_from <= on)
}

fn parse_service_areas(csv: &str) -> Vec<ServiceArea> {
    csv.lines()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim();
            let (code, rest) = line.split_once(',')?;
            let (name, valid_from) = rest.rsplit_once(',')?;
            Some(ServiceArea {
                code: code.to_owned(),
                name: name.trim_matches('"').to_owned(),
                valid_from: NaiveDate::parse_from_str(valid_from, "%Y-%m-%d").ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_table_parses() {
        let rows = SERVICE_AREAS_CSV
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count();
        assert_eq!(service_areas().len(), rows);
        let a2 = service_areas().iter().find(|a| a.code == "A2").expect("A2 present");
        assert_eq!(
            a2.name,
            "Durham, Teesside, North Yorkshire, York, Cumbria and Lancashire"
        );
    }

    #[test]
    fn validity_starts_on_valid_from() {
        let day = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
        assert!(service_area_valid_on("A5", day("2016-01-01")).is_some());
        assert!(service_area_valid_on("A5", day("2015-12-31")).is_none());
        assert!(service_area_valid_on("A99", day("2025-01-01")).is_none());
    }
}
