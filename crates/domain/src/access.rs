//! Who may do what. The server authenticates a caller and turns its credentials into a
//! [`Principal`]; this module decides, from the principal's grants and the case as recorded,
//! whether an append or a read is allowed. Pure: no I/O, no transport.
//!
//! Every decision checks the role first and the case second, and a case the caller is not a
//! party to is refused exactly like a case that does not exist, so a refusal never tells a
//! caller whether a case it may not see exists.

use crate::event::{CaseIssued, EventType, LawType, NewEvent, Payload};
use crate::{CaseHistory, CaseView};
use std::fmt;

/// What one organisation is allowed to do. A principal holds one or more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// A court system, by court code: writes the court's events for cases at that court.
    Court(String),
    /// A local authority's children's services, by authority code: issues and lists hearings for
    /// the public-law cases naming it.
    LocalAuthority(String),
    /// A Cafcass practice system, by service area: writes practice events for, and reads the
    /// timelines and worklists of, cases in that service area.
    Practice(String),
    /// A reporting service: aggregate metrics only, always with small-number suppression.
    Reporting,
    /// An administrator: rebuild, the global feed, case timelines, the audit trail.
    Administrator,
    /// A one-off migration of history from an earlier system: appends every event type to every
    /// case, and nothing else. Granted only for the migration.
    Migration,
}

/// The event types each writing role sends (docs/roles.md). A child added
/// to proceedings is the court's to record; the brief names no sender for `child_joined`.
const COURT_TYPES: &[EventType] = &[
    EventType::CaseIssued,
    EventType::ChildJoined,
    EventType::HearingListed,
    EventType::ReportOrdered,
    EventType::FilingDateExtended,
    EventType::CaseClosed,
];
const LOCAL_AUTHORITY_TYPES: &[EventType] = &[EventType::CaseIssued, EventType::HearingListed];
const PRACTICE_TYPES: &[EventType] = &[
    EventType::CaseAllocated,
    EventType::ChildSeen,
    EventType::LetterSent,
    EventType::EngagementRecordCompleted,
    EventType::RecommendationShared,
    EventType::ReportFiled,
];

impl Grant {
    /// Parses the textual form: `court:<court code>`, `local_authority:<authority code>`,
    /// `practice:<service area>`, `reporting`, `admin`, `migration`.
    pub fn parse(text: &str) -> Result<Grant, String> {
        let code = |kind: &str, code: &str| -> Result<String, String> {
            let valid = !code.is_empty() && code.len() <= 16 && code.chars().all(|c| c.is_ascii_alphanumeric());
            if valid {
                Ok(code.to_owned())
            } else {
                Err(format!(
                    "{kind} grant needs a code of 1-16 letters or digits, got {code:?}"
                ))
            }
        };
        match text.split_once(':') {
            Some(("court", c)) => code("a court", c).map(Grant::Court),
            Some(("local_authority", c)) => code("a local_authority", c).map(Grant::LocalAuthority),
            Some(("practice", c)) => code("a practice", c).map(Grant::Practice),
            None if text == "reporting" => Ok(Grant::Reporting),
            None if text == "admin" => Ok(Grant::Administrator),
            None if text == "migration" => Ok(Grant::Migration),
            _ => Err(format!(
                "unknown grant {text:?}: expected court:<code>, local_authority:<code>, practice:<service area>, \
                 reporting, admin or migration"
            )),
        }
    }

    /// The event types this grant may append (void aside: see [`may_append`]).
    fn event_types(&self) -> &'static [EventType] {
        match self {
            Grant::Court(_) => COURT_TYPES,
            Grant::LocalAuthority(_) => LOCAL_AUTHORITY_TYPES,
            Grant::Practice(_) => PRACTICE_TYPES,
            Grant::Migration => &EventType::ALL,
            Grant::Reporting | Grant::Administrator => &[],
        }
    }

    fn writes(&self) -> bool {
        !self.event_types().is_empty()
    }

    fn sends(&self, event_type: EventType) -> bool {
        match event_type {
            // A correction is sent by whoever records the kind of event it corrects.
            EventType::EventVoided => self.writes(),
            other => self.event_types().contains(&other),
        }
    }

    /// Whether the grant makes its holder a party to the case issued as `issue`.
    fn is_party(&self, issue: &CaseIssued) -> bool {
        match self {
            Grant::Court(court) => issue.court_code == *court,
            Grant::LocalAuthority(authority) => {
                issue.law_type == LawType::Public && issue.local_authority_code.as_deref() == Some(authority.as_str())
            }
            Grant::Practice(area) => issue.service_area == *area,
            Grant::Migration | Grant::Administrator => true,
            Grant::Reporting => false,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Court(c) => write!(f, "court:{c}"),
            Grant::LocalAuthority(c) => write!(f, "local_authority:{c}"),
            Grant::Practice(c) => write!(f, "practice:{c}"),
            Grant::Reporting => f.write_str("reporting"),
            Grant::Administrator => f.write_str("admin"),
            Grant::Migration => f.write_str("migration"),
        }
    }
}

/// An authenticated caller: the organisation (recorded as the source of what it writes and as
/// the actor in the audit trail) and what it is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub organisation: String,
    pub grants: Vec<Grant>,
}

/// Why a request was refused. `reason()` is the `ErrorInfo` reason sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("{organisation} may not {action}: {allowed}")]
    RoleNotPermitted {
        organisation: String,
        action: &'static str,
        allowed: &'static str,
    },
    #[error("{organisation} may not append {event_type} (event {event_index}); its grants send {sends}")]
    EventTypeNotPermitted {
        organisation: String,
        event_type: &'static str,
        event_index: usize,
        sends: String,
    },
    /// Carries nothing about the case or the batch (not even which event), so that it reads the
    /// same whether or not the case is recorded.
    #[error("{organisation} is not a party to this case, or the case is not recorded")]
    NotAParty { organisation: String },
    #[error(
        "{organisation} may read {what} of service area {allowed} only, not {requested:?} (filter by its service area)"
    )]
    ServiceAreaNotPermitted {
        organisation: String,
        requested: String,
        allowed: String,
        what: &'static str,
    },
    #[error("the request claims source {claimed:?}, but the caller is authenticated as {organisation}")]
    SourceMismatch { organisation: String, claimed: String },
    #[error(
        "{organisation} may not issue this case at court {court:?} (event {event_index}): its case id is in the numbering of court {scope:?}; a case id begins with its court's code, e.g. \"{court}25C00123\""
    )]
    OutsideCourtNumbering {
        organisation: String,
        court: String,
        scope: String,
        event_index: usize,
    },
}

impl Denial {
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::RoleNotPermitted { .. } => "ROLE_NOT_PERMITTED",
            Denial::EventTypeNotPermitted { .. } => "EVENT_TYPE_NOT_PERMITTED",
            Denial::NotAParty { .. } => "NOT_A_PARTY",
            Denial::ServiceAreaNotPermitted { .. } => "SERVICE_AREA_NOT_PERMITTED",
            Denial::SourceMismatch { .. } => "SOURCE_MISMATCH",
            Denial::OutsideCourtNumbering { .. } => "OUTSIDE_COURT_NUMBERING",
        }
    }

    /// The index in the request of the event refused, when one event was.
    pub fn event_index(&self) -> Option<usize> {
        match self {
            Denial::EventTypeNotPermitted { event_index, .. } | Denial::OutsideCourtNumbering { event_index, .. } => {
                Some(*event_index)
            }
            _ => None,
        }
    }
}

/// The court numbering a case id belongs to: its leading upper-case letters, the court code
/// ("LS25C00123" belongs to court LS).
pub fn court_scope(case_id: &str) -> &str {
    let end = case_id.find(|c: char| !c.is_ascii_uppercase()).unwrap_or(case_id.len());
    &case_id[..end]
}

/// How a principal may query aggregate metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsAccess {
    /// Small-number suppression applies whatever the request asks.
    pub suppression_forced: bool,
    /// Below national level, only figures of these service areas (`None`: any). A practice
    /// client sees national figures and those of its own area.
    pub service_areas: Option<Vec<String>>,
}

impl MetricsAccess {
    /// Checks a query below national level (`below_national`) that filters service areas to
    /// `filtered_areas` (`None`: no such filter) against the areas this access may see.
    pub fn may_see(
        &self,
        organisation: &str,
        below_national: bool,
        filtered_areas: Option<&[String]>,
    ) -> Result<(), Denial> {
        let Some(allowed) = &self.service_areas else {
            return Ok(());
        };
        if !below_national {
            return Ok(());
        }
        match filtered_areas {
            Some(areas) if !areas.is_empty() && areas.iter().all(|a| allowed.contains(a)) => Ok(()),
            _ => Err(Denial::ServiceAreaNotPermitted {
                organisation: organisation.to_owned(),
                requested: filtered_areas.map_or_else(|| "any".to_owned(), |a| a.join(",")),
                allowed: allowed.join(","),
                what: "figures below national level",
            }),
        }
    }
}

impl Principal {
    fn has(&self, grant: &Grant) -> bool {
        self.grants.contains(grant)
    }

    fn is_admin(&self) -> bool {
        self.has(&Grant::Administrator)
    }

    fn practice_areas(&self) -> impl Iterator<Item = &str> {
        self.grants.iter().filter_map(|g| match g {
            Grant::Practice(area) => Some(area.as_str()),
            _ => None,
        })
    }

    fn role_not_permitted(&self, action: &'static str, allowed: &'static str) -> Denial {
        Denial::RoleNotPermitted {
            organisation: self.organisation.clone(),
            action,
            allowed,
        }
    }

    fn not_a_party(&self) -> Denial {
        Denial::NotAParty {
            organisation: self.organisation.clone(),
        }
    }

    /// An administrative action (rebuild, the global feed, the audit trail).
    pub fn require_admin(&self, action: &'static str) -> Result<(), Denial> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(self.role_not_permitted(action, "only administrators may"))
        }
    }

    /// Aggregate metrics: administrators as they ask; reporting and practice clients always
    /// suppressed; writers not at all.
    pub fn metrics_access(&self) -> Result<MetricsAccess, Denial> {
        if self.is_admin() {
            return Ok(MetricsAccess {
                suppression_forced: false,
                service_areas: None,
            });
        }
        if self.has(&Grant::Reporting) {
            return Ok(MetricsAccess {
                suppression_forced: true,
                service_areas: None,
            });
        }
        if self.practice_areas().next().is_some() {
            return Ok(MetricsAccess {
                suppression_forced: true,
                service_areas: Some(self.practice_areas().map(str::to_owned).collect()),
            });
        }
        Err(self.role_not_permitted(
            "query metrics",
            "metrics are for reporting, practice and administrator clients",
        ))
    }

    /// The role check of a case timeline, made before the case is read.
    pub fn may_read_timelines(&self) -> Result<(), Denial> {
        if self.is_admin() || self.practice_areas().next().is_some() {
            Ok(())
        } else {
            Err(self.role_not_permitted(
                "read case timelines",
                "timelines are for practice clients of the case's service area and administrators",
            ))
        }
    }

    /// Whether the principal may read the timeline of the case recorded as `view` (`None`: no
    /// such case). A practice client gets the same refusal for a case elsewhere as for none.
    pub fn may_read_case(&self, view: Option<&CaseView>) -> Result<(), Denial> {
        self.may_read_timelines()?;
        if self.is_admin() {
            return Ok(());
        }
        match view {
            Some(view) if self.practice_areas().any(|a| a == view.issue.service_area) => Ok(()),
            _ => Err(self.not_a_party()),
        }
    }

    /// The service area a worklist request may cover: administrators any (or all, `None`);
    /// practice clients their own, which is also the default when the request names none.
    pub fn worklist_scope(&self, requested: Option<&str>) -> Result<Option<String>, Denial> {
        self.child_level_scope(
            requested,
            (
                "read worklists",
                "worklists are for practice clients of the service area and administrators",
            ),
            "worklists",
        )
    }

    /// The service area a drill-down (the units behind a figure) may cover: as for worklists.
    /// Reporting clients see figures only, never the cases and children behind them.
    pub fn units_scope(&self, requested: Option<&str>) -> Result<Option<String>, Denial> {
        self.child_level_scope(
            requested,
            (
                "list the units behind a figure",
                "the cases, children and reports behind figures are for practice clients of the service area and administrators",
            ),
            "the units behind figures",
        )
    }

    /// Child-level reads of a service area: administrators any (or all, `None`); practice
    /// clients their own, which is also the default when the request names none.
    fn child_level_scope(
        &self,
        requested: Option<&str>,
        (action, allowed): (&'static str, &'static str),
        what: &'static str,
    ) -> Result<Option<String>, Denial> {
        if self.is_admin() {
            return Ok(requested.map(str::to_owned));
        }
        let areas: Vec<&str> = self.practice_areas().collect();
        match (requested, areas.as_slice()) {
            (_, []) => Err(self.role_not_permitted(action, allowed)),
            (None, [only]) => Ok(Some((*only).to_owned())),
            (Some(area), _) if areas.contains(&area) => Ok(Some(area.to_owned())),
            (requested, _) => Err(Denial::ServiceAreaNotPermitted {
                organisation: self.organisation.clone(),
                requested: requested.unwrap_or_default().to_owned(),
                allowed: areas.join(", "),
                what,
            }),
        }
    }

    /// A source named in a request must be the caller's own organisation.
    pub fn check_claimed_source(&self, claimed: Option<&str>) -> Result<(), Denial> {
        match claimed {
            Some(claimed) if claimed != self.organisation => Err(Denial::SourceMismatch {
                organisation: self.organisation.clone(),
                claimed: claimed.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the principal may append `batch` to the case recorded as `history` (empty for a
    /// case not yet recorded). Checks, in order: a writing role; each event's type against the
    /// role; then that the caller is a party to the case, as recorded or as the batch issues it.
    pub fn may_append(&self, history: &CaseHistory, batch: &[NewEvent]) -> Result<(), Denial> {
        if !self.grants.iter().any(Grant::writes) {
            return Err(self.role_not_permitted(
                "append events",
                "courts, local authorities, practice systems and migrations write; reporting and \
                 administrator clients do not",
            ));
        }
        for (index, event) in batch.iter().enumerate() {
            let event_type = event.payload.event_type();
            if !self.grants.iter().any(|g| g.sends(event_type)) {
                let sends: Vec<&str> = self
                    .grants
                    .iter()
                    .flat_map(|g| g.event_types())
                    .map(|t| t.as_str())
                    .collect();
                return Err(Denial::EventTypeNotPermitted {
                    organisation: self.organisation.clone(),
                    event_type: event_type.as_str(),
                    event_index: index,
                    sends: sends.join(", "),
                });
            }
        }
        let view = history.view();
        let issued_in_batch = batch.iter().find_map(|e| match &e.payload {
            Payload::CaseIssued(issue) => Some(&**issue),
            _ => None,
        });
        let Some(case_issue) = view.map(|v| &v.issue).or(issued_in_batch) else {
            // A migration may write any case, so learning that one is not recorded tells it
            // nothing it could not see; the lifecycle rules refuse the batch.
            if self.has(&Grant::Migration) {
                return Ok(());
            }
            return Err(self.not_a_party());
        };
        for event in batch {
            let issue = match &event.payload {
                // An issue names the parties it claims; a second issue of a recorded case is
                // also checked against the case (and then refused by the lifecycle rules).
                Payload::CaseIssued(claimed) if view.is_none() => claimed,
                _ => case_issue,
            };
            let event_type = match &event.payload {
                Payload::EventVoided(void) => self.voided_type(history, batch, void.voided_event_id),
                other => Some(other.event_type()),
            };
            let permitted = self
                .grants
                .iter()
                .any(|g| g.writes() && g.is_party(issue) && event_type.is_none_or(|t| g.sends(t)));
            if !permitted {
                return Err(self.not_a_party());
            }
        }
        Ok(())
    }

    /// Checked before the case is read, so that its answer cannot depend on whether the case
    /// exists. Case ids are numbered by court ([`court_scope`]): a court writes only ids of its
    /// own numbering (any other id is refused as a case it is not party to, recorded or not),
    /// and an issue by a court or a local authority names the court whose numbering the id
    /// belongs to, so that nobody issues into another court's numbering and locks it out of
    /// its own case. Migrations write any id.
    pub fn may_address(&self, case_id: &str, batch: &[NewEvent]) -> Result<(), Denial> {
        // Role and event-type refusals come first, from `may_append`.
        if self.has(&Grant::Migration) || !self.grants.iter().any(Grant::writes) {
            return Ok(());
        }
        let scope = court_scope(case_id);
        let in_scope = self.grants.iter().any(|g| match g {
            Grant::Court(court) => court == scope,
            Grant::LocalAuthority(_) | Grant::Practice(_) => true,
            Grant::Reporting | Grant::Administrator | Grant::Migration => false,
        });
        if !in_scope {
            return Err(self.not_a_party());
        }
        if !self.grants.iter().any(|g| g.sends(EventType::CaseIssued)) {
            return Ok(());
        }
        for (index, event) in batch.iter().enumerate() {
            if let Payload::CaseIssued(issue) = &event.payload
                && issue.court_code != scope
            {
                return Err(Denial::OutsideCourtNumbering {
                    organisation: self.organisation.clone(),
                    court: issue.court_code.clone(),
                    scope: scope.to_owned(),
                    event_index: index,
                });
            }
        }
        Ok(())
    }

    /// The type of the event a void names, when it is recorded or in the same batch (a void of
    /// an unknown event is left to the lifecycle rules, which refuse it).
    fn voided_type(&self, history: &CaseHistory, batch: &[NewEvent], voided: crate::EventId) -> Option<EventType> {
        history
            .events()
            .iter()
            .find(|e| e.event_id == voided)
            .map(|e| e.payload.event_type())
            .or_else(|| {
                batch
                    .iter()
                    .find(|e| e.event_id == voided)
                    .map(|e| e.payload.event_type())
            })
    }
}
