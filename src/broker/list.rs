//! Admin.ListTasks, a page at a time.
//!
//! One answer with every task did not scale with the table: a task may list about 30 KiB of
//! audiences, scopes and purpose (what its 64 KiB audit record, naming each audience twice, can
//! hold), the table holds up to 100,000 open tasks plus the closed ones it keeps for an hour,
//! and gRPC clients refuse answers over 4 MiB by default. So an answer stops at [`MAX_LIST_PAGE_TASKS`] tasks or when the next task
//! would take it past [`MAX_LIST_PAGE_BYTES`], whichever comes first, and hands back a token
//! for the rest. Tasks are listed oldest first (creation second, then id); the token names the
//! last one listed, so a page costs one pass over the table under its lock and no state is
//! kept between pages. A task opened while the pages are read is listed if it sorts after the
//! token, as every later task does unless it was opened in the token's own second.

use std::collections::BinaryHeap;

use prost::Message as _;
use tonic::Status;

use super::limits::MAX_TASK_ID_BYTES;
use super::table::{Task, TaskState};
use super::Broker;
use crate::proto::svidbroker::v1 as pb;

/// Most tasks in one ListTasks answer, and the page size when the request names none.
pub const MAX_LIST_PAGE_TASKS: usize = 1_000;
/// An answer ends before a task that would take its tasks past this many encoded bytes (but
/// always holds at least one): well under the 4 MiB gRPC clients accept by default.
pub const MAX_LIST_PAGE_BYTES: usize = 1024 * 1024;

/// Where a page starts: after the task created at `created_at` with id `task_id`.
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    created_at: i64,
    task_id: String,
}

impl Cursor {
    fn key(&self) -> (i64, &str) {
        (self.created_at, &self.task_id)
    }

    fn token(&self) -> String {
        format!("{}/{}", self.created_at, self.task_id)
    }

    fn parse(token: &str) -> Result<Self, Status> {
        let bad = || {
            Status::invalid_argument(
                "page_token is not a next_page_token ListTasks gave; start again with an empty one",
            )
        };
        let (at, id) = token.split_once('/').ok_or_else(bad)?;
        if id.is_empty() || id.len() > MAX_TASK_ID_BYTES {
            return Err(bad());
        }
        Ok(Self {
            created_at: at.parse().map_err(|_| bad())?,
            task_id: id.to_string(),
        })
    }
}

/// What one task looks like in a listing.
fn info(t: &Task, now: i64) -> pb::TaskInfo {
    pb::TaskInfo {
        task_id: t.id.clone(),
        spiffe_id: t.owner.to_string(),
        purpose: t.purpose.clone(),
        audiences: t.grants.keys().cloned().collect(),
        scopes: t.all_scopes(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        parent_task_id: t.parent.clone().unwrap_or_default(),
        delegation_depth: t.depth,
        state: t.state(now).as_str().to_string(),
        tokens_issued: t.tokens_issued,
    }
}

impl Broker {
    /// Admin.ListTasks: the page of tasks after `req.page_token`.
    ///
    /// # Errors
    /// A page token ListTasks did not give.
    pub fn list_page(&self, req: &pb::ListTasksRequest) -> Result<pb::ListTasksResponse, Status> {
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(Cursor::parse(t)?),
        };
        let wanted = match req.page_size as usize {
            0 => MAX_LIST_PAGE_TASKS,
            n => n.min(MAX_LIST_PAGE_TASKS),
        };
        let now = self.clock.unix_seconds();
        let table = self.lock();
        let after = after.as_ref().map(Cursor::key);
        // The `wanted + 1` first tasks after the cursor, kept in a max-heap so one pass over
        // the table finds them without copying a key per task: the extra one says whether
        // another page follows.
        let mut first: BinaryHeap<(i64, &str)> = BinaryHeap::with_capacity(wanted + 2);
        for t in table.tasks() {
            let key = (t.created_at, t.id.as_str());
            if after.is_some_and(|a| key <= a)
                || !(req.include_closed || t.state(now) == TaskState::Open)
            {
                continue;
            }
            if first.len() <= wanted {
                first.push(key);
            } else if first.peek().is_some_and(|&top| key < top) {
                first.pop();
                first.push(key);
            }
        }
        let sorted = first.into_sorted_vec();
        let mut page = pb::ListTasksResponse::default();
        let (mut bytes, mut last, mut more) = (0, None, false);
        for &(at, id) in &sorted {
            let Some(t) = table.get(id) else { continue };
            let info = info(t, now);
            // As it goes on the wire: the field's tag, its length, the message.
            let len = 1 + prost::length_delimiter_len(info.encoded_len()) + info.encoded_len();
            if page.tasks.len() == wanted
                || (!page.tasks.is_empty() && bytes + len > MAX_LIST_PAGE_BYTES)
            {
                more = true;
                break;
            }
            bytes += len;
            page.tasks.push(info);
            last = Some((at, id));
        }
        if let Some((created_at, id)) = last.filter(|_| more) {
            page.next_page_token = Cursor {
                created_at,
                task_id: id.to_string(),
            }
            .token();
        }
        Ok(page)
    }

    /// Every task, through as many pages as it takes.
    #[cfg(test)]
    pub fn list(&self, include_closed: bool) -> Vec<pb::TaskInfo> {
        let mut req = pb::ListTasksRequest {
            include_closed,
            ..Default::default()
        };
        let mut out = Vec::new();
        loop {
            let page = self.list_page(&req).expect("a page");
            out.extend(page.tasks);
            if page.next_page_token.is_empty() {
                return out;
            }
            req.page_token = page.next_page_token;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message as _;
    use tonic::Code;

    use super::super::testkit::{caller, kit, open_request, padded_audiences, Kit, AGENT, TOOL};
    use super::super::Who;
    use super::*;

    async fn open(k: &Kit, req: pb::OpenTaskRequest) -> String {
        k.broker
            .open_task(&caller(AGENT), req)
            .await
            .expect("task opens")
            .task_id
    }

    fn page(k: &Kit, include_closed: bool, size: u32, token: &str) -> pb::ListTasksResponse {
        k.broker
            .list_page(&pb::ListTasksRequest {
                include_closed,
                page_size: size,
                page_token: token.into(),
            })
            .expect("a page")
    }

    #[tokio::test]
    async fn pages_hold_every_task_once_oldest_first() {
        let k = kit();
        let mut opened = Vec::new();
        for second in 0..3 {
            for _ in 0..3 {
                opened.push((second, open(&k, open_request(&[TOOL], &[], 600)).await));
            }
            k.clock.advance(Duration::from_secs(1));
        }
        // Oldest first; within one second, by id.
        opened.sort();
        let expected: Vec<String> = opened.into_iter().map(|(_, id)| id).collect();

        let (mut listed, mut token, mut sizes) = (Vec::new(), String::new(), Vec::new());
        loop {
            let p = page(&k, false, 2, &token);
            sizes.push(p.tasks.len());
            listed.extend(p.tasks.into_iter().map(|t| t.task_id));
            if p.next_page_token.is_empty() {
                break;
            }
            token = p.next_page_token;
        }
        assert_eq!(listed, expected);
        assert_eq!(sizes, [2, 2, 2, 2, 1]);
        // A page that ends exactly at the last task says so: no token for an empty page.
        let p = page(&k, false, 9, "");
        assert_eq!((p.tasks.len(), p.next_page_token.as_str()), (9, ""));
    }

    #[tokio::test]
    async fn a_page_holds_at_most_max_list_page_tasks() {
        let k = kit();
        for _ in 0..=MAX_LIST_PAGE_TASKS {
            open(&k, open_request(&[TOOL], &[], 600)).await;
        }
        for size in [0, MAX_LIST_PAGE_TASKS as u32, u32::MAX] {
            let first = page(&k, false, size, "");
            assert_eq!(first.tasks.len(), MAX_LIST_PAGE_TASKS, "page_size {size}");
            let rest = page(&k, false, size, &first.next_page_token);
            assert_eq!((rest.tasks.len(), rest.next_page_token.as_str()), (1, ""));
        }
        let p = page(&k, false, MAX_LIST_PAGE_TASKS as u32 - 1, "");
        assert_eq!(p.tasks.len(), MAX_LIST_PAGE_TASKS - 1);
    }

    #[tokio::test]
    async fn a_page_stops_before_max_list_page_bytes() {
        let k = kit();
        // Large tasks, as large as their audit record lets them be: 16 audiences of 1,500
        // bytes and a 1 KiB purpose (about 25 KiB listed).
        let big = |n: usize| {
            let mut req = open_request(&[], &[], 600);
            req.purpose = "p".repeat(super::super::limits::MAX_PURPOSE_BYTES);
            req.audiences = padded_audiences(
                &format!("https://tool.example/{n}"),
                super::super::limits::MAX_TASK_AUDIENCES,
                1_500,
            );
            req
        };
        let tasks = 60;
        for n in 0..tasks {
            open(&k, big(n)).await;
        }
        let first = page(&k, false, 0, "");
        assert!(!first.next_page_token.is_empty());
        assert!(
            first.encoded_len() <= MAX_LIST_PAGE_BYTES,
            "{} bytes",
            first.encoded_len()
        );
        let one_more = first.tasks[0].encoded_len() + 4;
        assert!(
            first.encoded_len() + one_more > MAX_LIST_PAGE_BYTES,
            "the page stopped early: {} bytes",
            first.encoded_len()
        );
        let rest = page(&k, false, 0, &first.next_page_token);
        assert_eq!(first.tasks.len() + rest.tasks.len(), tasks);
        assert!(rest.next_page_token.is_empty());
    }

    #[tokio::test]
    async fn closed_tasks_are_listed_only_when_asked_for() {
        let k = kit();
        let closed = open(&k, open_request(&[TOOL], &[], 600)).await;
        let open_one = open(&k, open_request(&[TOOL], &[], 600)).await;
        k.broker
            .close(&Who::Workload(caller(AGENT)), &closed, "")
            .await
            .unwrap();
        let ids = |p: pb::ListTasksResponse| -> Vec<String> {
            p.tasks.into_iter().map(|t| t.task_id).collect()
        };
        assert_eq!(ids(page(&k, false, 1, "")), std::slice::from_ref(&open_one));
        let mut all = ids(page(&k, true, 0, ""));
        all.sort();
        let mut expected = vec![closed, open_one];
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn a_page_token_not_given_by_list_tasks_is_refused() {
        let k = kit();
        let long_id = format!("1/{}", "t".repeat(MAX_TASK_ID_BYTES + 1));
        for token in ["garbage", "12/", "x/task_1", "/task_1", long_id.as_str()] {
            let err = k
                .broker
                .list_page(&pb::ListTasksRequest {
                    page_token: token.into(),
                    ..Default::default()
                })
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{token}");
            assert!(err.message().contains("page_token"), "{err:?}");
        }
        let at_the_edge = format!("1/{}", "t".repeat(MAX_TASK_ID_BYTES));
        assert!(k
            .broker
            .list_page(&pb::ListTasksRequest {
                page_token: at_the_edge,
                ..Default::default()
            })
            .is_ok());
    }
}
