//! Per-client rate limit: a token bucket per client address (governor's
//! keyed limiter), so that one client cannot take the whole server. Over
//! the limit: 429 with `Retry-After` and OSMO's error body. `/api/health`
//! is not counted (probes must see the server alive while it is busy).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use osmo_spec::config::RateLimit;

/// How many checks between sweeps of the buckets of clients gone quiet
/// (the limiter's memory stays bounded by the clients of the last moments).
const SWEEP_EVERY: u64 = 10_000;

#[derive(Clone)]
pub struct Limiter {
    inner: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    checks: Arc<AtomicU64>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        let inner = NonZeroU32::new(limit.requests_per_second).map(|rate| {
            let burst = NonZeroU32::new(limit.burst).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Limiter {
            inner,
            checks: Arc::default(),
        }
    }

    /// None when `client` may go on; else how long until it may.
    fn check(&self, client: IpAddr) -> Option<std::time::Duration> {
        let limiter = self.inner.as_ref()?;
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&client)
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

pub async fn limit(State(limiter): State<Limiter>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(client) = client
        && req.uri().path() != "/api/health"
        && let Some(wait) = limiter.check(client)
    {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let message = format!(
            "too many requests from {client}: this server allows each client a limited rate \
             (`rate_limit` in its configuration); try again in {seconds} s"
        );
        let body = serde_json::json!({
            "error": message, "message": message, "error_code": "USER", "diagnostics": [],
        });
        let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return response;
    }
    next.run(req).await
}
