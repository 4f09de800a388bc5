//! The adaptive composition on a call that succeeds at once allocates nothing: counted by
//! allocation-counter (a global allocator counting per thread) over calls after a warm-up.
//! A test of its own, so that the counting allocator is in no other binary.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use retrywise::attempt::AttemptContext;
use retrywise::model::SharedModel;
use retrywise::policy::Policy;

#[test]
fn the_adaptive_composition_allocates_nothing_on_an_immediate_success() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let model = Arc::new(SharedModel::new(Arc::new(|_: &AttemptContext| 0.9)));
    let policy = Policy::builder("payments")
        .adaptive(model)
        .unwrap()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm-up: thread-locals, the health window's first buckets, the limit's state.
        for _ in 0..1_000 {
            policy
                .call(|_| async { Ok::<_, std::io::Error>(1) })
                .await
                .unwrap();
        }
    });
    // Pinned here, outside the count: tokio boxes a future bigger than its threshold
    // (2 KiB in debug builds) when it blocks on it, and this loop's is - an allocation of
    // the test's own, not of a call.
    let calls = Box::pin(async {
        for _ in 0..10_000 {
            policy
                .call(|_| async { Ok::<_, std::io::Error>(1) })
                .await
                .unwrap();
        }
    });
    let info = allocation_counter::measure(|| rt.block_on(calls));
    assert_eq!(info.count_total, 0, "allocations on the success path");
}
