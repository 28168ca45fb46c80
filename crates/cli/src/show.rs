//! `caselog case`, `caselog metrics`, `caselog report` and `caselog units`: a case's timeline, a
//! `QueryMetrics` answer, the board report and the units behind a figure, as a person reads them
//! at a terminal, or as CSV and JSON for a spreadsheet or a script.

use crate::export::{ExportProgress, LineFormat, Selection, export};
use crate::import::describe;
use anyhow::Context;
use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_server::auth::BearerToken;
use std::io::Write;
use tonic::transport::Channel;

/// Writes the case's head and its timeline, one readable line per event.
pub async fn show_case(
    channel: Channel,
    token: Option<&str>,
    case_id: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let bearer = BearerToken::new(token).context("the token is not a valid header value")?;
    let mut client = CaseEventServiceClient::with_interceptor(channel.clone(), bearer);
    let case = client
        .get_case(pb::GetCaseRequest {
            case_id: case_id.to_owned(),
        })
        .await
        .map_err(|status| anyhow::anyhow!(describe(&status)))?
        .into_inner()
        .case
        .context("the service answered without a case")?;
    for line in case_head(&case) {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "timeline (position, recorded at, case, version, occurred on, type, data, source):"
    )?;
    let selection = Selection {
        case_id: Some(case_id.to_owned()),
        ..Selection::default()
    };
    export(
        channel,
        token,
        &selection,
        LineFormat::Text,
        out,
        |_: ExportProgress| {},
    )
    .await?;
    Ok(())
}

fn case_head(case: &pb::Case) -> Vec<String> {
    let law_type = enum_name(
        pb::LawType::try_from(case.law_type).map(|l| l.as_str_name()),
        "LAW_TYPE_",
    );
    let applications: Vec<String> = case
        .application_types
        .iter()
        .map(|a| {
            enum_name(
                pb::ApplicationType::try_from(*a).map(|t| t.as_str_name()),
                "APPLICATION_TYPE_",
            )
        })
        .collect();
    let mut where_line = format!(
        "case {}: {law_type} law ({}), court {}, service area {}",
        case.case_id,
        applications.join(", "),
        case.court_code,
        case.service_area
    );
    if !case.local_authority_code.is_empty() {
        where_line.push_str(&format!(", local authority {}", case.local_authority_code));
    }
    let mut when_line = format!("issued {}", case.issued_on);
    if !case.received_on.is_empty() {
        when_line.push_str(&format!(", received {}", case.received_on));
    }
    if case.open {
        when_line.push_str(", open");
    } else {
        let outcome = enum_name(
            pb::CaseOutcome::try_from(case.outcome).map(|o| o.as_str_name()),
            "CASE_OUTCOME_",
        );
        when_line.push_str(&format!(", closed {} ({outcome})", case.closed_on));
    }
    when_line.push_str(&format!("; {} events", case.version));
    let children: Vec<String> = case
        .children
        .iter()
        .map(|c| format!("{} (born {})", c.child_id, c.birth_month))
        .collect();
    let allocation = |a: &Option<pb::Allocation>| match a {
        Some(a) => format!(
            "{} ({}, {})",
            a.practitioner_id,
            enum_name(
                pb::AllocationRole::try_from(a.role).map(|r| r.as_str_name()),
                "ALLOCATION_ROLE_"
            ),
            a.allocated_on
        ),
        None => "none".to_owned(),
    };
    vec![
        where_line,
        when_line,
        format!("children: {}", children.join(", ")),
        format!(
            "lead allocation: first {}, current {}",
            allocation(&case.first_lead_allocation),
            allocation(&case.current_lead_allocation)
        ),
    ]
}

/// "LAW_TYPE_PUBLIC" with prefix "LAW_TYPE_" is "public", as the interchange format spells it.
fn enum_name<E>(name: Result<&str, E>, prefix: &str) -> String {
    match name {
        Ok(name) => name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase(),
        Err(_) => "unknown".to_owned(),
    }
}

/// The dimension named as rows and filters spell it ("law_type", "service_area", ...).
pub fn dimension(name: &str) -> anyhow::Result<pb::Dimension> {
    match pb::Dimension::from_str_name(&format!("DIMENSION_{}", name.to_ascii_uppercase())) {
        Some(pb::Dimension::Unspecified) | None => anyhow::bail!(
            "unknown dimension {name:?}: one of law_type, application_type, service_area, court, local_authority, age_band, report_type"
        ),
        Some(dimension) => Ok(dimension),
    }
}

/// A filter written `dimension=value[,value...]`.
pub fn filter(text: &str) -> anyhow::Result<pb::DimensionFilter> {
    let (name, values) = text
        .split_once('=')
        .with_context(|| format!("filter {text:?}: write it as dimension=value[,value...], e.g. law_type=public"))?;
    Ok(pb::DimensionFilter {
        dimension: dimension(name.trim())? as i32,
        values: values.split(',').map(|v| v.trim().to_owned()).collect(),
    })
}

fn dimension_name(raw: i32) -> String {
    enum_name(pb::Dimension::try_from(raw).map(|d| d.as_str_name()), "DIMENSION_")
}

/// How `caselog metrics` prints an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsFormat {
    Table,
    Csv,
    Json,
}

/// A metrics client carrying `token`, accepting answers as large as a national report.
fn metrics_client(
    channel: Channel,
    token: Option<&str>,
) -> anyhow::Result<MetricsServiceClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>> {
    let bearer = BearerToken::new(token).context("the token is not a valid header value")?;
    Ok(MetricsServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(64 * 1024 * 1024))
}

/// Asks the service and writes the answer.
pub async fn query_metrics(
    channel: Channel,
    token: Option<&str>,
    request: pb::QueryMetricsRequest,
    format: MetricsFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = metrics_client(channel, token)?;
    let answer = client
        .query_metrics(request)
        .await
        .map_err(|status| anyhow::anyhow!(describe(&status)))?
        .into_inner();
    match format {
        MetricsFormat::Table => write_table(&answer, out),
        MetricsFormat::Csv => write_csv(&answer, out),
        MetricsFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &metrics_json(&answer))?;
            writeln!(out)?;
            Ok(())
        }
    }
}

/// Every dimension any row is grouped by, in first-seen order.
fn group_columns(answer: &pb::QueryMetricsResponse) -> Vec<i32> {
    let mut columns = Vec::new();
    for group in answer.results.iter().flat_map(|r| &r.rows).flat_map(|row| &row.group) {
        if !columns.contains(&group.dimension) {
            columns.push(group.dimension);
        }
    }
    columns
}

/// One row of text cells per answer row: metric, period, snapshot, groups, figures.
fn cells(answer: &pb::QueryMetricsResponse) -> (Vec<String>, Vec<Vec<String>>) {
    let columns = group_columns(answer);
    let mut header: Vec<String> = ["metric", "period_first", "period_last", "snapshot_date"]
        .map(String::from)
        .into();
    header.extend(columns.iter().map(|d| dimension_name(*d)));
    header.extend(["value", "numerator", "denominator", "value_unit", "suppressed"].map(String::from));
    let mut rows = Vec::new();
    for result in &answer.results {
        for row in &result.rows {
            let mut cells = vec![
                result.metric_id.clone(),
                result.period_first.clone(),
                result.period_last.clone(),
                result.snapshot_date.clone(),
            ];
            for column in &columns {
                let value = row
                    .group
                    .iter()
                    .find(|g| g.dimension == *column)
                    .map(|g| g.value.clone());
                cells.push(value.unwrap_or_default());
            }
            cells.push(row.display.clone());
            cells.push(number(row.numerator));
            cells.push(number(row.denominator));
            cells.push(result.value_unit.clone());
            cells.push(row.suppressed.to_string());
            rows.push(cells);
        }
    }
    (header, rows)
}

/// Counts print as integers, means as they are.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn write_table(answer: &pb::QueryMetricsResponse, out: &mut impl Write) -> anyhow::Result<()> {
    let (header, rows) = cells(answer);
    print_table(&header, &rows, out)?;
    for result in &answer.results {
        writeln!(
            out,
            "{}: {} ({})",
            result.metric_id, result.definition, result.period_label
        )?;
    }
    Ok(())
}

/// Columns padded to their widest cell.
fn print_table(header: &[String], rows: &[Vec<String>], out: &mut impl Write) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let print = |out: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())
    };
    print(out, header)?;
    for row in rows {
        print(out, row)?;
    }
    Ok(())
}

fn write_csv(answer: &pb::QueryMetricsResponse, out: &mut impl Write) -> anyhow::Result<()> {
    let (header, rows) = cells(answer);
    print_csv(&header, &rows, out)
}

fn print_csv(header: &[String], rows: &[Vec<String>], out: &mut impl Write) -> anyhow::Result<()> {
    let quote = |cell: &String| {
        if cell.contains([',', '"', '\n']) {
            format!("\"{}\"", cell.replace('"', "\"\""))
        } else {
            cell.clone()
        }
    };
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        writeln!(out, "{}", row.iter().map(quote).collect::<Vec<_>>().join(","))?;
    }
    Ok(())
}

/// Asks for the board report.
pub async fn render_report(
    channel: Channel,
    token: Option<&str>,
    request: pb::RenderReportRequest,
) -> anyhow::Result<pb::RenderReportResponse> {
    let mut client = metrics_client(channel, token)?;
    Ok(client
        .render_report(request)
        .await
        .map_err(|status| anyhow::anyhow!(describe(&status)))?
        .into_inner())
}

/// Lists every unit behind a figure, page by page (each page pinned to the first page's
/// position, so that the pages add up to one figure), then the figure they add up to.
pub async fn list_units(
    channel: Channel,
    token: Option<&str>,
    mut request: pb::ListMetricUnitsRequest,
    format: MetricsFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = metrics_client(channel, token)?;
    let mut units = Vec::new();
    let figure = loop {
        let page = client
            .list_metric_units(request.clone())
            .await
            .map_err(|status| anyhow::anyhow!(describe(&status)))?
            .into_inner();
        units.extend(page.units);
        request.min_position = request.min_position.max(page.position);
        if page.next_page_token.is_empty() {
            break page.figure.unwrap_or_default();
        }
        request.page_token = page.next_page_token;
    };
    let header: Vec<String> = [
        "case_id",
        "child_id",
        "report_id",
        "practitioner_id",
        "numerator",
        "denominator",
        "dates",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = units
        .iter()
        .map(|u| {
            let dates: Vec<String> = u.dates.iter().map(|d| format!("{}={}", d.name, d.date)).collect();
            vec![
                u.case_id.clone(),
                u.child_id.clone(),
                u.report_id.clone(),
                u.practitioner_id.clone(),
                u.numerator.to_string(),
                u.denominator.to_string(),
                dates.join(" "),
            ]
        })
        .collect();
    let numerator: f64 = figure.rows.iter().map(|r| r.numerator).sum();
    let denominator: f64 = figure.rows.iter().map(|r| r.denominator).sum();
    match format {
        MetricsFormat::Table => {
            print_table(&header, &rows, out)?;
            writeln!(
                out,
                "{} units of {} ({}): numerator {numerator}, denominator {denominator}. {}",
                units.len(),
                figure.metric_id,
                figure.period_label,
                figure.definition
            )?;
        }
        MetricsFormat::Csv => print_csv(&header, &rows, out)?,
        MetricsFormat::Json => {
            let units: Vec<serde_json::Value> = units
                .iter()
                .map(|u| {
                    let dates: serde_json::Map<String, serde_json::Value> = u
                        .dates
                        .iter()
                        .map(|d| (d.name.clone(), d.date.clone().into()))
                        .collect();
                    serde_json::json!({
                        "case_id": u.case_id, "child_id": u.child_id, "report_id": u.report_id,
                        "practitioner_id": u.practitioner_id, "numerator": u.numerator,
                        "denominator": u.denominator, "dates": dates,
                    })
                })
                .collect();
            let answer = pb::QueryMetricsResponse {
                results: vec![figure],
                position: request.min_position,
            };
            serde_json::to_writer_pretty(
                &mut *out,
                &serde_json::json!({"figure": metrics_json(&answer), "units": units}),
            )?;
            writeln!(out)?;
        }
    }
    Ok(())
}

fn metrics_json(answer: &pb::QueryMetricsResponse) -> serde_json::Value {
    let results: Vec<serde_json::Value> = answer
        .results
        .iter()
        .map(|result| {
            let rows: Vec<serde_json::Value> = result
                .rows
                .iter()
                .map(|row| {
                    let group: serde_json::Map<String, serde_json::Value> = row
                        .group
                        .iter()
                        .map(|g| (dimension_name(g.dimension), serde_json::Value::from(g.value.clone())))
                        .collect();
                    serde_json::json!({
                        "group": group,
                        "numerator": row.numerator,
                        "denominator": row.denominator,
                        "value": row.value,
                        "display": row.display,
                        "suppressed": row.suppressed,
                    })
                })
                .collect();
            serde_json::json!({
                "metric_id": result.metric_id,
                "unit": result.unit,
                "value_unit": result.value_unit,
                "definition": result.definition,
                "period": {"label": result.period_label, "first": result.period_first, "last": result.period_last},
                "snapshot_date": result.snapshot_date,
                "rows": rows,
            })
        })
        .collect();
    serde_json::json!({"position": answer.position, "results": results})
}
