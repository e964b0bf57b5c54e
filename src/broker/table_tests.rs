use rand::{Rng, SeedableRng};

use super::super::task_size::TASK_COST;
use super::super::token_table::tests::token;
use super::*;

fn task(id: &str, parent: Option<&str>, exp: i64) -> Task {
    Task {
        id: id.into(),
        owner: SpiffeId::new("spiffe://example.org/a").unwrap(),
        purpose: "p".into(),
        grants: Grants::new(),
        created_at: 0,
        expires_at: exp,
        parent: parent.map(Into::into),
        depth: 0,
        children: vec![],
        closed_at: None,
        tokens_issued: 0,
        obo: None,
    }
}

fn bounds(open: usize, finished: usize) -> TableBounds {
    TableBounds {
        open_tasks: open,
        finished_tasks: finished,
        live_tokens: 100,
        task_bytes: usize::MAX,
        owner_open_tasks: usize::MAX,
        owner_task_bytes: usize::MAX,
        owner_live_tokens: usize::MAX,
        owner_finished_tasks: usize::MAX,
    }
}

fn owned(id: &str, owner: &str, exp: i64) -> Task {
    Task {
        owner: spiffe_id(owner),
        ..task(id, None, exp)
    }
}

fn spiffe_id(path: &str) -> SpiffeId {
    SpiffeId::new(format!("spiffe://example.org/{path}")).unwrap()
}

/// Each owner's share agrees with a scan of its tasks that have not ended at `now`, and
/// only owners with an unclosed task are kept.
fn assert_shares_exact(t: &mut TaskTable, now: i64) {
    let mut scanned: HashMap<SpiffeId, Open> = HashMap::new();
    let mut unclosed = HashSet::new();
    for task in t.tasks.values() {
        if task.closed_at.is_none() {
            unclosed.insert(task.owner.clone());
        }
        if task.state(now) == TaskState::Open {
            let o = scanned.entry(task.owner.clone()).or_default();
            o.tasks += 1;
            o.bytes += task.kept_bytes();
        }
    }
    for owner in &unclosed {
        let open = scanned.get(owner).copied().unwrap_or_default();
        assert_eq!(t.owner_open(owner, now), open, "{owner}");
    }
    assert_eq!(t.owner_count(), unclosed.len());
    // Each token is counted against its task's owner, and each owner's count is its tokens.
    let mut tokens: HashMap<SpiffeId, usize> = HashMap::new();
    for (token, owner) in t.tokens.entries() {
        if let Some(task) = t.tasks.get(&token.task_id) {
            assert_eq!(&task.owner, owner, "{}", token.task_id);
        }
        *tokens.entry(owner.clone()).or_default() += 1;
    }
    for (owner, n) in &tokens {
        assert_eq!(t.tokens.held_by(owner), *n, "{owner}");
    }
    assert_eq!(
        t.tokens.largest_owner(),
        tokens.values().copied().max().unwrap_or(0)
    );
}

fn mint(t: &mut TaskTable, jti: &str, task: &str, exp: i64) {
    let owner = spiffe_id("a");
    t.reserve_token(&owner, &bounds(1, 1), 0).unwrap();
    t.add_token(jti.into(), token(task, exp), &owner);
}

/// Every index agrees with the tasks it indexes.
fn assert_consistent(t: &TaskTable) {
    let closed = t.tasks.values().filter(|x| x.closed_at.is_some()).count();
    assert_eq!(t.ends.counts(), (t.tasks.len(), closed));
    assert_eq!(t.shares.unclosed(), t.tasks.len() - closed);
    for (exp, id) in t.ends.expiries() {
        assert_eq!(t.tasks[id].expires_at, *exp);
    }
    let mut owners = 0;
    for (owner, tasks, closed) in t.ends.per_owner() {
        let mine = t.tasks.values().filter(|x| &x.owner == owner);
        let mine_closed = mine.clone().filter(|x| x.closed_at.is_some()).count();
        assert_eq!((tasks, closed), (mine.count(), mine_closed), "{owner}");
        assert!(tasks > 0, "{owner} kept with no task");
        owners += 1;
    }
    let distinct: HashSet<_> = t.tasks.values().map(|x| &x.owner).collect();
    assert_eq!(owners, distinct.len());
    assert_eq!(
        t.bytes(),
        t.tasks.values().map(Task::kept_bytes).sum::<usize>()
    );
}

#[test]
fn all_scopes_are_every_audiences_scopes_sorted_once() {
    let mut t = task("a", None, 100);
    let set = |s: &[&str]| s.iter().map(ToString::to_string).collect::<BTreeSet<_>>();
    t.grants
        .insert("https://one".into(), set(&["write", "read"]));
    t.grants
        .insert("https://two".into(), set(&["read", "admin"]));
    assert_eq!(t.all_scopes(), ["admin", "read", "write"]);
    assert!(task("b", None, 100).all_scopes().is_empty());
}

#[test]
fn closing_a_task_closes_its_descendants_and_forgets_their_tokens() {
    let mut t = TaskTable::default();
    let b = bounds(10, 10);
    t.insert(task("a", None, 100), &b, 0).unwrap();
    t.insert(task("b", Some("a"), 100), &b, 0).unwrap();
    t.insert(task("c", Some("b"), 100), &b, 0).unwrap();
    t.insert(task("x", None, 100), &b, 0).unwrap();
    mint(&mut t, "j1", "c", 50);
    mint(&mut t, "j2", "c", 5);
    mint(&mut t, "jx", "x", 50);
    let (mut closed, revoked) = t.close("a", 10);
    closed.sort();
    assert_eq!(closed, ["a", "b", "c"]);
    assert_eq!(revoked, 1, "j2 had expired");
    assert!(t.token("j1").is_none() && t.token("j2").is_none());
    assert!(t.token("jx").is_some(), "another task's token stays");
    assert_eq!(t.tokens.count(), 1);
    assert_eq!(t.get("c").unwrap().state(10), TaskState::Closed);
    assert_eq!(t.get("c").unwrap().tokens_issued, 2);
    assert_eq!(t.get("x").unwrap().state(10), TaskState::Open);
    assert!(
        t.close("a", 11).0.is_empty(),
        "closing twice closes nothing new"
    );
    assert_consistent(&t);
}

#[test]
fn child_of_a_closed_task_is_born_closed() {
    let mut t = TaskTable::default();
    let b = bounds(10, 10);
    t.insert(task("a", None, 100), &b, 0).unwrap();
    assert_eq!(t.close("a", 0).0, ["a"]);
    t.insert(task("b", Some("a"), 100), &b, 0).unwrap();
    assert_eq!(t.get("b").unwrap().state(10), TaskState::Closed);
    assert_consistent(&t);
}

#[test]
fn open_task_limit_at_its_edge() {
    let mut t = TaskTable::default();
    let b = bounds(2, 10);
    t.insert(task("a", None, 100), &b, 0).unwrap();
    t.insert(task("b", None, 100), &b, 0).unwrap();
    assert_eq!(
        t.insert(task("c", None, 100), &b, 0),
        Err(TableError::Full(2))
    );
    // Expired tasks do not count.
    assert!(t.insert(task("c", None, 100), &b, 100).is_ok());
    // Closed ones neither, and the counter follows closes and sweeps.
    let mut t = TaskTable::default();
    t.insert(task("a", None, 100), &b, 0).unwrap();
    t.insert(task("b", None, 100), &b, 0).unwrap();
    t.close("a", 0);
    assert!(t.insert(task("c", None, 100), &b, 0).is_ok());
    assert_eq!(
        t.insert(task("d", None, 100), &b, 0),
        Err(TableError::Full(2))
    );
    t.sweep(1000, 0);
    assert!(t.insert(task("d", None, 2000), &b, 1000).is_ok());
    assert_eq!(t.shares.unclosed(), 1);
    assert_consistent(&t);
}

/// At most `finished` tasks that have ended are kept: an insert that finds that many
/// forgets the one that ended first, whether it ended by a close or by expiring.
#[test]
fn the_task_that_ended_first_is_forgotten_first() {
    let mut t = TaskTable::default();
    let b = bounds(3, 2);
    t.insert(task("a", None, 100), &b, 0).unwrap();
    t.insert(task("b", None, 50), &b, 0).unwrap();
    t.insert(task("c", None, 1000), &b, 0).unwrap();
    t.close("a", 1);
    t.close("c", 5);
    t.insert(task("d", None, 1000), &b, 10).unwrap();
    assert!(t.get("a").is_none(), "two ended; a closed first");
    // b expired at 50: c (closed at 5) ended before it.
    t.insert(task("e", None, 1000), &b, 60).unwrap();
    assert!(t.get("c").is_none());
    // b (expired at 50) ended before d's close at 70.
    t.close("d", 70);
    t.insert(task("f", None, 1000), &b, 70).unwrap();
    assert!(t.get("b").is_none());
    // One ended task (d) is below the bound of two: nothing is forgotten.
    t.insert(task("g", None, 1000), &b, 70).unwrap();
    assert!(t.get("d").is_some());
    assert_eq!(t.task_count(), 4);
    assert_consistent(&t);
}

/// A mass expiry is worked off a few tasks per insert, never in one pass, and the table
/// never holds more than `open + finished`.
#[test]
fn a_mass_expiry_is_forgotten_a_few_per_insert() {
    let mut t = TaskTable::default();
    let b = bounds(10, 2);
    for i in 0..10 {
        t.insert(task(&format!("t{i}"), None, 100), &b, 0).unwrap();
    }
    t.insert(task("x", None, 1000), &b, 100).unwrap();
    assert_eq!(t.task_count(), 10 - FORGET_PER_INSERT + 1);
    t.insert(task("y", None, 1000), &b, 100).unwrap();
    assert_eq!(t.task_count(), 10 - 2 * FORGET_PER_INSERT + 2);
    for i in 0..20 {
        t.insert(task(&format!("z{i}"), None, 1000), &b, 100)
            .unwrap_or(());
        assert!(t.task_count() <= b.tasks());
    }
    assert_consistent(&t);
}

/// Random opens (some delegated, of random sizes), closes, mints and sweeps, with time going
/// forward: the table never passes its bounds and its indexes stay exact. Without the
/// forgetting in `insert`, the closed tasks pile up and the first assertion fails.
#[test]
fn a_table_under_churn_stays_within_its_bounds() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // About 25 tasks' worth of bytes: the byte bound binds before the count does, often.
    // Three owners, each allowed 9 open tasks and about 10 tasks' worth of bytes: the
    // shares bind as well.
    let b = TableBounds {
        task_bytes: 25 * (TASK_COST + 1500),
        owner_open_tasks: 9,
        owner_task_bytes: 10 * (TASK_COST + 1500),
        owner_live_tokens: 40,
        owner_finished_tasks: 8,
        ..bounds(20, 30)
    };
    let owners = [spiffe_id("a"), spiffe_id("b"), spiffe_id("c")];
    let mut largest = 0;
    let mut t = TaskTable::default();
    let mut now = 0i64;
    let mut ids: Vec<String> = Vec::new();
    for i in 0..20_000 {
        now += rng.gen_range(0..3);
        match rng.gen_range(0..10) {
            0..=3 => {
                let parent = if rng.gen_bool(0.3) && !ids.is_empty() {
                    let p = &ids[rng.gen_range(0..ids.len())];
                    t.get(p)
                        .filter(|p| p.state(now) == TaskState::Open)
                        .map(|p| (p.id.clone(), p.expires_at))
                } else {
                    None
                };
                let exp = now + rng.gen_range(1..200);
                let exp = parent.as_ref().map_or(exp, |(_, e)| exp.min(*e));
                let id = format!("t{i}");
                let mut new = task(&id, parent.as_ref().map(|(p, _)| p.as_str()), exp);
                new.purpose = "p".repeat(rng.gen_range(1..3000));
                new.owner = owners[rng.gen_range(0..owners.len())].clone();
                largest = largest.max(new.kept_bytes());
                if t.insert(new, &b, now).is_ok() {
                    ids.push(id);
                }
            }
            4..=6 if !ids.is_empty() => {
                let id = ids[rng.gen_range(0..ids.len())].clone();
                t.close(&id, now);
            }
            7..=8 if !ids.is_empty() => {
                let id = ids[rng.gen_range(0..ids.len())].clone();
                let owner = t
                    .get(&id)
                    .filter(|x| x.state(now) == TaskState::Open)
                    .map(|x| x.owner.clone());
                if let Some(owner) = owner {
                    if t.reserve_token(&owner, &b, now).is_ok() {
                        t.add_token(
                            format!("j{i}"),
                            token(&id, now + rng.gen_range(1..60)),
                            &owner,
                        );
                    }
                }
            }
            _ => t.sweep(now, 100),
        }
        assert!(
            t.task_count() <= b.tasks(),
            "{} tasks, bound {}",
            t.task_count(),
            b.tasks()
        );
        assert!(t.shares.open_tasks(now) <= b.open_tasks);
        assert!(t.tokens.count() <= b.live_tokens);
        // A place is taken below the bound; the task that fills it may pass it.
        assert!(t.bytes() < b.task_bytes + largest, "{} bytes", t.bytes());
        for owner in &owners {
            let open = t.owner_open(owner, now);
            assert!(open.tasks <= b.owner_open_tasks, "{owner}: {open:?}");
            assert!(
                open.bytes < b.owner_task_bytes + largest,
                "{owner}: {open:?}"
            );
            assert!(t.tokens.held_by(owner) <= b.owner_live_tokens, "{owner}");
        }
        if i % 100 == 0 {
            assert_shares_exact(&mut t, now);
        }
        ids.retain(|id| t.get(id).is_some());
    }
    assert_shares_exact(&mut t, now);
    assert_consistent(&t);
    // Every remembered token belongs to a remembered task that is not closed.
    for t2 in t.tasks.values() {
        if t2.closed_at.is_some() {
            assert_eq!(t.tokens.live_of(std::slice::from_ref(&t2.id), 0), 0);
        }
    }
}

#[test]
fn rate_counts_the_last_minute() {
    let mut t = TaskTable::default();
    let id = SpiffeId::new("spiffe://example.org/a").unwrap();
    assert_eq!(t.record_issue(&id, 0), 1);
    assert_eq!(t.record_issue(&id, 30), 2);
    assert_eq!(t.record_issue(&id, 61), 2);
    assert_eq!(t.rate(&id, 200), 0);
}

#[test]
fn a_parent_forgets_the_children_the_sweep_forgets() {
    let mut t = TaskTable::default();
    let b = bounds(10, 10);
    t.insert(task("parent", None, 1000), &b, 0).unwrap();
    t.insert(task("short", Some("parent"), 10), &b, 0).unwrap();
    t.insert(task("closed", Some("parent"), 900), &b, 0)
        .unwrap();
    t.insert(task("live", Some("parent"), 900), &b, 0).unwrap();
    t.close("closed", 40);
    t.sweep(100, 50);
    assert_eq!(t.get("parent").unwrap().children, ["live"]);
    // Closing the parent still reaches the child it kept.
    t.close("parent", 100);
    assert!(t.get("live").unwrap().closed_at.is_some());
    assert_consistent(&t);
}

/// A closed task is kept `retention` after its close, not after the expiry it would have
/// reached: an 8-hour task closed at once does not stay for nine hours.
#[test]
fn a_closed_task_is_forgotten_retention_after_its_close() {
    let mut t = TaskTable::default();
    let b = bounds(10, 10);
    t.insert(task("long", None, 8 * 3600), &b, 0).unwrap();
    t.close("long", 10);
    t.sweep(59, 50);
    assert!(t.get("long").is_some());
    t.sweep(60, 50);
    assert!(t.get("long").is_none());
    assert_consistent(&t);
}

#[test]
fn sweep_keeps_open_tasks() {
    let mut t = TaskTable::default();
    let b = bounds(10, 10);
    t.insert(task("old", None, 10), &b, 0).unwrap();
    t.insert(task("live", None, 1000), &b, 0).unwrap();
    t.sweep(100, 50);
    assert!(t.get("old").is_none());
    assert!(t.get("live").is_some());
    assert_consistent(&t);
}

#[test]
fn a_rebuilt_table_is_trimmed_to_its_bounds() {
    let mut t = TaskTable::default();
    for i in 0..10 {
        t.insert_unchecked(task(&format!("t{i}"), None, 100 + i));
    }
    t.close("t9", 5);
    t.trim(&bounds(10, 3), 105);
    // Ended by 105: t9 (closed at 5), then t0..t5 (expired at 100..105). Two stay.
    let mut kept: Vec<&str> = t.tasks.keys().map(String::as_str).collect();
    kept.sort();
    assert_eq!(kept, ["t4", "t5", "t6", "t7", "t8"]);
    assert_consistent(&t);
}

/// `max_task_bytes` at its edge: tasks that ended are forgotten to make room, and when only
/// tasks that have not ended are left, OpenTask is refused until one ends.
#[test]
fn the_byte_bound_forgets_ended_tasks_then_refuses() {
    let one = task("a", None, 100).kept_bytes();
    let b = TableBounds {
        task_bytes: 3 * one,
        ..bounds(100, 100)
    };
    let mut t = TaskTable::default();
    for id in ["a", "b", "c"] {
        t.insert(task(id, None, 100), &b, 0).unwrap();
    }
    assert_eq!(t.bytes(), b.task_bytes);
    let err = t.reserve_open(&spiffe_id("a"), &b, 0).unwrap_err();
    assert_eq!(
        err,
        TableError::TooManyBytes {
            held: 3 * one,
            limit: 3 * one
        }
    );
    assert!(err.to_string().contains("broker.max_task_bytes"), "{err}");
    t.close("b", 5);
    t.insert(task("d", None, 100), &b, 6).unwrap();
    assert!(t.get("b").is_none(), "the closed task made room");
    assert_eq!(t.bytes(), b.task_bytes);
    // An expired task makes room the same way.
    t.insert(task("e", None, 200), &b, 100).unwrap();
    assert_eq!(t.task_count(), 3);
    assert!(t.get("e").is_some());
    assert_consistent(&t);
}

/// The byte bound makes room as the count bound does: for an owner holding its share of
/// ended tasks, from its own history, not another owner's that ended earlier.
#[test]
fn the_byte_bound_makes_room_from_an_owner_at_its_share() {
    let one = owned("b1", "b", 100).kept_bytes();
    let b = TableBounds {
        task_bytes: 3 * one,
        owner_finished_tasks: 1,
        ..bounds(100, 100)
    };
    let mut t = TaskTable::default();
    for (id, owner, at) in [("b1", "b", 1), ("a2", "a", 2), ("a3", "a", 3)] {
        t.insert(owned(id, owner, 100), &b, at).unwrap();
        t.close(id, at);
    }
    assert_eq!(t.bytes(), b.task_bytes);
    t.insert(owned("a4", "a", 100), &b, 4).unwrap();
    assert!(t.get("a2").is_none(), "its own first to end made room");
    assert!(t.get("b1").is_some(), "the other owner's history stays");
    assert_consistent(&t);
}

#[test]
fn a_rebuilt_table_is_trimmed_to_its_byte_bound() {
    let one = task("t0", None, 100).kept_bytes();
    let mut t = TaskTable::default();
    for i in 0..5 {
        t.insert_unchecked(task(&format!("t{i}"), None, 100 + i));
    }
    t.insert_unchecked(task("open", None, 1000));
    t.trim(
        &TableBounds {
            task_bytes: 3 * one + one / 2,
            ..bounds(10, 10)
        },
        200,
    );
    // The open task is kept whatever it weighs; of the ended ones, the last to end.
    let mut kept: Vec<&str> = t.tasks.keys().map(String::as_str).collect();
    kept.sort();
    assert_eq!(kept, ["open", "t3", "t4"]);
    assert_consistent(&t);
}

/// `max_open_tasks_per_owner` at its edge: the owner at its share is refused, with a message
/// that names it and the key, while another owner still opens; a close or an expiry gives
/// the place back, and so does an OpenTask that let its place go.
#[test]
fn an_owner_is_refused_at_its_share_while_others_open() {
    let b = TableBounds {
        owner_open_tasks: 2,
        ..bounds(100, 100)
    };
    let (a, other) = (spiffe_id("a"), spiffe_id("b"));
    let mut t = TaskTable::default();
    t.insert(owned("a1", "a", 100), &b, 0).unwrap();
    t.insert(owned("a2", "a", 50), &b, 0).unwrap();
    let err = t.insert(owned("a3", "a", 100), &b, 0).unwrap_err();
    assert_eq!(
        err,
        TableError::OwnerFull {
            owner: a.to_string(),
            open: 2,
            limit: 2
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("spiffe://example.org/a")
            && message.contains("broker.max_open_tasks_per_owner"),
        "{message}"
    );
    t.insert(owned("b1", "b", 100), &b, 0).unwrap();
    t.insert(owned("b2", "b", 100), &b, 0).unwrap();
    assert!(t.reserve_open(&other, &b, 0).is_err());

    t.close("a1", 1);
    t.insert(owned("a3", "a", 100), &b, 1).unwrap();
    assert!(t.reserve_open(&a, &b, 1).is_err());
    // a2 expires at 50: its place comes back without a close.
    t.reserve_open(&a, &b, 50).unwrap();
    assert!(
        t.reserve_open(&a, &b, 50).is_err(),
        "a place in flight counts"
    );
    t.release_open(&a);
    t.reserve_open(&a, &b, 50).unwrap();
    t.release_open(&a);
    assert_shares_exact(&mut t, 50);
    assert_consistent(&t);
}

/// `max_task_bytes_per_owner` at its edge: an owner whose open tasks weigh its share is
/// refused while another owner opens, and a close gives the bytes back.
#[test]
fn an_owner_is_refused_at_its_byte_share() {
    let one = owned("a1", "a", 100).kept_bytes();
    let b = TableBounds {
        owner_task_bytes: 2 * one,
        ..bounds(100, 100)
    };
    let mut t = TaskTable::default();
    t.insert(owned("a1", "a", 100), &b, 0).unwrap();
    t.insert(owned("a2", "a", 100), &b, 0).unwrap();
    let err = t.insert(owned("a3", "a", 100), &b, 0).unwrap_err();
    assert_eq!(
        err,
        TableError::OwnerTooManyBytes {
            owner: "spiffe://example.org/a".into(),
            held: 2 * one,
            limit: 2 * one
        }
    );
    assert!(
        err.to_string().contains("broker.max_task_bytes_per_owner"),
        "{err}"
    );
    t.insert(owned("b1", "b", 100), &b, 0).unwrap();
    t.close("a2", 1);
    t.insert(owned("a3", "a", 100), &b, 1).unwrap();
    assert_shares_exact(&mut t, 1);
}

/// An OpenTask within its owner's share but refused by the table as a whole leaves no place
/// taken in the share, and an owner with nothing left open is not kept.
#[test]
fn a_refusal_by_the_whole_table_takes_no_share() {
    let b = TableBounds {
        owner_open_tasks: 5,
        ..bounds(1, 100)
    };
    let mut t = TaskTable::default();
    t.insert(owned("a1", "a", 100), &b, 0).unwrap();
    let err = t.reserve_open(&spiffe_id("b"), &b, 0).unwrap_err();
    assert_eq!(err, TableError::Full(1));
    assert_eq!(t.owner_count(), 1, "the refused owner is not kept");
    t.close("a1", 1);
    assert_eq!(t.owner_count(), 0);
    t.reserve_open(&spiffe_id("b"), &b, 1).unwrap();
    assert_eq!(t.owner_count(), 1);
    t.release_open(&spiffe_id("b"));
    assert_eq!(t.owner_count(), 0);
}

/// Tokens rebuilt from the log count against their task's owner, as minted ones do, and
/// only while their task is remembered and not closed.
#[test]
fn restored_tokens_count_against_their_owner() {
    let b = bounds(10, 10);
    let mut t = TaskTable::default();
    t.insert(owned("a1", "a", 100), &b, 0).unwrap();
    t.insert(owned("b1", "b", 100), &b, 0).unwrap();
    t.close("b1", 1);
    t.restore_token("j1".into(), token("a1", 50));
    t.restore_token("j2".into(), token("b1", 50));
    t.restore_token("j3".into(), token("gone", 50));
    assert_eq!(t.tokens.held_by(&spiffe_id("a")), 1);
    assert_eq!(t.tokens.held_by(&spiffe_id("b")), 0, "its task is closed");
    assert_eq!(t.tokens.count(), 1);
    let tight = TableBounds {
        owner_live_tokens: 1,
        ..b
    };
    assert!(matches!(
        t.reserve_token(&spiffe_id("a"), &tight, 1),
        Err(TableError::OwnerTooManyTokens { held: 1, .. })
    ));
    t.reserve_token(&spiffe_id("b"), &tight, 1).unwrap();
    t.release_token(&spiffe_id("b"));
    assert_shares_exact(&mut t, 1);
}

/// `owner_finished_tasks` at its edge: an owner holding one ended task less than its share
/// makes room from the node's history (the first task to end, another owner's); holding its
/// share, from its own. A task that expired unclosed counts as ended, as a closed one does.
#[test]
fn an_owner_at_its_share_of_ended_tasks_makes_room_from_its_own() {
    let b = TableBounds {
        owner_finished_tasks: 2,
        ..bounds(10, 4)
    };
    let mut t = TaskTable::default();
    for (id, at) in [("b1", 1), ("b2", 2), ("b3", 3)] {
        t.insert(owned(id, "b", 100), &b, at).unwrap();
        t.close(id, at);
    }
    // a4 expires at 5, unclosed: a holds one ended task, one less than its share.
    t.insert(owned("a4", "a", 5), &b, 4).unwrap();
    t.insert(owned("a5", "a", 100), &b, 6).unwrap();
    assert!(
        t.get("b1").is_none(),
        "below its share: the node's first to end"
    );
    assert!(t.get("a4").is_some());
    assert_consistent(&t);
    // a now holds its share (a4 expired, a5 closed), and the room is full again.
    t.close("a5", 7);
    t.insert(owned("a6", "a", 100), &b, 8).unwrap();
    assert!(t.get("a4").is_none(), "at its share: its own first to end");
    assert!(t.get("b2").is_some() && t.get("b3").is_some() && t.get("a5").is_some());
    assert_consistent(&t);
}

/// One workload opening and closing tasks in a loop keeps its share of the room for ended
/// tasks and forgets its own history past it: another workload's tasks that ended earlier
/// are still listed after thousands of the loop's tasks. A workload with no history of its
/// own still makes room from the node's, the first to end.
#[test]
fn a_loop_of_one_owner_does_not_push_out_the_others_history() {
    let b = TableBounds {
        owner_finished_tasks: 2,
        ..bounds(10, 4)
    };
    let mut t = TaskTable::default();
    for (id, at) in [("b1", 1), ("b2", 2)] {
        t.insert(owned(id, "b", 100), &b, at).unwrap();
        t.close(id, at);
    }
    for at in 3..5_000 {
        let id = format!("a{at}");
        t.insert(owned(&id, "a", 10_000), &b, at).unwrap();
        t.close(&id, at);
    }
    assert_consistent(&t);
    let kept = |t: &TaskTable| {
        let mut ids: Vec<_> = t.tasks().map(|x| x.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(kept(&t), ["a4998", "a4999", "b1", "b2"]);
    t.insert(owned("c1", "c", 10_000), &b, 5_000).unwrap();
    assert_eq!(kept(&t), ["a4998", "a4999", "b2", "c1"]);
    assert_consistent(&t);
}
