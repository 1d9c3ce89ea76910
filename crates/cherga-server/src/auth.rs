//! Who is asking, and may they: bearer tokens checked on every request, the
//! revocations every node shares through the store, a limit on failed attempts
//! per client, and extractors that check a route's scope before its body is read.
//!
//! The scope each route needs (SECURITY.md has the table):
//! - enqueue, batch enqueue: `produce:<queue>`; cancel, retry a dead task:
//!   `produce:<task's queue>`;
//! - lease: `consume:<queue>`; ack, nack, extend, batch ack: `consume:<task's queue>`;
//! - get or list tasks, get a queue: `produce` or `consume` on the queue;
//!   `GET /v1/queues` lists only the queues the token may read;
//! - queue settings, revocations: `admin` (which also allows everything else);
//! - `/metrics`: a token that may read every queue (`admin`, `read:*`, `produce:*`
//!   or `consume:*`);
//! - `/healthz`, `/readyz`, `/v1/openapi.json`: open.
//!
//! Per-task routes learn the task's queue before anything else: from a cache
//! filled when this node enqueues or leases (a task never changes queue), else
//! from the store. A token whose scope covers every queue skips the lookup.
//!
//! **Invariant:** a token is never logged or echoed; a refusal says why in
//! general terms only. **Invariant:** when the revocation set could not be read
//! from the store for [`REVOCATIONS_STALE_MS`], every token is refused (503)
//! rather than a revoked one accepted.

use crate::error::ApiError;
use crate::extract::PathArg;
use crate::{App, now_ms};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cherga_api::ErrorCode;
use cherga_auth::{Access, Principal, TokenError, Verifier};
use cherga_core::{Millis, QueueName, TaskId};
use cherga_store::{Revocation, Store};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How often each node reads the revocation set from the store.
pub const REVOCATIONS_REFRESH_MS: Millis = 1_000;
/// After this long without a successful read, tokens are refused.
pub const REVOCATIONS_STALE_MS: Millis = 10_000;
/// Window of the failed-authentication limit.
const FAILURE_WINDOW_MS: Millis = 60_000;
/// Most clients tracked by the failure limit; beyond, idle entries are dropped.
const MAX_TRACKED_CLIENTS: usize = 65_536;
/// Entries in each generation of the task → queue cache.
const TASK_QUEUE_CACHE: usize = 65_536;

/// Verified tokens kept; past this the cache starts again empty.
const VERIFIED_CACHE: usize = 10_000;

/// The keys tokens are checked with, replaceable while serving (key rotation
/// without a restart: `cherga serve` reloads the key file on SIGHUP), and the
/// tokens they verified.
///
/// A client sends the same token with every request, and an Ed25519 check costs
/// more than the rest of a small request, so a verified token is remembered (by
/// its whole text) with what it grants. A remembered token is still checked for
/// expiry and revocation on every request; a token that failed is not
/// remembered; replacing the keys forgets every token.
#[derive(Debug)]
pub struct TokenKeys {
    state: RwLock<KeysState>,
}

#[derive(Debug)]
struct KeysState {
    verifier: Arc<Verifier>,
    verified: HashMap<Box<str>, Arc<Principal>>,
}

impl TokenKeys {
    pub fn new(verifier: Verifier) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(KeysState { verifier: Arc::new(verifier), verified: HashMap::new() }),
        })
    }

    /// Checks tokens with `verifier` from now on.
    pub fn replace(&self, verifier: Verifier) {
        let mut state = self.state.write().expect("keys lock");
        state.verifier = Arc::new(verifier);
        state.verified.clear();
    }

    /// The clock skew allowed on `exp` and `nbf`, in seconds.
    fn leeway_s(&self) -> i64 {
        self.state.read().expect("keys lock").verifier.policy().leeway_s
    }

    fn verify(&self, token: &str, now_s: i64) -> Result<Arc<Principal>, TokenError> {
        let verifier = {
            let state = self.state.read().expect("keys lock");
            if let Some(principal) = state.verified.get(token) {
                // Signature, issuer, audience and nbf held when it was verified;
                // only the expiry can change with time.
                if now_s < principal.expires_at.saturating_add(state.verifier.policy().leeway_s) {
                    return Ok(principal.clone());
                }
                return Err(TokenError::Expired);
            }
            state.verifier.clone()
        };
        let principal = Arc::new(verifier.verify(token, now_s)?);
        let mut state = self.state.write().expect("keys lock");
        // Only if the keys were not replaced meanwhile.
        if Arc::ptr_eq(&state.verifier, &verifier) {
            if state.verified.len() >= VERIFIED_CACHE {
                state.verified.clear();
            }
            state.verified.insert(token.into(), principal.clone());
        }
        Ok(principal)
    }
}

/// Authentication settings of a server.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub keys: Arc<TokenKeys>,
    /// Failed authentications a client may make per minute before it gets 429s
    /// for the rest of the minute; 0 = no limit.
    pub max_failures_per_minute: u32,
}

/// The address of the client of a request, put there by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The per-server state of authentication.
pub(crate) struct Guard {
    keys: Arc<TokenKeys>,
    revoked: RwLock<Arc<HashSet<String>>>,
    /// When the revocation set was last read from the store.
    revoked_read_at: AtomicI64,
    failures: FailureLimit,
    task_queues: TaskQueues,
}

impl Guard {
    pub(crate) fn new(config: &AuthConfig) -> Self {
        Self {
            keys: config.keys.clone(),
            revoked: RwLock::new(Arc::new(HashSet::new())),
            revoked_read_at: AtomicI64::new(0),
            failures: FailureLimit::new(config.max_failures_per_minute),
            task_queues: TaskQueues::default(),
        }
    }

    /// Replaces the revocation set with what the store holds at `now`.
    pub(crate) async fn refresh_revocations(
        &self,
        store: &impl Store,
        now: Millis,
    ) -> Result<usize, cherga_store::StoreError> {
        let list = store.revoked_tokens(now).await?;
        let n = list.len();
        let set: HashSet<String> = list.into_iter().map(|r| r.jti).collect();
        *self.revoked.write().expect("revocations lock") = Arc::new(set);
        self.revoked_read_at.store(now, Ordering::Relaxed);
        Ok(n)
    }

    /// Adds a revocation made on this node, so it applies here at once.
    fn revoked_here(&self, jti: &str) {
        let mut revoked = self.revoked.write().expect("revocations lock");
        let mut set = HashSet::clone(&revoked);
        set.insert(jti.to_owned());
        *revoked = Arc::new(set);
    }

    /// Checks the request's bearer token.
    pub(crate) fn authenticate(&self, parts: &Parts, now: Millis) -> Result<Arc<Principal>, ApiError> {
        let client = parts.extensions.get::<ClientAddr>().map(|c| client_key(c.0.ip()));
        if let Some(retry_after) = self.failures.blocked(client, now) {
            return Err(ApiError::too_many(
                format!("too many failed authentications from this client; retry in {retry_after} s"),
                retry_after,
            ));
        }
        let refuse = |reason: &str| {
            self.failures.record(client, now);
            tracing::debug!(client = ?client, reason, "authentication refused");
            ApiError::unauthorized(reason)
        };
        let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "this server needs a bearer token (Authorization: Bearer ...)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| refuse("the Authorization header must be `Bearer <token>`"))?;
        let principal =
            self.keys.verify(token, now.div_euclid(1000)).map_err(|e: TokenError| refuse(&e.to_string()))?;
        if now - self.revoked_read_at.load(Ordering::Relaxed) > REVOCATIONS_STALE_MS {
            tracing::warn!("token revocations could not be read from the store recently; refusing tokens");
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the server cannot check token revocations right now; retry later",
            ));
        }
        if self.revoked.read().expect("revocations lock").contains(&principal.jti) {
            return Err(refuse("the bearer token has been revoked"));
        }
        Ok(principal)
    }
}

/// The failed-authentication limit, per client address (IPv6 per /64).
struct FailureLimit {
    max: u32,
    clients: Mutex<HashMap<IpAddr, (Millis, u32)>>,
}

impl FailureLimit {
    fn new(max: u32) -> Self {
        Self { max, clients: Mutex::new(HashMap::new()) }
    }

    /// Seconds until `client` may try again, when it is over the limit.
    fn blocked(&self, client: Option<IpAddr>, now: Millis) -> Option<u64> {
        let client = client?;
        if self.max == 0 {
            return None;
        }
        let clients = self.clients.lock().expect("failures lock");
        let &(start, count) = clients.get(&client)?;
        let ends = start + FAILURE_WINDOW_MS;
        (count >= self.max && now < ends).then(|| ((ends - now) as u64).div_ceil(1000).max(1))
    }

    fn record(&self, client: Option<IpAddr>, now: Millis) {
        let Some(client) = client else { return };
        if self.max == 0 {
            return;
        }
        let mut clients = self.clients.lock().expect("failures lock");
        if clients.len() >= MAX_TRACKED_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, (start, _)| now < *start + FAILURE_WINDOW_MS);
            if clients.len() >= MAX_TRACKED_CLIENTS {
                tracing::warn!("failed-authentication table full; forgetting it");
                clients.clear();
            }
        }
        let entry = clients.entry(client).or_insert((now, 0));
        if now >= entry.0 + FAILURE_WINDOW_MS {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 == self.max {
            tracing::warn!(client = %client, "too many failed authentications; refusing this client for a minute");
        }
    }
}

/// The unit the failure limit counts: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64).
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Task id → queue, for tasks this node enqueued, leased or looked up. Two
/// generations: when the newer is full it becomes the older, so memory is
/// bounded and recent tasks stay.
#[derive(Default)]
struct TaskQueues {
    /// (newer, older).
    generations: Mutex<(QueueOf, QueueOf)>,
}

type QueueOf = HashMap<TaskId, Arc<str>>;

impl TaskQueues {
    fn get(&self, task_id: TaskId) -> Option<Arc<str>> {
        let generations = self.generations.lock().expect("task queues lock");
        generations.0.get(&task_id).or_else(|| generations.1.get(&task_id)).cloned()
    }

    fn remember(&self, task_id: TaskId, queue: &str) {
        let mut generations = self.generations.lock().expect("task queues lock");
        if generations.0.len() >= TASK_QUEUE_CACHE {
            generations.1 = std::mem::take(&mut generations.0);
        }
        generations.0.insert(task_id, Arc::from(queue));
    }
}

/// Who is asking: anyone (auth is off) or the bearer of a verified token.
pub(crate) enum Caller {
    Anyone,
    Token(Arc<Principal>),
}

impl Caller {
    pub(crate) fn allows(&self, access: Access, queue: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token(p) => p.scopes.allows(access, queue),
        }
    }

    /// Whether the caller's token is still within its lifetime at `now` (a
    /// long-lived stream ends when its token expires).
    pub(crate) fn still_valid(&self, now: Millis) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token(p) => now.div_euclid(1000) < p.expires_at,
        }
    }

    pub(crate) fn allows_everywhere(&self, access: Access) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token(p) => p.scopes.allows_everywhere(access),
        }
    }

    /// The token's subject (`sub`), if any.
    pub(crate) fn subject(&self) -> Option<String> {
        match self {
            Caller::Anyone => None,
            Caller::Token(p) => p.subject.clone(),
        }
    }

    /// `Ok` when the caller may do `access` on `queue`, else 403.
    pub(crate) fn require(&self, access: Access, queue: &str) -> Result<(), ApiError> {
        if self.allows(access, queue) { Ok(()) } else { Err(forbidden(access, queue)) }
    }

    /// `Ok` when the caller is an admin (or auth is off), else 403.
    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Token(p) if !p.scopes.is_admin() => {
                Err(ApiError::new(ErrorCode::Forbidden, "this needs a token with the admin scope"))
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn forbidden(access: Access, queue: &str) -> ApiError {
    let scope = match access {
        Access::Produce => format!("produce:{queue}"),
        Access::Consume => format!("consume:{queue}"),
        Access::Read => format!("produce:{queue} or consume:{queue}"),
        Access::Admin => "admin".to_owned(),
    };
    ApiError::new(ErrorCode::Forbidden, format!("this needs a token with the scope {scope}"))
}

impl<S: Store> FromRequestParts<Arc<App<S>>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App<S>>) -> Result<Self, ApiError> {
        match &app.guard {
            None => Ok(Caller::Anyone),
            Some(guard) => guard.authenticate(parts, now_ms()).map(Caller::Token),
        }
    }
}

impl<S: Store> App<S> {
    /// Remembers which queue these tasks are in, for later per-task checks.
    pub(crate) fn remember_queues<'a>(&self, tasks: impl IntoIterator<Item = &'a cherga_core::Task>) {
        if let Some(guard) = &self.guard {
            for task in tasks {
                guard.task_queues.remember(task.id, &task.queue);
            }
        }
    }

    /// Checks that `caller` may do `access` on the queue of task `task_id`.
    pub(crate) async fn require_on_task(
        &self,
        caller: &Caller,
        access: Access,
        task_id: TaskId,
    ) -> Result<(), ApiError> {
        if caller.allows_everywhere(access) {
            return Ok(());
        }
        let queue = match self.guard.as_ref().and_then(|g| g.task_queues.get(task_id)) {
            Some(queue) => queue,
            None => {
                let task = self.store.get_task(task_id).await.map_err(ApiError::from_task_error)?;
                self.remember_queues([&task]);
                Arc::from(task.queue.as_str())
            }
        };
        caller.require(access, &queue)
    }

    /// Revokes the token `jti`, which expires at `token_exp` (`None`: keep the
    /// revocation for ever), in the store and on this node at once. Returns the
    /// revocation as kept: until the token's `exp` plus the clock-skew leeway
    /// (tokens are accepted that long), at most [`cherga_api::time::MAX_MILLIS`].
    pub(crate) async fn revoke(
        &self,
        jti: String,
        token_exp: Option<Millis>,
    ) -> Result<Revocation, ApiError> {
        let expires_at = match token_exp {
            None => cherga_api::time::MAX_MILLIS,
            Some(exp) => {
                let leeway_s = self.guard.as_ref().map_or(cherga_auth::LEEWAY_S, |g| g.keys.leeway_s());
                cherga_auth::revocation_expiry_ms(exp, leeway_s).min(cherga_api::time::MAX_MILLIS)
            }
        };
        let revocation = Revocation { jti, expires_at };
        self.store.revoke_token(revocation.clone(), now_ms()).await.map_err(ApiError::from_queue_error)?;
        if let Some(guard) = &self.guard {
            guard.revoked_here(&revocation.jti);
        }
        Ok(revocation)
    }
}

/// Defines an extractor for a route with a `{queue}` path: authenticates, checks
/// the name, and checks the scope, all before the body is read.
macro_rules! queue_extractor {
    ($(#[$doc:meta])* $name:ident, $access:expr) => {
        $(#[$doc])*
        pub(crate) struct $name(pub QueueName);

        impl<S: Store> FromRequestParts<Arc<App<S>>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, app: &Arc<App<S>>) -> Result<Self, ApiError> {
                let caller = Caller::from_request_parts(parts, app).await?;
                let PathArg(queue) = PathArg::<String>::from_request_parts(parts, app).await?;
                let queue = crate::routes::queue_name(&queue)?;
                caller.require($access, queue.as_str())?;
                Ok(Self(queue))
            }
        }
    };
}

queue_extractor!(
    /// `{queue}` for producers: `produce:<queue>`.
    ProduceQueue,
    Access::Produce
);
/// `{queue}` for workers: `consume:<queue>`, checked before the body is read, and
/// the caller, for the checks of the tasks the body names (a lease's acks).
pub(crate) struct ConsumeQueue(pub QueueName, pub Caller);

impl<S: Store> FromRequestParts<Arc<App<S>>> for ConsumeQueue {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App<S>>) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        let PathArg(queue) = PathArg::<String>::from_request_parts(parts, app).await?;
        let queue = crate::routes::queue_name(&queue)?;
        caller.require(Access::Consume, queue.as_str())?;
        Ok(Self(queue, caller))
    }
}

queue_extractor!(
    /// `{queue}` for readers: `produce` or `consume` on it.
    ReadQueue,
    Access::Read
);
queue_extractor!(
    /// `{queue}` for its settings: `admin`.
    AdminQueue,
    Access::Admin
);

/// A caller with the `admin` scope (or anyone, with auth off), checked before
/// the body is read.
pub(crate) struct Admin;

impl<S: Store> FromRequestParts<Arc<App<S>>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App<S>>) -> Result<Self, ApiError> {
        Caller::from_request_parts(parts, app).await?.require_admin().map(|()| Admin)
    }
}

/// Defines an extractor for a route with an `{id}` path: authenticates, parses
/// the id and checks the scope on the task's queue, before the body is read.
macro_rules! task_extractor {
    ($(#[$doc:meta])* $name:ident, $access:expr) => {
        $(#[$doc])*
        pub(crate) struct $name(pub TaskId);

        impl<S: Store> FromRequestParts<Arc<App<S>>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, app: &Arc<App<S>>) -> Result<Self, ApiError> {
                let caller = Caller::from_request_parts(parts, app).await?;
                let PathArg(id) = PathArg::<String>::from_request_parts(parts, app).await?;
                let task_id = crate::routes::task_id(&id)?;
                app.require_on_task(&caller, $access, task_id).await?;
                Ok(Self(task_id))
            }
        }
    };
}

task_extractor!(
    /// `{id}` of a task a worker holds: `consume:<task's queue>`.
    ConsumeTask,
    Access::Consume
);
task_extractor!(
    /// `{id}` of a task its producer changes: `produce:<task's queue>`.
    ProduceTask,
    Access::Produce
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_limit_blocks_for_the_rest_of_the_window() {
        let limit = FailureLimit::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.blocked(Some(a), 1_000), None);
            limit.record(Some(a), 1_000);
        }
        assert_eq!(limit.blocked(Some(a), 1_000), Some(60));
        assert_eq!(limit.blocked(Some(a), 60_500), Some(1));
        assert_eq!(limit.blocked(Some(b), 1_000), None, "other clients are not affected");
        assert_eq!(limit.blocked(Some(a), 61_000), None, "a new window");
        limit.record(Some(a), 61_000);
        assert_eq!(limit.blocked(Some(a), 61_001), None, "one failure in the new window");
        assert_eq!(FailureLimit::new(0).blocked(Some(a), 0), None);
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let one = client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let two = client_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let other = client_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(one, two);
        assert_ne!(one, other);
        assert_eq!(client_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire_or_the_keys_change() {
        use cherga_api::auth::KeyFile;
        use cherga_auth::{Alg, KeySet, NewToken, Policy};
        let entry = cherga_auth::generate(Alg::EdDSA, "k").unwrap();
        let file = KeyFile { keys: vec![entry] };
        let policy = Policy { issuer: "cherga".into(), audience: "cherga".into(), leeway_s: 30 };
        let keys = TokenKeys::new(Verifier::new(KeySet::from_file_contents(&file).unwrap(), policy.clone()));
        let new = NewToken {
            subject: "s".into(),
            scopes: vec!["admin".into()],
            issuer: "cherga".into(),
            audience: "cherga".into(),
            now_s: 1_000,
            ttl_s: 60,
            jti: None,
        };
        let (token, _) = cherga_auth::issue(&KeySet::from_file_contents(&file).unwrap(), None, &new).unwrap();
        let first = keys.verify(&token, 1_000).unwrap();
        let again = keys.verify(&token, 1_050).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second check is answered from the cache");
        assert_eq!(keys.verify(&token, 1_090).unwrap_err(), TokenError::Expired, "expiry is checked on hits");
        // Other keys: the cached token is forgotten and checked again, and fails.
        let other = KeyFile { keys: vec![cherga_auth::generate(Alg::EdDSA, "k").unwrap()] };
        keys.replace(Verifier::new(KeySet::from_file_contents(&other).unwrap(), policy));
        assert_eq!(keys.verify(&token, 1_010).unwrap_err(), TokenError::BadSignature);
        assert!(keys.verify("junk", 1_010).is_err());
        assert_eq!(keys.state.read().unwrap().verified.len(), 0, "failures are not remembered");
    }

    #[test]
    fn task_queue_cache_keeps_two_generations() {
        let cache = TaskQueues::default();
        for seq in 0..(TASK_QUEUE_CACHE as u64 * 2 + 10) {
            cache.remember(TaskId::new(1, seq), "q");
        }
        let generations = cache.generations.lock().unwrap();
        assert!(generations.0.len() + generations.1.len() <= 2 * TASK_QUEUE_CACHE);
        drop(generations);
        assert!(cache.get(TaskId::new(1, TASK_QUEUE_CACHE as u64 * 2 + 9)).is_some());
        assert!(cache.get(TaskId::new(1, 0)).is_none());
    }
}
