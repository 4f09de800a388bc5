//! `retrywise compact`: NDJSON segments to day-partitioned Parquet.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use retrywise_collect::compact::{CompactEvent, CompactOptions, CompactSummary, Disposal, compact};

/// Options of `retrywise compact`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The segment directory the collector writes, or a tree of them (every directory
    /// below it that holds segments, e.g. `sim run --record DIR`'s one per policy).
    #[arg(long, default_value = "data/attempts")]
    input: PathBuf,
    /// The root of the Parquet dataset.
    #[arg(long, default_value = "data/parquet")]
    output: PathBuf,
    /// Move compacted segments here instead of deleting them.
    #[arg(long)]
    archive: Option<PathBuf>,
    /// Segments compacted at once (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    // (A file given as either folder is refused by `compact` itself, naming it.)
    if !args.input.exists() {
        anyhow::bail!("input directory {} does not exist", args.input.display());
    }
    let mut options = CompactOptions::new(&args.input, &args.output);
    if let Some(dir) = &args.archive {
        options.disposal = Disposal::Archive(dir.clone());
    }
    if let Some(n) = args.threads {
        options.threads = n;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} compacting [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // Without a terminal (CI, a log file) the bar is not drawn: the start and each part
    // written get a line instead, so a long run is never silent.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = compact_with_bar(&options, args, &bar, plain)?;
    if summary.read.files == 0 {
        anyhow::bail!(
            "nothing to compact: no closed segment (seg-*.ndjson) in {} or below{}",
            args.input.display(),
            if summary.open_segments_skipped > 0 {
                format!(
                    " ({} still open: being written, or left by a writer that has not restarted)",
                    summary.open_segments_skipped
                )
            } else {
                String::new()
            } + &unlisted_note(&summary.folders_unlisted)
        );
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary, args);
    }
    // Segments, but not one record among them: nothing was compacted.
    if summary.rows == 0 && !summary.interrupted {
        anyhow::bail!(
            "nothing compacted: the {} closed segments under {} hold no record ({} lines skipped; {} left in place)",
            summary.read.files,
            args.input.display(),
            summary.read.skipped(),
            summary.unreadable_kept.len()
        );
    }
    Ok(())
}

/// Compacts as `options` say, `bar` showing the progress (and, when `plain`, a line on
/// stderr for the start and each part written). The bar is cleared whether the compaction
/// succeeds or not, so an error is never printed under a bar left drawn above it.
fn compact_with_bar(
    options: &CompactOptions,
    args: &Args,
    bar: &ProgressBar,
    plain: bool,
) -> anyhow::Result<CompactSummary> {
    let result = compact(options, |e| {
        match e {
            CompactEvent::Started { segments, bytes } => {
                bar.set_length(*bytes);
                if plain {
                    errln!("compacting {segments} closed segments ({bytes} bytes)");
                }
            }
            CompactEvent::SegmentDone { bytes, .. } => bar.inc(*bytes),
            CompactEvent::PartWritten { path, rows } => {
                if plain {
                    errln!("written {} ({rows} rows)", path.display());
                }
                bar.set_message(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        ControlFlow::Continue(())
    });
    bar.finish_and_clear();
    result.with_context(|| {
        format!(
            "compacting {} into {}",
            args.input.display(),
            args.output.display()
        )
    })
}

/// What "nothing to compact" adds when folders could not be listed: their segments,
/// if any, were not seen.
fn unlisted_note(folders: &[std::path::PathBuf]) -> String {
    match folders {
        [] => String::new(),
        [one] => format!("; {} could not be listed", one.display()),
        [first, rest @ ..] => format!(
            "; {} and {} more folder{} could not be listed",
            first.display(),
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

fn print_summary(s: &CompactSummary, args: &Args) {
    let r = &s.read;
    outln!(
        "read     {} segments in {} directories ({} bytes): {} lines, {} records",
        s.segments,
        s.directories,
        r.bytes,
        r.lines,
        r.records
    );
    outln!(
        "skipped  {} lines: {} torn, {} malformed, {} without a readable schema version",
        r.skipped(),
        r.torn,
        r.malformed,
        r.unknown_version
    );
    for e in &r.examples {
        outln!("         {e}");
    }
    outln!(
        "wrote    {} Parquet files, {} rows, {} bytes, under {}",
        s.parts,
        s.rows,
        s.bytes,
        args.output.display()
    );
    for (day, rows) in &s.rows_per_day {
        outln!("         date={day}: {rows} rows");
    }
    if s.open_segments_skipped > 0 {
        outln!(
            "left     {} open segments alone (being written, or left by a writer that has not restarted)",
            s.open_segments_skipped
        );
    }
    match &args.archive {
        _ if s.segments == 0 => {}
        Some(dir) => outln!("archived compacted segments into {}", dir.display()),
        None => outln!("removed  compacted segments from {}", args.input.display()),
    }
    for path in &s.rejected_kept {
        outln!(
            "kept     {}: the lines of a removed segment that were not records (see the skipped lines above)",
            path.display()
        );
    }
    for path in &s.folders_unlisted {
        outln!(
            "skipped  {}: the folder cannot be listed (no permission, or removed meanwhile); any segments in it were left there",
            path.display()
        );
    }
    for path in &s.unreadable_kept {
        outln!(
            "kept     {}: not one of its lines is a record (see the skipped lines above)",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compaction that fails clears its progress bar before the error is returned (the
    /// error used to return first, leaving the bar drawn above the message).
    #[test]
    fn a_failed_compaction_clears_its_bar() {
        let root = tempfile::tempdir().unwrap();
        let input = root.path().join("attempts");
        std::fs::create_dir(&input).unwrap();
        // A file where the Parquet dataset's folder would be: `compact` refuses it.
        let output = root.path().join("parquet");
        std::fs::write(&output, "").unwrap();
        let args = Args {
            input: input.clone(),
            output: output.clone(),
            archive: None,
            threads: None,
            json: false,
        };
        let bar = ProgressBar::hidden();
        let e = compact_with_bar(&CompactOptions::new(&input, &output), &args, &bar, false)
            .unwrap_err();
        assert!(format!("{e:#}").contains("compacting"), "{e:#}");
        assert!(bar.is_finished(), "the bar is left drawn above: {e:#}");
    }
}
