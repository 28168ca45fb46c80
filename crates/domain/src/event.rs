//! Case events as the domain sees them: the thirteen payloads of the event vocabulary, with the
//! field names and enum values of the interchange format (and of the stored `data` column).

use crate::ids::EventId;
use chrono::NaiveDate;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An event as a sender submits it, before the log gives it a version and a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: EventId,
    pub occurred_on: NaiveDate,
    pub payload: Payload,
    pub metadata: Metadata,
}

/// Optional identifiers that link events across the sender's systems.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
}

impl Metadata {
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none() && self.causation_id.is_none()
    }
}

/// The type-specific part of an event. Serialised adjacently tagged as
/// `{"type": "child_seen", "data": {...}}`, exactly as in the interchange format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Payload {
    /// Boxed: four times the size of any other payload, and one per case, so the others (every
    /// event held in a cache) need not be as large.
    CaseIssued(Box<CaseIssued>),
    ChildJoined(Child),
    CaseAllocated(CaseAllocated),
    ChildSeen(ChildSeen),
    LetterSent(LetterSent),
    EngagementRecordCompleted(ChildRef),
    RecommendationShared(ChildRef),
    ReportOrdered(ReportOrdered),
    FilingDateExtended(FilingDateExtended),
    ReportFiled(ReportFiled),
    HearingListed(HearingListed),
    CaseClosed(CaseClosed),
    EventVoided(EventVoided),
}

/// The event type names of the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    CaseIssued,
    ChildJoined,
    CaseAllocated,
    ChildSeen,
    LetterSent,
    EngagementRecordCompleted,
    RecommendationShared,
    ReportOrdered,
    FilingDateExtended,
    ReportFiled,
    HearingListed,
    CaseClosed,
    EventVoided,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::CaseIssued,
        EventType::ChildJoined,
        EventType::CaseAllocated,
        EventType::ChildSeen,
        EventType::LetterSent,
        EventType::EngagementRecordCompleted,
        EventType::RecommendationShared,
        EventType::ReportOrdered,
        EventType::FilingDateExtended,
        EventType::ReportFiled,
        EventType::HearingListed,
        EventType::CaseClosed,
        EventType::EventVoided,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CaseIssued => "case_issued",
            EventType::ChildJoined => "child_joined",
            EventType::CaseAllocated => "case_allocated",
            EventType::ChildSeen => "child_seen",
            EventType::LetterSent => "letter_sent",
            EventType::EngagementRecordCompleted => "engagement_record_completed",
            EventType::RecommendationShared => "recommendation_shared",
            EventType::ReportOrdered => "report_ordered",
            EventType::FilingDateExtended => "filing_date_extended",
            EventType::ReportFiled => "report_filed",
            EventType::HearingListed => "hearing_listed",
            EventType::CaseClosed => "case_closed",
            EventType::EventVoided => "event_voided",
        }
    }

    /// The type named `name` ([`EventType::as_str`] read back). A match, not a search of
    /// [`EventType::ALL`]: every event read back is parsed, and comparing names one by one took
    /// about 1% of the service's processor during batch ingest.
    pub fn parse(name: &str) -> Option<EventType> {
        Some(match name {
            "case_issued" => EventType::CaseIssued,
            "child_joined" => EventType::ChildJoined,
            "case_allocated" => EventType::CaseAllocated,
            "child_seen" => EventType::ChildSeen,
            "letter_sent" => EventType::LetterSent,
            "engagement_record_completed" => EventType::EngagementRecordCompleted,
            "recommendation_shared" => EventType::RecommendationShared,
            "report_ordered" => EventType::ReportOrdered,
            "filing_date_extended" => EventType::FilingDateExtended,
            "report_filed" => EventType::ReportFiled,
            "hearing_listed" => EventType::HearingListed,
            "case_closed" => EventType::CaseClosed,
            "event_voided" => EventType::EventVoided,
            _ => return None,
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Payload {
    pub fn event_type(&self) -> EventType {
        match self {
            Payload::CaseIssued(_) => EventType::CaseIssued,
            Payload::ChildJoined(_) => EventType::ChildJoined,
            Payload::CaseAllocated(_) => EventType::CaseAllocated,
            Payload::ChildSeen(_) => EventType::ChildSeen,
            Payload::LetterSent(_) => EventType::LetterSent,
            Payload::EngagementRecordCompleted(_) => EventType::EngagementRecordCompleted,
            Payload::RecommendationShared(_) => EventType::RecommendationShared,
            Payload::ReportOrdered(_) => EventType::ReportOrdered,
            Payload::FilingDateExtended(_) => EventType::FilingDateExtended,
            Payload::ReportFiled(_) => EventType::ReportFiled,
            Payload::HearingListed(_) => EventType::HearingListed,
            Payload::CaseClosed(_) => EventType::CaseClosed,
            Payload::EventVoided(_) => EventType::EventVoided,
        }
    }

    /// The child an event is about, for the events that are about one child.
    pub fn child_id(&self) -> Option<&str> {
        match self {
            Payload::ChildJoined(c) => Some(&c.child_id),
            Payload::ChildSeen(c) => Some(&c.child_id),
            Payload::LetterSent(c) => Some(&c.child_id),
            Payload::EngagementRecordCompleted(c) | Payload::RecommendationShared(c) => Some(&c.child_id),
            _ => None,
        }
    }

    /// The report an event is about, for report events.
    pub fn report_id(&self) -> Option<&str> {
        match self {
            Payload::ReportOrdered(r) => Some(&r.report_id),
            Payload::FilingDateExtended(r) => Some(&r.report_id),
            Payload::ReportFiled(r) => Some(&r.report_id),
            _ => None,
        }
    }

    /// About what the payload holds on the heap, to bound caches of events by memory: the
    /// strings' and vectors' bytes, each allocation with an allocator's typical overhead.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Payload::CaseIssued(c) => std::mem::size_of::<CaseIssued>() + ALLOCATION_OVERHEAD + c.heap_bytes(),
            Payload::ChildJoined(c) => text_bytes(&c.child_id),
            Payload::CaseAllocated(a) => text_bytes(&a.practitioner_id),
            Payload::ChildSeen(c) => text_bytes(&c.child_id),
            Payload::LetterSent(c) => text_bytes(&c.child_id),
            Payload::EngagementRecordCompleted(c) | Payload::RecommendationShared(c) => text_bytes(&c.child_id),
            Payload::ReportOrdered(r) => text_bytes(&r.report_id),
            Payload::FilingDateExtended(r) => text_bytes(&r.report_id),
            Payload::ReportFiled(r) => text_bytes(&r.report_id),
            Payload::HearingListed(_) | Payload::CaseClosed(_) | Payload::EventVoided(_) => 0,
        }
    }

    /// The `data` object of the interchange format and of the stored row.
    pub fn data(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut tagged)) => tagged.remove("data").unwrap_or_default(),
            // Every payload serialises to a tagged object; anything else is unreachable.
            _ => serde_json::Value::Null,
        }
    }

    /// [`Payload::data`] as compact JSON text, written straight from the variant's struct: the
    /// write path stores this for every event, and building a `Value` tree first costs several
    /// allocations per field. Keys follow the struct's field order (a jsonb column keeps its
    /// own order, so the stored value is the same).
    pub fn data_text(&self) -> String {
        let written = match self {
            Payload::CaseIssued(x) => serde_json::to_string(x),
            Payload::ChildJoined(x) => serde_json::to_string(x),
            Payload::CaseAllocated(x) => serde_json::to_string(x),
            Payload::ChildSeen(x) => serde_json::to_string(x),
            Payload::LetterSent(x) => serde_json::to_string(x),
            Payload::EngagementRecordCompleted(x) | Payload::RecommendationShared(x) => serde_json::to_string(x),
            Payload::ReportOrdered(x) => serde_json::to_string(x),
            Payload::FilingDateExtended(x) => serde_json::to_string(x),
            Payload::ReportFiled(x) => serde_json::to_string(x),
            Payload::HearingListed(x) => serde_json::to_string(x),
            Payload::CaseClosed(x) => serde_json::to_string(x),
            Payload::EventVoided(x) => serde_json::to_string(x),
        };
        // The structs hold strings, dates and enums only, which always serialise.
        written.unwrap_or_else(|_| "{}".to_owned())
    }

    /// Rebuilds a payload from its type and `data` object, rejecting unknown or missing fields.
    pub fn from_data(event_type: EventType, data: &serde_json::Value) -> Result<Payload, serde_json::Error> {
        Payload::deserialize_data(event_type, data)
    }

    /// [`Payload::from_data`] from the `data` object as JSON text.
    pub fn from_data_text(event_type: EventType, data: &str) -> Result<Payload, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_str(data);
        let payload = Payload::deserialize_data(event_type, &mut deserializer)?;
        deserializer.end()?;
        Ok(payload)
    }

    /// Deserialises `data` straight into the variant's struct: replay reads millions of rows
    /// through here, and the adjacently tagged form would buffer each one first.
    fn deserialize_data<'de, D: serde::Deserializer<'de>>(event_type: EventType, data: D) -> Result<Payload, D::Error> {
        use serde::Deserialize as _;
        Ok(match event_type {
            EventType::CaseIssued => Payload::CaseIssued(Box::new(CaseIssued::deserialize(data)?)),
            EventType::ChildJoined => Payload::ChildJoined(Child::deserialize(data)?),
            EventType::CaseAllocated => Payload::CaseAllocated(CaseAllocated::deserialize(data)?),
            EventType::ChildSeen => Payload::ChildSeen(ChildSeen::deserialize(data)?),
            EventType::LetterSent => Payload::LetterSent(LetterSent::deserialize(data)?),
            EventType::EngagementRecordCompleted => Payload::EngagementRecordCompleted(ChildRef::deserialize(data)?),
            EventType::RecommendationShared => Payload::RecommendationShared(ChildRef::deserialize(data)?),
            EventType::ReportOrdered => Payload::ReportOrdered(ReportOrdered::deserialize(data)?),
            EventType::FilingDateExtended => Payload::FilingDateExtended(FilingDateExtended::deserialize(data)?),
            EventType::ReportFiled => Payload::ReportFiled(ReportFiled::deserialize(data)?),
            EventType::HearingListed => Payload::HearingListed(HearingListed::deserialize(data)?),
            EventType::CaseClosed => Payload::CaseClosed(CaseClosed::deserialize(data)?),
            EventType::EventVoided => Payload::EventVoided(EventVoided::deserialize(data)?),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LawType {
    Public,
    Private,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationType {
    S31Care,
    S31Supervision,
    S8ChildArrangements,
    S8ProhibitedSteps,
    S8SpecificIssue,
    SpecialGuardianship,
    EmergencyProtection,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationRole {
    Lead,
    Guardian,
    Duty,
    Hub,
}

impl AllocationRole {
    /// Lead and guardian allocations are lead allocations; duty cover and hub holding are not.
    pub fn is_lead(self) -> bool {
        matches!(self, AllocationRole::Lead | AllocationRole::Guardian)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeenMode {
    InPerson,
    Virtual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportType {
    SafeguardingLetter,
    Section7,
    Section7Addendum,
    #[serde(rename = "rule16_4_analysis")]
    Rule16_4Analysis,
    InitialAnalysis,
    FinalAnalysis,
    ChildImpactReport,
}

impl ReportType {
    pub const ALL: [ReportType; 7] = [
        ReportType::SafeguardingLetter,
        ReportType::Section7,
        ReportType::Section7Addendum,
        ReportType::Rule16_4Analysis,
        ReportType::InitialAnalysis,
        ReportType::FinalAnalysis,
        ReportType::ChildImpactReport,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HearingType {
    Fhdra,
    Cmh,
    Irh,
    Final,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseOutcome {
    FinalOrder,
    Withdrawn,
    Refused,
    Transferred,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoidReason {
    WrongCase,
    WrongChild,
    WrongDate,
    Duplicate,
    EnteredInError,
}

/// A month of birth: children's birth dates are kept to the month only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BirthMonth {
    pub year: i32,
    pub month: u32,
}

impl BirthMonth {
    /// Parses "YYYY-MM".
    pub fn parse(text: &str) -> Option<BirthMonth> {
        let (year, month) = text.split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let year: i32 = year.parse().ok()?;
        let month: u32 = month.parse().ok()?;
        ((1900..=9999).contains(&year) && (1..=12).contains(&month)).then_some(BirthMonth { year, month })
    }

    pub fn first_day(self) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
    }
}

impl fmt::Display for BirthMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Serialize for BirthMonth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BirthMonth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        BirthMonth::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("birth month {text:?} is not a valid \"YYYY-MM\"")))
    }
}

/// What a heap allocation costs beyond its bytes (a typical allocator's header and rounding).
pub const ALLOCATION_OVERHEAD: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseIssued {
    pub law_type: LawType,
    pub application_types: Vec<ApplicationType>,
    pub court_code: String,
    pub service_area: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_authority_code: Option<String>,
    pub children: Vec<Child>,
    #[serde(default, with = "crate::dates::iso::option", skip_serializing_if = "Option::is_none")]
    pub received_on: Option<NaiveDate>,
}

impl CaseIssued {
    /// About what the issue holds on the heap (see [`Payload::heap_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        items_bytes(&self.application_types)
            + text_bytes(&self.court_code)
            + text_bytes(&self.service_area)
            + self.local_authority_code.as_deref().map_or(0, text_bytes)
            + children_bytes(&self.children)
    }
}

/// About what a string holds on the heap.
pub(crate) fn text_bytes(s: &str) -> usize {
    if s.is_empty() { 0 } else { s.len() + ALLOCATION_OVERHEAD }
}

/// About what a vector's items hold on the heap (not what they point to).
fn items_bytes<T>(v: &[T]) -> usize {
    if v.is_empty() {
        0
    } else {
        std::mem::size_of_val(v) + ALLOCATION_OVERHEAD
    }
}

/// About what a list of children holds on the heap, their ids included.
pub(crate) fn children_bytes(children: &[Child]) -> usize {
    items_bytes(children) + children.iter().map(|child| text_bytes(&child.child_id)).sum::<usize>()
}

/// A child named at issue or joined later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Child {
    pub child_id: String,
    pub birth_month: BirthMonth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildRef {
    pub child_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseAllocated {
    pub practitioner_id: String,
    pub role: AllocationRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildSeen {
    pub child_id: String,
    pub mode: SeenMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterSent {
    pub child_id: String,
    pub personalised: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportOrdered {
    pub report_id: String,
    pub report_type: ReportType,
    #[serde(with = "crate::dates::iso")]
    pub due_on: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilingDateExtended {
    pub report_id: String,
    #[serde(with = "crate::dates::iso")]
    pub due_on: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportFiled {
    pub report_id: String,
    pub report_type: ReportType,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HearingListed {
    pub hearing_type: HearingType,
    #[serde(with = "crate::dates::iso")]
    pub listed_for: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseClosed {
    pub outcome: CaseOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventVoided {
    pub voided_event_id: EventId,
    pub reason: VoidReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Caches of case histories hold every event inline: the one-per-case `case_issued` is boxed
    /// so that the others are not sized to it.
    #[test]
    fn a_held_event_is_sized_to_the_small_payloads() {
        assert!(
            std::mem::size_of::<Payload>() <= 40,
            "{}",
            std::mem::size_of::<Payload>()
        );
        assert!(
            std::mem::size_of::<crate::HistoryEvent>() <= 64,
            "{}",
            std::mem::size_of::<crate::HistoryEvent>()
        );
    }

    #[test]
    fn heap_bytes_counts_each_string_and_vector() {
        let child = |id: &str| Child {
            child_id: id.into(),
            birth_month: BirthMonth { year: 2020, month: 1 },
        };
        let issued = |children: Vec<Child>| {
            Payload::CaseIssued(Box::new(CaseIssued {
                law_type: LawType::Private,
                application_types: Vec::new(),
                court_code: "LS".into(),
                service_area: "North East".into(),
                local_authority_code: None,
                children,
                received_on: None,
            }))
        };
        let one = issued(vec![child("C-0001")]).heap_bytes();
        let two = issued(vec![child("C-0001"), child("C-0002")]).heap_bytes();
        assert_eq!(
            two - one,
            std::mem::size_of::<Child>() + "C-0002".len() + ALLOCATION_OVERHEAD
        );
        assert!(one >= "LS".len() + "North East".len() + "C-0001".len() + 3 * ALLOCATION_OVERHEAD);
        let listed = Payload::HearingListed(HearingListed {
            hearing_type: HearingType::Final,
            listed_for: NaiveDate::from_ymd_opt(2025, 1, 6).unwrap_or_default(),
        });
        assert_eq!(listed.heap_bytes(), 0);
    }

    #[test]
    fn data_round_trips_through_type_and_object() {
        let payload = Payload::ReportFiled(ReportFiled {
            report_id: "r-1".into(),
            report_type: ReportType::Rule16_4Analysis,
        });
        let data = payload.data();
        assert_eq!(
            data,
            serde_json::json!({"report_id": "r-1", "report_type": "rule16_4_analysis"})
        );
        assert_eq!(
            Payload::from_data(EventType::ReportFiled, &data).expect("parses"),
            payload
        );
        assert_eq!(
            Payload::from_data_text(EventType::ReportFiled, &data.to_string()).expect("parses"),
            payload
        );
        assert!(Payload::from_data_text(EventType::ReportFiled, &format!("{data} {{}}")).is_err());
        let text = payload.data_text();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).expect("JSON"), data);
        assert_eq!(
            Payload::from_data_text(EventType::ReportFiled, &text).expect("parses"),
            payload
        );
    }

    #[test]
    fn unknown_data_fields_are_refused() {
        let err = Payload::from_data(
            EventType::ChildSeen,
            &serde_json::json!({"child_id": "c", "mode": "virtual", "name": "Alice"}),
        );
        assert!(err.is_err(), "free text must not slip into the log");
    }

    #[test]
    fn every_type_name_parses_back() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("case_reopened"), None);
    }

    #[test]
    fn birth_month_format() {
        assert_eq!(BirthMonth::parse("2024-11"), Some(BirthMonth { year: 2024, month: 11 }));
        assert_eq!(BirthMonth::parse("2024-13"), None);
        assert_eq!(BirthMonth::parse("2024-1"), None);
        assert_eq!(BirthMonth::parse("24-11"), None);
        assert_eq!(BirthMonth { year: 2019, month: 6 }.to_string(), "2019-06");
    }
}
