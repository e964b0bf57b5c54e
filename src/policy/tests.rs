//! Policy engine tests: the example files in deploy/policy/ as tables of allow/deny cases,
//! then reload, error and bound behaviour.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/policy")
        .join(name)
}

/// The audience table from deploy/policy/audiences.toml, as the daemon's config would give it.
fn example_audiences() -> AudienceAttributes {
    #[derive(serde::Deserialize)]
    struct Config {
        audience: AudienceAttributes,
    }
    let text = std::fs::read_to_string(example("audiences.toml")).unwrap();
    toml::from_str::<Config>(&text).unwrap().audience
}

struct Case {
    name: &'static str,
    who: &'static str,
    selectors: &'static [&'static str],
    action: Action,
    audience: &'static str,
    scopes: &'static [&'static str],
    ttl: u64,
    depth: u32,
    rate: u32,
    /// `Some(ids)` = allowed by exactly these policies; `None` = denied.
    allowed_by: Option<&'static [&'static str]>,
    /// For denials: the forbids that decided (empty = default deny).
    denied_by: &'static [&'static str],
}

const BASE: Case = Case {
    name: "",
    who: "spiffe://example.org/agent/research",
    selectors: &["unix:uid:1000"],
    action: Action::OpenTask,
    audience: "spiffe://example.org/tool/search",
    scopes: &[],
    ttl: 120,
    depth: 0,
    rate: 0,
    allowed_by: None,
    denied_by: &[],
};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn trust_domain(spiffe_id: &str) -> &str {
    let rest = spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id);
    rest.split('/').next().unwrap_or(rest)
}

fn decide(engine: &PolicyEngine, c: &Case) -> Decision {
    let selectors = strings(c.selectors);
    let scopes = strings(c.scopes);
    engine.decide(&PolicyRequest {
        principal: Principal {
            spiffe_id: c.who,
            trust_domain: trust_domain(c.who),
            selectors: &selectors,
        },
        action: c.action,
        audience: c.audience,
        purpose: "test",
        scopes: &scopes,
        ttl_seconds: c.ttl,
        delegation_depth: c.depth,
        issuance_rate: c.rate,
        on_behalf_of: "",
    })
}

fn run_table(file: &str, cases: &[Case]) {
    let engine = PolicyEngine::load(&example(file), example_audiences()).unwrap();
    for c in cases {
        let d = decide(&engine, c);
        assert!(
            d.errors.is_empty(),
            "{file} / {}: errors {:?}",
            c.name,
            d.errors
        );
        match c.allowed_by {
            Some(ids) => {
                assert!(d.allowed, "{file} / {}: expected allow, got {d:?}", c.name);
                assert_eq!(d.policy_ids, strings(ids), "{file} / {}", c.name);
            }
            None => {
                assert!(!d.allowed, "{file} / {}: expected deny, got {d:?}", c.name);
                assert_eq!(d.policy_ids, strings(c.denied_by), "{file} / {}", c.name);
            }
        }
    }
}

#[test]
fn example_agent_tools() {
    run_table(
        "agent-tools.cedar",
        &[
            Case {
                name: "open search, read scope",
                scopes: &["search:read"],
                allowed_by: Some(&["research-search-read"]),
                ..BASE
            },
            Case {
                name: "open search, no scope",
                allowed_by: Some(&["research-search-read"]),
                ..BASE
            },
            Case {
                name: "mint calendar token, both read scopes",
                action: Action::MintTaskToken,
                audience: "spiffe://example.org/tool/calendar",
                scopes: &["calendar:read", "calendar:freebusy"],
                allowed_by: Some(&["research-calendar-read"]),
                ..BASE
            },
            Case {
                name: "write scope refused",
                scopes: &["search:write"],
                ..BASE
            },
            Case {
                name: "read plus write refused",
                action: Action::MintTaskToken,
                scopes: &["search:read", "search:write"],
                ..BASE
            },
            Case {
                name: "other tool's scope on this audience refused",
                scopes: &["calendar:read"],
                ..BASE
            },
            Case {
                name: "other audience refused",
                audience: "spiffe://example.org/tool/email",
                scopes: &["email:read"],
                ..BASE
            },
            Case {
                name: "other agent refused",
                who: "spiffe://example.org/agent/other",
                scopes: &["search:read"],
                ..BASE
            },
            Case {
                name: "same path, other trust domain refused",
                who: "spiffe://evil.example/agent/research",
                scopes: &["search:read"],
                ..BASE
            },
            Case {
                name: "delegate not granted",
                action: Action::Delegate,
                ..BASE
            },
            Case {
                name: "mint under the rate limit",
                action: Action::MintTaskToken,
                scopes: &["search:read"],
                rate: 59,
                allowed_by: Some(&["research-search-read"]),
                ..BASE
            },
            Case {
                name: "mint at the rate limit refused",
                action: Action::MintTaskToken,
                scopes: &["search:read"],
                rate: 60,
                denied_by: &["mint-rate-limit"],
                ..BASE
            },
        ],
    );
}

const BILLING: Case = Case {
    who: "spiffe://example.org/agent/billing",
    audience: "spiffe://example.org/svc/payments",
    action: Action::MintTaskToken,
    scopes: &["payments:refund"],
    ..BASE
};

#[test]
fn example_sensitive_audience() {
    run_table(
        "sensitive-audience.cedar",
        &[
            Case {
                name: "60s token on the sensitive audience",
                ttl: 60,
                allowed_by: Some(&["billing-payments-refund"]),
                ..BILLING
            },
            Case {
                name: "10s token on the sensitive audience",
                ttl: 10,
                allowed_by: Some(&["billing-payments-refund"]),
                ..BILLING
            },
            Case {
                name: "61s token on the sensitive audience refused",
                ttl: 61,
                denied_by: &["sensitive-token-max-60s"],
                ..BILLING
            },
            Case {
                name: "15-minute task may still be opened (the cap is per token)",
                action: Action::OpenTask,
                ttl: 900,
                allowed_by: Some(&["billing-payments-refund"]),
                ..BILLING
            },
            Case {
                name: "long token on the low-sensitivity audience",
                audience: "spiffe://example.org/svc/ledger",
                scopes: &["ledger:read"],
                ttl: 900,
                allowed_by: Some(&["billing-ledger-read"]),
                ..BILLING
            },
            Case {
                name: "unknown scope on the sensitive audience refused",
                scopes: &["payments:transfer"],
                ttl: 30,
                ..BILLING
            },
            Case {
                name: "other agent refused on the sensitive audience",
                who: "spiffe://example.org/agent/research",
                ttl: 30,
                ..BILLING
            },
        ],
    );
}

const PIPELINE: Case = Case {
    who: "spiffe://example.org/pipeline/coder",
    selectors: &["k8s:ns:pipeline", "k8s:sa:coder", "unix:uid:1000"],
    action: Action::Delegate,
    audience: "spiffe://example.org/pipeline/planner",
    ..BASE
};

#[test]
fn example_delegation() {
    run_table(
        "delegation.cedar",
        &[
            Case {
                name: "depth 1 delegation",
                depth: 1,
                allowed_by: Some(&["pipeline-delegate"]),
                ..PIPELINE
            },
            Case {
                name: "depth 2 delegation",
                who: "spiffe://example.org/pipeline/tester",
                audience: "spiffe://example.org/pipeline/coder",
                depth: 2,
                allowed_by: Some(&["pipeline-delegate"]),
                ..PIPELINE
            },
            Case {
                name: "depth 3 delegation refused",
                depth: 3,
                denied_by: &["delegation-depth-max-2"],
                ..PIPELINE
            },
            Case {
                name: "depth 3 cannot open a task either",
                action: Action::OpenTask,
                audience: "spiffe://example.org/tool/repo",
                scopes: &["repo:read"],
                depth: 3,
                denied_by: &["delegation-depth-max-2"],
                ..PIPELINE
            },
            Case {
                name: "parent must be a tagged pipeline agent",
                audience: "spiffe://example.org/agent/research",
                depth: 1,
                ..PIPELINE
            },
            Case {
                name: "child outside the pipeline namespace refused",
                selectors: &["k8s:ns:default"],
                depth: 1,
                ..PIPELINE
            },
            Case {
                name: "child at depth 2 mints for the repo",
                action: Action::MintTaskToken,
                audience: "spiffe://example.org/tool/repo",
                scopes: &["repo:write"],
                depth: 2,
                allowed_by: Some(&["pipeline-repo"]),
                ..PIPELINE
            },
            Case {
                name: "admin scope on the repo refused",
                action: Action::MintTaskToken,
                audience: "spiffe://example.org/tool/repo",
                scopes: &["repo:admin"],
                depth: 1,
                ..PIPELINE
            },
            Case {
                name: "planner mints a handoff token to the coder",
                who: "spiffe://example.org/pipeline/planner",
                action: Action::MintTaskToken,
                audience: "spiffe://example.org/pipeline/coder",
                allowed_by: Some(&["pipeline-handoff"]),
                ..PIPELINE
            },
        ],
    );
}

#[test]
fn fetch_jwt_svid_is_denied_unless_a_policy_names_it() {
    let engine = PolicyEngine::load(&example("agent-tools.cedar"), example_audiences()).unwrap();
    let d = decide(
        &engine,
        &Case {
            action: Action::FetchJwtSvid,
            ..BASE
        },
    );
    assert!(!d.allowed);
}

#[test]
fn examples_pass_check_without_warnings() {
    for f in [
        "agent-tools.cedar",
        "sensitive-audience.cedar",
        "delegation.cedar",
    ] {
        let check = check_file(&example(f)).unwrap();
        assert!(!check.ids.is_empty(), "{f}");
        assert!(check.warnings.is_empty(), "{f}: {:?}", check.warnings);
    }
}

const ALLOW_ALL: &str = r#"@id("allow-all") permit (principal, action, resource);"#;

fn engine(text: &str) -> PolicyEngine {
    PolicyEngine::from_text(text, AudienceAttributes::default()).unwrap()
}

#[test]
fn evaluation_error_denies_even_when_a_permit_matches() {
    // The forbid overflows for ttl >= 2. Cedar skips an erroring policy, so without our rule
    // the permit alone would allow the request.
    let e = engine(
        r#"
        @id("allow-all") permit (principal, action, resource);
        @id("overflowing-forbid") forbid (principal, action, resource)
        when { context.ttl_seconds * 9223372036854775807 > 0 };
        "#,
    );
    let ok = decide(&e, &Case { ttl: 0, ..BASE });
    assert!(ok.allowed, "{ok:?}");
    let d = decide(&e, &Case { ttl: 2, ..BASE });
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, vec!["overflowing-forbid".to_string()]);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].contains("overflow"), "{:?}", d.errors);
}

#[test]
fn ttl_that_does_not_fit_a_long_denies() {
    let e = engine(ALLOW_ALL);
    assert!(
        decide(
            &e,
            &Case {
                ttl: i64::MAX as u64,
                ..BASE
            }
        )
        .allowed
    );
    let d = decide(
        &e,
        &Case {
            ttl: i64::MAX as u64 + 1,
            ..BASE
        },
    );
    assert!(!d.allowed);
    assert!(d.errors[0].contains("ttl_seconds"), "{d:?}");
}

#[test]
fn request_bounds_at_the_edge() {
    let e = engine(ALLOW_ALL);
    let at = |n: usize, m: usize| {
        let selectors: Vec<String> = (0..n).map(|i| format!("unix:gid:{i}")).collect();
        let scopes: Vec<String> = (0..m).map(|i| format!("s{i}")).collect();
        e.decide(&PolicyRequest {
            principal: Principal {
                spiffe_id: "spiffe://example.org/a",
                trust_domain: "example.org",
                selectors: &selectors,
            },
            action: Action::OpenTask,
            audience: "aud",
            purpose: "",
            scopes: &scopes,
            ttl_seconds: 60,
            delegation_depth: 0,
            issuance_rate: 0,
            on_behalf_of: "",
        })
    };
    assert!(at(MAX_REQUEST_SELECTORS, MAX_REQUEST_SCOPES).allowed);
    let d = at(MAX_REQUEST_SELECTORS + 1, 0);
    assert!(!d.allowed && d.errors[0].contains("selectors"), "{d:?}");
    let d = at(0, MAX_REQUEST_SCOPES + 1);
    assert!(!d.allowed && d.errors[0].contains("scopes"), "{d:?}");
}

#[test]
fn unknown_audience_has_no_attributes() {
    // `resource has sensitivity` is false for an audience not in config, so the cap does not
    // apply; the permit for a configured audience does not leak to it either.
    let e = PolicyEngine::load(&example("sensitive-audience.cedar"), example_audiences()).unwrap();
    let d = decide(
        &e,
        &Case {
            audience: "spiffe://example.org/svc/unknown",
            ttl: 900,
            ..BILLING
        },
    );
    assert_eq!(
        d,
        Decision {
            allowed: false,
            policy_ids: vec![],
            errors: vec![]
        }
    );
}

#[test]
fn audience_config_rejects_unknown_keys() {
    let bad = r#"[audience."a"]
sensitivity = "high"
colour = "red""#;
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Config {
        audience: AudienceAttributes,
    }
    assert!(toml::from_str::<Config>(bad).is_err());
}

#[test]
fn parse_errors_carry_line_and_column() {
    let err = PolicyEngine::from_text(
        "@id(\"a\") permit (principal, action, resource);\n\n@id(\"b\") permit (principal,, action, resource);",
        AudienceAttributes::default(),
    )
    .unwrap_err();
    let PolicyError::Parse(d) = &err else {
        panic!("{err}")
    };
    assert!(d.0[0].starts_with("line 3, column "), "{err}");
}

#[test]
fn validation_errors_are_refused_with_location() {
    for text in [
        // No such attribute.
        r#"@id("x") permit (principal, action, resource) when { principal.colour == "red" };"#,
        // Optional attribute read without `has` (strict mode).
        r#"@id("x") permit (principal, action, resource) when { resource.sensitivity == "high" };"#,
        // Wrong type.
        r#"@id("x") permit (principal, action, resource) when { context.ttl_seconds == "60" };"#,
        // Unknown action.
        r#"@id("x") permit (principal, action == SvidBroker::Action::"Steal", resource);"#,
    ] {
        let err = PolicyEngine::from_text(text, AudienceAttributes::default()).unwrap_err();
        let PolicyError::Invalid(d) = &err else {
            panic!("{text}: {err}")
        };
        assert!(d.0[0].starts_with("line 1, column "), "{err}");
    }
}

#[test]
fn ids_are_required_or_positional_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.cedar");
    std::fs::write(
        &path,
        "@id(\"named\") permit (principal, action, resource);\nforbid (principal, action, resource) when { context.delegation_depth > 9 };",
    )
    .unwrap();
    let check = check_file(&path).unwrap();
    assert_eq!(check.ids, vec!["named", "policy1"]);
    assert_eq!(check.warnings.len(), 1);
    assert!(check.warnings[0].contains("no @id"));
}

#[test]
fn duplicate_ids_bad_ids_and_templates_are_refused() {
    let dup = r#"@id("a") permit (principal, action, resource); @id("a") forbid (principal, action, resource);"#;
    assert!(matches!(
        PolicyEngine::from_text(dup, AudienceAttributes::default()),
        Err(PolicyError::DuplicateId(id)) if id == "a"
    ));
    // A positional name taken by an explicit id is a duplicate too, not a silent overwrite.
    let clash = r#"@id("policy1") permit (principal, action, resource); forbid (principal, action, resource);"#;
    assert!(matches!(
        PolicyEngine::from_text(clash, AudienceAttributes::default()),
        Err(PolicyError::DuplicateId(_))
    ));
    let empty = r#"@id("") permit (principal, action, resource);"#;
    assert!(matches!(
        PolicyEngine::from_text(empty, AudienceAttributes::default()),
        Err(PolicyError::BadId { .. })
    ));
    let template = r#"@id("t") permit (principal == ?principal, action, resource);"#;
    assert!(matches!(
        PolicyEngine::from_text(template, AudienceAttributes::default()),
        Err(PolicyError::Template(_))
    ));
}

#[test]
fn policy_size_limit_at_the_edge() {
    let pad = |total: usize| {
        let mut text = ALLOW_ALL.to_string();
        text.push('\n');
        text.push_str(&" ".repeat(total - text.len()));
        text
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.cedar");

    std::fs::write(&path, pad(MAX_POLICY_BYTES)).unwrap();
    assert!(check_file(&path).is_ok());
    assert!(PolicyEngine::from_text(&pad(MAX_POLICY_BYTES), AudienceAttributes::default()).is_ok());

    std::fs::write(&path, pad(MAX_POLICY_BYTES + 1)).unwrap();
    assert!(matches!(
        check_file(&path),
        Err(PolicyError::TooLarge { .. })
    ));
    assert!(matches!(
        PolicyEngine::from_text(&pad(MAX_POLICY_BYTES + 1), AudienceAttributes::default()),
        Err(PolicyError::TooLarge { .. })
    ));
}

#[test]
fn broken_reload_keeps_the_old_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.cedar");
    std::fs::write(&path, ALLOW_ALL).unwrap();
    let e = PolicyEngine::load(&path, AudienceAttributes::default()).unwrap();
    assert!(decide(&e, &BASE).allowed);

    let broken = [
        "@id(\"x\") permit (principal, action resource);",
        r#"@id("x") permit (principal, action, resource) when { principal.colour == "red" };"#,
        "\u{0}\u{ff}",
    ];
    for text in broken {
        std::fs::write(&path, text).unwrap();
        assert!(e.reload().is_err(), "{text:?}");
        assert_eq!(e.policy_ids(), vec!["allow-all"]);
        assert!(decide(&e, &BASE).allowed);
    }
    std::fs::write(&path, vec![0xff_u8, 0xfe]).unwrap();
    assert!(matches!(e.reload(), Err(PolicyError::NotUtf8 { .. })));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(e.reload(), Err(PolicyError::Io { .. })));
    assert!(decide(&e, &BASE).allowed);

    std::fs::write(
        &path,
        r#"@id("deny-all") forbid (principal, action, resource);"#,
    )
    .unwrap();
    assert_eq!(e.reload().unwrap(), vec!["deny-all"]);
    let d = decide(&e, &BASE);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, vec!["deny-all"]);
}

#[test]
fn whether_the_set_reads_selectors_follows_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.cedar");
    std::fs::write(&path, ALLOW_ALL).unwrap();
    let e = PolicyEngine::load(&path, AudienceAttributes::default()).unwrap();
    assert!(!e.reads_selectors());
    let reading = r#"@id("uid-only") permit (principal, action, resource)
        when { principal.selectors.contains("unix:uid:1000") };"#;
    std::fs::write(&path, reading).unwrap();
    e.reload().unwrap();
    assert!(e.reads_selectors());
    // A refused reload keeps the old set, and with it the old answer.
    std::fs::write(&path, "@id(\"x\") permit (principal, action resource);").unwrap();
    assert!(e.reload().is_err());
    assert!(e.reads_selectors());
    std::fs::write(&path, ALLOW_ALL).unwrap();
    e.reload().unwrap();
    assert!(!e.reads_selectors());
}

/// Policy text nested `n` levels deep by one construct.
type Nesting = fn(usize) -> String;

/// The deepest text of each nesting construct that the bound lets through.
fn deepest_accepted(make: impl Fn(usize) -> String) -> String {
    let mut n = 1;
    while nesting_ok(&make(n + 1)) {
        n += 1;
        assert!(
            n < 10 * MAX_POLICY_NESTING,
            "the bound never refused {}",
            make(n)
        );
    }
    make(n)
}

fn nesting_ok(text: &str) -> bool {
    !matches!(
        PolicyEngine::from_text(text, AudienceAttributes::default()),
        Err(PolicyError::TooDeep { .. })
    )
}

#[test]
fn what_the_nesting_bound_lets_through_fits_a_runtime_threads_stack() {
    fn when(c: String) -> String {
        format!("@id(\"deep\") permit (principal, action, resource) when {{ {c} }};")
    }
    let constructs: [(&str, Nesting); 6] = [
        ("parentheses", |n| {
            when(format!("{}true{}", "(".repeat(n), ")".repeat(n)))
        }),
        ("sets", |n| {
            when(format!("{}1{} == [1]", "[".repeat(n), "]".repeat(n)))
        }),
        ("records", |n| {
            when(format!(
                "{}1{} == {{a: 1}}",
                "{a: ".repeat(n),
                "}".repeat(n)
            ))
        }),
        ("ifs", |n| {
            when(format!(
                "{}true{}",
                "if true then ".repeat(n),
                " else false".repeat(n)
            ))
        }),
        ("members", |n| {
            when(format!("principal{} == 1", ".a".repeat(n)))
        }),
        ("sums", |n| {
            when(format!(
                "context.ttl_seconds > {}",
                vec!["1"; n].join(" + ")
            ))
        }),
    ];
    for (name, make) in constructs {
        let text = deepest_accepted(make);
        // Parse, validate, decide, and drop, on a thread with the runtime's 2 MiB stack: an
        // overflow here aborts the test binary.
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(
                move || match PolicyEngine::from_text(&text, AudienceAttributes::default()) {
                    Ok(engine) => format!("loaded, allowed: {}", decide(&engine, &BASE).allowed),
                    Err(e) => format!("refused: {}", e.to_string().lines().next().unwrap_or("")),
                },
            )
            .unwrap()
            .join()
            .unwrap();
        eprintln!("{name}: {outcome}");
    }
}

#[test]
fn a_policy_nested_past_the_bound_is_refused_and_a_reload_keeps_the_old_set() {
    let deep = format!(
        "@id(\"deep\") permit (principal, action, resource) when {{ {}true{} }};",
        "(".repeat(200),
        ")".repeat(200)
    );
    let e = PolicyEngine::from_text(&deep, AudienceAttributes::default()).unwrap_err();
    assert!(matches!(e, PolicyError::TooDeep { line: 1, .. }), "{e}");
    assert!(e.to_string().contains("nests deeper than 32 levels"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.cedar");
    std::fs::write(&path, ALLOW_ALL).unwrap();
    let engine = PolicyEngine::load(&path, AudienceAttributes::default()).unwrap();
    std::fs::write(&path, &deep).unwrap();
    assert!(matches!(engine.reload(), Err(PolicyError::TooDeep { .. })));
    assert_eq!(engine.policy_ids(), vec!["allow-all"]);
}

#[test]
fn engine_from_text_cannot_reload() {
    assert!(matches!(
        engine(ALLOW_ALL).reload(),
        Err(PolicyError::NoFile)
    ));
}

#[test]
fn concurrent_reload_never_shows_a_mix() {
    // Two valid sets with disjoint ids. Every decision must name exactly one set's permits:
    // a mix (or a partial set) would show up as some other list.
    const A: &str = r#"@id("a1") permit (principal, action, resource);
        @id("a2") permit (principal, action, resource) when { context.ttl_seconds < 1000 };
        @id("a3") permit (principal, action, resource) when { principal.selectors.contains("unix:uid:1000") };"#;
    const B: &str = r#"@id("b1") permit (principal, action, resource);
        @id("b2") permit (principal, action, resource) when { context.scopes.isEmpty() };"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.cedar");
    let staged = dir.path().join("p.cedar.new");
    std::fs::write(&path, A).unwrap();
    let e = Arc::new(PolicyEngine::load(&path, AudienceAttributes::default()).unwrap());
    let done = Arc::new(AtomicBool::new(false));

    let deciders: Vec<_> = (0..4)
        .map(|_| {
            let e = Arc::clone(&e);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let (mut seen_a, mut seen_b) = (0u32, 0u32);
                while !done.load(Ordering::Relaxed) {
                    let d = decide(&e, &BASE);
                    assert!(d.allowed && d.errors.is_empty(), "{d:?}");
                    match d.policy_ids.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                        ["a1", "a2", "a3"] => seen_a += 1,
                        ["b1", "b2"] => seen_b += 1,
                        _ => panic!("decision from a mixed set: {d:?}"),
                    }
                }
                (seen_a, seen_b)
            })
        })
        .collect();

    for i in 0..200 {
        // Rename so the reloader never reads a half-written file; the engine's own atomicity
        // is what is under test.
        std::fs::write(&staged, if i % 2 == 0 { B } else { A }).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        e.reload().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let (mut a, mut b) = (0, 0);
    for d in deciders {
        let (sa, sb) = d.join().unwrap();
        a += sa;
        b += sb;
    }
    assert!(a > 0 && b > 0, "saw a={a} b={b}");
}

/// CPU time of this thread: on a shared machine, wall time also counts time spent descheduled.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Prints the cost of one decision with the example sets. Run with
/// `cargo test --release --lib policy::tests::decision_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn decision_cost() {
    let selectors: Vec<String> = (0..15).map(|i| format!("k8s:pod-label:l{i}:v")).collect();
    let scopes = strings(&["repo:read"]);
    for file in ["agent-tools.cedar", "delegation.cedar"] {
        let e = PolicyEngine::load(&example(file), example_audiences()).unwrap();
        let req = PolicyRequest {
            principal: Principal {
                spiffe_id: "spiffe://example.org/pipeline/coder",
                trust_domain: "example.org",
                selectors: &selectors,
            },
            action: Action::MintTaskToken,
            audience: "spiffe://example.org/tool/repo",
            purpose: "fix the flaky test",
            scopes: &scopes,
            ttl_seconds: 120,
            delegation_depth: 1,
            issuance_rate: 3,
            on_behalf_of: "",
        };
        let n = 20_000;
        let (start, cpu) = (std::time::Instant::now(), thread_cpu());
        for _ in 0..n {
            std::hint::black_box(e.decide(std::hint::black_box(&req)));
        }
        println!(
            "{file}: {} policies, 15 selectors: {:?} wall, {:?} thread CPU per decision",
            e.policy_ids().len(),
            start.elapsed() / n,
            (thread_cpu() - cpu) / n,
        );
        let text = std::fs::read_to_string(example(file)).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..200 {
            std::hint::black_box(e.replace(&text).unwrap());
        }
        println!(
            "{file}: parse + validate + swap {:?}",
            start.elapsed() / 200
        );
    }
}

/// Requests are no longer checked against the schema per call (it cost more than the
/// decision): this checks what that check did, for every action, with every context field
/// set and with configured and unknown audiences.
#[test]
fn every_action_request_fits_the_schema() {
    let e = PolicyEngine::load(&example("agent-tools.cedar"), example_audiences()).unwrap();
    let selectors = strings(&["unix:uid:1000", "k8s:ns:agents"]);
    let scopes = strings(&["repo:read", "repo:write"]);
    for action in [
        Action::OpenTask,
        Action::MintTaskToken,
        Action::Delegate,
        Action::FetchJwtSvid,
    ] {
        for audience in [
            "spiffe://example.org/svc/billing",
            "https://tool.example/mcp",
        ] {
            let req = PolicyRequest {
                principal: Principal {
                    spiffe_id: "spiffe://example.org/agent/a",
                    trust_domain: "example.org",
                    selectors: &selectors,
                },
                action,
                audience,
                purpose: "p",
                scopes: &scopes,
                ttl_seconds: 60,
                delegation_depth: 2,
                issuance_rate: 7,
                on_behalf_of: "https://idp.example|alice",
            };
            e.check_request_against_schema(&req)
                .unwrap_or_else(|err| panic!("{action} for {audience}: {err}"));
        }
    }
}

/// The entity store is remembered by request shape; a remembered one must never answer for
/// another caller, another selector set, audience or action.
#[test]
fn remembered_entities_never_answer_for_another_request() {
    let e = engine(
        r#"
        @id("uid-1000-only") permit (principal, action, resource)
        when { principal.selectors.contains("unix:uid:1000") };
        @id("no-billing") forbid (principal, action, resource == SvidBroker::Audience::"spiffe://example.org/svc/billing");
        @id("research-opens-only") forbid (principal == SvidBroker::Workload::"spiffe://example.org/agent/research", action, resource)
        unless { action == SvidBroker::Action::"OpenTask" };
        "#,
    );
    // Ask each allowed question first, so any wrong reuse would show as an allow below.
    assert!(decide(&e, &BASE).allowed);
    let other = Case {
        who: "spiffe://example.org/agent/other",
        ..BASE
    };
    assert!(
        decide(
            &e,
            &Case {
                action: Action::MintTaskToken,
                ..other
            }
        )
        .allowed
    );
    for (name, c) in [
        (
            "other selectors",
            Case {
                selectors: &["unix:uid:1001"],
                ..BASE
            },
        ),
        (
            "one more selector is still uid 1000",
            Case {
                selectors: &["unix:uid:1000", "unix:gid:5"],
                ..BASE
            },
        ),
        (
            "another audience",
            Case {
                audience: "spiffe://example.org/svc/billing",
                ..BASE
            },
        ),
        (
            "another action",
            Case {
                action: Action::MintTaskToken,
                ..BASE
            },
        ),
    ] {
        let d = decide(&e, &c);
        let expect = name.starts_with("one more");
        assert_eq!(d.allowed, expect, "{name}: {d:?}");
    }
    // The same questions again, now from the cache: the same answers.
    assert!(decide(&e, &BASE).allowed);
    assert!(
        !decide(
            &e,
            &Case {
                selectors: &["unix:uid:1001"],
                ..BASE
            }
        )
        .allowed
    );
}

#[test]
fn remembered_entities_are_bounded() {
    let e = engine(ALLOW_ALL);
    let ids: Vec<String> = (0..=super::entities::MAX_CACHED_ENTITY_STORES)
        .map(|i| format!("spiffe://example.org/a/{i}"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let selectors = strings(&["unix:uid:1"]);
        let d = e.decide(&PolicyRequest {
            principal: Principal {
                spiffe_id: id,
                trust_domain: "example.org",
                selectors: &selectors,
            },
            action: Action::OpenTask,
            audience: "aud",
            purpose: "",
            scopes: &[],
            ttl_seconds: 60,
            delegation_depth: 0,
            issuance_rate: 0,
            on_behalf_of: "",
        });
        assert!(d.allowed);
        let held = e.vocabulary.cached_stores();
        assert!(
            held <= super::entities::MAX_CACHED_ENTITY_STORES,
            "{held} stores after {i} requests"
        );
        if i == super::entities::MAX_CACHED_ENTITY_STORES {
            assert_eq!(held, 1, "a full cache starts over");
        } else {
            assert_eq!(held, i + 1);
        }
    }
}
