//! The report's charts as inline SVG, drawn with plotters (no fonts or bitmaps: text is SVG
//! `<text>` in the reader's sans-serif).

use plotters::prelude::*;

/// Drawing failed (plotters reports errors of its backend; writing into a string does not fail,
/// so this means a bug in the chart's ranges).
#[derive(Debug, thiserror::Error)]
#[error("drawing a chart failed: {0}")]
pub struct ChartError(String);

fn failed<E: std::fmt::Debug>(err: E) -> ChartError {
    ChartError(format!("{err:?}"))
}

const LINE: RGBColor = RGBColor(0x1d, 0x70, 0xb8);
const TARGET: RGBColor = RGBColor(0xd4, 0x35, 0x1c);
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const BAR: RGBColor = RGBColor(0x50, 0x5a, 0x5f);

/// The y range to draw: the values and the target with a margin, from zero when all are
/// non-negative and close enough to zero for the axis to start there.
fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let lo = if lo >= 0.0 { 0.0 } else { lo };
    let span = (hi - lo).max(1.0);
    (lo, hi + span * 0.1)
}

/// A line of a measure over the window (gaps where a period has no figure), its points marked,
/// and the target as a dashed line. `labels` name the periods on the x axis.
pub fn trend(labels: &[String], values: &[Option<f64>], target: Option<f64>) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 220)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let last = labels.len().saturating_sub(1).max(1) as f64;
        let (lo, hi) = y_range(values.iter().flatten().copied().chain(target));
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(48)
            .build_cartesian_2d(-0.3..last + 0.3, lo..hi)
            .map_err(failed)?;
        let label_of = |x: &f64| {
            let index = x.round();
            if (x - index).abs() < 1e-6 && index >= 0.0 {
                labels.get(index as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(labels.len().min(8))
            .x_label_formatter(&label_of)
            .y_labels(5)
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(failed)?;
        if let Some(target) = target {
            chart
                .draw_series(DashedLineSeries::new(
                    [(-0.3, target), (last + 0.3, target)],
                    6,
                    4,
                    TARGET.stroke_width(2),
                ))
                .map_err(failed)?;
        }
        // One line per run of periods with a figure, so a period without one leaves a gap.
        let points: Vec<(f64, Option<f64>)> = values.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect();
        for run in points.split(|(_, v)| v.is_none()).filter(|run| !run.is_empty()) {
            let line: Vec<(f64, f64)> = run.iter().filter_map(|(x, v)| Some((*x, (*v)?))).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), LINE.stroke_width(2)))
                .map_err(failed)?;
            chart
                .draw_series(line.into_iter().map(|point| Circle::new(point, 3, LINE.filled())))
                .map_err(failed)?;
        }
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// Horizontal bars, one per service area, in the order given; an area without a figure (none
/// counted, or suppressed) has no bar. The target, when there is one, as a dashed line.
pub fn bars(areas: &[String], values: &[Option<f64>], target: Option<f64>) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let height = 40 + 18 * areas.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (560, height)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let (lo, hi) = y_range(values.iter().flatten().copied().chain(target));
        let rows = areas.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(24)
            .y_label_area_size(40)
            .build_cartesian_2d(lo..hi, -0.5..rows - 0.5)
            .map_err(failed)?;
        // Row 0 at the top: the first area is drawn highest.
        let row_of = |i: usize| rows - 1.0 - i as f64;
        let area_label = |y: &f64| {
            let row = (rows - 1.0 - y).round();
            if (rows - 1.0 - y - row).abs() < 1e-6 && row >= 0.0 {
                areas.get(row as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .y_labels(areas.len())
            .y_label_formatter(&area_label)
            .x_labels(5)
            .disable_y_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(failed)?;
        chart
            .draw_series(values.iter().enumerate().filter_map(|(i, v)| {
                let y = row_of(i);
                Some(Rectangle::new([(lo, y - 0.35), ((*v)?, y + 0.35)], BAR.filled()))
            }))
            .map_err(failed)?;
        if let Some(target) = target {
            chart
                .draw_series(DashedLineSeries::new(
                    [(target, -0.5), (target, rows - 0.5)],
                    6,
                    4,
                    TARGET.stroke_width(2),
                ))
                .map_err(failed)?;
        }
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn a_trend_marks_each_period_with_a_figure_and_draws_the_target() {
        let labels: Vec<String> = (1..=5).map(|m| format!("2025-0{m}")).collect();
        let values = [Some(60.0), None, Some(75.0), Some(80.0), Some(72.5)];
        let svg = trend(&labels, &values, Some(70.0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count(&svg, "<circle"), 4, "{svg}");
        assert!(svg.contains("stroke-dasharray") || count(&svg, "<polyline") + count(&svg, "<line") > 2);
        assert!(svg.contains("2025-01") && svg.contains("2025-05"));
        let none = trend(&labels, &[None; 5], None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count(&none, "<circle"), 0);
    }

    #[test]
    fn bars_draw_one_bar_per_area_with_a_figure() {
        let areas: Vec<String> = ["A1", "A2", "A3"].map(String::from).to_vec();
        let svg = bars(&areas, &[Some(3.0), None, Some(9.5)], None).unwrap_or_else(|e| panic!("{e}"));
        // The background and the two bars.
        assert_eq!(count(&svg, "<rect"), 3, "{svg}");
        let labels: Vec<&str> = svg
            .split("</text>")
            .filter_map(|t| t.rsplit('>').next())
            .map(str::trim)
            .collect();
        for area in ["A1", "A2", "A3"] {
            assert!(labels.contains(&area), "{area} is not labelled: {svg}");
        }
    }
}
