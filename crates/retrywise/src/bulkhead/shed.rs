//! The bulkhead's queue of waiting calls, ordered by their predicted chance of success:
//! room that frees up goes to the likeliest call, and a full queue sheds the least likely
//! one — not the last to arrive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::model::{SuccessModel, sanitize_probability};

use super::gate::Gate;

/// One waiting call.
struct Waiter {
    id: u64,
    p: f64,
    /// Sent to when the call is given room (the room passes straight from the call that
    /// left); dropped when it is shed.
    room: oneshot::Sender<()>,
}

/// Calls waiting for room, by predicted p(success).
pub(crate) struct ShedQueue {
    model: Arc<dyn SuccessModel>,
    capacity: usize,
    waiters: Mutex<Vec<Waiter>>,
    next: AtomicU64,
}

impl std::fmt::Debug for ShedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShedQueue")
            .field("capacity", &self.capacity)
            .field("waiting", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// Where a call that found no room stands.
pub(crate) enum Queued {
    /// Room freed up while it joined: it holds it.
    Entered,
    /// It waits: `room` answers when it is given room (or errs when it is shed).
    Waiting {
        id: u64,
        room: oneshot::Receiver<()>,
    },
    /// The queue is full of calls likelier to succeed: shed at once.
    Shed,
}

impl ShedQueue {
    pub(crate) fn new(model: Arc<dyn SuccessModel>, capacity: usize) -> Self {
        Self {
            model,
            capacity,
            waiters: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Waiter>> {
        // Every critical section leaves the vector whole.
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The model's p(success) of the call in `ctx` (NaN read as 0.5), or 0.5 without one.
    pub(crate) fn p(&self, ctx: Option<&crate::attempt::AttemptContext>) -> f64 {
        ctx.map_or(0.5, |c| sanitize_probability(self.model.p_success(c)))
    }

    /// Joins the queue with predicted `p`, unless room is free now (checked under the
    /// queue's lock, which every release takes: no room can free up unseen).
    pub(crate) fn join(&self, gate: &Gate, p: f64) -> Queued {
        let mut w = self.lock();
        if gate.try_enter() {
            return Queued::Entered;
        }
        if w.len() >= self.capacity {
            let Some((i, least)) = w
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.p.total_cmp(&b.1.p))
                .map(|(i, x)| (i, x.p))
            else {
                // A queue of no places: nobody waits.
                return Queued::Shed;
            };
            if p <= least {
                return Queued::Shed;
            }
            // The least likely waiter is shed (its sender dropped) to make this one's place.
            w.swap_remove(i);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        w.push(Waiter { id, p, room: tx });
        Queued::Waiting { id, room: rx }
    }

    /// Takes waiter `id` out of the queue (its wait ran out); false if it was no longer
    /// there (given room or shed meanwhile).
    pub(crate) fn leave_queue(&self, id: u64) -> bool {
        let mut w = self.lock();
        match w.iter().position(|x| x.id == id) {
            Some(i) => {
                w.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// A holder leaves: its room goes to the likeliest waiter, or back to the gate.
    pub(crate) fn release(&self, gate: &Gate) {
        let mut w = self.lock();
        while let Some(i) = likeliest(&w) {
            if w.swap_remove(i).room.send(()).is_ok() {
                gate.count_admission();
                return;
            }
        }
        gate.leave();
    }

    /// The gate's maximum rose: gives the new room to the likeliest waiters.
    pub(crate) fn grant(&self, gate: &Gate) {
        let mut w = self.lock();
        while !w.is_empty() && gate.try_enter() {
            let mut given = false;
            while let Some(i) = likeliest(&w) {
                if w.swap_remove(i).room.send(()).is_ok() {
                    given = true;
                    break;
                }
            }
            if !given {
                gate.leave();
            }
        }
    }
}

fn likeliest(w: &[Waiter]) -> Option<usize> {
    w.iter()
        .enumerate()
        .max_by(|a, b| a.1.p.total_cmp(&b.1.p))
        .map(|(i, _)| i)
}
