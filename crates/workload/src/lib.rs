//! A synthetic national workload: children's cases in England as docs/events.md describes them
//! (volumes, the public/private split, children per case), with distributions calibrated so that
//! the catalogue's metrics land near the published reference figures, and with the noise of real
//! feeds (late recording, voided and re-entered visits, resent lines).
//!
//! Deterministic: the same seed gives the same events, byte for byte, on every platform (the
//! generator carries its own PRNG rather than depend on a library's algorithm choice).

use caselog_calendar::WorkingCalendar;
use caselog_domain::event::*;
use caselog_domain::{CaseHistory, EventId, Metadata, NewEvent, Payload};
use chrono::{Datelike, Duration, NaiveDate};

/// SplitMix64: small, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in [lo, hi].
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1).max(1) as u64)) as i64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// An index drawn with the given weights.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    fn event_id(&mut self) -> EventId {
        let bytes = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        uuid::Builder::from_random_bytes(bytes.to_be_bytes()).into_uuid().into()
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct WorkloadSettings {
    pub seed: u64,
    /// Cases are issued from `first_day` up to `last_day`; nothing occurs after `last_day`.
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    /// New cases per working day (England: about 220).
    pub cases_per_working_day: f64,
}

/// One generated event, with the day its sender recorded it (for ordering the output).
#[derive(Debug, Clone)]
pub struct GeneratedEvent {
    pub case_id: String,
    pub recorded_on: NaiveDate,
    pub event: NewEvent,
}

/// Practitioners holding cases: sized so that the open cases at a 31 March give the published
/// mean caseload (W1, 18.2).
const PRACTITIONERS: i64 = 1550;

const COURTS: [&str; 12] = ["LS", "MA", "BI", "LO", "BR", "NE", "SH", "NO", "LE", "PL", "CA", "SO"];
const PUBLIC_APPS: [ApplicationType; 3] = [
    ApplicationType::S31Care,
    ApplicationType::S31Supervision,
    ApplicationType::EmergencyProtection,
];
const PRIVATE_APPS: [ApplicationType; 3] = [
    ApplicationType::S8ChildArrangements,
    ApplicationType::S8ProhibitedSteps,
    ApplicationType::S8SpecificIssue,
];

/// Generates every case issued in the settings' window, each case's events in a valid recording
/// order, calling `emit` once per case.
pub fn generate(settings: &WorkloadSettings, calendar: &WorkingCalendar, mut emit: impl FnMut(Vec<GeneratedEvent>)) {
    let mut rng = Rng::new(settings.seed);
    let areas: Vec<&str> = caselog_domain::reference::service_areas()
        .iter()
        .map(|a| a.code.as_str())
        .collect();
    let mut serial = 0u64;
    for issued_on in settings.first_day.iter_days().take_while(|d| *d <= settings.last_day) {
        if !calendar.is_working_day(issued_on).unwrap_or(false) {
            continue;
        }
        // Poisson-like daily volume: the mean, give or take 10%.
        let today = settings.cases_per_working_day * (0.9 + 0.2 * rng.unit());
        let count = today.floor() as u64 + u64::from(rng.chance(today.fract()));
        for _ in 0..count {
            serial += 1;
            let case = CaseBuilder::new(&mut rng, settings, calendar, issued_on, serial, &areas);
            emit(case.build());
        }
    }
}

/// How a case runs: within 26 weeks, past 26 weeks, or past a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Course {
    Short,
    Standard,
    LongRunning,
}

impl Course {
    const ALL: [Course; 3] = [Course::Short, Course::Standard, Course::LongRunning];
}

/// Weeks a long-running case lasts: past a year, then an exponential tail whose mean excess of
/// 38 weeks makes the stock over 100 weeks about 0.28 of the stock over 52, as in S2
/// (2,195 of 8,143 children); capped at six years.
fn long_running(rng: &mut Rng) -> i64 {
    const MEAN_EXCESS_WEEKS: f64 = 38.0;
    let excess = -MEAN_EXCESS_WEEKS * (1.0 - rng.unit()).ln();
    53 + (excess as i64).min(260)
}

/// `n` working days after `from` (beyond the calendar, five of every seven days).
fn wd(calendar: &WorkingCalendar, from: NaiveDate, n: i64) -> NaiveDate {
    calendar
        .add_working_days(from, n.max(0) as u32)
        .unwrap_or(from + Duration::days(n * 7 / 5))
}

struct CaseBuilder<'a> {
    rng: &'a mut Rng,
    calendar: &'a WorkingCalendar,
    last_day: NaiveDate,
    case_id: String,
    events: Vec<(NaiveDate, NewEvent)>,
}

impl<'a> CaseBuilder<'a> {
    fn new(
        rng: &'a mut Rng,
        settings: &WorkloadSettings,
        calendar: &'a WorkingCalendar,
        issued_on: NaiveDate,
        serial: u64,
        areas: &[&str],
    ) -> CaseBuilder<'a> {
        let court = *rng.pick(&COURTS);
        let case_id = format!("{court}{:02}C{serial:07}", issued_on.year() % 100);
        let mut builder = CaseBuilder {
            rng,
            calendar,
            last_day: settings.last_day,
            case_id,
            events: Vec::new(),
        };
        builder.issue(issued_on, court, areas);
        builder
    }

    /// Records an event that occurred on `on` (dropped when after the window's last day).
    fn push(&mut self, on: NaiveDate, payload: Payload) -> Option<EventId> {
        if on > self.last_day {
            return None;
        }
        let event_id = self.rng.event_id();
        // Most events are recorded within days; one in ten weeks late.
        let delay = if self.rng.chance(0.1) {
            self.rng.between(7, 28)
        } else {
            self.rng.between(0, 3)
        };
        let recorded = (on + Duration::days(delay)).min(self.last_day);
        self.events.push((
            recorded,
            NewEvent {
                event_id,
                occurred_on: on,
                payload,
                metadata: Metadata::default(),
            },
        ));
        Some(event_id)
    }

    fn issue(&mut self, issued_on: NaiveDate, court: &str, areas: &[&str]) {
        let public = self.rng.chance(0.30);
        // Durations (T1, T2, T3, S2): public 35% within 26 weeks, 16% past a year; private 57%
        // ending at or soon after the first hearing, 8.5% past a year. The long-running stock
        // leans on public law, whose cases name more children, which keeps the open stock (S1)
        // as low as T1-T3 and S2 allow.
        let course = if public {
            Course::ALL[self.rng.weighted(&[0.35, 0.49, 0.16])]
        } else {
            Course::ALL[self.rng.weighted(&[0.57, 0.345, 0.085])]
        };
        // Children per case: public about 1.8, private about 1.43 (D1); sibling groups run longer,
        // so long-running cases name more children (S2: 1.7 children per case).
        let children = 1 + match (public, course) {
            (true, Course::LongRunning) => self.rng.weighted(&[0.35, 0.40, 0.18, 0.07]),
            (true, _) => self.rng.weighted(&[0.47, 0.35, 0.14, 0.04]),
            (false, Course::LongRunning) => self.rng.weighted(&[0.50, 0.35, 0.15]),
            (false, _) => self.rng.weighted(&[0.66, 0.27, 0.07]),
        };
        let apps = if public { &PUBLIC_APPS } else { &PRIVATE_APPS };
        let app = apps[self.rng.weighted(&[0.85, 0.10, 0.05])];
        let child_list: Vec<Child> = (0..children)
            .map(|i| {
                let age_months = self.rng.between(0, 16 * 12);
                let born = issued_on - Duration::days(age_months * 30);
                Child {
                    child_id: format!("{}-{}", self.case_id, i + 1),
                    birth_month: BirthMonth {
                        year: born.year(),
                        month: born.month(),
                    },
                }
            })
            .collect();
        let last_day = self.last_day;
        let received_on = self
            .rng
            .chance(0.3)
            .then(|| wd(self.calendar, issued_on, self.rng.between(0, 2)).min(last_day));
        let issued = CaseIssued {
            law_type: if public { LawType::Public } else { LawType::Private },
            application_types: vec![app],
            court_code: court.to_owned(),
            service_area: (*self.rng.pick(areas)).to_owned(),
            local_authority_code: public
                .then(|| format!("E0{}0000{:02}", self.rng.between(6, 9), self.rng.between(1, 99))),
            children: child_list.clone(),
            received_on,
        };
        // case_issued is recorded the day it occurs: it must come first.
        let event_id = self.rng.event_id();
        self.events.push((
            issued_on,
            NewEvent {
                event_id,
                occurred_on: issued_on,
                payload: Payload::CaseIssued(Box::new(issued)),
                metadata: Metadata::default(),
            },
        ));
        let received = received_on.unwrap_or(issued_on);
        if public {
            self.public_case(issued_on, received, &child_list, course);
        } else {
            self.private_case(issued_on, received, &child_list, course);
        }
    }

    fn allocate(&mut self, received: NaiveDate, role: AllocationRole) -> NaiveDate {
        if self.rng.chance(0.1) {
            let holder = if self.rng.chance(0.5) {
                AllocationRole::Duty
            } else {
                AllocationRole::Hub
            };
            let practitioner_id = self.practitioner();
            self.push(
                received,
                Payload::CaseAllocated(CaseAllocated {
                    practitioner_id,
                    role: holder,
                }),
            );
        }
        // Seven in ten allocated within two working days.
        let wait = if self.rng.chance(0.7) {
            self.rng.between(0, 2)
        } else {
            self.rng.between(3, 12)
        };
        let on = wd(self.calendar, received, wait);
        let practitioner_id = self.practitioner();
        self.push(on, Payload::CaseAllocated(CaseAllocated { practitioner_id, role }));
        on
    }

    /// `count` further hearings listed between `from` and `until` (directions, interim and final
    /// hearings: most of a case's events are court listings).
    fn hearings(&mut self, from: NaiveDate, until: NaiveDate, count: i64) {
        let span = (until - from).num_days();
        for i in 0..count.min(span - 1) {
            let listed_on = from + Duration::days(span * (i + 1) / (count + 1));
            let hearing_type = if i + 1 == count {
                HearingType::Final
            } else {
                *self.rng.pick(&[HearingType::Irh, HearingType::Cmh, HearingType::Other])
            };
            let listed_for = wd(self.calendar, listed_on, self.rng.between(10, 30));
            self.push(
                listed_on,
                Payload::HearingListed(HearingListed {
                    hearing_type,
                    listed_for,
                }),
            );
        }
    }

    fn practitioner(&mut self) -> String {
        format!("fca-{:04}", self.rng.between(1, PRACTITIONERS))
    }

    /// Visits, letter, engagement record and recommendation for each child.
    #[allow(clippy::too_many_arguments)]
    fn engage(
        &mut self,
        children: &[Child],
        allocated: NaiveDate,
        report_due: NaiveDate,
        closed: NaiveDate,
        personalised: f64,
        shared: f64,
        follow_up_visits: (i64, i64),
    ) {
        for child in children {
            let id = child.child_id.clone();
            let seen_on = if self.rng.chance(0.93) {
                Some(wd(self.calendar, allocated, self.rng.between(1, 18)))
            } else {
                None
            };
            if let Some(on) = seen_on.filter(|d| *d <= closed) {
                let visit = self.push(
                    on,
                    Payload::ChildSeen(ChildSeen {
                        child_id: id.clone(),
                        mode: SeenMode::InPerson,
                    }),
                );
                // Later visits, spread between the first and the report.
                let later = self.rng.between(follow_up_visits.0, follow_up_visits.1);
                let span = (report_due - on).num_days();
                for v in 0..later.min(span.max(0)) {
                    let visit_on = on + Duration::days(span * (v + 1) / (later + 1));
                    let mode = if self.rng.chance(0.8) {
                        SeenMode::InPerson
                    } else {
                        SeenMode::Virtual
                    };
                    self.push(
                        visit_on,
                        Payload::ChildSeen(ChildSeen {
                            child_id: id.clone(),
                            mode,
                        }),
                    );
                }
                // One visit in two hundred is entered on the wrong date, voided and re-entered.
                if let Some(wrong) = visit.filter(|_| self.rng.chance(0.005)) {
                    self.push(
                        on + Duration::days(1),
                        Payload::EventVoided(EventVoided {
                            voided_event_id: wrong,
                            reason: VoidReason::WrongDate,
                        }),
                    );
                    self.push(
                        on,
                        Payload::ChildSeen(ChildSeen {
                            child_id: id.clone(),
                            mode: SeenMode::InPerson,
                        }),
                    );
                }
            } else if self.rng.chance(0.5) {
                let on = wd(self.calendar, allocated, self.rng.between(2, 20)).min(closed);
                self.push(
                    on,
                    Payload::ChildSeen(ChildSeen {
                        child_id: id.clone(),
                        mode: SeenMode::Virtual,
                    }),
                );
            }
            let letter_on = wd(self.calendar, allocated, self.rng.between(1, 8)).min(closed);
            let personal = self.rng.chance(personalised);
            self.push(
                letter_on,
                Payload::LetterSent(LetterSent {
                    child_id: id.clone(),
                    personalised: personal,
                }),
            );
            if self.rng.chance(0.97) {
                let on = wd(self.calendar, allocated, self.rng.between(5, 40)).min(closed);
                self.push(
                    on,
                    Payload::EngagementRecordCompleted(ChildRef { child_id: id.clone() }),
                );
            }
            if self.rng.chance(shared) {
                let on = (report_due - Duration::days(self.rng.between(0, 10)))
                    .max(allocated)
                    .min(closed);
                self.push(on, Payload::RecommendationShared(ChildRef { child_id: id }));
            }
        }
    }

    fn public_case(&mut self, issued_on: NaiveDate, received: NaiveDate, children: &[Child], course: Course) {
        let allocated = self.allocate(received, AllocationRole::Guardian);
        // s31: mean about 39 weeks (T1).
        let weeks = match course {
            Course::Short => self.rng.between(12, 25),
            Course::Standard => self.rng.between(27, 43),
            Course::LongRunning => long_running(self.rng),
        };
        let closed = issued_on + Duration::days(weeks * 7 + self.rng.between(0, 6));
        let listed_on = wd(self.calendar, issued_on, self.rng.between(10, 20));
        self.push(
            listed_on,
            Payload::HearingListed(HearingListed {
                hearing_type: HearingType::Cmh,
                listed_for: wd(self.calendar, issued_on, 25),
            }),
        );
        // Final analysis about 9.2 working weeks after allocation, filed before the end.
        let filed = wd(self.calendar, allocated, 46 + self.rng.between(-15, 15)).min(closed);
        let report_id = format!("{}-FA", self.case_id);
        let ordered_on = wd(self.calendar, allocated, 5).min(filed);
        let due = wd(self.calendar, ordered_on, 45).max(ordered_on);
        self.push(
            ordered_on,
            Payload::ReportOrdered(ReportOrdered {
                report_id: report_id.clone(),
                report_type: ReportType::FinalAnalysis,
                due_on: due,
            }),
        );
        self.engage(children, allocated, filed, closed, 0.62, 0.753, (1, 3));
        let hearings = self.rng.between(7, 11) + weeks / 26;
        self.hearings(listed_on, closed, hearings);
        self.push(
            filed,
            Payload::ReportFiled(ReportFiled {
                report_id,
                report_type: ReportType::FinalAnalysis,
            }),
        );
        self.push(
            closed,
            Payload::CaseClosed(CaseClosed {
                outcome: CaseOutcome::FinalOrder,
            }),
        );
    }

    fn private_case(&mut self, issued_on: NaiveDate, received: NaiveDate, children: &[Child], course: Course) {
        // Safeguarding letter about 4.1 working weeks after receipt, before the FHDRA.
        let letter = wd(self.calendar, received, 20 + self.rng.between(-5, 5));
        self.push(
            letter,
            Payload::ReportFiled(ReportFiled {
                report_id: format!("{}-SL", self.case_id),
                report_type: ReportType::SafeguardingLetter,
            }),
        );
        let fhdra = wd(self.calendar, received, 25);
        self.push(
            wd(self.calendar, received, 2),
            Payload::HearingListed(HearingListed {
                hearing_type: HearingType::Fhdra,
                listed_for: fhdra,
            }),
        );
        // Short cases end at or soon after the first hearing; the others need a section 7 report
        // and end after it.
        let (weeks, section7) = match course {
            Course::Short => (self.rng.between(5, 9), false),
            Course::Standard => (self.rng.between(27, 31), true),
            Course::LongRunning => (long_running(self.rng), true),
        };
        let closed = (issued_on + Duration::days(weeks * 7 + self.rng.between(0, 6))).max(fhdra);
        let allocated = self.allocate(received, AllocationRole::Lead);
        let further = if section7 {
            self.rng.between(6, 9) + weeks / 26
        } else {
            self.rng.between(1, 3)
        };
        self.hearings(fhdra, closed, further);
        if section7 && fhdra < closed {
            let report_id = format!("{}-S7", self.case_id);
            let due = wd(self.calendar, fhdra, 72);
            self.push(
                fhdra,
                Payload::ReportOrdered(ReportOrdered {
                    report_id: report_id.clone(),
                    report_type: ReportType::Section7,
                    due_on: due,
                }),
            );
            let mut latest_due = due;
            if self.rng.chance(0.298) {
                let on = wd(self.calendar, fhdra, 40);
                latest_due = wd(self.calendar, due, 15);
                self.push(
                    on,
                    Payload::FilingDateExtended(FilingDateExtended {
                        report_id: report_id.clone(),
                        due_on: latest_due,
                    }),
                );
            }
            // Section 7 about 14.6 working weeks from the order.
            let filed = wd(self.calendar, fhdra, 76 + self.rng.between(-12, 12))
                .min(latest_due + Duration::days(self.rng.between(-5, 5)));
            let filed = filed.max(fhdra);
            let closed = closed.max(filed);
            self.engage(children, allocated, filed, closed, 0.80, 0.732, (0, 2));
            self.push(
                filed,
                Payload::ReportFiled(ReportFiled {
                    report_id,
                    report_type: ReportType::Section7,
                }),
            );
            self.push(
                closed,
                Payload::CaseClosed(CaseClosed {
                    outcome: CaseOutcome::FinalOrder,
                }),
            );
        } else {
            let closed = closed.max(letter);
            self.engage(children, allocated, closed, closed, 0.80, 0.0, (0, 1));
            let outcome = if self.rng.chance(0.8) {
                CaseOutcome::FinalOrder
            } else {
                CaseOutcome::Withdrawn
            };
            self.push(closed, Payload::CaseClosed(CaseClosed { outcome }));
        }
    }

    /// The case's events in recording order, checked against the lifecycle; a case whose
    /// recording order breaks a rule falls back to date order (which never does).
    fn build(mut self) -> Vec<GeneratedEvent> {
        let issue = self.events.remove(0);
        self.events.sort_by_key(|(recorded, _)| *recorded);
        self.events.insert(0, issue);
        let today = self.last_day;
        let in_recording_order: Vec<NewEvent> = self.events.iter().map(|(_, e)| e.clone()).collect();
        if CaseHistory::default().decide(&in_recording_order, today).is_err() {
            let issue = self.events.remove(0);
            self.events.sort_by_key(|(_, e)| {
                (
                    e.occurred_on,
                    matches!(e.payload, Payload::CaseClosed(_) | Payload::EventVoided(_)),
                )
            });
            self.events.insert(0, issue);
            let mut recorded = self.events[0].0;
            for (on, _) in &mut self.events {
                recorded = recorded.max(*on);
                *on = recorded;
            }
        }
        let case_id = self.case_id;
        self.events
            .into_iter()
            .map(|(recorded_on, event)| GeneratedEvent {
                case_id: case_id.clone(),
                recorded_on,
                event,
            })
            .collect()
    }
}
