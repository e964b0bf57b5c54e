//! Config text ([`crate::config::Config::parse`]) and Cedar policy text
//! ([`crate::policy::PolicyEngine::from_text`]): the same input is tried as both.

use crate::config::Config;
use crate::policy::{AudienceAttributes, PolicyEngine};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let audiences = match Config::parse(text) {
        Ok(config) => {
            // Parsing has no side effects: the same text gives the same config.
            let again = Config::parse(text).expect("accepted once, refused the second time");
            assert_eq!(format!("{config:?}"), format!("{again:?}"));
            assert!(!config.development_profile);
            config.audiences
        }
        Err(_) => AudienceAttributes::default(),
    };
    if let Ok(engine) = PolicyEngine::from_text(text, audiences) {
        let ids = engine.policy_ids();
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len(), "duplicate policy ids {ids:?}");
    }
}
