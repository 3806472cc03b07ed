//! The load sweep in `report.svg`: engine-side TTFT p50 and p99 against load, one line
//! per policy, one panel per worker count.

use crate::{BenchError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

const GREY_: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);
const BLUE_: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ORANGE_: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREEN_: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

fn err<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Plot(e.to_string())
}

fn placeholder(area: &DrawingArea<SVGBackend<'_>, Shift>, text: &str) -> Result<()> {
    area.draw(&Text::new(
        text.to_string(),
        (20, 40),
        ("sans-serif", 16).into_font(),
    ))
    .map_err(err)
}

/// Colours of the sweep's policies, in report order.
const POLICY_COLORS: [RGBColor; 7] = [
    GREY_,
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x94, 0x67, 0xbd),
    ORANGE_,
    BLUE_,
    GREEN_,
];

/// The load-sweep panels: engine-side TTFT p50 (solid) and p99 (thin) against load, one
/// line per policy, log scale; one panel per worker count (the first two).
pub fn panels<'a>(
    q: &crate::quality::QualityReport,
    a: &DrawingArea<SVGBackend<'a>, Shift>,
    b: &DrawingArea<SVGBackend<'a>, Shift>,
) -> Result<()> {
    let mut workers: Vec<usize> = q.sweep.iter().map(|p| p.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    for (i, area) in [a, b].into_iter().enumerate() {
        let Some(&w) = workers.get(i) else {
            placeholder(area, "no second worker count in the sweep")?;
            continue;
        };
        let pts: Vec<&crate::sweep::SweepPoint> =
            q.sweep.iter().filter(|p| p.workers == w).collect();
        let names: Vec<String> = pts
            .first()
            .map(|p| p.policies.iter().map(|x| x.name.clone()).collect())
            .unwrap_or_default();
        let vals = pts
            .iter()
            .flat_map(|p| p.policies.iter())
            .flat_map(|x| [x.ttft_p50_ms, x.ttft_p99_ms])
            .filter(|v| *v > 0.0);
        let (lo, hi) = vals.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
        if !lo.is_finite() {
            placeholder(area, "sweep has no figures")?;
            continue;
        }
        let (x0, x1) = pts.iter().fold((f64::INFINITY, 0.0f64), |(l, h), p| {
            (l.min(p.load), h.max(p.load))
        });
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{w} engines: engine-side TTFT p50 (thick) / p99 (thin) vs load, trace ms"),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(
                (x0 - 0.2)..(x1 + 0.2),
                ((lo * 0.8)..(hi * 1.25)).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("load (× trace rate)")
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        for (k, name) in names.iter().enumerate() {
            let color = POLICY_COLORS.get(k).copied().unwrap_or(GREY_);
            let series = |f: fn(&crate::sweep::PolicyPoint) -> f64| -> Vec<(f64, f64)> {
                pts.iter()
                    .filter_map(|p| {
                        p.policies
                            .iter()
                            .find(|x| &x.name == name)
                            .map(|x| (p.load, f(x)))
                    })
                    .filter(|(_, v)| *v > 0.0)
                    .collect()
            };
            chart
                .draw_series(LineSeries::new(
                    series(|x| x.ttft_p50_ms),
                    color.stroke_width(3),
                ))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3))
                });
            chart
                .draw_series(LineSeries::new(
                    series(|x| x.ttft_p99_ms),
                    color.stroke_width(1),
                ))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}
