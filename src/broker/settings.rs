//! `[broker]` settings: lifetimes and table bounds.

use std::time::Duration;

use serde::Deserialize;

use super::table::TableBounds;

pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(120);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_TASK_TTL: Duration = Duration::from_secs(15 * 60);
pub const MAX_TASK_TTL: Duration = Duration::from_secs(8 * 3600);
/// Deepest delegation chain the broker accepts at all; policy may allow less.
pub const MAX_DELEGATION_DEPTH: u32 = 8;
pub const MAX_OPEN_TASKS: usize = 100_000;
/// Closed or expired tasks stay this long after they end, for introspection answers and
/// listing, unless the table's bound forgets them sooner.
pub const CLOSED_TASK_RETENTION: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_FINISHED_TASKS: usize = 10_000;
/// Ceiling of `max_finished_tasks`: room kept for tasks that have ended.
pub const MAX_FINISHED_TASKS: usize = 100_000;
pub const DEFAULT_MAX_LIVE_TOKENS: usize = 100_000;
/// Ceiling of `max_live_tokens` (a remembered token is about 300 bytes).
pub const MAX_LIVE_TOKENS: usize = 1_000_000;
/// Default of `max_task_bytes`: the default counts of tasks at a few KiB each, with room.
pub const DEFAULT_MAX_TASK_BYTES: usize = 64 << 20;
/// Floor of `max_task_bytes`: room for the largest task an audit record can hold.
pub const MIN_TASK_BYTES: usize = 1 << 20;
/// Ceiling of `max_task_bytes`.
pub const MAX_TASK_BYTES: usize = 4 << 30;
/// Unless set, one owner's share of the table (`max_open_tasks_per_owner`,
/// `max_task_bytes_per_owner`, `max_live_tokens_per_owner`, `max_finished_tasks_per_owner`)
/// is this fraction of the whole:
/// 1/4, so that at least four workloads on a node can each fill their share before the table
/// itself is full.
pub const DEFAULT_OWNER_SHARE_DIVISOR: usize = 4;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    #[serde(with = "humantime_serde")]
    pub default_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub min_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub default_task_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_task_ttl: Duration,
    pub max_delegation_depth: u32,
    pub max_open_tasks: usize,
    /// Room for tasks that have ended (closed or expired) beyond `max_open_tasks`: the
    /// table holds at most the sum, and forgets the task that ended first to make room.
    pub max_finished_tasks: usize,
    /// Unexpired task tokens remembered at once; MintTaskToken beyond it is refused.
    pub max_live_tokens: usize,
    /// What the tasks kept may weigh together (see `broker::task_size`): tasks that have
    /// ended are forgotten to stay under it, and OpenTask is refused while the tasks that
    /// have not ended weigh it.
    pub max_task_bytes: usize,
    /// Open tasks one owner (SPIFFE ID) may have at once; a quarter of `max_open_tasks`
    /// unless set.
    pub max_open_tasks_per_owner: Option<usize>,
    /// What one owner's open tasks may weigh together; a quarter of `max_task_bytes`
    /// (at least 1 MiB) unless set.
    pub max_task_bytes_per_owner: Option<usize>,
    /// Live tokens of one owner's tasks; a quarter of `max_live_tokens` unless set.
    pub max_live_tokens_per_owner: Option<usize>,
    /// Ended tasks one owner may hold before room for its new tasks is made from its own
    /// history rather than the node's; a quarter of `max_finished_tasks` unless set.
    pub max_finished_tasks_per_owner: Option<usize>,
    /// SPIFFE IDs allowed to introspect any task token (besides each token's audience).
    pub introspectors: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            default_token_ttl: DEFAULT_TOKEN_TTL,
            max_token_ttl: MAX_TOKEN_TTL,
            min_token_ttl: MIN_TOKEN_TTL,
            default_task_ttl: DEFAULT_TASK_TTL,
            max_task_ttl: MAX_TASK_TTL,
            max_delegation_depth: 2,
            max_open_tasks: 10_000,
            max_finished_tasks: DEFAULT_MAX_FINISHED_TASKS,
            max_live_tokens: DEFAULT_MAX_LIVE_TOKENS,
            max_task_bytes: DEFAULT_MAX_TASK_BYTES,
            max_open_tasks_per_owner: None,
            max_task_bytes_per_owner: None,
            max_live_tokens_per_owner: None,
            max_finished_tasks_per_owner: None,
            introspectors: Vec::new(),
        }
    }
}

impl BrokerConfig {
    /// # Errors
    /// Lifetimes out of order or beyond the hard limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_token_ttl < Duration::from_secs(1) {
            return Err("broker.min_token_ttl must be at least 1s".into());
        }
        if !(self.min_token_ttl <= self.default_token_ttl
            && self.default_token_ttl <= self.max_token_ttl)
        {
            return Err("broker: need min_token_ttl <= default_token_ttl <= max_token_ttl".into());
        }
        if self.max_token_ttl > MAX_TOKEN_TTL * 4 {
            return Err("broker.max_token_ttl above 1h defeats minute-scale tokens".into());
        }
        if self.default_task_ttl > self.max_task_ttl || self.max_task_ttl > MAX_TASK_TTL {
            return Err(format!(
                "broker: need default_task_ttl <= max_task_ttl <= {}",
                humantime::format_duration(MAX_TASK_TTL)
            ));
        }
        if self.max_delegation_depth > MAX_DELEGATION_DEPTH {
            return Err(format!(
                "broker.max_delegation_depth above {MAX_DELEGATION_DEPTH}"
            ));
        }
        if self.max_open_tasks == 0 || self.max_open_tasks > MAX_OPEN_TASKS {
            return Err(format!(
                "broker.max_open_tasks must be 1..={MAX_OPEN_TASKS}"
            ));
        }
        if self.max_finished_tasks == 0 || self.max_finished_tasks > MAX_FINISHED_TASKS {
            return Err(format!(
                "broker.max_finished_tasks must be 1..={MAX_FINISHED_TASKS}"
            ));
        }
        if self.max_live_tokens == 0 || self.max_live_tokens > MAX_LIVE_TOKENS {
            return Err(format!(
                "broker.max_live_tokens must be 1..={MAX_LIVE_TOKENS}"
            ));
        }
        if !(MIN_TASK_BYTES..=MAX_TASK_BYTES).contains(&self.max_task_bytes) {
            return Err(format!(
                "broker.max_task_bytes must be {MIN_TASK_BYTES}..={MAX_TASK_BYTES} (1 MiB to 4 GiB)"
            ));
        }
        check_share(
            "max_open_tasks_per_owner",
            self.max_open_tasks_per_owner,
            1,
            ("max_open_tasks", self.max_open_tasks),
        )?;
        check_share(
            "max_live_tokens_per_owner",
            self.max_live_tokens_per_owner,
            1,
            ("max_live_tokens", self.max_live_tokens),
        )?;
        check_share(
            "max_task_bytes_per_owner",
            self.max_task_bytes_per_owner,
            MIN_TASK_BYTES,
            ("max_task_bytes", self.max_task_bytes),
        )?;
        check_share(
            "max_finished_tasks_per_owner",
            self.max_finished_tasks_per_owner,
            1,
            ("max_finished_tasks", self.max_finished_tasks),
        )?;
        Ok(())
    }

    /// The task table's bounds.
    pub fn table_bounds(&self) -> TableBounds {
        TableBounds {
            open_tasks: self.max_open_tasks,
            finished_tasks: self.max_finished_tasks,
            live_tokens: self.max_live_tokens,
            task_bytes: self.max_task_bytes,
            owner_open_tasks: owner_share(self.max_open_tasks_per_owner, self.max_open_tasks, 1),
            owner_task_bytes: owner_share(
                self.max_task_bytes_per_owner,
                self.max_task_bytes,
                MIN_TASK_BYTES,
            ),
            owner_live_tokens: owner_share(self.max_live_tokens_per_owner, self.max_live_tokens, 1),
            owner_finished_tasks: owner_share(
                self.max_finished_tasks_per_owner,
                self.max_finished_tasks,
                1,
            ),
        }
    }
}

/// Refuses a set per-owner share outside `floor..=whole`, naming the key and the bound it
/// may not exceed. (The whole was checked first, so the range is never empty.)
fn check_share(
    key: &str,
    set: Option<usize>,
    floor: usize,
    (whole_key, whole): (&str, usize),
) -> Result<(), String> {
    match set {
        Some(n) if !(floor..=whole).contains(&n) => Err(format!(
            "broker.{key} must be {floor}..=broker.{whole_key} ({whole})"
        )),
        _ => Ok(()),
    }
}

/// One owner's share of a bound: the value set, else [`DEFAULT_OWNER_SHARE_DIVISOR`]'s
/// fraction of the whole, never below `floor` nor above the whole (so, for a whole under
/// four floors, all of it). Written with `max` and `min`, not `clamp`: no panic even on a
/// config that was never validated.
fn owner_share(set: Option<usize>, whole: usize, floor: usize) -> usize {
    set.unwrap_or((whole / DEFAULT_OWNER_SHARE_DIVISOR).max(floor).min(whole))
}
