//! The PNG chart of a rate sweep: offered deliveries/s against delivered
//! deliveries/s (top) and p99 latency (bottom), every target on both.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::TargetResult;

const COLOURS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];

/// Writes `<dir>/<scenario>.png`; does nothing when no target has steps.
pub fn write(dir: &Path, scenario: &str, targets: &[TargetResult]) -> Result<(), String> {
    let points: Vec<_> = targets.iter().flat_map(|t| &t.steps).collect();
    if points.is_empty() {
        return Ok(());
    }
    // Bitmap text needs a font; DejaVu comes compiled in, so the chart
    // renders the same on a machine without fonts.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let path = dir.join(format!("{scenario}.png"));
    draw(&path, scenario, targets).map_err(|err| format!("{}: {err}", path.display()))
}

fn draw(
    path: &Path,
    scenario: &str,
    targets: &[TargetResult],
) -> Result<(), Box<dyn std::error::Error>> {
    let steps = targets.iter().flat_map(|t| &t.steps);
    let (mut low, mut high, mut top, mut slowest) = (f64::MAX, 1.0f64, 1.0f64, 1.0f64);
    for step in steps {
        low = low.min(step.offered_deliveries_per_s);
        high = high.max(step.offered_deliveries_per_s);
        top = top
            .max(step.delivered_per_s)
            .max(step.offered_deliveries_per_s);
        slowest = slowest.max(step.latency.p99_ms);
    }
    let x_range = (low * 0.8).max(0.1)..high * 1.25;
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(450);

    let mut rates = ChartBuilder::on(&upper)
        .caption(
            format!("{scenario}: delivered vs offered"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(
            x_range.clone().log_scale(),
            ((low * 0.5).max(0.1)..top * 1.5).log_scale(),
        )?;
    rates
        .configure_mesh()
        .x_desc("offered deliveries/s")
        .y_desc("delivered/s")
        .draw()?;
    rates
        .draw_series(LineSeries::new(
            [(x_range.start, x_range.start), (x_range.end, x_range.end)],
            BLACK.mix(0.3),
        ))?
        .label("offered = delivered")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for (target, colour) in targets.iter().zip(COLOURS) {
        let series: Vec<(f64, f64)> = target
            .steps
            .iter()
            .map(|s| {
                (
                    s.offered_deliveries_per_s,
                    s.delivered_per_s.max(low * 0.5).max(0.1),
                )
            })
            .collect();
        rates
            .draw_series(LineSeries::new(series.clone(), colour.stroke_width(2)))?
            .label(target.target.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        rates.draw_series(
            series
                .into_iter()
                .map(|p| Circle::new(p, 4, colour.filled())),
        )?;
    }
    rates
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let mut latency = ChartBuilder::on(&lower)
        .caption(
            format!("{scenario}: p99 publish-to-receive latency"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(
            x_range.clone().log_scale(),
            (0.1..slowest * 2.0).log_scale(),
        )?;
    latency
        .configure_mesh()
        .x_desc("offered deliveries/s")
        .y_desc("p99 ms")
        .draw()?;
    latency
        .draw_series(LineSeries::new(
            [(x_range.start, 100.0), (x_range.end, 100.0)],
            BLACK.mix(0.3),
        ))?
        .label("100 ms (knee limit)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for (target, colour) in targets.iter().zip(COLOURS) {
        let series: Vec<(f64, f64)> = target
            .steps
            .iter()
            .map(|s| (s.offered_deliveries_per_s, s.latency.p99_ms.max(0.1)))
            .collect();
        latency
            .draw_series(LineSeries::new(series.clone(), colour.stroke_width(2)))?
            .label(target.target.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        latency.draw_series(
            series
                .into_iter()
                .map(|p| Circle::new(p, 4, colour.filled())),
        )?;
    }
    latency
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
