//! The picture (`report.svg`, plotters' SVG backend): on top, the virtual-time load sweep
//! (engine-side TTFT p50 and p99 against load per policy, one panel per worker count), or
//! without a sweep the real-stack hit ratio and TTFT per policy; below, CPU per request
//! (plain Envoy, + kvgate, and the endpoint picker's Envoy + picker process when measured,
//! with the capacity ratio) and the p50 latency kvgate adds at each open-loop load, per
//! body kind.

use super::report::Report;
use super::{BenchError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const BLUE_: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ORANGE_: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREEN_: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const GREY_: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

/// One series of a grouped bar chart.
struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    values: Vec<f64>,
}

fn err<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Plot(e.to_string())
}

/// Grouped vertical bars: one group per category, one bar per series, values on top.
fn grouped_bars(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series<'_>],
    fmt: &dyn Fn(f64) -> String,
) -> Result<()> {
    let n = categories.len().max(1);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let top = if max > 0.0 { max * 1.2 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .y_label_formatter(&|v| fmt(*v))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (j, s) in series.iter().enumerate() {
        let x0 = |i: usize| i as f64 - 0.4 + j as f64 * width;
        let color = s.color;
        chart
            .draw_series(s.values.iter().enumerate().map(|(i, &v)| {
                Rectangle::new(
                    [(x0(i) + 0.01, 0.0), (x0(i) + width - 0.01, v.max(0.0))],
                    color.filled(),
                )
            }))
            .map_err(err)?
            .label(s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(s.values.iter().enumerate().map(|(i, &v)| {
                EmptyElement::at((x0(i) + width / 2.0, v.max(0.0)))
                    + Text::new(
                        fmt(v),
                        (-12, -14),
                        ("sans-serif", 10).into_font().color(&BLACK),
                    )
            }))
            .map_err(err)?;
    }
    chart
        .draw_series(categories.iter().enumerate().map(|(i, c)| {
            EmptyElement::at((i as f64, 0.0))
                + Text::new(
                    c.clone(),
                    (-(c.len() as i32) * 3, 8),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )
        }))
        .map_err(err)?;
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY_)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn placeholder(area: &DrawingArea<SVGBackend<'_>, Shift>, text: &str) -> Result<()> {
    area.draw(&Text::new(
        text.to_string(),
        (20, 40),
        ("sans-serif", 16).into_font().color(&GREY_),
    ))
    .map_err(err)
}

/// Draws `report` into `path`.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1400, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "kvgate bench — {} {} requests, {} × {} ({})",
        report.trace.format,
        report.trace.requests,
        report.machine.nproc,
        if report.machine.cpu_model.is_empty() {
            "CPU"
        } else {
            &report.machine.cpu_model
        },
        report.machine.git_commit.get(..12).unwrap_or_default()
    );
    let root = root.titled(&title, ("sans-serif", 20)).map_err(err)?;
    let rows = root.split_evenly((2, 2));
    let (Some(a), Some(b), Some(c), Some(d)) =
        (rows.first(), rows.get(1), rows.get(2), rows.get(3))
    else {
        return Err(BenchError::Plot("layout".into()));
    };
    match &report.quality {
        Some(q) if !q.sweep.is_empty() => crate::sweep::plot::panels(q, a, b)?,
        Some(q) if !q.policies.is_empty() => {
            // Rows of several engine counts are told apart by theirs.
            let several = q.policies.iter().any(|p| p.workers != q.workers);
            let names: Vec<String> = q
                .policies
                .iter()
                .map(|p| {
                    if several {
                        format!("{} ({})", p.name, p.workers)
                    } else {
                        p.name.clone()
                    }
                })
                .collect();
            grouped_bars(
                a,
                "Prefix-cache hit ratio (tokens)",
                "hit ratio",
                &names,
                &[Series {
                    name: "hit ratio",
                    color: GREEN_,
                    values: q.policies.iter().map(|p| p.hit_ratio * 100.0).collect(),
                }],
                &|v| format!("{v:.1}%"),
            )?;
            grouped_bars(
                b,
                "Time to first token (trace ms)",
                "ms",
                &names,
                &[
                    Series {
                        name: "p50",
                        color: BLUE_,
                        values: q.policies.iter().map(|p| p.ttft_p50_ms).collect(),
                    },
                    Series {
                        name: "p99",
                        color: ORANGE_,
                        values: q.policies.iter().map(|p| p.ttft_p99_ms).collect(),
                    },
                ],
                &|v| format!("{v:.0}"),
            )?;
        }
        _ => {
            placeholder(a, "quality phase not run")?;
            placeholder(b, "quality phase not run")?;
        }
    }
    match &report.overhead {
        Some(o) if !o.bodies.is_empty() => overhead_panels(o, c, d)?,
        _ => {
            placeholder(c, "overhead phase not run")?;
            placeholder(d, "overhead phase not run")?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The overhead panels: Envoy CPU per request (plain, + kvgate) with the capacity ratio in
/// each label; added p50 latency at each open-loop level.
fn overhead_panels(
    o: &super::overhead::OverheadReport,
    c: &DrawingArea<SVGBackend<'_>, Shift>,
    d: &DrawingArea<SVGBackend<'_>, Shift>,
) -> Result<()> {
    let labels: Vec<String> = o
        .bodies
        .iter()
        .map(|b| format!("{} (capacity ×{:.2})", b.label, b.capacity_ratio))
        .collect();
    let mut cpu = vec![
        Series {
            name: "plain Envoy",
            color: GREY_,
            values: o
                .bodies
                .iter()
                .map(|b| b.plain_cpu_us_per_req.unwrap_or(0.0))
                .collect(),
        },
        Series {
            name: "Envoy + kvgate",
            color: BLUE_,
            values: o
                .bodies
                .iter()
                .map(|b| b.kvgate_cpu_us_per_req.unwrap_or(0.0))
                .collect(),
        },
    ];
    if o.epp {
        cpu.push(Series {
            name: "Envoy + EPP (Envoy + picker)",
            color: ORANGE_,
            values: o
                .bodies
                .iter()
                .map(|b| b.epp_cpu_us_per_req.unwrap_or(0.0))
                .collect(),
        });
    }
    grouped_bars(c, "CPU per request (µs)", "µs", &labels, &cpu, &|v| {
        format!("{v:.0}")
    })?;
    let loads: Vec<String> = o
        .loads
        .iter()
        .map(|l| format!("{:.0}%", l * 100.0))
        .collect();
    let colors = [GREEN_, BLUE_, ORANGE_, GREY_];
    let names: Vec<String> = loads.iter().map(|l| format!("at {l} load")).collect();
    let series: Vec<Series<'_>> = loads
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (l, name))| Series {
            name,
            color: colors[i % colors.len()],
            values: o
                .bodies
                .iter()
                .map(|b| b.added_p50_us.get(l).copied().unwrap_or(0.0))
                .collect(),
        })
        .collect();
    let labels: Vec<String> = o.bodies.iter().map(|b| b.label.clone()).collect();
    grouped_bars(
        d,
        "Latency added by kvgate, p50 (µs, open loop, % of plain capacity)",
        "µs",
        &labels,
        &series,
        &|v| format!("{v:.0}"),
    )
}
