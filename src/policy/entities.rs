//! The Cedar side of a request: entity ids, the principal and audience entities, the context.
//! Everything that depends only on config or the schema is built once here ([`Vocabulary`]);
//! per request we build just the principal, the context and (for audiences not in config) an
//! attribute-less resource — and even those only once per (caller, audience, action): the
//! entity store of a request is remembered ([`EntityCache`]), because one agent minting for
//! one tool asks the same question over and over, with only the context changing.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema,
};
use serde::Deserialize;

use super::{Action, PolicyError, PolicyRequest};

/// The schema's namespace; every type and action lives in it.
pub const NAMESPACE: &str = "SvidBroker";

/// Attributes of one audience, from config. Absent fields are absent in Cedar too
/// (`resource has sensitivity` is false), not empty strings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AudienceInfo {
    pub sensitivity: Option<String>,
    pub owner: Option<String>,
    pub tags: Option<Vec<String>>,
}

/// Config's audience table: audience string → attributes. In TOML:
/// `[audience."spiffe://example.org/svc/payments"] sensitivity = "high"`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct AudienceAttributes(pub BTreeMap<String, AudienceInfo>);

/// Ids and entities that never change for an engine's lifetime.
pub(super) struct Vocabulary {
    workload: EntityTypeName,
    audience: EntityTypeName,
    /// Indexed by `Action as usize`: the uid and the schema's entity for each action.
    actions: [(EntityUid, Entity); 4],
    /// Configured audiences, prebuilt.
    audiences: HashMap<String, Entity>,
    cache: EntityCache,
}

/// Most entity stores remembered. Past it the cache starts over: a few thousand distinct
/// (caller, audience, action) triples in flight is already far beyond one node's workloads,
/// and starting over bounds memory (≈2 KiB a store) whatever callers send.
pub const MAX_CACHED_ENTITY_STORES: usize = 1024;

/// What an entity store is built from; compared whole on every hit, so a hash collision can
/// only cost a rebuild, never answer for another caller.
#[derive(PartialEq, Eq)]
struct StoreKey {
    action: Action,
    spiffe_id: String,
    trust_domain: String,
    selectors: Vec<String>,
    audience: String,
}

impl StoreKey {
    fn matches(&self, req: &PolicyRequest<'_>) -> bool {
        self.action == req.action
            && self.spiffe_id == req.principal.spiffe_id
            && self.trust_domain == req.principal.trust_domain
            && self.selectors == req.principal.selectors
            && self.audience == req.audience
    }

    fn of(req: &PolicyRequest<'_>) -> Self {
        Self {
            action: req.action,
            spiffe_id: req.principal.spiffe_id.to_string(),
            trust_domain: req.principal.trust_domain.to_string(),
            selectors: req.principal.selectors.to_vec(),
            audience: req.audience.to_string(),
        }
    }
}

/// The stores whose keys hash alike.
type Bucket = Vec<(StoreKey, Arc<Entities>)>;

/// Entity stores by request shape, bounded by [`MAX_CACHED_ENTITY_STORES`].
#[derive(Default)]
struct EntityCache {
    /// Keyed per process, so nobody can aim requests at one bucket.
    hasher: RandomState,
    stores: Mutex<HashMap<u64, Bucket>>,
    len: std::sync::atomic::AtomicUsize,
}

impl EntityCache {
    fn hash(&self, req: &PolicyRequest<'_>) -> u64 {
        self.hasher.hash_one((
            req.action as u8,
            req.principal.spiffe_id,
            req.principal.trust_domain,
            req.principal.selectors,
            req.audience,
        ))
    }

    fn get(&self, hash: u64, req: &PolicyRequest<'_>) -> Option<Arc<Entities>> {
        let stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores
            .get(&hash)?
            .iter()
            .find(|(k, _)| k.matches(req))
            .map(|(_, e)| Arc::clone(e))
    }

    fn put(&self, hash: u64, req: &PolicyRequest<'_>, entities: Arc<Entities>) {
        use std::sync::atomic::Ordering;
        let key = StoreKey::of(req);
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        if self.len.load(Ordering::Relaxed) >= MAX_CACHED_ENTITY_STORES {
            stores.clear();
            self.len.store(0, Ordering::Relaxed);
        }
        let bucket = stores.entry(hash).or_default();
        if !bucket.iter().any(|(k, _)| *k == key) {
            bucket.push((key, entities));
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Vocabulary {
    pub fn new(schema: &Schema, config: &AudienceAttributes) -> Result<Self, PolicyError> {
        let type_name = |name: &str| {
            EntityTypeName::from_str(&format!("{NAMESPACE}::{name}"))
                .map_err(|e| PolicyError::Schema(e.to_string()))
        };
        let workload = type_name("Workload")?;
        let audience = type_name("Audience")?;
        let action_type = type_name("Action")?;
        let schema_actions = schema
            .action_entities()
            .map_err(|e| PolicyError::Schema(e.to_string()))?;
        let action = |a: Action| {
            let uid =
                EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str()));
            let entity = schema_actions.get(&uid).cloned().ok_or_else(|| {
                PolicyError::Schema(format!("action {} is not in the schema", a.as_str()))
            })?;
            Ok::<_, PolicyError>((uid, entity))
        };
        let actions = [
            action(Action::OpenTask)?,
            action(Action::MintTaskToken)?,
            action(Action::Delegate)?,
            action(Action::FetchJwtSvid)?,
        ];
        let mut audiences = HashMap::with_capacity(config.0.len());
        for (name, info) in &config.0 {
            let entity =
                audience_entity(&audience, name, info).map_err(|reason| PolicyError::Audience {
                    audience: name.clone(),
                    reason,
                })?;
            // Check against the schema once here, so per-request entity building can skip it.
            Entities::from_entities([entity.clone()], Some(schema)).map_err(|e| {
                PolicyError::Audience {
                    audience: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            audiences.insert(name.clone(), entity);
        }
        Ok(Self {
            workload,
            audience,
            actions,
            audiences,
            cache: EntityCache::default(),
        })
    }

    /// How many entity stores are remembered now.
    #[cfg(test)]
    pub fn cached_stores(&self) -> usize {
        self.cache.len.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn action_uid(&self, action: Action) -> &EntityUid {
        &self.actions[action as usize].0
    }

    pub fn principal_uid(&self, spiffe_id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.workload.clone(), EntityId::new(spiffe_id))
    }

    pub fn resource_uid(&self, audience: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.audience.clone(), EntityId::new(audience))
    }

    /// The entity store for one request: principal, resource and action, remembered by
    /// request shape (the context is not part of it).
    pub fn entities(&self, req: &PolicyRequest<'_>) -> Result<Arc<Entities>, String> {
        let hash = self.cache.hash(req);
        if let Some(found) = self.cache.get(hash, req) {
            return Ok(found);
        }
        let built = Arc::new(self.build_entities(req)?);
        self.cache.put(hash, req, Arc::clone(&built));
        Ok(built)
    }

    /// Builds the store. All three entities are built by this module with the schema's
    /// types, so no schema check is repeated per request.
    fn build_entities(&self, req: &PolicyRequest<'_>) -> Result<Entities, String> {
        let p = req.principal;
        let principal = Entity::new(
            self.principal_uid(p.spiffe_id),
            HashMap::from([
                ("spiffe_id".into(), string(p.spiffe_id)),
                ("trust_domain".into(), string(p.trust_domain)),
                ("selectors".into(), string_set(p.selectors)),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let resource = match self.audiences.get(req.audience) {
            Some(entity) => entity.clone(),
            None => Entity::new_no_attrs(self.resource_uid(req.audience), HashSet::new()),
        };
        let action = self.actions[req.action as usize].1.clone();
        Entities::from_entities([principal, resource, action], None).map_err(|e| e.to_string())
    }
}

fn audience_entity(
    type_name: &EntityTypeName,
    name: &str,
    info: &AudienceInfo,
) -> Result<Entity, String> {
    let mut attrs = HashMap::new();
    if let Some(s) = &info.sensitivity {
        attrs.insert("sensitivity".to_string(), string(s));
    }
    if let Some(o) = &info.owner {
        attrs.insert("owner".to_string(), string(o));
    }
    if let Some(t) = &info.tags {
        attrs.insert("tags".to_string(), string_set(t));
    }
    let uid = EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(name));
    Entity::new(uid, attrs, HashSet::new()).map_err(|e| e.to_string())
}

/// The request context. Integers that do not fit Cedar's `Long` are an error (→ deny), not a
/// silent clamp, so a policy never compares against a value the caller did not send.
pub(super) fn context(req: &PolicyRequest<'_>) -> Result<Context, String> {
    let ttl = i64::try_from(req.ttl_seconds)
        .map_err(|_| format!("ttl_seconds {} does not fit a Cedar Long", req.ttl_seconds))?;
    Context::from_pairs([
        ("purpose".to_string(), string(req.purpose)),
        ("scopes".to_string(), string_set(req.scopes)),
        (
            "ttl_seconds".to_string(),
            RestrictedExpression::new_long(ttl),
        ),
        (
            "delegation_depth".to_string(),
            RestrictedExpression::new_long(i64::from(req.delegation_depth)),
        ),
        (
            "issuance_rate".to_string(),
            RestrictedExpression::new_long(i64::from(req.issuance_rate)),
        ),
        ("on_behalf_of".to_string(), string(req.on_behalf_of)),
    ])
    .map_err(|e| e.to_string())
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

fn string_set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().map(|s| string(s)))
}
