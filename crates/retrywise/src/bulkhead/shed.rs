//! The bulkhead's queue of waiting calls, ordered by their predicted chance of success:
//! room that frees up goes to the likeliest call, and a full queue sheds the least likely
//! one — not the last to arrive.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
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
    /// `waiters.len()`, written under the lock: a release or a grant that reads zero takes
    /// no lock (see [`ShedQueue::release`]).
    queued: AtomicUsize,
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
            queued: AtomicUsize::new(0),
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
        let shed = if w.len() >= self.capacity {
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
            // The least likely waiter is shed (its sender dropped) to make this one's place
            // - once this one is sure to wait.
            Some(w.swap_remove(i))
        } else {
            None
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        w.push(Waiter { id, p, room: tx });
        self.queued.store(w.len(), Ordering::SeqCst);
        // A holder that left without the lock (it saw no one queued) left its room in the
        // gate: after being counted, look once more.
        fence(Ordering::SeqCst);
        if gate.try_enter() {
            w.pop();
            // In without a place: the waiter it would have taken the place of keeps it.
            w.extend(shed);
            self.queued.store(w.len(), Ordering::SeqCst);
            return Queued::Entered;
        }
        drop(shed);
        Queued::Waiting { id, room: rx }
    }

    /// Calls waiting now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Takes waiter `id` out of the queue (its wait ran out); false if it was no longer
    /// there (given room or shed meanwhile).
    pub(crate) fn leave_queue(&self, id: u64) -> bool {
        let mut w = self.lock();
        match w.iter().position(|x| x.id == id) {
            Some(i) => {
                w.swap_remove(i);
                self.queued.store(w.len(), Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// A holder leaves: its room goes to the likeliest waiter, or back to the gate. With
    /// nobody queued it goes back to the gate without the lock; a call queueing meanwhile
    /// either is seen after the room is back (and granted it) or sees the room itself
    /// (its second look in [`join`](Self::join)): both sides write, then read, in one
    /// sequentially consistent order. A room above a lowered maximum goes back to the
    /// gate too, and a waiter gets room only within the maximum ([`grant`](Self::grant)):
    /// handed on, it would keep the holders above the limit for as long as calls queue.
    pub(crate) fn release(&self, gate: &Gate) {
        if self.queued.load(Ordering::SeqCst) == 0 || gate.active() > gate.max() {
            // `leave` is a sequentially consistent read-modify-write: no fence needed
            // before the second look.
            gate.leave();
            if self.queued.load(Ordering::SeqCst) > 0 {
                self.grant(gate);
            }
            return;
        }
        let mut w = self.lock();
        while let Some(i) = likeliest(&w) {
            let waiter = w.swap_remove(i);
            self.queued.store(w.len(), Ordering::SeqCst);
            if waiter.room.send(()).is_ok() {
                gate.count_admission();
                return;
            }
        }
        gate.leave();
    }

    /// The gate's maximum rose (or a holder left without the lock): gives the room there
    /// is to the likeliest waiters. Nothing to do, and no lock, while nobody is queued.
    pub(crate) fn grant(&self, gate: &Gate) {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut w = self.lock();
        while !w.is_empty() && gate.try_enter() {
            let mut given = false;
            while let Some(i) = likeliest(&w) {
                let waiter = w.swap_remove(i);
                if waiter.room.send(()).is_ok() {
                    given = true;
                    break;
                }
            }
            if !given {
                gate.leave();
            }
        }
        self.queued.store(w.len(), Ordering::SeqCst);
    }
}

fn likeliest(w: &[Waiter]) -> Option<usize> {
    w.iter()
        .enumerate()
        // Of equal chances, the one that came first: the lowest id (`max_by` keeps the
        // last maximum, and `swap_remove` reorders the waiters).
        .max_by(|a, b| a.1.p.total_cmp(&b.1.p).then(b.1.id.cmp(&a.1.id)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::AttemptContext;

    /// The limit came down while calls wait: the holders above it leave without handing
    /// their room on, and only a room within the maximum passes to the waiter.
    #[test]
    fn a_room_above_a_lowered_maximum_goes_back_to_the_gate() {
        let gate = Gate::new(3);
        for _ in 0..3 {
            assert!(gate.try_enter());
        }
        let q = ShedQueue::new(Arc::new(|_: &AttemptContext| 0.5), 4);
        let Queued::Waiting { mut room, .. } = q.join(&gate, 0.5) else {
            panic!("the gate is full: the call waits");
        };
        gate.set_max(1);
        for left in [2, 1] {
            q.release(&gate);
            assert!(room.try_recv().is_err(), "above the maximum: not handed on");
            assert_eq!(gate.active(), left);
        }
        // The last holder leaves: its room is within the maximum, and passes on.
        q.release(&gate);
        assert!(room.try_recv().is_ok());
        assert_eq!(gate.active(), 1);
    }

    /// Of waiters with equal chances (a model that answers one p, or none), room goes to
    /// the one that came first - also after one in the middle left and the others were
    /// reordered.
    #[test]
    fn equal_chances_are_served_in_arrival_order() {
        let gate = Gate::new(1);
        assert!(gate.try_enter());
        let q = ShedQueue::new(Arc::new(|_: &AttemptContext| 0.5), 8);
        let mut rooms = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let Queued::Waiting { id, room } = q.join(&gate, 0.5) else {
                panic!("the gate is full: the call waits");
            };
            ids.push(id);
            rooms.push(room);
        }
        // The second's wait runs out: the last is moved into its place.
        assert!(q.leave_queue(ids[1]));
        for served in [0, 2, 3, 4] {
            q.release(&gate);
            assert!(rooms[served].try_recv().is_ok(), "waiter {served} is next");
            for (i, r) in rooms.iter_mut().enumerate().skip(served + 1) {
                if i != 1 {
                    assert!(r.try_recv().is_err(), "waiter {i} still waits");
                }
            }
        }
    }
}
