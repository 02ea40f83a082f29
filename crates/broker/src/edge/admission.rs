//! What a connection may hold before it has authenticated.
//!
//! Every accepted socket gets a [`Ticket`] at once, before its TLS handshake: at most
//! `max_unauthenticated` tickets exist (a new connection over the cap pushes out the oldest
//! one still without a session, so idle or slow sockets cannot starve real clients), and at
//! most `max_unauthenticated_per_address` per source address (over it, that address's oldest
//! gives way: a flood from one address pushes out only its own sockets). A ticket is released when its client has authenticated and holds a
//! `max_connections` slot; dropping it (the connection ended) releases it too. So every socket
//! is counted from accept: as a ticket, then as a connection.
//!
//! [`Turns`] bounds the password checks waiting for the argon2 workers: a few per source
//! address and a few in all, so a flood of wrong passwords cannot queue up in front of a real
//! login.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

/// The unauthenticated connections of the whole edge, oldest first.
pub(crate) struct Admission {
    cap: usize,
    per_address: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    waiting: VecDeque<(u64, IpAddr, CancellationToken)>,
    per_address: HashMap<IpAddr, usize>,
}

impl State {
    fn remove(&mut self, id: u64) -> bool {
        let Some(at) = self.waiting.iter().position(|(i, _, _)| *i == id) else {
            return false;
        };
        if let Some((_, addr, _)) = self.waiting.remove(at) {
            self.forget(addr);
        }
        true
    }

    fn forget(&mut self, addr: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&addr);
            }
        }
    }
}

/// One unauthenticated connection's place; it leaves when released or dropped.
pub(crate) struct Ticket {
    id: u64,
    token: CancellationToken,
    owner: Arc<Admission>,
}

impl Admission {
    pub(crate) fn new(cap: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            per_address: per_address.max(1),
            state: Mutex::default(),
        })
    }

    /// A place for a new connection from `addr`: the oldest unauthenticated connection from
    /// the same address gives way when that address has its share, the oldest of all when the
    /// edge is at its cap. A flood from one address thus pushes out only its own sockets.
    pub(crate) fn admit(self: &Arc<Self>, addr: IpAddr) -> Ticket {
        let mut state = self.lock();
        if state.per_address.get(&addr).copied().unwrap_or(0) >= self.per_address
            && let Some(at) = state.waiting.iter().position(|(_, a, _)| *a == addr)
            && let Some((_, _, oldest)) = state.waiting.remove(at)
        {
            oldest.cancel();
            state.forget(addr);
        }
        while state.waiting.len() >= self.cap {
            let Some((_, old_addr, oldest)) = state.waiting.pop_front() else {
                break;
            };
            oldest.cancel();
            state.forget(old_addr);
        }
        let id = state.next;
        state.next += 1;
        let token = CancellationToken::new();
        state.waiting.push_back((id, addr, token.clone()));
        *state.per_address.entry(addr).or_default() += 1;
        Ticket {
            id,
            token,
            owner: self.clone(),
        }
    }

    /// The gateway is stopping: every connection not yet authenticated ends now (sessions
    /// finish on their own).
    pub(crate) fn evict_all(&self) {
        let mut state = self.lock();
        for (_, _, token) in state.waiting.drain(..) {
            token.cancel();
        }
        state.per_address.clear();
    }

    /// Unauthenticated connections now (for tests and status).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ticket {
    /// The client authenticated and holds a connection slot: it is no longer counted here,
    /// and can no longer be pushed out.
    pub(crate) fn release(&self) {
        self.owner.lock().remove(self.id);
    }

    /// Cancelled when a newer connection pushes this one out.
    pub(crate) fn eviction(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

/// Password checks waiting or running, per source address and in all.
pub(crate) struct Turns {
    per_address: usize,
    total: usize,
    state: Mutex<HashMap<IpAddr, usize>>,
}

/// One password check's turn; given back when dropped.
pub(crate) struct Turn {
    addr: IpAddr,
    owner: Arc<Turns>,
}

impl Turns {
    pub(crate) fn new(per_address: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_address,
            total,
            state: Mutex::default(),
        })
    }

    /// A turn for a check from `addr`; `None` when that address or the edge has enough
    /// checks queued already (the client is told the server is busy, and may try again).
    pub(crate) fn take(self: &Arc<Self>, addr: IpAddr) -> Option<Turn> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let all: usize = state.values().sum();
        let mine = state.get(&addr).copied().unwrap_or(0);
        if mine >= self.per_address || all >= self.total {
            return None;
        }
        *state.entry(addr).or_default() += 1;
        Some(Turn {
            addr,
            owner: self.clone(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = self
            .owner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = state.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                state.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_oldest_unauthenticated_connection_gives_way_and_each_address_has_a_share() {
        let admission = Admission::new(3, 2);
        let first = admission.admit(ip(1));
        let second = admission.admit(ip(2));
        let third = admission.admit(ip(1));
        // A third from address 1: its own oldest gives way, not address 2's.
        let fourth = admission.admit(ip(1));
        assert!(first.token.is_cancelled());
        assert!(!second.token.is_cancelled() && !third.token.is_cancelled());
        assert_eq!(admission.waiting(), 3);
        // Over the cap: the oldest of all gives way.
        let _fifth = admission.admit(ip(3));
        assert!(second.token.is_cancelled());
        assert!(!fourth.token.is_cancelled());
        drop(first);
        assert_eq!(admission.waiting(), 3);
    }

    #[test]
    fn a_released_ticket_is_no_longer_counted_nor_pushed_out() {
        let admission = Admission::new(1, 1);
        let session = admission.admit(ip(1));
        session.release();
        let _next = admission.admit(ip(1));
        let _after = admission.admit(ip(2));
        assert!(!session.token.is_cancelled());
    }

    #[test]
    fn password_turns_are_bounded_per_address_and_in_all() {
        let turns = Turns::new(2, 3);
        let a = turns.take(ip(1)).unwrap();
        let _b = turns.take(ip(1)).unwrap();
        assert!(turns.take(ip(1)).is_none());
        let _c = turns.take(ip(2)).unwrap();
        assert!(turns.take(ip(3)).is_none(), "the edge has enough queued");
        drop(a);
        assert!(turns.take(ip(3)).is_some());
    }
}
