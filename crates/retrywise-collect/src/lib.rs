//! # retrywise-collect
//!
//! Durable attempt records. [`SegmentRecorder`] implements the policy crate's
//! [`Recorder`](retrywise::recorder::Recorder): `record()` never blocks — a bounded queue
//! feeds a background thread that writes NDJSON segment files, rotates, fsyncs, and counts
//! whatever it has to drop. [`SegmentReader`] streams the records back, skipping and
//! counting what crashes and bugs leave behind. [`ShippingRecorder`] batches records to the
//! service's ingestion endpoint instead of the disk. With the `parquet` feature,
//! `compact` turns closed segments into day-partitioned Parquet.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use retrywise::policy::Policy;
//! use retrywise_collect::{SegmentRecorder, WriterConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let recorder = SegmentRecorder::open(dir.path(), WriterConfig::default())?;
//! let policy = Policy::builder("inventory").recorder(Arc::new(recorder.clone())).build()?;
//! # let _ = policy;
//! // ... every request the policy sends is now recorded in `dir` ...
//! recorder.close()?;
//! # Ok(()) }
//! ```

mod bounded;
mod error;
mod reader;
pub mod segment;
mod shipper;
mod spool;
mod stats;
mod storage;
mod writer;

#[cfg(feature = "parquet")]
pub mod compact;
#[cfg(feature = "parquet")]
pub mod footer;

pub use bounded::{Line, read_bounded, read_line_bounded};
pub use error::{CollectError, chain as error_chain};
pub use reader::{ReadSummary, SegmentReader, SkippedLine, copy_skipped_lines};
pub use shipper::{ShipperConfig, ShippingRecorder};
pub use stats::RecorderStats;
pub use storage::{FileSystem, Storage};
pub use writer::{LOCK_FILE, SegmentRecorder, WriterConfig};
