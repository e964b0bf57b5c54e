//! The daemon refuses paths another user could change (socket directories, data_dir, key
//! files, the audit directory, the policy file) and registration entries that could never
//! match, naming what is wrong and how to fix it; a trusted layout still starts.
//!
//! Another user is played by uid 65534 (`nobody`), so these tests need root to `chown`; not
//! as root they fail saying so, unless `SVID_BROKER_TESTS_NOT_ROOT=1` skips them explicitly.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/hostile.rs"]
mod hostile;

use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daemon::{Daemon, DaemonConfig, Entry};

const ID: &str = "spiffe://example.org/test/fstrust";
const NOBODY: u32 = 65534;

fn me() -> DaemonConfig {
    DaemonConfig::new().entry_for_me(ID)
}

/// True when the test may chown; otherwise a failure, unless the operator opted out.
fn root_or_opt_out() -> bool {
    if daemon::euid() == 0 {
        return true;
    }
    if std::env::var_os("SVID_BROKER_TESTS_NOT_ROOT").is_some_and(|v| v == "1") {
        eprintln!(
            "SVID_BROKER_TESTS_NOT_ROOT=1: skipping a test that chowns files to uid {NOBODY}"
        );
        return false;
    }
    panic!(
        "this test needs root: it chowns files to uid {NOBODY} to play another user. Run it as \
         root, or set SVID_BROKER_TESTS_NOT_ROOT=1 to skip it explicitly"
    );
}

fn base() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("svid-broker-test.")
        .tempdir()
        .unwrap()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir(path).unwrap();
    chmod(path, mode);
}

fn give_away(path: &Path) {
    chown(path, Some(NOBODY), None).unwrap();
}

/// Starts the daemon on `config` in `dir` and expects it to exit non-zero before serving.
/// Returns its output.
fn refused(dir: &Path, socket: &Path, config: &DaemonConfig) -> String {
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config.render(dir, socket)).unwrap();
    run_config(&config_path)
}

/// `svid-broker run --config FILE`, expected to exit non-zero before serving; its output.
fn run_config(config: &Path) -> String {
    let log_path = config.with_file_name("daemon.log");
    let mut child = daemon::spawn_daemon(config, &log_path);
    let log = || daemon::strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let deadline = Instant::now() + daemon::START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "exit status {status}\n{}", log());
            record_refusal(status, &log());
            return log();
        }
        if log().contains("serving") || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon started although it should have refused\nconfig:\n{}\nlog:\n{}",
                std::fs::read_to_string(config).unwrap_or_default(),
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A row for docs/security.md: the test's name as the attack, the daemon's last words as
/// what was observed.
fn record_refusal(status: std::process::ExitStatus, log: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("")
        .replace('_', " ");
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    hostile::report(
        &test,
        "the daemon refuses to start, naming the path or entry and the fix",
        &format!("{status}: {}", last.trim()),
    );
}

fn assert_names(out: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(
            out.contains(w),
            "{w:?} missing from the daemon's output:\n{out}"
        );
    }
}

#[test]
fn a_socket_directory_pre_created_by_another_user_is_refused() {
    if !root_or_opt_out() {
        return;
    }
    let dir = base();
    // Like /tmp/svid-broker made by someone else before the daemon's first start.
    let tmp = dir.path().join("tmp");
    mkdir(&tmp, 0o1777);
    let sockets = tmp.join("svid-broker");
    mkdir(&sockets, 0o755);
    give_away(&sockets);
    let socket = sockets.join("api.sock");
    let out = refused(dir.path(), &socket, &me());
    assert_names(
        &out,
        &[
            "socket directory",
            &sockets.display().to_string(),
            "uid 65534",
            "mode 0755",
            "Fix: ",
        ],
    );
    assert!(!socket.exists());
}

#[test]
fn an_admin_socket_directory_writable_by_others_is_refused() {
    let dir = base();
    let admin = dir.path().join("admin");
    mkdir(&admin, 0o777);
    let socket = dir.path().join("api.sock");
    // admin_socket_path is a top-level key: it goes before every table.
    let text = me().render(dir.path(), &socket).replacen(
        "socket_path =",
        &format!(
            "admin_socket_path = {:?}\nsocket_path =",
            admin.join("admin.sock").display().to_string()
        ),
        1,
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, text).unwrap();
    let out = run_config(&config_path);
    assert_names(
        &out,
        &[
            "admin socket directory",
            &admin.display().to_string(),
            "mode 0777",
            "chmod go-w",
        ],
    );
    assert!(
        !socket.exists(),
        "nothing is served when a socket is refused"
    );
    assert!(!admin.join("admin.sock").exists());
}

#[test]
fn a_symlink_planted_as_the_socket_directory_is_refused_and_its_target_untouched() {
    let dir = base();
    let victim = dir.path().join("victim");
    mkdir(&victim, 0o700);
    let planted = dir.path().join("sockets");
    symlink(&victim, &planted).unwrap();
    let out = refused(dir.path(), &planted.join("api.sock"), &me());
    assert_names(
        &out,
        &[
            "socket directory",
            &planted.display().to_string(),
            "symbolic link",
            "Fix: ",
        ],
    );
    assert_eq!(mode_of(&victim), 0o700, "the link's target keeps its mode");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);

    // A link where the socket goes, in a trusted directory, is no socket: left alone too.
    let file = dir.path().join("precious");
    std::fs::write(&file, b"x").unwrap();
    chmod(&file, 0o600);
    let socket = dir.path().join("api.sock");
    symlink(&file, &socket).unwrap();
    let out = refused(dir.path(), &socket, &me());
    assert_names(&out, &["not a socket"]);
    assert_eq!(mode_of(&file), 0o600);
}

#[test]
fn a_world_writable_data_dir_is_refused() {
    let dir = base();
    let data = dir.path().join("data");
    mkdir(&data, 0o777);
    let out = refused(
        dir.path(),
        &dir.path().join("api.sock"),
        &me().data_dir(true),
    );
    assert_names(
        &out,
        &[
            "data_dir",
            &data.display().to_string(),
            "mode 0777",
            "chmod go-w",
        ],
    );
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "no key written"
    );
}

/// A temp dir where a daemon with `data_dir` started once and wrote its keys; the key file.
fn dir_with_keys() -> (tempfile::TempDir, PathBuf) {
    let dir = base();
    let config_path = dir.path().join("config.toml");
    let socket = dir.path().join("api.sock");
    std::fs::write(
        &config_path,
        me().data_dir(true).render(dir.path(), &socket),
    )
    .unwrap();
    let log_path = dir.path().join("first.log");
    let mut child = daemon::spawn_daemon(&config_path, &log_path);
    let deadline = Instant::now() + daemon::START_TIMEOUT;
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("serving")
    {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the first start failed:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    let keys = dir.path().join("data/authority_keys.json");
    assert_eq!(mode_of(&keys), 0o600);
    (dir, keys)
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let (dir, keys) = dir_with_keys();
    chmod(&keys, 0o644);
    let out = refused(
        dir.path(),
        &dir.path().join("api.sock"),
        &me().data_dir(true),
    );
    assert_names(
        &out,
        &[
            "key file",
            &keys.display().to_string(),
            "mode 0644",
            "chmod 600",
        ],
    );
}

#[test]
fn a_key_file_owned_by_another_user_is_refused() {
    if !root_or_opt_out() {
        return;
    }
    let (dir, keys) = dir_with_keys();
    give_away(&keys);
    let out = refused(
        dir.path(),
        &dir.path().join("api.sock"),
        &me().data_dir(true),
    );
    assert_names(
        &out,
        &[
            "key file",
            &keys.display().to_string(),
            "uid 65534",
            "mode 0600",
            "Fix: ",
        ],
    );
}

#[test]
fn an_audit_directory_owned_by_another_user_is_refused() {
    if !root_or_opt_out() {
        return;
    }
    let dir = base();
    let audit = dir.path().join("audit");
    mkdir(&audit, 0o700);
    give_away(&audit);
    let config = me().extra_toml(&format!(
        "[audit]\npath = {:?}\n",
        audit.join("audit.log").display().to_string()
    ));
    let out = refused(dir.path(), &dir.path().join("api.sock"), &config);
    assert_names(
        &out,
        &[
            "[audit] path's directory",
            &audit.display().to_string(),
            "uid 65534",
            "mode 0700",
        ],
    );
    assert!(!audit.join("audit.log").exists());
}

#[test]
fn a_group_writable_policy_file_is_refused() {
    let dir = base();
    let policy = dir.path().join("policy.cedar");
    std::fs::write(&policy, svid_broker::app::DEVELOPMENT_POLICY).unwrap();
    chmod(&policy, 0o664);
    let config = me().extra_toml(&format!(
        "[policy]\nfile = {:?}\n",
        policy.display().to_string()
    ));
    let out = refused(dir.path(), &dir.path().join("api.sock"), &config);
    assert_names(
        &out,
        &[
            "[policy] file",
            &policy.display().to_string(),
            "mode 0664",
            "chmod go-w",
        ],
    );
}

/// The development default lives in /tmp: the daemon creates its directory in a sticky
/// world-writable parent, accepts it on the next start, and every trusted file is used.
#[test]
fn a_trusted_layout_starts_and_restarts() {
    let dir = base();
    let tmp = dir.path().join("tmp");
    mkdir(&tmp, 0o1777);
    let sockets = tmp.join("svid-broker");
    let socket = sockets.join("api.sock");
    let policy = dir.path().join("policy.cedar");
    std::fs::write(&policy, svid_broker::app::DEVELOPMENT_POLICY).unwrap();
    chmod(&policy, 0o644);
    let config = me().data_dir(true).extra_toml(&format!(
        "[policy]\nfile = {:?}\n\n[audit]\npath = {:?}\n",
        policy.display().to_string(),
        dir.path().join("audit/audit.log").display().to_string()
    ));
    let mut d = Daemon::start_in(dir, socket.clone(), &config);
    assert!(d.fetch_jwt("spiffe://example.org/a").starts_with("eyJ"));
    assert_eq!(mode_of(&sockets), 0o755);
    assert_eq!(mode_of(&socket), 0o777);
    assert_eq!(mode_of(&d.dir().join("data")), 0o700);
    assert_eq!(mode_of(&d.dir().join("audit")), 0o700);
    d.restart();
    assert!(d.fetch_jwt("spiffe://example.org/a").starts_with("eyJ"));
    let leftovers: Vec<_> = std::fs::read_dir(&sockets)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "api.sock")
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary sockets left behind: {leftovers:?}"
    );
}

#[test]
fn selectors_and_placeholders_no_attestor_can_match_are_refused() {
    let cases = [
        ("spiffe://example.org/a", "unix:uid", "has no value"),
        (
            "spiffe://example.org/b",
            "foo:bar:1",
            "no attestor produces kind \"foo\"",
        ),
        (
            "spiffe://example.org/c",
            "unix:nope:1",
            "unknown type \"unix:nope\"",
        ),
    ];
    for (id, selector, why) in cases {
        let dir = base();
        let config = me().entry(Entry::new(id, &[selector]));
        let out = refused(dir.path(), &dir.path().join("api.sock"), &config);
        assert_names(&out, &["[[entry]] 1", id, &format!("{selector:?}"), why]);
    }
    let dir = base();
    let config = me().entry(Entry::new("spiffe://example.org/uid/{unix:nope}", &[]));
    let out = refused(dir.path(), &dir.path().join("api.sock"), &config);
    assert_names(
        &out,
        &[
            "[[entry]] 1",
            "spiffe://example.org/uid/{unix:nope}",
            "{unix:nope}",
        ],
    );
}
