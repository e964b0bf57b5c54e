//! `/proc/<pid>/cgroup`, `mountinfo`, `status` and `stat` ([`crate::attest::k8s::cgroup`],
//! [`crate::attest::unix`], [`crate::attest::peer`]). The files are read as lossy UTF-8, as
//! the attestors read them.

use crate::attest::k8s::cgroup::{cgroup_paths, from_paths, mountinfo_cgroup_roots, ContainerRef};
use crate::attest::k8s::LocateError;
use crate::attest::peer::parse_start_time;
use crate::attest::unix::parse_status;

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    let paths = cgroup_paths(text);
    located(text, &paths, "cgroup");
    let roots: Vec<&str> = mountinfo_cgroup_roots(text).collect();
    located(text, &roots, "mountinfo");

    if let Some(ids) = parse_status(text) {
        assert!(text.contains(&ids.uid.to_string()) && text.contains(&ids.gid.to_string()));
        assert!(ids.groups.iter().all(|g| text.contains(&g.to_string())));
    }
    if let Some(start) = parse_start_time(text) {
        assert!(text.contains(&start.to_string()));
    }
}

/// What `paths` name must be well formed, found in the text, and independent of the order
/// and repetition of the lines.
fn located(text: &str, paths: &[&str], file: &'static str) {
    let found = from_paths(paths.iter().copied(), file);
    if let Ok(Some(c)) = &found {
        well_formed(text, c);
    }
    let reversed = from_paths(paths.iter().rev().copied(), file);
    let twice = from_paths(paths.iter().chain(paths).copied(), file);
    for other in [reversed, twice] {
        match (&found, &other) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{file}: order or repetition changed the result"),
            (Err(a), Err(b)) => assert_eq!(kind(a), kind(b), "{file}: {a} / {b}"),
            (a, b) => panic!("{file}: order or repetition changed {a:?} into {b:?}"),
        }
    }
}

fn kind(e: &LocateError) -> &'static str {
    match e {
        LocateError::ContainerConflict { .. } => "container conflict",
        LocateError::PodConflict { .. } => "pod conflict",
        _ => "other",
    }
}

fn well_formed(text: &str, c: &ContainerRef) {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(c.container_id.len() == 64 && hex(&c.container_id), "{c:?}");
    assert!(text.contains(&c.container_id), "{c:?}");
    if let Some(uid) = &c.pod_uid {
        let ok = match uid.len() {
            32 => hex(uid),
            36 => uid.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && hex(&uid.replace('-', "")),
            _ => false,
        };
        assert!(ok, "pod uid {uid:?}");
        assert!(
            text.contains(uid.as_str()) || text.contains(&uid.replace('-', "_")),
            "{c:?}"
        );
    }
}
