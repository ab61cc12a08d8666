//! Who may put a reply into the engine's queue: one bound for every source of replies (the
//! desktop, each browser session of the built-in server, each API client), so that no source
//! can make the others wait without end.
//!
//! A job is admitted when fewer than `running + max_waiting` jobs are in (`running` are
//! computed together, the others wait) and its client has fewer than `per_client` in. The [`Ticket`] it gets is held while the job
//! is queued or running; dropping it frees the place. Refusals say which bound was hit and
//! guess when a place frees (the moving average of a job's duration), for `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The bounds of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Jobs computed at once (the engine's batch size).
    pub running: usize,
    /// Jobs that may wait behind the running ones.
    pub max_waiting: usize,
    /// Jobs one client may have in at once, running and waiting together.
    pub per_client: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            running: 1,
            max_waiting: 4,
            per_client: 4,
        }
    }
}

/// Why a job was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every place in the queue is taken.
    #[error("The model is busy: {waiting} replies are already waiting. Try again in about {retry_after_s} s.")]
    QueueFull {
        /// Jobs waiting.
        waiting: usize,
        /// Seconds until a place is likely to free.
        retry_after_s: u64,
    },
    /// This client already has its share of the queue.
    #[error("You already have {limit} replies waiting or being written, the most one user may have at once. Wait for one to finish, or stop one.")]
    ClientLimit {
        /// The per-client bound.
        limit: usize,
        /// Seconds until a place is likely to free.
        retry_after_s: u64,
    },
}

impl Refusal {
    /// Seconds for `Retry-After`.
    pub fn retry_after_s(&self) -> u64 {
        match *self {
            Refusal::QueueFull { retry_after_s, .. }
            | Refusal::ClientLimit { retry_after_s, .. } => retry_after_s,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    limits: QueueLimits,
    active: usize,
    per_client: HashMap<String, usize>,
    /// Moving average of a job's duration, in milliseconds.
    avg_ms: u64,
}

/// The admission gate, shared by every handle of one engine.
#[derive(Debug, Clone)]
pub struct Admission(Arc<Mutex<State>>);

impl Default for Admission {
    fn default() -> Self {
        Self::new(QueueLimits::default())
    }
}

/// A place in the queue; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    gate: Admission,
    client: String,
    since: Instant,
}

impl Admission {
    /// A gate with `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        Self(Arc::new(Mutex::new(State {
            limits,
            avg_ms: 1000,
            ..State::default()
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is whole, so a poisoned lock still holds good counts.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the bounds (jobs already in keep their places).
    pub fn set_limits(&self, limits: QueueLimits) {
        self.state().limits = limits;
    }

    /// The bounds.
    pub fn limits(&self) -> QueueLimits {
        self.state().limits
    }

    /// Jobs admitted and not finished.
    pub fn active(&self) -> usize {
        self.state().active
    }

    /// Admits a job of `client` unless a bound is reached.
    pub fn try_admit(&self, client: &str) -> Result<Ticket, Refusal> {
        let mut s = self.state();
        let retry_after_s = s.avg_ms.div_ceil(1000).clamp(1, 60);
        let mine = s.per_client.get(client).copied().unwrap_or(0);
        let per_client = s.limits.per_client.max(1);
        if mine >= per_client {
            return Err(Refusal::ClientLimit {
                limit: per_client,
                retry_after_s,
            });
        }
        let running = s.limits.running.max(1);
        if s.active >= running + s.limits.max_waiting {
            return Err(Refusal::QueueFull {
                waiting: s.active.saturating_sub(running),
                retry_after_s,
            });
        }
        s.active += 1;
        *s.per_client.entry(client.to_string()).or_default() += 1;
        Ok(Ticket {
            gate: self.clone(),
            client: client.to_string(),
            since: Instant::now(),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let took = self.since.elapsed().as_millis().min(u64::MAX as u128) as u64;
        let mut s = self.gate.state();
        s.avg_ms = (s.avg_ms * 7 + took) / 8;
        s.active = s.active.saturating_sub(1);
        if let Some(n) = s.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_running_plus_the_waiting_ones_are_admitted() {
        let gate = Admission::new(QueueLimits {
            running: 1,
            max_waiting: 2,
            per_client: 10,
        });
        let a = gate.try_admit("a").unwrap();
        let _b = gate.try_admit("b").unwrap();
        let _c = gate.try_admit("c").unwrap();
        let busy = gate.try_admit("d").unwrap_err();
        assert!(
            matches!(busy, Refusal::QueueFull { waiting: 2, .. }),
            "{busy:?}"
        );
        assert!(busy.retry_after_s() >= 1);
        drop(a);
        assert_eq!(gate.active(), 2);
        assert!(gate.try_admit("d").is_ok());
    }

    #[test]
    fn a_batch_runs_beside_the_waiting_ones() {
        let gate = Admission::new(QueueLimits {
            running: 4,
            max_waiting: 2,
            per_client: 10,
        });
        let tickets: Vec<Ticket> = (0..6)
            .map(|i| gate.try_admit(&format!("c{i}")).unwrap())
            .collect();
        let busy = gate.try_admit("late").unwrap_err();
        assert!(
            matches!(busy, Refusal::QueueFull { waiting: 2, .. }),
            "{busy:?}"
        );
        drop(tickets);
        assert!(gate.try_admit("late").is_ok());
    }

    #[test]
    fn one_client_gets_its_share_and_no_more() {
        let gate = Admission::new(QueueLimits {
            running: 1,
            max_waiting: 10,
            per_client: 2,
        });
        let first = gate.try_admit("web:x").unwrap();
        let _second = gate.try_admit("web:x").unwrap();
        let refused = gate.try_admit("web:x").unwrap_err();
        assert!(matches!(refused, Refusal::ClientLimit { limit: 2, .. }));
        assert!(refused.to_string().contains("2 replies"), "{refused}");
        // Others still get in; the client does once one of its own ends.
        let _other = gate.try_admit("desktop").unwrap();
        drop(first);
        assert!(gate.try_admit("web:x").is_ok());
    }
}
