//! The trainer benchmark's data: the synthetic attempt set of `retrywise_train::synthetic`,
//! written as the attempts Parquet the trainer reads and as the encoded feature matrix the
//! scikit-learn pipeline reads.

use std::path::Path;

use polars::prelude::*;
use retrywise::attempt::AttemptRecord;
use retrywise::features;
use retrywise_collect::compact::FrameBuilder;
pub use retrywise_train::synthetic::records;

/// Writes the records as one Parquet file of the attempt schema, and the encoder's
/// feature matrix (columns `f0`…, `success`, `validation`) for the reference pipeline.
/// `validation_from_ms` marks the validation rows the same way the trainer's time split
/// does.
pub fn write(
    records: &[AttemptRecord],
    attempts: &Path,
    features_path: &Path,
    validation_from_ms: u64,
) -> PolarsResult<()> {
    let mut fb = FrameBuilder::new();
    for r in records {
        fb.push(r.clone());
    }
    let mut df = fb.finish()?;
    ParquetWriter::new(std::fs::File::create(attempts)?).finish(&mut df)?;

    let mut cols: Vec<Vec<f64>> = (0..features::N_FEATURES)
        .map(|_| Vec::with_capacity(records.len()))
        .collect();
    for r in records {
        let x = features::encode(&r.context);
        for (c, v) in cols.iter_mut().zip(x) {
            c.push(v);
        }
    }
    let mut columns: Vec<Column> = cols
        .into_iter()
        .enumerate()
        .map(|(j, c)| Column::new(format!("f{j}").into(), c))
        .collect();
    columns.push(Column::new(
        "success".into(),
        records
            .iter()
            .map(|r| r.outcome == retrywise::attempt::Outcome::Success)
            .collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "validation".into(),
        records
            .iter()
            .map(|r| r.started_at_ms >= validation_from_ms)
            .collect::<Vec<_>>(),
    ));
    let mut fdf = DataFrame::new(records.len(), columns)?;
    ParquetWriter::new(std::fs::File::create(features_path)?).finish(&mut fdf)?;
    Ok(())
}
