//! Table-driven checks of [`FsTrust`]. Another user is played by uid 65534 (`nobody`): the
//! cases that `chown` need root, and fail saying so unless `SVID_BROKER_TESTS_NOT_ROOT=1`
//! skips them explicitly.

use std::os::unix::fs::{chown, lchown, symlink as ln_s, PermissionsExt};

use super::*;

const NOBODY: u32 = 65534;

/// True when the test can chown; otherwise panics, unless the operator opted out.
fn root_or_opt_out() -> bool {
    svid_broker_test_support::root_or_opt_out(&format!(
        "chowns files to uid {NOBODY} to play another user"
    ))
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir(path).unwrap();
    chmod(path, mode);
}

fn write(path: &Path, mode: u32) {
    std::fs::write(path, b"x").unwrap();
    chmod(path, mode);
}

fn give_away(path: &Path) {
    chown(path, Some(NOBODY), None).unwrap();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    NotOwned,
    Writable,
    Exposed,
    Symlink,
    WrongType,
    NotFound,
}

fn kind(r: &Result<(), TrustError>) -> Expect {
    match r {
        Ok(()) => Expect::Ok,
        Err(TrustError::NotOwned { .. }) => Expect::NotOwned,
        Err(TrustError::Writable { .. }) => Expect::Writable,
        Err(TrustError::Exposed { .. }) => Expect::Exposed,
        Err(TrustError::Symlink { .. }) => Expect::Symlink,
        Err(TrustError::WrongType { .. }) => Expect::WrongType,
        Err(e) if e.is_not_found() => Expect::NotFound,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[derive(Clone, Copy)]
enum Op {
    CheckDir,
    Private,
    Input,
}

struct Case {
    name: &'static str,
    needs_root: bool,
    /// Builds the scene under the (trusted) base dir; returns the path to check.
    setup: fn(&Path) -> PathBuf,
    op: Op,
    expect: Expect,
    /// The path the error must name, relative to the base dir.
    blamed: &'static str,
}

fn run(cases: &[Case]) {
    let root = root_or_opt_out();
    for case in cases {
        if case.needs_root && !root {
            continue;
        }
        let base = tempfile::tempdir().unwrap();
        let base = base.path().canonicalize().unwrap().to_path_buf();
        let target = (case.setup)(&base);
        let trust = FsTrust::current();
        let result = match case.op {
            Op::CheckDir => trust.check_dir("test dir", &target).map(drop),
            Op::Private => trust.open_private("test key", &target).map(drop),
            Op::Input => trust.open_input("test input", &target).map(drop),
        };
        assert_eq!(kind(&result), case.expect, "{}: {result:?}", case.name);
        if let Err(e) = &result {
            assert_eq!(e.path(), base.join(case.blamed), "{}: {e}", case.name);
            let text = e.to_string();
            assert!(text.contains(&e.path().display().to_string()), "{text}");
            if case.expect != Expect::NotFound {
                assert!(text.contains("Fix: "), "{}: no fix in {text}", case.name);
                assert!(
                    text.contains("mode 0") || text.contains("mode 1"),
                    "{}: no mode in {text}",
                    case.name
                );
                assert!(text.contains("uid "), "{}: no owner in {text}", case.name);
            }
        }
    }
}

#[test]
fn directories_we_keep_files_in() {
    run(&[
        Case {
            name: "ours, 0755",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("d"), 0o755);
                b.join("d")
            },
            op: Op::CheckDir,
            expect: Expect::Ok,
            blamed: "",
        },
        Case {
            name: "ours, 0777",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("d"), 0o777);
                b.join("d")
            },
            op: Op::CheckDir,
            expect: Expect::Writable,
            blamed: "d",
        },
        Case {
            name: "ours, group-writable",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("d"), 0o775);
                b.join("d")
            },
            op: Op::CheckDir,
            expect: Expect::Writable,
            blamed: "d",
        },
        Case {
            name: "ours, sticky 1777: fine above us, never as ours",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("d"), 0o1777);
                b.join("d")
            },
            op: Op::CheckDir,
            expect: Expect::Writable,
            blamed: "d",
        },
        Case {
            name: "pre-created by another user",
            needs_root: true,
            setup: |b| {
                mkdir(&b.join("d"), 0o755);
                give_away(&b.join("d"));
                b.join("d")
            },
            op: Op::CheckDir,
            expect: Expect::NotOwned,
            blamed: "d",
        },
        Case {
            name: "the directory itself is a symlink (to a good dir)",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("real"), 0o755);
                ln_s(b.join("real"), b.join("d")).unwrap();
                b.join("d")
            },
            op: Op::CheckDir,
            expect: Expect::Symlink,
            blamed: "d",
        },
        Case {
            name: "an ancestor owned by another user",
            needs_root: true,
            setup: |b| {
                mkdir(&b.join("a"), 0o755);
                mkdir(&b.join("a/d"), 0o755);
                give_away(&b.join("a"));
                b.join("a/d")
            },
            op: Op::CheckDir,
            expect: Expect::NotOwned,
            blamed: "a",
        },
        Case {
            name: "a world-writable ancestor without the sticky bit",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("a"), 0o777);
                mkdir(&b.join("a/d"), 0o755);
                b.join("a/d")
            },
            op: Op::CheckDir,
            expect: Expect::Writable,
            blamed: "a",
        },
        Case {
            name: "a sticky world-writable ancestor, like /tmp",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("tmp"), 0o1777);
                mkdir(&b.join("tmp/d"), 0o700);
                b.join("tmp/d")
            },
            op: Op::CheckDir,
            expect: Expect::Ok,
            blamed: "",
        },
        Case {
            name: "a sticky ancestor owned by another user",
            needs_root: true,
            setup: |b| {
                mkdir(&b.join("tmp"), 0o1777);
                mkdir(&b.join("tmp/d"), 0o700);
                give_away(&b.join("tmp"));
                b.join("tmp/d")
            },
            op: Op::CheckDir,
            expect: Expect::NotOwned,
            blamed: "tmp",
        },
        Case {
            name: "our symlink on the way is followed",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("real"), 0o755);
                mkdir(&b.join("real/d"), 0o700);
                ln_s(b.join("real"), b.join("link")).unwrap();
                b.join("link/d")
            },
            op: Op::CheckDir,
            expect: Expect::Ok,
            blamed: "",
        },
        Case {
            name: "another user's symlink on the way (in a sticky dir) is not",
            needs_root: true,
            setup: |b| {
                mkdir(&b.join("real"), 0o755);
                mkdir(&b.join("real/d"), 0o700);
                mkdir(&b.join("tmp"), 0o1777);
                ln_s(b.join("real"), b.join("tmp/link")).unwrap();
                lchown(b.join("tmp/link"), Some(NOBODY), None).unwrap();
                b.join("tmp/link/d")
            },
            op: Op::CheckDir,
            expect: Expect::Symlink,
            blamed: "tmp/link",
        },
        Case {
            name: "a symlink leading through an untrusted directory",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("open"), 0o777);
                mkdir(&b.join("open/d"), 0o700);
                ln_s(b.join("open"), b.join("link")).unwrap();
                b.join("link/d")
            },
            op: Op::CheckDir,
            expect: Expect::Writable,
            blamed: "open",
        },
        Case {
            name: "a file where the directory should be",
            needs_root: false,
            setup: |b| {
                write(&b.join("d"), 0o600);
                b.join("d")
            },
            op: Op::CheckDir,
            expect: Expect::WrongType,
            blamed: "d",
        },
        Case {
            name: "missing",
            needs_root: false,
            setup: |b| b.join("d"),
            op: Op::CheckDir,
            expect: Expect::NotFound,
            blamed: "d",
        },
    ]);
}

#[test]
fn private_keys() {
    run(&[
        Case {
            name: "ours, 0600",
            needs_root: false,
            setup: |b| {
                write(&b.join("k"), 0o600);
                b.join("k")
            },
            op: Op::Private,
            expect: Expect::Ok,
            blamed: "",
        },
        Case {
            name: "world-readable",
            needs_root: false,
            setup: |b| {
                write(&b.join("k"), 0o644);
                b.join("k")
            },
            op: Op::Private,
            expect: Expect::Exposed,
            blamed: "k",
        },
        Case {
            name: "group-readable",
            needs_root: false,
            setup: |b| {
                write(&b.join("k"), 0o640);
                b.join("k")
            },
            op: Op::Private,
            expect: Expect::Exposed,
            blamed: "k",
        },
        Case {
            name: "owned by another user",
            needs_root: true,
            setup: |b| {
                write(&b.join("k"), 0o600);
                give_away(&b.join("k"));
                b.join("k")
            },
            op: Op::Private,
            expect: Expect::NotOwned,
            blamed: "k",
        },
        Case {
            name: "a symlink to a good key",
            needs_root: false,
            setup: |b| {
                write(&b.join("real"), 0o600);
                ln_s(b.join("real"), b.join("k")).unwrap();
                b.join("k")
            },
            op: Op::Private,
            expect: Expect::Symlink,
            blamed: "k",
        },
        Case {
            name: "a FIFO does not hang the start",
            needs_root: false,
            setup: |b| {
                let p = b.join("k");
                let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                p
            },
            op: Op::Private,
            expect: Expect::WrongType,
            blamed: "k",
        },
        Case {
            name: "in a world-writable directory",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("d"), 0o777);
                write(&b.join("d/k"), 0o600);
                b.join("d/k")
            },
            op: Op::Private,
            expect: Expect::Writable,
            blamed: "d",
        },
        Case {
            name: "missing",
            needs_root: false,
            setup: |b| b.join("k"),
            op: Op::Private,
            expect: Expect::NotFound,
            blamed: "k",
        },
    ]);
}

#[test]
fn inputs_such_as_policy_files() {
    run(&[
        Case {
            name: "ours, 0644",
            needs_root: false,
            setup: |b| {
                write(&b.join("p"), 0o644);
                b.join("p")
            },
            op: Op::Input,
            expect: Expect::Ok,
            blamed: "",
        },
        Case {
            name: "group-writable",
            needs_root: false,
            setup: |b| {
                write(&b.join("p"), 0o664);
                b.join("p")
            },
            op: Op::Input,
            expect: Expect::Writable,
            blamed: "p",
        },
        Case {
            name: "owned by another user",
            needs_root: true,
            setup: |b| {
                write(&b.join("p"), 0o644);
                give_away(&b.join("p"));
                b.join("p")
            },
            op: Op::Input,
            expect: Expect::NotOwned,
            blamed: "p",
        },
        Case {
            name: "our symlink (a ConfigMap's layout) is followed",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("..data"), 0o755);
                write(&b.join("..data/p"), 0o644);
                ln_s("..data/p", b.join("p")).unwrap();
                b.join("p")
            },
            op: Op::Input,
            expect: Expect::Ok,
            blamed: "",
        },
        Case {
            name: "another user's symlink is not",
            needs_root: true,
            setup: |b| {
                write(&b.join("real"), 0o644);
                ln_s(b.join("real"), b.join("p")).unwrap();
                lchown(b.join("p"), Some(NOBODY), None).unwrap();
                b.join("p")
            },
            op: Op::Input,
            expect: Expect::Symlink,
            blamed: "p",
        },
        Case {
            name: "in a sticky world-writable directory",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("tmp"), 0o1777);
                write(&b.join("tmp/p"), 0o644);
                b.join("tmp/p")
            },
            op: Op::Input,
            expect: Expect::Writable,
            blamed: "tmp",
        },
        Case {
            name: "a directory",
            needs_root: false,
            setup: |b| {
                mkdir(&b.join("p"), 0o755);
                b.join("p")
            },
            op: Op::Input,
            expect: Expect::WrongType,
            blamed: "p",
        },
    ]);
}

#[test]
fn ensure_dir_creates_with_the_exact_mode_and_never_through_a_symlink() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path().canonicalize().unwrap();
    let trust = FsTrust::current();
    let made = trust
        .ensure_dir("test dir", &base.join("a/b"), 0o755)
        .unwrap();
    assert_eq!(made, base.join("a/b"));
    for p in [base.join("a"), base.join("a/b")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{}", p.display());
    }
    // Existing and fine: accepted as is.
    trust
        .ensure_dir("test dir", &base.join("a/b"), 0o700)
        .unwrap();
    // A symlink planted where the directory goes is refused, and its target left alone.
    mkdir(&base.join("victim"), 0o700);
    ln_s(base.join("victim"), base.join("planted")).unwrap();
    let err = trust
        .ensure_dir("test dir", &base.join("planted"), 0o755)
        .unwrap_err();
    assert!(matches!(err, TrustError::Symlink { .. }), "{err}");
    let mode = std::fs::metadata(base.join("victim"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o700);
}

#[test]
fn messages_name_path_owner_mode_and_fix() {
    if !root_or_opt_out() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let d = base.path().join("svid-broker");
    mkdir(&d, 0o755);
    give_away(&d);
    let err = FsTrust::current()
        .ensure_dir("socket directory", &d, 0o755)
        .unwrap_err()
        .to_string();
    for want in [
        "socket directory",
        &d.display().to_string(),
        "uid 65534",
        "mode 0755",
        "Fix: ",
        "chown 0 ",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
}

#[test]
fn owners_read_well() {
    let root_or_us = Owners {
        euid: 1000,
        root: true,
    };
    assert_eq!(
        root_or_us.to_string(),
        "root or uid 1000 (the daemon's user)"
    );
    let root = Owners {
        euid: 0,
        root: true,
    };
    assert_eq!(root.to_string(), "root (uid 0, the daemon's user)");
    assert!(root_or_us.allows(0) && root_or_us.allows(1000) && !root_or_us.allows(7));
    let us = Owners {
        euid: 1000,
        root: false,
    };
    assert!(!us.allows(0));
}
