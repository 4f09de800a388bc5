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
    let summary = compact(&options, |e| {
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
    })
    .with_context(|| {
        format!(
            "compacting {} into {}",
            args.input.display(),
            args.output.display()
        )
    })?;
    bar.finish_and_clear();
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
            }
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
    for path in &s.unreadable_kept {
        outln!(
            "kept     {}: not one of its lines is a record (see the skipped lines above)",
            path.display()
        );
    }
}
