//! `report.html`: the metrics, the calibration curve and p(success) against the delay per
//! error kind, as inline SVG (plotters).

use std::fmt::Write as _;
use std::time::Duration;

use plotters::prelude::*;
use retrywise::attempt::{AttemptContext, ErrorKind};
use retrywise::features::ERROR_KINDS;
use retrywise::model::{LogisticModel, ModelArtifact, SuccessModel};

use crate::TrainError;
use crate::data::Rows;
use crate::evaluate::Evaluation;
use crate::metrics::Metrics;

/// The `i`-th colour of plotters' categorical palette.
fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::COLORS[i % Palette99::COLORS.len()];
    RGBColor(r, g, b)
}

/// Draws the series' legend in the upper left corner.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> Result<(), TrainError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(err)
}

fn err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Report(e.to_string())
}

/// The calibration curve of the model and the baseline, against the diagonal.
pub fn calibration_svg(model: &Metrics, baseline: &Metrics) -> Result<String, TrainError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("calibration (validation)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0f64..1.0, 0.0f64..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("predicted p(success)")
            .y_desc("observed success rate")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(err)?
            .label("perfect")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.3)));
        for (m, name, color) in [(model, "model", color(0)), (baseline, "baseline", color(1))] {
            let pts: Vec<(f64, f64)> = m
                .calibration
                .iter()
                .map(|b| (b.mean_predicted, b.observed))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        legend(&mut chart)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// A typical context after an error of `kind` in `rows`: the second attempt, with the
/// median latency, Retry-After (when most rows have one) and failure rate of such rows.
/// Its `elapsed` is that latency: the call's first attempt started it and failed after it,
/// and `elapsed` is the time before the wait, as recorded contexts and the decider hold it.
pub fn typical_context(rows: &Rows, kind: ErrorKind) -> Option<AttemptContext> {
    let of_kind: Vec<&AttemptContext> = rows
        .contexts
        .iter()
        .filter(|c| c.error == Some(kind))
        .collect();
    if of_kind.is_empty() {
        return None;
    }
    // The median of a field over the rows that have it.
    let med = |f: &dyn Fn(&AttemptContext) -> Option<f64>| {
        median(of_kind.iter().filter_map(|c| f(c)).collect())
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let mut ctx = of_kind[0].clone();
    ctx.attempt = 2;
    ctx.status = med(&|c| c.status.map(f64::from)).map(|s| s as u16);
    ctx.latency = med(&|c| secs(c.latency)).map(Duration::from_secs_f64);
    ctx.elapsed = ctx.latency.unwrap_or_default();
    let with_ra = of_kind.iter().filter(|c| c.retry_after.is_some()).count();
    ctx.retry_after = (with_ra * 2 > of_kind.len())
        .then(|| med(&|c| secs(c.retry_after)))
        .flatten()
        .map(Duration::from_secs_f64);
    ctx.failure_rate = med(&|c| c.failure_rate);
    ctx.latency_p95 = med(&|c| secs(c.latency_p95)).map(Duration::from_secs_f64);
    ctx.in_flight = med(&|c| c.in_flight.map(f64::from)).map(|v| v as u32);
    ctx.failure_rate_recent = med(&|c| c.failure_rate_recent);
    ctx.permanent_rate = med(&|c| c.permanent_rate);
    ctx.since_success = med(&|c| secs(c.since_success)).map(Duration::from_secs_f64);
    Some(ctx)
}

/// The delays of the p(success)-against-delay chart, seconds.
pub fn delay_grid() -> Vec<f64> {
    (0..=60)
        .map(|i| 0.01 * 10f64.powf(f64::from(i) / 20.0))
        .collect()
}

/// The model's p(success) against the wait after one error kind, at that kind's
/// [`typical_context`], as a decider weighing those waits sees it: only the wait varies
/// (the time elapsed before it stays the context's).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DelayCurve {
    /// The previous error kind.
    pub kind: String,
    /// The context the curve varies the delay of.
    pub context: AttemptContext,
    /// `[delay in ms, p(success)]`, delays on [`delay_grid`].
    pub points: Vec<[f64; 2]>,
}

/// One [`DelayCurve`] per error kind present in `rows`, each from the model's own
/// [`SuccessModel::p_success_by_delay`], the function the decider asks.
pub fn delay_curves(model: &LogisticModel, rows: &Rows) -> Vec<DelayCurve> {
    let grid = delay_grid();
    let delays: Vec<Duration> = grid.iter().map(|d| Duration::from_secs_f64(*d)).collect();
    let mut p = vec![0.0; delays.len()];
    ERROR_KINDS
        .iter()
        .filter_map(|kind| {
            let base = typical_context(rows, *kind)?;
            model.p_success_by_delay(&base, &delays, &mut p);
            let points = grid.iter().zip(&p).map(|(d, p)| [d * 1e3, *p]).collect();
            Some(DelayCurve {
                kind: kind.as_str().to_owned(),
                context: base,
                points,
            })
        })
        .collect()
}

/// p(success) against the wait before the next attempt, one curve per error kind present
/// in `rows`, each at that kind's typical context.
pub fn delay_svg(model: &LogisticModel, rows: &Rows) -> Result<String, TrainError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "p(success) against the wait, per previous error",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((0.01f64..10.0f64).log_scale(), 0.0f64..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("delay (s, log scale)")
            .y_desc("p(success)")
            .draw()
            .map_err(err)?;
        for curve in delay_curves(model, rows) {
            let i = ERROR_KINDS
                .iter()
                .position(|k| k.as_str() == curve.kind)
                .unwrap_or(0);
            let points: Vec<(f64, f64)> = curve.points.iter().map(|[d, p]| (d / 1e3, *p)).collect();
            let color = color(i);
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
                .label(curve.kind.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.4}"))
}

/// What the validation rows were, as the split chose them.
fn validated_on(training: &serde_json::Value) -> String {
    let rows = &training["validation_rows"];
    match training["split"].as_str() {
        Some("call") => format!(
            "{rows} rows: every attempt of a share of the calls ({}), drawn by a hash of target and call id",
            training["validation_fraction"]
        ),
        _ => format!(
            "the {rows} latest rows of each target (from, in ms: {})",
            training["validation_from_ms"]
        ),
    }
}

/// The whole report.
///
/// # Errors
/// [`TrainError::Report`] if a chart cannot be drawn.
pub fn html(
    artifact: &ModelArtifact,
    eval: &Evaluation,
    model: &LogisticModel,
    validation: &Rows,
) -> Result<String, TrainError> {
    let mut h = String::new();
    let title = format!(
        "retrywise model {} — version {}",
        esc(&artifact.name),
        artifact.version
    );
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}</style></head><body>\
         <h1>{title}</h1><p>Created {} by {}. p(success) of the next attempt: logistic regression on the \
         <code>{}</code> features, L2 α = {}. Trained on {} rows; validated on {}.</p>",
        esc(&artifact.created_at),
        esc(&artifact.code_version),
        esc(&artifact.features.set),
        artifact.regularization.alpha,
        artifact.training["train_rows"],
        esc(&validated_on(&artifact.training)),
    );
    let sample = &artifact.training["sample"];
    if let Some(fraction) = sample["fraction"].as_f64().filter(|f| *f < 1.0) {
        let _ = write!(
            h,
            "<p>Sampled: the input had {} rows, more than the {} asked for (<code>max_rows</code>); \
             {} rows were read, a uniform sample of whole calls (a hash of <code>call_id</code>) \
             keeping {:.4} % of them, in time order.</p>",
            sample["input_rows"],
            sample["max_rows"],
            sample["rows_read"],
            fraction * 100.0
        );
    }
    h.push_str("<h2>Validation</h2><table><tr><th></th><th>AUC</th><th>log-loss</th><th>Brier</th><th>ECE (15 bins)</th></tr>");
    for (name, m) in [
        ("model", &eval.model),
        ("baseline (success rate per previous error)", &eval.baseline),
    ] {
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            opt(m.auc),
            m.log_loss,
            m.brier,
            m.ece
        );
    }
    h.push_str("</table>");
    h.push_str(&calibration_svg(&eval.model, &eval.baseline)?);
    h.push_str(&delay_svg(model, validation)?);
    h.push_str("<h2>By previous error</h2><table><tr><th>previous error</th><th>rows</th><th>success rate</th><th>AUC</th><th>log-loss</th><th>baseline log-loss</th><th>Brier</th><th>baseline Brier</th></tr>");
    for k in &eval.by_error {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            esc(&k.kind),
            k.rows,
            k.success_rate,
            opt(k.model.auc),
            k.model.log_loss,
            k.baseline.log_loss,
            k.model.brier,
            k.baseline.brier
        );
    }
    h.push_str("</table><h2>By target</h2><p>Aggregates hide regimes: each target (each scenario, for the simulator's data) on its own.</p><table><tr><th>target</th><th>rows</th><th>success rate</th><th>AUC</th><th>baseline AUC</th><th>ECE</th><th>baseline ECE</th><th>log-loss</th><th>baseline log-loss</th></tr>");
    for t in &eval.by_target {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            esc(&t.target),
            t.rows,
            t.success_rate,
            opt(t.model.auc),
            opt(t.baseline.auc),
            t.model.ece,
            t.baseline.ece,
            t.model.log_loss,
            t.baseline.log_loss
        );
    }
    h.push_str("</table><h2>Calibration table</h2><table><tr><th>bin</th><th>rows</th><th>mean predicted</th><th>observed</th></tr>");
    for b in &eval.model.calibration {
        let _ = write!(
            h,
            "<tr><td>{:.3}–{:.3}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            b.lo, b.hi, b.count, b.mean_predicted, b.observed
        );
    }
    h.push_str("</table><h2>Weights (standardized features)</h2><table><tr><th>feature</th><th>weight</th><th>mean</th><th>scale</th><th>meaning</th></tr>");
    for i in 0..artifact.weights.len() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{:+.4}</td><td>{:.4}</td><td>{:.4}</td><td style=\"text-align:left\">{}</td></tr>",
            esc(&artifact.features.names[i]),
            artifact.weights[i],
            artifact.scaler.mean[i],
            artifact.scaler.scale[i],
            esc(artifact
                .features
                .descriptions
                .get(i)
                .map_or("", String::as_str))
        );
    }
    let _ = write!(
        h,
        "<tr><td>intercept</td><td>{:+.4}</td><td></td><td></td><td></td></tr></table>",
        artifact.intercept
    );
    let _ = write!(
        h,
        "<h2>Training data</h2><pre>{}</pre></body></html>",
        esc(&serde_json::to_string_pretty(&artifact.training).unwrap_or_default())
    );
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use retrywise::features::{Feature, N_FEATURES};
    use retrywise::model::Scaler;

    /// A model whose only weight is on `log_elapsed_ms` says waiting changes nothing (the
    /// time elapsed before the wait does not move with it): the report's curves are the
    /// decider's `p_success_by_delay`, flat. They used to count the wait into the elapsed
    /// time and fall with it.
    #[test]
    fn the_delay_curves_are_the_decider_s_with_the_elapsed_time_fixed() {
        let mut weights = vec![0.0; N_FEATURES];
        weights[Feature::LogElapsedMs as usize] = -0.8;
        let scaler = Scaler {
            mean: vec![0.0; N_FEATURES],
            scale: vec![1.0; N_FEATURES],
        };
        let model = LogisticModel::from_parts(&scaler, &weights, 4.0).unwrap();
        let mut rows = Rows::default();
        for (i, kind) in [ErrorKind::Timeout, ErrorKind::Http429, ErrorKind::Connect]
            .into_iter()
            .enumerate()
        {
            let mut c = AttemptContext::first("t");
            c.attempt = 3;
            c.error = Some(kind);
            c.latency = Some(Duration::from_millis(200 + 100 * i as u64));
            c.elapsed = Duration::from_millis(1_500);
            c.delay = Duration::from_millis(700);
            rows.contexts.push(c);
            rows.success.push(i % 2 == 0);
            rows.started_at_ms.push(1_764_000_000_000 + i as u64);
            rows.call_id.push(Some(i as u64));
        }
        let curves = delay_curves(&model, &rows);
        assert_eq!(curves.len(), 3);
        let delays: Vec<Duration> = delay_grid()
            .into_iter()
            .map(Duration::from_secs_f64)
            .collect();
        for curve in &curves {
            let mut decider = vec![0.0; delays.len()];
            model.p_success_by_delay(&curve.context, &delays, &mut decider);
            let report: Vec<f64> = curve.points.iter().map(|[_, p]| *p).collect();
            assert_eq!(report, decider, "{}", curve.kind);
            // Flat at the context's own p(success): the wait moves nothing this model reads.
            let at_context = model.p_success(&curve.context);
            for p in &report {
                assert!(
                    (p - at_context).abs() < 1e-12,
                    "{}: {p} vs {at_context}",
                    curve.kind
                );
            }
            assert_eq!(Some(curve.context.elapsed), curve.context.latency);
        }
    }
}
