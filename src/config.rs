//! Broker configuration: Kafka's `server.properties` key names, parsed and validated.
//!
//! Every key the broker understands is listed in [`BROKER_KEYS`] with its default and a check;
//! an unknown key or an invalid value is an error that names the key. Topic-level keys
//! (`retention.ms`, `cleanup.policy`, ...) are in [`TOPIC_KEYS`]; their defaults come from the
//! broker keys they shadow, as in Kafka.

use std::collections::BTreeMap;

use crate::limits;

/// Errors in configuration files and overrides.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The properties file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `key=value`.
    #[error("{origin}: line {line}: expected key=value, got {text:?}")]
    Syntax {
        /// File or "--override".
        origin: String,
        /// 1-based line.
        line: usize,
        /// The text.
        text: String,
    },
    /// The key is not a known broker configuration key.
    #[error("unknown configuration key '{0}'")]
    UnknownKey(String),
    /// The value is not valid for the key.
    #[error("invalid value {value:?} for '{key}': {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
}

#[derive(Clone, Copy)]
enum Kind {
    Int { min: i64, max: i64 },
    Bool,
    Str,
    Listeners,
    Roles,
    CleanupPolicy,
    TimestampType,
    Compression,
    Voters,
}

const I64MAX: i64 = i64::MAX;

/// Broker keys: (name, default, kind, description). A default of "" means unset.
const BROKER_KEYS: &[(&str, &str, Kind, &str)] = &[
    ("node.id", "1", Kind::Int { min: 0, max: i32::MAX as i64 }, "this node's id"),
    ("broker.id", "", Kind::Int { min: 0, max: i32::MAX as i64 }, "alias of node.id"),
    ("process.roles", "broker,controller", Kind::Roles, "broker, controller, or both"),
    ("controller.quorum.voters", "", Kind::Voters, "id@host:port list of controller voters"),
    ("controller.listener.names", "CONTROLLER", Kind::Str, "listener names used by controllers"),
    ("cluster.id", "", Kind::Str, "cluster id (generated and stored on first start when unset)"),
    ("listeners", "PLAINTEXT://127.0.0.1:9092", Kind::Listeners, "where to listen"),
    ("advertised.listeners", "", Kind::Listeners, "addresses given to clients (defaults to listeners)"),
    ("listener.security.protocol.map", "", Kind::Str, "listener name to security protocol"),
    ("inter.broker.listener.name", "", Kind::Str, "listener for broker-to-broker traffic"),
    ("log.dirs", "", Kind::Str, "data directory (one is supported)"),
    ("log.dir", "./runnel-data", Kind::Str, "data directory when log.dirs is unset"),
    ("num.partitions", "1", Kind::Int { min: 1, max: limits::TOPIC_PARTITIONS_MAX as i64 }, "default partition count"),
    ("default.replication.factor", "1", Kind::Int { min: 1, max: 32767 }, "default replication factor"),
    ("min.insync.replicas", "1", Kind::Int { min: 1, max: 32767 }, "default min.insync.replicas"),
    ("auto.create.topics.enable", "true", Kind::Bool, "create topics on first metadata request"),
    ("delete.topic.enable", "true", Kind::Bool, "allow deleting topics"),
    ("log.retention.ms", "", Kind::Int { min: -1, max: I64MAX }, "retention time"),
    ("log.retention.minutes", "", Kind::Int { min: -1, max: I64MAX / 60_000 }, "retention time in minutes"),
    ("log.retention.hours", "168", Kind::Int { min: -1, max: I64MAX / 3_600_000 }, "retention time in hours"),
    ("log.retention.bytes", "-1", Kind::Int { min: -1, max: I64MAX }, "retention size per partition"),
    ("log.retention.check.interval.ms", "300000", Kind::Int { min: 1, max: I64MAX }, "how often retention runs"),
    ("log.segment.bytes", "1073741824", Kind::Int { min: 14, max: i32::MAX as i64 }, "segment size"),
    ("log.roll.ms", "", Kind::Int { min: 1, max: I64MAX }, "segment age before rolling"),
    ("log.roll.hours", "168", Kind::Int { min: 1, max: I64MAX / 3_600_000 }, "segment age in hours"),
    ("log.index.interval.bytes", "4096", Kind::Int { min: 0, max: i32::MAX as i64 }, "bytes between index entries"),
    ("log.cleanup.policy", "delete", Kind::CleanupPolicy, "delete and/or compact"),
    ("log.message.timestamp.type", "CreateTime", Kind::TimestampType, "CreateTime or LogAppendTime"),
    (
        "log.message.timestamp.before.max.ms",
        "9223372036854775807",
        Kind::Int { min: 0, max: I64MAX },
        "oldest accepted record timestamp",
    ),
    (
        "log.message.timestamp.after.max.ms",
        "3600000",
        Kind::Int { min: 0, max: I64MAX },
        "newest accepted record timestamp",
    ),
    (
        "log.flush.interval.messages",
        "9223372036854775807",
        Kind::Int { min: 1, max: I64MAX },
        "fsync after this many unflushed records",
    ),
    ("log.flush.interval.ms", "1000", Kind::Int { min: 1, max: I64MAX }, "fsync data older than this"),
    (
        "log.flush.scheduler.interval.ms",
        "200",
        Kind::Int { min: 1, max: I64MAX },
        "how often the flusher checks log.flush.interval.ms",
    ),
    ("message.max.bytes", "1048588", Kind::Int { min: 0, max: i32::MAX as i64 }, "largest record batch"),
    ("socket.request.max.bytes", "104857600", Kind::Int { min: 1, max: i32::MAX as i64 }, "largest request"),
    ("max.connections", "1000", Kind::Int { min: 1, max: i32::MAX as i64 }, "simultaneous connections"),
    ("compression.type", "producer", Kind::Compression, "broker-side compression"),
    ("unclean.leader.election.enable", "false", Kind::Bool, "allow out-of-sync leaders"),
    (
        "group.initial.rebalance.delay.ms",
        "3000",
        Kind::Int { min: 0, max: I64MAX },
        "delay before the first rebalance of a new group",
    ),
    ("group.min.session.timeout.ms", "6000", Kind::Int { min: 0, max: I64MAX }, "smallest session timeout"),
    ("group.max.session.timeout.ms", "1800000", Kind::Int { min: 0, max: I64MAX }, "largest session timeout"),
    (
        "offsets.topic.replication.factor",
        "3",
        Kind::Int { min: 1, max: 32767 },
        "replicas of __consumer_offsets in cluster mode (created once that many brokers are up)",
    ),
    (
        "offsets.topic.num.partitions",
        "50",
        Kind::Int { min: 1, max: 10_000 },
        "partitions of __consumer_offsets in cluster mode (fixed once created)",
    ),
    ("offsets.retention.minutes", "10080", Kind::Int { min: 1, max: I64MAX }, "how long committed offsets are kept"),
    (
        "transaction.state.log.replication.factor",
        "1",
        Kind::Int { min: 1, max: 32767 },
        "replication of transaction state",
    ),
    ("transaction.state.log.min.isr", "1", Kind::Int { min: 1, max: 32767 }, "min ISR of transaction state"),
    ("replica.lag.time.max.ms", "30000", Kind::Int { min: 1, max: I64MAX }, "follower lag before leaving the ISR"),
    ("replica.fetch.wait.max.ms", "500", Kind::Int { min: 0, max: I64MAX }, "longest wait of a follower's fetch"),
    (
        "replica.fetch.max.bytes",
        "1048576",
        Kind::Int { min: 1, max: i32::MAX as i64 },
        "bytes per partition in a follower fetch",
    ),
    (
        "replica.fetch.response.max.bytes",
        "10485760",
        Kind::Int { min: 1, max: i32::MAX as i64 },
        "bytes per follower fetch response",
    ),
    ("num.replica.fetchers", "1", Kind::Int { min: 1, max: 64 }, "fetcher connections per source broker"),
    (
        "broker.session.timeout.ms",
        "1500",
        Kind::Int { min: 100, max: I64MAX },
        "a broker that has not heartbeated this long is fenced",
    ),
    (
        "broker.heartbeat.interval.ms",
        "200",
        Kind::Int { min: 10, max: I64MAX },
        "how often brokers heartbeat to the controller",
    ),
    (
        "controller.quorum.election.timeout.ms",
        "600",
        Kind::Int { min: 50, max: I64MAX },
        "Raft election timeout of the controller quorum",
    ),
    ("controller.quorum.tick.ms", "30", Kind::Int { min: 1, max: 10_000 }, "Raft tick of the controller quorum"),
    (
        "leader.imbalance.check.interval.seconds",
        "300",
        Kind::Int { min: 1, max: I64MAX },
        "how often preferred leaders are restored",
    ),
    ("auto.leader.rebalance.enable", "true", Kind::Bool, "restore preferred leaders periodically"),
    ("controlled.shutdown.enable", "true", Kind::Bool, "move leadership away before a broker exits"),
];

/// Topic-level keys: (name, broker key whose value is the default, or a literal default).
const TOPIC_KEYS: &[(&str, &str, Kind)] = &[
    ("cleanup.policy", "log.cleanup.policy", Kind::CleanupPolicy),
    ("retention.ms", "@retention.ms", Kind::Int { min: -1, max: I64MAX }),
    ("retention.bytes", "log.retention.bytes", Kind::Int { min: -1, max: I64MAX }),
    ("segment.bytes", "log.segment.bytes", Kind::Int { min: 14, max: i32::MAX as i64 }),
    ("segment.ms", "@segment.ms", Kind::Int { min: 1, max: I64MAX }),
    ("segment.index.bytes", "=10485760", Kind::Int { min: 4, max: i32::MAX as i64 }),
    ("index.interval.bytes", "log.index.interval.bytes", Kind::Int { min: 0, max: i32::MAX as i64 }),
    ("max.message.bytes", "message.max.bytes", Kind::Int { min: 0, max: i32::MAX as i64 }),
    ("min.insync.replicas", "min.insync.replicas", Kind::Int { min: 1, max: 32767 }),
    ("message.timestamp.type", "log.message.timestamp.type", Kind::TimestampType),
    ("message.timestamp.before.max.ms", "log.message.timestamp.before.max.ms", Kind::Int { min: 0, max: I64MAX }),
    ("message.timestamp.after.max.ms", "log.message.timestamp.after.max.ms", Kind::Int { min: 0, max: I64MAX }),
    ("flush.messages", "log.flush.interval.messages", Kind::Int { min: 1, max: I64MAX }),
    ("flush.ms", "log.flush.interval.ms", Kind::Int { min: 1, max: I64MAX }),
    ("compression.type", "compression.type", Kind::Compression),
    ("unclean.leader.election.enable", "unclean.leader.election.enable", Kind::Bool),
    ("delete.retention.ms", "=86400000", Kind::Int { min: 0, max: I64MAX }),
    ("min.compaction.lag.ms", "=0", Kind::Int { min: 0, max: I64MAX }),
    ("max.compaction.lag.ms", "=9223372036854775807", Kind::Int { min: 1, max: I64MAX }),
    ("min.cleanable.dirty.ratio", "=0.5", Kind::Str),
    ("file.delete.delay.ms", "=60000", Kind::Int { min: 0, max: I64MAX }),
    ("preallocate", "=false", Kind::Bool),
];

fn check(key: &str, value: &str, kind: Kind) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::InvalidValue { key: key.into(), value: value.into(), reason };
    match kind {
        Kind::Int { min, max } => {
            let v: i64 = value.trim().parse().map_err(|_| bad("not an integer".into()))?;
            if v < min || v > max {
                return Err(bad(format!("must be between {min} and {max}")));
            }
        }
        Kind::Bool => {
            if !matches!(value.trim(), "true" | "false") {
                return Err(bad("must be true or false".into()));
            }
        }
        Kind::Str => {}
        Kind::Listeners => {
            for l in value.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                parse_listener(l).map_err(bad)?;
            }
        }
        Kind::Roles => {
            for r in value.split(',').map(str::trim) {
                if !matches!(r, "broker" | "controller") {
                    return Err(bad(format!("unknown role '{r}'; use broker and/or controller")));
                }
            }
        }
        Kind::CleanupPolicy => {
            for p in value.split(',').map(str::trim) {
                if !matches!(p, "delete" | "compact") {
                    return Err(bad("must be delete, compact or both".into()));
                }
            }
        }
        Kind::TimestampType => {
            if !matches!(value, "CreateTime" | "LogAppendTime") {
                return Err(bad("must be CreateTime or LogAppendTime".into()));
            }
        }
        Kind::Voters => {
            parse_voters(value).map_err(bad)?;
        }
        Kind::Compression => {
            if !matches!(value, "producer" | "uncompressed" | "none" | "gzip" | "snappy" | "lz4" | "zstd") {
                return Err(bad("must be producer, uncompressed, gzip, snappy, lz4 or zstd".into()));
            }
        }
    }
    Ok(())
}

/// A listener: `NAME://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Listener name (PLAINTEXT, CONTROLLER, ...).
    pub name: String,
    /// Host or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Parses `NAME://host:port`.
pub fn parse_listener(s: &str) -> Result<Listener, String> {
    let (name, rest) = s.split_once("://").ok_or_else(|| format!("listener {s:?} is not NAME://host:port"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("listener {s:?} has no port"))?;
    let port: u16 = port.parse().map_err(|_| format!("listener {s:?} has an invalid port"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(Listener { name: name.to_string(), host: host.trim_matches(|c| c == '[' || c == ']').to_string(), port })
}

/// One controller quorum voter: `id@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    /// Node id.
    pub id: i32,
    /// Host.
    pub host: String,
    /// Controller port.
    pub port: u16,
}

/// Parses `controller.quorum.voters`.
pub fn parse_voters(s: &str) -> Result<Vec<Voter>, String> {
    let mut out = Vec::new();
    for v in s.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let (id, addr) = v.split_once('@').ok_or_else(|| format!("voter {v:?} is not id@host:port"))?;
        let id: i32 = id.parse().map_err(|_| format!("voter {v:?} has an invalid id"))?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("voter {v:?} has no port"))?;
        let port: u16 = port.parse().map_err(|_| format!("voter {v:?} has an invalid port"))?;
        if out.iter().any(|o: &Voter| o.id == id) {
            return Err(format!("voter id {id} appears twice"));
        }
        out.push(Voter { id, host: host.to_string(), port });
    }
    Ok(out)
}

/// The validated broker configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    values: BTreeMap<String, String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self::from_pairs(std::iter::empty::<(String, String)>()).expect("defaults are valid")
    }
}

/// Parses `key=value` lines (`#` and `!` comments, blank lines ignored).
pub fn parse_properties(text: &str, origin: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with('!') {
            continue;
        }
        let (k, v) = t.split_once('=').ok_or_else(|| ConfigError::Syntax {
            origin: origin.into(),
            line: i + 1,
            text: t.into(),
        })?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

impl BrokerConfig {
    /// Builds a config from pairs (later pairs win), validating every key and value.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in pairs {
            let (k, v) = (k.into(), v.into());
            let Some(&(_, _, kind, _)) = BROKER_KEYS.iter().find(|e| e.0 == k) else {
                return Err(ConfigError::UnknownKey(k));
            };
            if !v.is_empty() {
                check(&k, &v, kind)?;
            }
            values.insert(k, v);
        }
        for &(k, d, _, _) in BROKER_KEYS {
            if !values.contains_key(k) && !d.is_empty() {
                values.insert(k.to_string(), d.to_string());
            }
        }
        if let Some(id) = values.get("broker.id").filter(|v| !v.is_empty()).cloned() {
            values.insert("node.id".into(), id);
        }
        let cfg = BrokerConfig { values };
        // Cross-key checks.
        if cfg.listeners().is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "listeners".into(),
                value: cfg.get("listeners").into(),
                reason: "at least one listener is required".into(),
            });
        }
        let voters = cfg.controller_quorum_voters();
        let (_, is_controller) = cfg.process_roles();
        if !voters.is_empty() && is_controller {
            if !voters.iter().any(|v| v.id == cfg.node_id()) {
                return Err(ConfigError::InvalidValue {
                    key: "controller.quorum.voters".into(),
                    value: cfg.get("controller.quorum.voters").into(),
                    reason: format!("this node (node.id {}) has the controller role but is not a voter", cfg.node_id()),
                });
            }
            if cfg.controller_listener().is_none() {
                return Err(ConfigError::InvalidValue {
                    key: "listeners".into(),
                    value: cfg.get("listeners").into(),
                    reason: format!(
                        "a controller needs a listener named in controller.listener.names ({})",
                        cfg.get("controller.listener.names")
                    ),
                });
            }
        }
        Ok(cfg)
    }

    /// Reads a properties file and applies `overrides` (`key=value`) on top.
    pub fn load(path: Option<&str>, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut pairs = Vec::new();
        if let Some(p) = path {
            let text =
                crate::runtime::read_text_file(p).map_err(|source| ConfigError::Read { path: p.into(), source })?;
            pairs.extend(parse_properties(&text, p)?);
        }
        for (i, o) in overrides.iter().enumerate() {
            let (k, v) = o.split_once('=').ok_or_else(|| ConfigError::Syntax {
                origin: "--override".into(),
                line: i + 1,
                text: o.clone(),
            })?;
            pairs.push((k.trim().to_string(), v.trim().to_string()));
        }
        Self::from_pairs(pairs)
    }

    /// The raw value of a key ("" when unset).
    pub fn get(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or("")
    }

    fn int(&self, key: &str) -> i64 {
        self.get(key).trim().parse().unwrap_or(0)
    }

    fn bool(&self, key: &str) -> bool {
        self.get(key).trim() == "true"
    }

    /// All keys with their effective values, for DescribeConfigs on the broker resource.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `node.id`.
    pub fn node_id(&self) -> i32 {
        self.int("node.id") as i32
    }
    /// Parsed `listeners`.
    pub fn listeners(&self) -> Vec<Listener> {
        self.get("listeners")
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .filter_map(|s| parse_listener(s.trim()).ok())
            .collect()
    }
    /// The client-facing listener (the first that is not a controller listener).
    pub fn client_listener(&self) -> Listener {
        let ctrl: Vec<&str> = self.get("controller.listener.names").split(',').map(str::trim).collect();
        let ls = self.listeners();
        ls.iter().find(|l| !ctrl.contains(&l.name.as_str())).cloned().unwrap_or_else(|| ls[0].clone())
    }
    /// The address clients are told to use.
    pub fn advertised_listener(&self) -> Listener {
        let l = self.client_listener();
        let adv = self.get("advertised.listeners");
        let found = adv.split(',').filter_map(|s| parse_listener(s.trim()).ok()).find(|a| a.name == l.name);
        match found {
            Some(a) => a,
            None if l.host == "0.0.0.0" => Listener { host: "127.0.0.1".into(), ..l },
            None => l,
        }
    }
    /// The data directory.
    pub fn log_dir(&self) -> String {
        let dirs = self.get("log.dirs");
        let first = dirs.split(',').map(str::trim).find(|s| !s.is_empty());
        first.map(str::to_string).unwrap_or_else(|| self.get("log.dir").to_string())
    }
    /// `num.partitions`.
    pub fn num_partitions(&self) -> i32 {
        self.int("num.partitions") as i32
    }
    /// `default.replication.factor`.
    pub fn default_replication_factor(&self) -> i16 {
        self.int("default.replication.factor") as i16
    }
    /// `auto.create.topics.enable`.
    pub fn auto_create_topics(&self) -> bool {
        self.bool("auto.create.topics.enable")
    }
    /// `delete.topic.enable`.
    pub fn delete_topic_enable(&self) -> bool {
        self.bool("delete.topic.enable")
    }
    /// `socket.request.max.bytes`.
    pub fn socket_request_max_bytes(&self) -> usize {
        self.int("socket.request.max.bytes") as usize
    }
    /// `max.connections`.
    pub fn max_connections(&self) -> usize {
        self.int("max.connections") as usize
    }
    /// `log.retention.check.interval.ms`.
    pub fn retention_check_interval_ms(&self) -> u64 {
        self.int("log.retention.check.interval.ms") as u64
    }
    /// `log.flush.scheduler.interval.ms`.
    pub fn flush_scheduler_interval_ms(&self) -> u64 {
        self.int("log.flush.scheduler.interval.ms") as u64
    }
    /// `process.roles`: (broker, controller).
    pub fn process_roles(&self) -> (bool, bool) {
        let roles: Vec<&str> = self.get("process.roles").split(',').map(str::trim).collect();
        (roles.contains(&"broker"), roles.contains(&"controller"))
    }
    /// Parsed `controller.quorum.voters` (`id@host:port,...`); empty in standalone mode.
    pub fn controller_quorum_voters(&self) -> Vec<Voter> {
        parse_voters(self.get("controller.quorum.voters")).unwrap_or_default()
    }
    /// Whether this node is part of a multi-node cluster (a controller quorum is configured).
    pub fn is_cluster_mode(&self) -> bool {
        !self.controller_quorum_voters().is_empty()
    }
    /// The listener controllers use (named in `controller.listener.names`), if this node has one.
    pub fn controller_listener(&self) -> Option<Listener> {
        let ctrl: Vec<&str> = self.get("controller.listener.names").split(',').map(str::trim).collect();
        self.listeners().into_iter().find(|l| ctrl.contains(&l.name.as_str()))
    }
    /// An integer key's value (validated at load time).
    pub fn int_value(&self, key: &str) -> i64 {
        self.int(key)
    }
    /// A boolean key's value (validated at load time).
    pub fn bool_value(&self, key: &str) -> bool {
        self.bool(key)
    }
    /// `cluster.id` if set.
    pub fn cluster_id(&self) -> Option<&str> {
        Some(self.get("cluster.id")).filter(|s| !s.is_empty())
    }
    /// `group.initial.rebalance.delay.ms`.
    pub fn group_initial_rebalance_delay_ms(&self) -> i64 {
        self.int("group.initial.rebalance.delay.ms")
    }
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
    pub fn group_session_timeout_bounds_ms(&self) -> (i64, i64) {
        (self.int("group.min.session.timeout.ms"), self.int("group.max.session.timeout.ms"))
    }

    fn broker_default_for_topic_key(&self, topic_key: &str, source: &str) -> String {
        match source {
            "@retention.ms" => {
                if !self.get("log.retention.ms").is_empty() {
                    self.get("log.retention.ms").into()
                } else if !self.get("log.retention.minutes").is_empty() {
                    (self.int("log.retention.minutes").saturating_mul(60_000)).to_string()
                } else {
                    let h = self.int("log.retention.hours");
                    if h < 0 {
                        "-1".into()
                    } else {
                        h.saturating_mul(3_600_000).to_string()
                    }
                }
            }
            "@segment.ms" => {
                if !self.get("log.roll.ms").is_empty() {
                    self.get("log.roll.ms").into()
                } else {
                    self.int("log.roll.hours").saturating_mul(3_600_000).to_string()
                }
            }
            s if s.starts_with('=') => s[1..].to_string(),
            s => {
                let _ = topic_key;
                self.get(s).to_string()
            }
        }
    }

    /// Effective topic configuration: broker-derived defaults overlaid with `overrides`.
    pub fn topic_config(&self, overrides: &BTreeMap<String, String>) -> TopicConfig {
        let mut values = BTreeMap::new();
        for &(k, src, _) in TOPIC_KEYS {
            values.insert(k.to_string(), self.broker_default_for_topic_key(k, src));
        }
        for (k, v) in overrides {
            values.insert(k.clone(), v.clone());
        }
        TopicConfig { values, overrides: overrides.clone() }
    }
}

/// Validates one topic-level key and value; the error says what is wrong.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), String> {
    let Some(&(_, _, kind)) = TOPIC_KEYS.iter().find(|e| e.0 == key) else {
        return Err(format!("unknown topic configuration key '{key}'"));
    };
    check(key, value, kind).map_err(|e| e.to_string())
}

/// The effective configuration of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Every topic key with its effective value.
    pub values: BTreeMap<String, String>,
    /// The keys set explicitly for this topic.
    pub overrides: BTreeMap<String, String>,
}

impl TopicConfig {
    fn int(&self, key: &str) -> i64 {
        self.values.get(key).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }
    /// `max.message.bytes`.
    pub fn max_message_bytes(&self) -> usize {
        self.int("max.message.bytes") as usize
    }
    /// Whether `cleanup.policy` includes compact.
    pub fn compacted(&self) -> bool {
        self.values.get("cleanup.policy").is_some_and(|v| v.contains("compact"))
    }
    /// Whether the broker stamps LogAppendTime.
    pub fn log_append_time(&self) -> bool {
        self.values.get("message.timestamp.type").is_some_and(|v| v == "LogAppendTime")
    }
    /// `message.timestamp.before.max.ms`.
    pub fn timestamp_before_max_ms(&self) -> i64 {
        self.int("message.timestamp.before.max.ms")
    }
    /// `message.timestamp.after.max.ms`.
    pub fn timestamp_after_max_ms(&self) -> i64 {
        self.int("message.timestamp.after.max.ms")
    }
    /// `flush.messages`.
    pub fn flush_messages(&self) -> i64 {
        self.int("flush.messages")
    }
    /// `flush.ms`.
    pub fn flush_ms(&self) -> i64 {
        self.int("flush.ms")
    }
    /// `min.insync.replicas`.
    pub fn min_insync_replicas(&self) -> i32 {
        self.int("min.insync.replicas") as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the embedded defaults give a single node on 127.0.0.1:9092 with data in ./runnel-data.
    #[test]
    fn defaults_are_a_local_single_node() {
        let c = BrokerConfig::default();
        assert_eq!(c.node_id(), 1);
        assert_eq!(c.client_listener(), Listener { name: "PLAINTEXT".into(), host: "127.0.0.1".into(), port: 9092 });
        assert_eq!(c.log_dir(), "./runnel-data");
        let t = c.topic_config(&BTreeMap::new());
        assert_eq!(t.values["retention.ms"], "604800000");
        assert_eq!(t.max_message_bytes(), 1_048_588);
    }

    // Proves unknown keys and invalid values are refused with the key named.
    #[test]
    fn bad_keys_and_values_name_the_key() {
        let e = BrokerConfig::from_pairs([("log.retention.hourz", "1")]).unwrap_err();
        assert!(e.to_string().contains("log.retention.hourz"));
        let e = BrokerConfig::from_pairs([("num.partitions", "zero")]).unwrap_err();
        assert!(e.to_string().contains("num.partitions"));
        let e = BrokerConfig::from_pairs([("listeners", "127.0.0.1")]).unwrap_err();
        assert!(e.to_string().contains("listeners"));
        assert!(validate_topic_config("retention.ms", "abc").is_err());
        assert!(validate_topic_config("no.such", "1").is_err());
    }

    // Proves retention settings follow Kafka's precedence ms > minutes > hours.
    #[test]
    fn retention_precedence() {
        let c = BrokerConfig::from_pairs([("log.retention.minutes", "2"), ("log.retention.hours", "5")]).unwrap();
        assert_eq!(c.topic_config(&BTreeMap::new()).values["retention.ms"], "120000");
        let c = BrokerConfig::from_pairs([("log.retention.ms", "7")]).unwrap();
        assert_eq!(c.topic_config(&BTreeMap::new()).values["retention.ms"], "7");
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    // Proves cluster settings parse and inconsistent ones are refused with the key named.
    #[test]
    fn voters_and_controller_listener() {
        let c = BrokerConfig::from_pairs([
            ("node.id", "2"),
            ("controller.quorum.voters", "1@127.0.0.1:19092,2@127.0.0.1:19093,3@127.0.0.1:19094"),
            ("listeners", "PLAINTEXT://127.0.0.1:9093,CONTROLLER://127.0.0.1:19093"),
        ])
        .unwrap();
        assert!(c.is_cluster_mode());
        assert_eq!(c.controller_quorum_voters().len(), 3);
        assert_eq!(c.controller_listener().unwrap().port, 19093);
        assert_eq!(c.client_listener().port, 9093);
        let e = BrokerConfig::from_pairs([("node.id", "9"), ("controller.quorum.voters", "1@h:1")]).unwrap_err();
        assert!(e.to_string().contains("controller.quorum.voters"));
        let e = BrokerConfig::from_pairs([("controller.quorum.voters", "1@h")]).unwrap_err();
        assert!(e.to_string().contains("controller.quorum.voters"));
        let e = BrokerConfig::from_pairs([("node.id", "1"), ("controller.quorum.voters", "1@h:1")]).unwrap_err();
        assert!(e.to_string().contains("listeners"), "{e}");
    }
}
