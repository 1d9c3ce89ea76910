//! The systems under test as the peer scripts left them: `bench/peers/<name>.sh
//! start` writes `<peers-dir>/<name>.peer`, lines of `key=value` — `url`, `pid`,
//! `version`, `settings`, or `skip` with the reason the peer is not available.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use crate::report::SystemEntry;
use crate::scenario::{self, Job, Measured, Settings};
use crate::systems::cherga::Cherga;
use crate::systems::nats::Nats;
use crate::systems::postgres::Postgres;
use crate::systems::rabbitmq::RabbitMq;
use crate::systems::redis::Redis;

/// Every system, in report order: (key, display name).
pub const SYSTEMS: [(&str, &str); 6] = [
    ("cherga", "cherga"),
    ("null", "null HTTP"),
    ("rabbitmq", "RabbitMQ"),
    ("nats", "NATS JetStream"),
    ("redis", "Redis streams"),
    ("postgres", "PostgreSQL"),
];

/// A `.peer` file.
#[derive(Clone, Debug, Default)]
pub struct PeerFile {
    pub url: Option<String>,
    pub pid: Option<i32>,
    pub version: String,
    pub settings: String,
    pub skip: Option<String>,
}

impl PeerFile {
    pub fn parse(text: &str) -> Self {
        let fields: HashMap<&str, &str> =
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim(), v.trim())).collect();
        let get = |k: &str| fields.get(k).map(|v| (*v).to_owned()).filter(|v| !v.is_empty());
        Self {
            url: get("url"),
            pid: get("pid").and_then(|p| p.parse().ok()),
            version: get("version").unwrap_or_default(),
            settings: get("settings").unwrap_or_default(),
            skip: get("skip"),
        }
    }

    pub fn read(dir: &Path, key: &str) -> Self {
        let path = dir.join(format!("{key}.peer"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text),
            Err(_) => Self { skip: Some(format!("not started (no {})", path.display())), ..Self::default() },
        }
    }
}

/// A system that is ready to be driven.
pub enum Handle {
    Cherga(Cherga),
    RabbitMq(RabbitMq),
    Nats(Nats),
    Redis(Redis),
    Postgres(Postgres),
}

pub struct System {
    pub entry: SystemEntry,
    pub handle: Option<Handle>,
    pub settings: Settings,
}

impl System {
    /// The system `key` as its peer file describes it; skipped when the file says
    /// so or lacks a URL.
    pub fn open(key: &str, name: &str, peer: PeerFile, template: &Settings) -> Self {
        let settings = Settings { pid: peer.pid, stores: key != "null", ..template.clone() };
        let mut entry = SystemEntry {
            key: key.to_owned(),
            name: name.to_owned(),
            version: peer.version.clone(),
            settings: peer.settings.clone(),
            status: "ok".to_owned(),
        };
        let handle = match (&peer.skip, &peer.url) {
            (Some(reason), _) => Err(reason.clone()),
            (None, None) => Err("the peer file has no url".to_owned()),
            (None, Some(url)) => handle(key, url).map_err(|e| format!("{e:#}")),
        };
        let handle = match handle {
            Ok(h) => Some(h),
            Err(reason) => {
                entry.status = format!("skipped: {reason}");
                None
            }
        };
        Self { entry, handle, settings }
    }

    pub fn skip(&mut self, reason: &str) {
        self.entry.status = format!("skipped: {reason}");
        self.handle = None;
    }

    pub async fn warm_up(&self, n_tasks: u64) -> Result<()> {
        match &self.handle {
            None => Ok(()),
            Some(Handle::Cherga(b)) => scenario::warm_up(b, n_tasks, &self.settings).await,
            Some(Handle::RabbitMq(b)) => scenario::warm_up(b, n_tasks, &self.settings).await,
            Some(Handle::Nats(b)) => scenario::warm_up(b, n_tasks, &self.settings).await,
            Some(Handle::Redis(b)) => scenario::warm_up(b, n_tasks, &self.settings).await,
            Some(Handle::Postgres(b)) => scenario::warm_up(b, n_tasks, &self.settings).await,
        }
    }

    pub async fn run(&self, job: &Job, n_tasks: u64) -> Result<Vec<Measured>> {
        match &self.handle {
            None => anyhow::bail!("{} is skipped", self.entry.key),
            Some(Handle::Cherga(b)) => scenario::run(b, job, n_tasks, &self.settings).await,
            Some(Handle::RabbitMq(b)) => scenario::run(b, job, n_tasks, &self.settings).await,
            Some(Handle::Nats(b)) => scenario::run(b, job, n_tasks, &self.settings).await,
            Some(Handle::Redis(b)) => scenario::run(b, job, n_tasks, &self.settings).await,
            Some(Handle::Postgres(b)) => scenario::run(b, job, n_tasks, &self.settings).await,
        }
    }
}

fn handle(key: &str, url: &str) -> Result<Handle> {
    Ok(match key {
        "cherga" => Handle::Cherga(Cherga::new(url, false)?),
        "null" => Handle::Cherga(Cherga::new(url, true)?),
        "rabbitmq" => Handle::RabbitMq(RabbitMq::new(url)),
        "nats" => Handle::Nats(Nats::new(url)),
        "redis" => Handle::Redis(Redis::new(url)?),
        "postgres" => Handle::Postgres(Postgres::new(url)),
        other => anyhow::bail!("unknown system {other}"),
    })
}
