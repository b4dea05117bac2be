//! Limits that protect the server and the other clients: a per-connection token bucket and
//! per-IP / total connection caps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// A token bucket: `burst` tokens, refilled at `rate` per second. Time is passed in.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_n(1.0, now)
    }

    /// Takes `n` tokens if there are that many (used with bytes as tokens).
    pub(crate) fn try_take_n(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Why a connection was refused before the WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnRefused {
    /// The total connection cap is reached.
    TooManyConnections,
    /// The per-IP connection cap is reached.
    TooManyConnectionsPerIp,
}

impl ConnRefused {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ConnRefused::TooManyConnections => "too_many_connections",
            ConnRefused::TooManyConnectionsPerIp => "too_many_connections_per_ip",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts live connections, in total and per IP.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

/// Holds one connection slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnLimiter {
    /// A limiter with the given caps.
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> ConnLimiter {
        ConnLimiter {
            max_total,
            max_per_ip,
            counts: Arc::default(),
        }
    }

    /// Takes a slot for a connection from `ip`, or says which cap is reached.
    pub(crate) fn try_acquire(&self, ip: IpAddr) -> Result<ConnSlot, ConnRefused> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if c.total >= self.max_total {
            return Err(ConnRefused::TooManyConnections);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(ConnRefused::TooManyConnectionsPerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnSlot {
            ip,
            counts: Arc::clone(&self.counts),
        })
    }

    /// Live connections.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(101)));
        assert!(!b.try_take(t0 + Duration::from_millis(102)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }

    #[test]
    fn caps_per_ip_and_total() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let s1 = l.try_acquire(a).unwrap();
        let _s2 = l.try_acquire(a).unwrap();
        assert_eq!(
            l.try_acquire(a).unwrap_err(),
            ConnRefused::TooManyConnectionsPerIp
        );
        let _s3 = l.try_acquire(b).unwrap();
        assert_eq!(
            l.try_acquire(b).unwrap_err(),
            ConnRefused::TooManyConnections
        );
        drop(s1);
        assert_eq!(l.total(), 2);
        let _s4 = l.try_acquire(a).unwrap();
    }
}
