//! The Cedar side of a request: entity ids, the principal and audience entities, the context.
//! Everything that depends only on config or the schema is built once here ([`Vocabulary`]);
//! per request we build just the principal, the context and (for audiences not in config) an
//! attribute-less resource.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

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
        })
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

    /// The entity store for one request: principal, resource and action. All three are built
    /// by this module with the schema's types, so no schema check is repeated per request.
    pub fn entities(&self, req: &PolicyRequest<'_>) -> Result<Entities, String> {
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
