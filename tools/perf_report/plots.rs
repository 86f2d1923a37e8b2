//! The report's SVG plots, drawn with plotters.

use std::fmt::Display;
use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::ReportError;
use crate::markdown::{thousands, MODES};
use crate::results::Results;

const COLORS: [RGBColor; 3] = [
    RGBColor(0x3b, 0x6e, 0xa8),
    RGBColor(0xd0, 0x8a, 0x2c),
    RGBColor(0x5a, 0x9e, 0x5a),
];
const SYSTEMS: [(&str, &str); 2] = [("corekv", "corekv"), ("valkey", "Valkey")];
const FONT: &str = "sans-serif";

/// One named set of bars or one curve.
struct Series {
    name: String,
    values: Vec<Option<f64>>,
}

type Chart<'a, 'b, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>;

/// The plots, by the name their file ends in.
const PLOTS: [&str; 3] = ["throughput", "latency-curves", "waitaof"];

/// The files [`draw`] writes for `prefix`.
pub fn files(prefix: &str) -> Vec<String> {
    PLOTS
        .iter()
        .map(|name| format!("{prefix}-{name}.svg"))
        .collect()
}

/// Draws every plot into [`files`]`(prefix)`.
pub fn draw(r: &Results, prefix: &str, rate: Option<f64>) -> Result<(), ReportError> {
    for (name, path) in PLOTS.iter().zip(files(prefix)) {
        let drawn = match *name {
            "throughput" => throughput(Path::new(&path), r),
            "latency-curves" => latency_curves(Path::new(&path), r, rate),
            _ => waitaof(Path::new(&path), r),
        };
        drawn.map_err(|reason| ReportError::Plot { path, reason })?;
    }
    Ok(())
}

fn text<E: Display>(e: E) -> String {
    e.to_string()
}

/// Requests per second by AOF mode, corekv next to Valkey, one panel per scenario.
fn throughput(path: &Path, r: &Results) -> Result<(), String> {
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let panels = [
        ("set", "SET, 50 connections, unpipelined"),
        ("get", "GET, 50 connections, unpipelined"),
        ("set-p16", "SET, 50 connections, pipeline 16"),
        ("get-p16", "GET, 50 connections, pipeline 16"),
    ];
    for (area, (scenario, title)) in root.split_evenly((2, 2)).iter().zip(panels) {
        let series: Vec<Series> = SYSTEMS
            .iter()
            .map(|(system, name)| Series {
                name: name.to_string(),
                values: MODES
                    .iter()
                    .map(|m| r.throughput(system, m, scenario))
                    .collect(),
            })
            .collect();
        let peak = peak(&series).max(1.0);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title}: requests/s by AOF mode"), (FONT, 15))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..MODES.len() as f64 - 0.5, 0f64..peak * 1.2)
            .map_err(text)?;
        grouped_bars(&mut chart, &MODES, &series, "requests/s", 0.0)?;
    }
    root.present().map_err(text)
}

/// Latency against percentile (on a scale of nines) for the fixed-rate GET runs and for SET +
/// WAITAOF, all with the AOF in `always`.
fn latency_curves(path: &Path, r: &Results, rate: Option<f64>) -> Result<(), String> {
    let root = SVGBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let rate = rate.map_or(String::new(), |r| format!(" at {r:.0}/s"));
    let panels = [
        ("get-rate", format!("GET{rate}, no writers")),
        ("get-rate-writers", format!("GET{rate}, 20 writers")),
        (
            "set-waitaof",
            "SET + WAITAOF 1 0 0, one connection".to_string(),
        ),
    ];
    for (area, (scenario, title)) in root.split_evenly((1, 3)).iter().zip(panels) {
        let curves: Vec<(&str, Vec<(f64, f64)>)> = SYSTEMS
            .iter()
            .filter_map(|(system, name)| {
                let run = r.run(system, "always", scenario)?;
                let points = run
                    .curve
                    .iter()
                    .map(|&(p, us)| (nines(p), us.max(1.0)))
                    .collect();
                Some((*name, points))
            })
            .collect();
        let top = curves
            .iter()
            .flat_map(|(_, c)| c.iter().map(|p| p.1))
            .fold(10.0f64, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{title} (AOF always): µs by percentile"),
                (FONT, 15),
            )
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..MAX_NINES, (1f64..top * 2.0).log_scale())
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&axis_number)
            .y_desc("µs (log)")
            .draw()
            .map_err(text)?;
        for (i, (name, points)) in curves.into_iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(text)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart)?;
    }
    root.present().map_err(text)
}

/// SET + WAITAOF p50 by AOF mode next to a bare fdatasync (log scale: Valkey's `everysec`
/// waits for its once-a-second fsync).
fn waitaof(path: &Path, r: &Results) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let modes = ["always", "everysec", "no"];
    let mut series: Vec<Series> = SYSTEMS
        .iter()
        .map(|(system, name)| Series {
            name: format!("{name}, SET + WAITAOF 1 0 0"),
            values: modes
                .iter()
                .map(|m| r.latency(system, m, "set-waitaof").map(|l| l.p50))
                .collect(),
        })
        .collect();
    series.push(Series {
        name: "bare 4 KiB append + fdatasync".to_string(),
        values: modes.iter().map(|_| r.fdatasync.map(|f| f.0)).collect(),
    });
    let top = peak(&series).max(10.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "p50 latency (µs, log) by AOF mode; Valkey has no bar in `no`: it never fsyncs",
            (FONT, 16),
        )
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d(
            -0.5f64..modes.len() as f64 - 0.5,
            (10f64..top * 3.0).log_scale(),
        )
        .map_err(text)?;
    grouped_bars(&mut chart, &modes, &series, "µs", 10.0)?;
    root.present().map_err(text)
}

/// Axis numbers as whole numbers with thousands separators (fractions below 10).
fn axis_number(v: &f64) -> String {
    if v.abs() < 10.0 && v.fract() != 0.0 {
        format!("{v:.1}")
    } else {
        thousands(v.round() as i64)
    }
}

fn peak(series: &[Series]) -> f64 {
    series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .fold(0.0, f64::max)
}

/// Bars of each series side by side over each group label; a missing value leaves a gap.
fn grouped_bars<'a, 'b: 'a, Y>(
    chart: &mut Chart<'a, 'b, Y>,
    groups: &[&str],
    series: &[Series],
    unit: &str,
    floor: f64,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            groups
                .get(i as usize)
                .map_or(String::new(), |g| g.to_string())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len())
        .x_label_formatter(&label)
        .y_label_formatter(&axis_number)
        .y_desc(unit)
        .draw()
        .map_err(text)?;
    let width = 0.8 / series.len().max(1) as f64;
    for (s, one) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let bars = one.values.iter().enumerate().filter_map(|(g, v)| {
            let x0 = g as f64 - 0.4 + s as f64 * width;
            v.map(|v| Rectangle::new([(x0, floor), (x0 + width * 0.9, v)], color.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(text)?
            .label(one.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    legend(chart)
}

fn legend<'a, 'b: 'a, Y>(chart: &mut Chart<'a, 'b, Y>) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(text)
}

/// The rightmost point of the percentile axis: the maximum.
const MAX_NINES: f64 = 5.0;

/// Where percentile `p` (in %) sits on an axis of nines: 90 % at 1, 99 % at 2, … and the
/// maximum at [`MAX_NINES`].
fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        MAX_NINES
    } else {
        (-(1.0 - p / 100.0).log10()).clamp(0.0, MAX_NINES - 0.1)
    }
}

fn percentile_label(x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 1e-6 {
        return String::new();
    }
    match i as i64 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        3 => "99.9%".into(),
        4 => "99.99%".into(),
        5 => "max".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_on_a_scale_of_nines() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
        assert!(nines(99.9999) < MAX_NINES);
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(2.5), "");
    }
}
