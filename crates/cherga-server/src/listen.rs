//! The accept loop: plain TCP or TLS, HTTP/1.1 by hyper, with the limits that
//! keep one client from starving the others.
//!
//! - at most `max_connections` connections are open, and at most
//!   `max_connections_per_client` from one client address (IPv6: one /64); a
//!   connection past either limit is closed as soon as it is accepted, so a flood
//!   from one client neither fills the server nor queues in front of others;
//! - a request head (and each idle keep-alive gap) must arrive within
//!   `header_read_timeout`, a TLS handshake within the same time, and the head is
//!   at most `max_header_bytes`;
//! - a whole request (body included) must be answered within `request_timeout`.
//!
//! Each request carries the client's address ([`ClientAddr`]) for the
//! failed-authentication limit.

use crate::HttpLimits;
use crate::auth::{ClientAddr, client_key};
use crate::error::ApiError;
use crate::tls::TlsCerts;
use axum::Router;
use axum::response::IntoResponse;
use cherga_api::ErrorCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting
/// and waits for the open connections to finish their requests.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    tls: Option<Arc<TlsCerts>>,
    open_gauge: Gauge,
    shutdown: impl Future<Output = ()>,
) {
    let mut slots = Slots::new(limits.max_connections, limits.max_connections_per_client);
    slots.gauge = open_gauge;
    let slots = Arc::new(slots);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The head limit on its own; the read buffer keeps hyper's default size,
        // so large bodies are read in large chunks.
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let http = Arc::new(http);
    let mut accept_errors = 0u64;
    let mut shed = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_errors += 1;
                    if !is_connection_error(&error) {
                        // Out of file descriptors and the like: wait a little, so the
                        // loop does not spin while nothing can be accepted.
                        if accept_errors.is_power_of_two() {
                            tracing::warn!(%error, accept_errors, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let Some(slot) = slots.take(peer.ip()) else {
            // Over a limit: close at once. Counted and logged now and then, not
            // per connection, so a flood does not flood the log too.
            shed += 1;
            if shed.is_power_of_two() {
                tracing::warn!(%peer, shed, "connection limit reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = request_service(router.clone(), peer, limits.request_timeout);
        match &tls {
            None => {
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(slot);
                });
            }
            Some(certs) => {
                let acceptor = certs.acceptor();
                let handshake_timeout = limits.header_read_timeout;
                let watcher = graceful.watcher();
                let http = http.clone();
                tokio::spawn(async move {
                    let Some(stream) = handshake(acceptor, stream, handshake_timeout, peer).await else {
                        return;
                    };
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// One request: tag it with the client's address and answer it within `timeout`.
fn request_service(
    router: Router,
    peer: SocketAddr,
    timeout: Duration,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ClientAddr(peer));
        let answer = router.clone().oneshot(request);
        async move {
            Ok(match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => ApiError::new(
                    ErrorCode::RequestTimeout,
                    format!("the request took longer than the server's limit of {} s", timeout.as_secs()),
                )
                .into_response(),
            })
        }
    })
}

/// Errors of one connection (the client went away) rather than of the listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// Open connections, in all and per client.
struct Slots {
    max: usize,
    max_per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// The number open, for `/metrics`.
    gauge: Gauge,
}

/// One open connection; frees its place when dropped.
struct Slot {
    slots: Arc<Slots>,
    client: IpAddr,
}

impl Slots {
    fn new(max: usize, max_per_client: usize) -> Self {
        Self { max, max_per_client, open: Mutex::new((0, HashMap::new())), gauge: Gauge::default() }
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let client = client_key(ip);
        let mut open = self.open.lock().expect("slots lock");
        let (total, per_client) = &mut *open;
        let mine = per_client.entry(client).or_insert(0);
        if *total >= self.max || *mine >= self.max_per_client {
            if *mine == 0 {
                per_client.remove(&client);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        self.gauge.inc();
        Some(Slot { slots: self.clone(), client })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slots lock");
        let (total, per_client) = &mut *open;
        *total -= 1;
        self.slots.gauge.dec();
        if let Some(mine) = per_client.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_limit_in_all_and_per_client() {
        let slots = Arc::new(Slots::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert!(slots.take(a).is_none(), "a third from a");
        let _b1 = slots.take(b).unwrap();
        assert!(slots.take(c).is_none(), "three open in all");
        drop(a1);
        let _c1 = slots.take(c).unwrap();
        assert_eq!(slots.open.lock().unwrap().0, 3);
    }
}
