//! `[broker]` settings: lifetimes and table bounds.

use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(120);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_TASK_TTL: Duration = Duration::from_secs(15 * 60);
pub const MAX_TASK_TTL: Duration = Duration::from_secs(8 * 3600);
/// Deepest delegation chain the broker accepts at all; policy may allow less.
pub const MAX_DELEGATION_DEPTH: u32 = 8;
pub const MAX_OPEN_TASKS: usize = 100_000;
/// Closed or expired tasks stay this long for introspection answers and listing.
pub const CLOSED_TASK_RETENTION: Duration = Duration::from_secs(3600);

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
        Ok(())
    }
}
