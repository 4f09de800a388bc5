//! Nothing but the `sim` benchmark (`cargo bench -p retrywise-sim-benches`).
