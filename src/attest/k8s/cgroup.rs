//! Container locator: which pod and container a process runs in, from `/proc/<pid>/cgroup`
//! (authoritative) and, only where that file cannot name one, the cgroup mounts in
//! `/proc/<pid>/mountinfo`.
//!
//! Layouts read (pod UID and container ID from one path):
//! - cgroupfs v1/v2: `/kubepods/burstable/pod<uid>/<id>`
//! - systemd driver: `/kubepods.slice/…/kubepods-burstable-pod<uid_with_underscores>.slice/docker-<id>.scope`
//!   (also `cri-containerd-<id>.scope`, `crio-<id>.scope`)
//! - containerd with systemd names under cgroupfs: `…-pod<uid>.slice:cri-containerd:<id>`
//! - nested (kind): `/docker/<node id>/kubepods/besteffort/pod<uid>/<id>`
//! - private cgroup namespace: `/../crio-<id>.scope`, `/../<id>`
//!
//! The container ID is the 64-hex-digit run that ends the last path segment; a hex run
//! elsewhere (the kind node's own container) is not it. Two different container IDs, or two
//! different pod UIDs, are refused: the caller is never guessed.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// `/proc/<pid>/cgroup` longer than this is refused (real files are under 2 KiB).
pub const MAX_CGROUP_FILE_BYTES: u64 = 64 * 1024;
/// `/proc/<pid>/mountinfo` longer than this is refused (busy nodes reach a few hundred KiB).
pub const MAX_MOUNTINFO_BYTES: u64 = 4 * 1024 * 1024;

const CONTAINER_ID_LEN: usize = 64;

/// The container a process runs in. `pod_uid` is absent in layouts that do not carry it
/// (cri-o in a private cgroup namespace); the kubelet's pod list then decides the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub pod_uid: Option<String>,
    pub container_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("process {pid} is gone")]
    Gone { pid: i32 },
    #[error("{file} names two container IDs, {first} and {second}; refusing to guess")]
    ContainerConflict {
        file: &'static str,
        first: String,
        second: String,
    },
    #[error("{file} names two pod UIDs, {first} and {second}; refusing to guess")]
    PodConflict {
        file: &'static str,
        first: String,
        second: String,
    },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
}

/// Finds the container of process `pid` under `proc_root`.
///
/// `Ok(None)`: the process is not in a container (no k8s selectors, no error).
///
/// `mountinfo` is consulted only when `cgroup` is absent or every path in it is `/`, i.e. the
/// process sits at the root of the cgroup namespace we see (our own container). A process
/// whose cgroup path names something else, container or not, is judged by that path alone: a
/// process can shape its own mount table, not its cgroup.
///
/// # Errors
/// [`LocateError::Gone`] when `/proc/<pid>` does not exist; a conflict when the files name two
/// containers or pods; I/O and size errors otherwise.
pub fn locate(proc_root: &Path, pid: i32) -> Result<Option<ContainerRef>, LocateError> {
    let dir = proc_root.join(pid.to_string());
    if let Err(e) = std::fs::metadata(&dir) {
        return Err(if e.kind() == io::ErrorKind::NotFound {
            LocateError::Gone { pid }
        } else {
            LocateError::Io {
                path: dir,
                source: e,
            }
        });
    }
    if let Some(text) = read_bounded(&dir.join("cgroup"), MAX_CGROUP_FILE_BYTES)? {
        let paths = cgroup_paths(&text);
        if let Some(found) = from_paths(paths.iter().copied(), "cgroup")? {
            return Ok(Some(found));
        }
        if !paths.iter().all(|p| *p == "/") {
            return Ok(None);
        }
    }
    let Some(text) = read_bounded(&dir.join("mountinfo"), MAX_MOUNTINFO_BYTES)? else {
        return Ok(None);
    };
    from_paths(mountinfo_cgroup_roots(&text), "mountinfo")
}

/// Reads at most `limit` bytes; `None` if the file does not exist.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<String>, LocateError> {
    let io_err = |source| LocateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut buf = Vec::new();
    file.take(limit + 1).read_to_end(&mut buf).map_err(io_err)?;
    if buf.len() as u64 > limit {
        return Err(LocateError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The path of every `hierarchy:controllers:path` line (the path may itself hold colons).
pub(crate) fn cgroup_paths(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .collect()
}

/// The root (4th field) of every `cgroup` / `cgroup2` mount.
pub(crate) fn mountinfo_cgroup_roots(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(sep + 1)?;
        if sep < 6 || !matches!(*fstype, "cgroup" | "cgroup2") {
            return None;
        }
        fields.get(3).copied()
    })
}

/// Merges what every path says; paths that name no container add nothing.
pub(crate) fn from_paths<'a>(
    paths: impl Iterator<Item = &'a str>,
    file: &'static str,
) -> Result<Option<ContainerRef>, LocateError> {
    // Every name first, then the verdict: which conflict is reported (a container conflict
    // before a pod conflict, the two smallest names) must not depend on the order of lines.
    let mut containers = std::collections::BTreeSet::new();
    let mut pods = std::collections::BTreeSet::new();
    for path in paths {
        if let Some((uids, id)) = parse_path(path) {
            containers.insert(id);
            pods.extend(uids);
        }
    }
    let mut containers = containers.into_iter();
    let container = containers.next();
    if let (Some(first), Some(second)) = (&container, containers.next()) {
        return Err(LocateError::ContainerConflict {
            file,
            first: first.clone(),
            second,
        });
    }
    let mut pods = pods.into_iter();
    let pod = pods.next();
    if let (Some(first), Some(second)) = (&pod, pods.next()) {
        return Err(LocateError::PodConflict {
            file,
            first: first.clone(),
            second,
        });
    }
    Ok(container.map(|container_id| ContainerRef {
        pod_uid: pod,
        container_id,
    }))
}

/// The pod UIDs and the container ID one cgroup path names, if it names a container.
fn parse_path(path: &str) -> Option<(Vec<String>, String)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let id = container_id_in(segments.last()?)?;
    let pods = segments.iter().filter_map(|s| pod_uid_in(s)).collect();
    Some((pods, id))
}

/// `<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `…:cri-containerd:<id>`.
fn container_id_in(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    let cut = s.len().checked_sub(CONTAINER_ID_LEN)?;
    let (head, id) = (s.get(..cut)?, s.get(cut..)?);
    let delimited = head.is_empty() || head.ends_with('-') || head.ends_with(':');
    (delimited && is_lower_hex(id)).then(|| id.to_string())
}

/// `pod<uuid>` (dashes, or underscores under the systemd driver) or `pod<32 hex>` (static
/// pods), at the start of a segment or after `-`, ending the segment or before `.slice` / `:`.
fn pod_uid_in(segment: &str) -> Option<String> {
    let mut from = 0;
    while let Some(found) = segment.get(from..).and_then(|s| s.find("pod")) {
        let at = from + found;
        from = at + 3;
        if at > 0 && !segment[..at].ends_with('-') {
            continue;
        }
        let rest = &segment[at + 3..];
        for len in [36, 32] {
            let (Some(uid), Some(after)) = (rest.get(..len), rest.get(len..)) else {
                continue;
            };
            let ends = after.is_empty() || after.starts_with(".slice") || after.starts_with(':');
            if ends && is_pod_uid(uid) {
                return Some(uid.replace('_', "-"));
            }
        }
    }
    None
}

fn is_pod_uid(s: &str) -> bool {
    match s.len() {
        32 => is_lower_hex(s),
        36 => {
            let b = s.as_bytes();
            let seps = [8, 13, 18, 23];
            let sep = b[8];
            (sep == b'-' || sep == b'_')
                && b.iter().enumerate().all(|(i, c)| {
                    if seps.contains(&i) {
                        *c == sep
                    } else {
                        c.is_ascii_digit() || (b'a'..=b'f').contains(c)
                    }
                })
        }
        _ => false,
    }
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn one(path: &str) -> Option<(Option<String>, String)> {
        from_paths(std::iter::once(path), "cgroup")
            .unwrap()
            .map(|c| (c.pod_uid, c.container_id))
    }

    #[test]
    fn reads_every_layout() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            (
                "/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961",
                Some("2c48913c-b29f-11e7-9350-020968147796"),
                Some("9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"),
            ),
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_11e7_9350_020968147796.slice/docker-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope",
                Some("2c48913c-b29f-11e7-9350-020968147796"),
                Some("9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"),
            ),
            (
                "/../crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope",
                None,
                Some("45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814"),
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod561fd272_d131_47ef_a01b_46a997a778f3.slice/crio-030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198.scope",
                Some("561fd272-d131-47ef-a01b-46a997a778f3"),
                Some("030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198"),
            ),
            (
                "/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c.slice:cri-containerd:b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2",
                Some("72f7f152-440c-66ac-9084-e0fc1d8a910c"),
                Some("b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2"),
            ),
            (
                "/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/kubepods/besteffort/poda2830d0d-b0f0-4ff0-81b5-0ee4e299cf80/09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6",
                Some("a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80"),
                Some("09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6"),
            ),
            (
                "/kubepods/besteffort/pod2732ca68f6358eba7703fb6f82a25c94/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                Some("2732ca68f6358eba7703fb6f82a25c94"),
                Some(ID),
            ),
            ("/../0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", None, Some(ID)),
            ("/kubepods/pod2732ca68f6358eba7703fb6f82a25c94", None, None),
            (
                "/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/system.slice/containerd.service",
                None,
                None,
            ),
            ("/user.slice/user-1000.slice/session-2.scope", None, None),
            ("/", None, None),
            ("", None, None),
            // Upper case, 63 or 65 digits, or glued to a word: not a container ID.
            ("/kubepods/0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", None, None),
            ("/kubepods/123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", None, None),
            ("/kubepods/x0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", None, None),
        ];
        for (path, pod, id) in cases {
            let got = one(path);
            let want = id.map(|id| (pod.map(str::to_string), id.to_string()));
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn pod_uid_needs_a_boundary() {
        assert_eq!(pod_uid_in("kubepods"), None);
        assert_eq!(pod_uid_in("xpod2c48913c-b29f-11e7-9350-020968147796"), None);
        assert_eq!(pod_uid_in("pod2c48913c-b29f-11e7-9350-020968147796x"), None);
        assert_eq!(pod_uid_in("pod2c48913c-b29f_11e7-9350-020968147796"), None);
        assert_eq!(
            pod_uid_in("kubepods-pod2c48913c_b29f_11e7_9350_020968147796.slice").as_deref(),
            Some("2c48913c-b29f-11e7-9350-020968147796")
        );
    }

    #[test]
    fn conflicts_are_refused() {
        let a = format!("/kubepods/pod2c48913c-b29f-11e7-9350-020968147796/{ID}");
        let b = format!(
            "/kubepods/pod2c48913c-b29f-11e7-9350-020968147796/{}",
            "f".repeat(64)
        );
        let c = format!("/kubepods/podd488cae9-b2a0-11e7-9350-020968147796/{ID}");
        assert!(matches!(
            from_paths([a.as_str(), b.as_str()].into_iter(), "cgroup"),
            Err(LocateError::ContainerConflict { .. })
        ));
        assert!(matches!(
            from_paths([a.as_str(), c.as_str()].into_iter(), "cgroup"),
            Err(LocateError::PodConflict { .. })
        ));
        // A pod conflict on one line and a container conflict on another: the container
        // conflict is reported, in either order (the fuzzer found the verdict followed the order).
        let both = [c.as_str(), a.as_str(), b.as_str()];
        for order in [both, [b.as_str(), a.as_str(), c.as_str()]] {
            assert!(matches!(
                from_paths(order.into_iter(), "cgroup"),
                Err(LocateError::ContainerConflict { .. })
            ));
        }
        // One path naming two pods.
        let d = format!(
            "/podd488cae9-b2a0-11e7-9350-020968147796/pod2c48913c-b29f-11e7-9350-020968147796/{ID}"
        );
        assert!(matches!(
            from_paths(std::iter::once(d.as_str()), "cgroup"),
            Err(LocateError::PodConflict { .. })
        ));
        // The same container on every line, one line without the pod: fine.
        let e = format!("/../{ID}");
        assert_eq!(
            from_paths([a.as_str(), e.as_str()].into_iter(), "cgroup")
                .unwrap()
                .unwrap()
                .pod_uid
                .as_deref(),
            Some("2c48913c-b29f-11e7-9350-020968147796")
        );
    }

    /// Random paths built from the characters the parsers look at never panic, and whatever
    /// they accept is well formed.
    #[test]
    fn arbitrary_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let pieces = [
            "/",
            "-",
            "_",
            ":",
            ".",
            "pod",
            ".slice",
            ".scope",
            "docker-",
            "crio-",
            "é",
            "ß",
            "0",
            "a",
            "f",
            "g",
            "\n",
            " ",
            "2c48913c-b29f-11e7-9350-020968147796",
            ID,
            "2c48913c_b29f_11e7_9350_020968147796",
            "- cgroup2 ",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..24);
            let text: String = (0..n)
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            for result in [
                from_paths(cgroup_paths(&text).into_iter(), "cgroup"),
                from_paths(mountinfo_cgroup_roots(&text), "mountinfo"),
                from_paths(std::iter::once(text.as_str()), "cgroup"),
            ] {
                if let Ok(Some(found)) = result {
                    assert!(is_lower_hex(&found.container_id), "{text:?}");
                    assert_eq!(found.container_id.len(), 64, "{text:?}");
                    if let Some(uid) = found.pod_uid {
                        assert!(!uid.contains('_') && (uid.len() == 36 || uid.len() == 32));
                    }
                }
            }
        }
    }

    #[test]
    fn cgroup_lines_keep_colons_in_paths() {
        let text = "0::/a:b:c\n1:name=systemd:/\nbroken\n";
        assert_eq!(cgroup_paths(text), vec!["/a:b:c", "/"]);
    }

    #[test]
    fn mountinfo_reads_only_cgroup_mounts() {
        let text = format!(
            "1 0 0:1 /kubepods/{ID} /x rw - tmpfs tmpfs rw\n\
             2 0 0:2 /kubepods/{ID} /sys/fs/cgroup rw shared:1 - cgroup2 cgroup rw\n\
             3 0 0:3 /short - cgroup\n"
        );
        let roots: Vec<&str> = mountinfo_cgroup_roots(&text).collect();
        assert_eq!(roots, vec![format!("/kubepods/{ID}").as_str()]);
    }

    #[test]
    fn missing_process_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            locate(dir.path(), 42),
            Err(LocateError::Gone { pid: 42 })
        ));
    }

    #[test]
    fn oversize_cgroup_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("7");
        std::fs::create_dir(&proc).unwrap();
        let line = format!("0::/kubepods/{ID}\n");
        let mut text = String::new();
        while (text.len() + line.len()) as u64 <= MAX_CGROUP_FILE_BYTES {
            text.push_str(&line);
        }
        text.push_str(&"/".repeat(MAX_CGROUP_FILE_BYTES as usize - text.len()));
        std::fs::write(proc.join("cgroup"), &text).unwrap();
        assert!(
            locate(dir.path(), 7).unwrap().is_some(),
            "exactly at the limit"
        );
        text.push('/');
        std::fs::write(proc.join("cgroup"), &text).unwrap();
        assert!(matches!(
            locate(dir.path(), 7),
            Err(LocateError::TooLarge { .. })
        ));
    }

    #[test]
    fn mountinfo_fallback_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("8");
        std::fs::create_dir(&proc).unwrap();
        std::fs::write(proc.join("cgroup"), "0::/\n").unwrap();
        let line = format!("1 0 0:2 /kubepods/{ID} /sys/fs/cgroup rw - cgroup2 cgroup rw\n");
        let mut text = line.repeat(MAX_MOUNTINFO_BYTES as usize / line.len());
        text.push_str(&" ".repeat(MAX_MOUNTINFO_BYTES as usize - text.len()));
        std::fs::write(proc.join("mountinfo"), &text).unwrap();
        let found = locate(dir.path(), 8).unwrap().unwrap();
        assert_eq!(found.container_id, ID, "exactly at the limit");
        text.push(' ');
        std::fs::write(proc.join("mountinfo"), &text).unwrap();
        assert!(matches!(
            locate(dir.path(), 8),
            Err(LocateError::TooLarge { .. })
        ));
    }

    #[test]
    fn host_process_never_reads_mountinfo() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("9");
        std::fs::create_dir(&proc).unwrap();
        std::fs::write(
            proc.join("cgroup"),
            "0::/user.slice/user-1000.slice/session-2.scope\n",
        )
        .unwrap();
        std::fs::write(
            proc.join("mountinfo"),
            format!("1 0 0:2 /kubepods/pod2c48913c-b29f-11e7-9350-020968147796/{ID} /sys/fs/cgroup rw - cgroup2 cgroup rw\n"),
        )
        .unwrap();
        assert_eq!(locate(dir.path(), 9).unwrap(), None);
    }
}
