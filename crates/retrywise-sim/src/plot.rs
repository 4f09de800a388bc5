//! Goodput and upstream load over time, per policy, as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::SimError;
use crate::driver::PolicyRun;

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws two panels — goodput per second and upstream load per second, one line per
/// policy, with the offered load dashed — into `path`, whole or not at all (drawn in
/// memory, then written beside it and renamed over it).
///
/// # Errors
/// [`SimError::Plot`] if the plot cannot be drawn, [`SimError::Io`] if the file cannot
/// be written.
pub fn plot(path: &Path, title: &str, runs: &[PolicyRun], rps: f64) -> Result<(), SimError> {
    let svg = svg(path, title, runs, rps)?;
    crate::report::write_atomically(path, svg.as_bytes())
}

/// The plot [`plot`] writes to `path` (named in errors), drawn in memory.
///
/// # Errors
/// [`SimError::Plot`] if the plot cannot be drawn.
pub fn svg(path: &Path, title: &str, runs: &[PolicyRun], rps: f64) -> Result<String, SimError> {
    let mut svg = String::new();
    draw(&mut svg, path, title, runs, rps)?;
    Ok(svg)
}

fn draw(
    svg: &mut String,
    path: &Path,
    title: &str,
    runs: &[PolicyRun],
    rps: f64,
) -> Result<(), SimError> {
    let err = |e: &dyn std::fmt::Display| SimError::Plot {
        path: path.to_path_buf(),
        problem: e.to_string(),
    };
    let root = SVGBackend::with_string(svg, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(330);
    let bin = runs.first().map_or(1.0, |r| r.series.bin.as_secs_f64());
    let len = runs
        .iter()
        .map(|r| r.series.attempts.len().max(r.series.goodput.len()))
        .max()
        .unwrap_or(1);
    let x_max = len as f64 * bin;
    for (area, name, pick) in [
        (
            &top,
            "goodput (successes/s)",
            (|r: &PolicyRun| &r.series.goodput) as fn(&PolicyRun) -> &Vec<u64>,
        ),
        (&bottom, "upstream load (requests/s)", |r: &PolicyRun| {
            &r.series.attempts
        }),
    ] {
        let y_max = runs
            .iter()
            .flat_map(|r| pick(r).iter())
            .copied()
            .max()
            .unwrap_or(1) as f64
            / bin;
        let y_max = y_max.max(rps) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .caption(name, ("sans-serif", 16))
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, rps), (x_max, rps)],
                6,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label("offered")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.5)));
        for (k, r) in runs.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let points = pick(r)
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64 * bin, *v as f64 / bin));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(r.policy.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK.mix(0.3))
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
