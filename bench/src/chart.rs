//! The PNG chart of a rate sweep: offered deliveries/s against delivered
//! deliveries/s (top) and p99 latency (bottom), every target on both.

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::{Step, TargetResult};

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
        if step.latency.p99_ms.is_finite() {
            slowest = slowest.max(step.latency.p99_ms);
        }
    }
    let x = (low * 0.8).max(0.1)..high * 1.25;
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(450);
    let rates = Panel {
        title: format!("{scenario}: delivered vs offered"),
        y_desc: "delivered/s",
        x: x.clone(),
        y: (low * 0.5).max(0.1)..top * 1.5,
        reference: ("offered = delivered", [(x.start, x.start), (x.end, x.end)]),
    };
    rates.draw(&upper, targets, |step| step.delivered_per_s)?;
    let latency = Panel {
        title: format!("{scenario}: p99 publish-to-receive latency"),
        y_desc: "p99 ms",
        x: x.clone(),
        y: 0.1..slowest * 2.0,
        reference: ("100 ms (knee limit)", [(x.start, 100.0), (x.end, 100.0)]),
    };
    latency.draw(&lower, targets, |step| step.latency.p99_ms)?;
    root.present()?;
    Ok(())
}

/// One log-log chart of a value per step against offered deliveries/s.
struct Panel {
    title: String,
    y_desc: &'static str,
    x: Range<f64>,
    y: Range<f64>,
    reference: (&'static str, [(f64, f64); 2]),
}

impl Panel {
    fn draw(
        &self,
        area: &DrawingArea<BitMapBackend<'_>, Shift>,
        targets: &[TargetResult],
        value: impl Fn(&Step) -> f64,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(self.x.clone().log_scale(), self.y.clone().log_scale())?;
        chart
            .configure_mesh()
            .x_desc("offered deliveries/s")
            .y_desc(self.y_desc)
            .x_label_formatter(&|v| short(*v))
            .y_label_formatter(&|v| short(*v))
            .draw()?;
        let grey = BLACK.mix(0.5).stroke_width(2);
        chart
            .draw_series(LineSeries::new(self.reference.1, grey))?
            .label(self.reference.0)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
        for (target, colour) in targets.iter().zip(COLOURS) {
            // A step with nothing delivered has no latency: left out, not
            // drawn at the axis floor as if it were the best.
            let points: Vec<(f64, f64)> = target
                .steps
                .iter()
                .map(|s| (s.offered_deliveries_per_s, value(s)))
                .filter(|(_, y)| y.is_finite())
                .map(|(x, y)| (x, y.max(self.y.start)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(target.target.name())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, colour.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    }
}

/// 1.5k, 200k, 1.2M: axis labels a reader takes in at a glance.
fn short(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}
