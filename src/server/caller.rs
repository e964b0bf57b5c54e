//! Resolving the caller of a request to its identities: attest once per connection, then on
//! each call confirm cheaply (two stats relative to the pinned `/proc/<pid>`, which also prove
//! it alive) that the same program still runs as the same user; anything else re-attests.
//!
//! `setgroups` moves no part of that fingerprint, so a caller's supplementary groups are
//! compared too, on each call, while anything could decide differently without them: a
//! registry entry the caller matched that names a group selector, an upstream issuer (which
//! sees every selector), or a policy that reads `principal.selectors`. Reading the groups
//! costs a read of `/proc/<pid>/status`, several times the two stats; when nothing reads
//! them, losing a group could change no answer, and they are not read.

use std::sync::{Arc, Mutex, MutexGuard};

use tonic::{Request, Status};

use crate::attest::peer::{PinnedProcess, ProcessFingerprint, ProcessGroups};
use crate::attest::unix::names_a_group;
use crate::attest::{AttestError, Attestation, Attestors};
use crate::audit::{AuditError, AuditEvent, AuditLog};
use crate::authority::Issuer;
use crate::policy::PolicyEngine;
use crate::registry::Registry;
use crate::telemetry::Metrics;

use crate::caller::Written;
pub use crate::caller::{Caller, NO_IDENTITY};

/// A caller attested on a connection: under which fingerprint, and its attestation record.
struct Known {
    fingerprint: ProcessFingerprint,
    /// The groups it was attested with, kept when it has any: `setgroups` changes no part of
    /// the fingerprint, so these are compared on each call while something reads them.
    groups: Option<Arc<ProcessGroups>>,
    /// Whether its identities could change with its groups (an entry it matched names a
    /// group selector, or an upstream issuer decides them). The policy is asked per call,
    /// since a reload can change its answer.
    identities_read_groups: bool,
    caller: Arc<Caller>,
    record: Option<Arc<AttestationRecord>>,
}

/// Per-connection state, in the request extensions.
pub struct CallerHandle {
    pinned: Result<PinnedProcess, String>,
    /// The caller attested on this connection. Every call reads it: a plain mutex, held only
    /// to compare and clone, never across an await.
    known: Mutex<Option<Known>>,
    /// Held while attesting, so that concurrent calls on a new connection attest once.
    attesting: tokio::sync::Mutex<()>,
}

impl CallerHandle {
    pub fn new(pinned: std::io::Result<PinnedProcess>) -> Self {
        Self {
            pinned: pinned.map_err(|e| e.to_string()),
            known: Mutex::new(None),
            attesting: tokio::sync::Mutex::new(()),
        }
    }

    pub fn pinned(&self) -> Option<&PinnedProcess> {
        self.pinned.as_ref().ok()
    }

    fn known(&self) -> MutexGuard<'_, Option<Known>> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached caller and its attestation record, if it was attested under `now` and,
    /// when something reads its groups, it is in the same groups still: the groups it was
    /// attested with, whatever calls came between. `policy_reads` is asked only for a caller
    /// with groups whose identities do not read them. Groups are read after the mutex is
    /// released.
    fn known_as(
        &self,
        now: &ProcessFingerprint,
        process: &PinnedProcess,
        policy_reads: impl FnOnce() -> bool,
    ) -> Option<Resolved> {
        let (resolved, groups, identities_read) = match self.known().as_ref() {
            Some(k) if &k.fingerprint == now => (
                (k.caller.clone(), k.record.clone()),
                k.groups.clone(),
                k.identities_read_groups,
            ),
            _ => return None,
        };
        match groups {
            Some(then)
                if (identities_read || policy_reads())
                    && process.groups().ok().as_ref() != Some(&*then) =>
            {
                None
            }
            _ => Some(resolved),
        }
    }
}

/// A caller, and its attestation record when that may not be on disk yet.
pub type Resolved = (Arc<Caller>, Option<Arc<AttestationRecord>>);

/// The record of attesting a connection's caller, written once: together with the records of
/// the first SVIDs handed out on the connection when its first call hands some out (so that
/// call waits for the disk once, not twice), otherwise on its own before the call goes on.
/// Nothing leaves the daemon on the strength of an attestation before its record is on disk.
pub struct AttestationRecord {
    log: AuditLog,
    /// Until it is on disk; dropped then, since the connection may live for days.
    event: Mutex<Option<AuditEvent>>,
    written: Written,
}

impl AttestationRecord {
    fn new(log: AuditLog, event: AuditEvent) -> Self {
        Self {
            log,
            event: Mutex::new(Some(event)),
            written: Written::new(),
        }
    }

    fn event(&self) -> MutexGuard<'_, Option<AuditEvent>> {
        self.event.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once the record is on disk, writing it if no call has.
    ///
    /// # Errors
    /// The log refused it; a later call tries again.
    pub async fn written(&self) -> Result<(), AuditError> {
        self.written_with(Vec::new()).await
    }

    /// Writes `events` after this record and returns once all are on disk; in one batch with
    /// the record when it is not written yet (concurrent calls wait for that batch).
    ///
    /// # Errors
    /// The log refused them: none may be acted on.
    pub async fn written_with(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        let mut events = Some(events);
        let pending = &mut events;
        self.written
            .get_or_try_init(|| async move {
                let mut batch = Vec::with_capacity(1 + pending.as_ref().map_or(0, Vec::len));
                // Kept until the append succeeds: a refused batch is tried again by a later call.
                batch.extend(self.event().clone());
                batch.extend(pending.take().unwrap_or_default());
                self.log.append_all(batch).await?;
                self.event().take();
                Ok::<(), AuditError>(())
            })
            .await?;
        match events {
            Some(rest) if !rest.is_empty() => self.log.append_all(rest).await,
            _ => Ok(()),
        }
    }
}

/// Writes the records of handing something to a caller, with the caller's attestation
/// record when that is not on disk yet, and returns once all are. Without a log, nothing to
/// do.
///
/// # Errors
/// The log refused them: nothing may be handed out.
pub async fn record_for(
    log: Option<&AuditLog>,
    attestation: Option<&AttestationRecord>,
    events: Vec<AuditEvent>,
) -> Result<(), AuditError> {
    match (attestation, log) {
        (Some(a), _) => a.written_with(events).await,
        (None, Some(log)) if !events.is_empty() => log.append_all(events).await,
        _ => Ok(()),
    }
}

/// The end of a call that resolved its caller with [`CallerResolver::resolve_deferring`]: the
/// attestation record is on disk before the call's answer leaves, whatever the answer
/// (usually it went with the first SVIDs' records already, and this returns at once).
///
/// # Errors
/// `r`'s, or `Unavailable` when the log refuses the record.
pub async fn with_attestation_written<T>(
    attestation: Option<&AttestationRecord>,
    r: Result<T, Status>,
) -> Result<T, Status> {
    let Some(a) = attestation else { return r };
    match a.written().await {
        Ok(()) => r,
        Err(e) => r.and(Err(audit_refused(e))),
    }
}

/// The status of a call whose audit records the log refused: nothing was handed out.
/// `Unavailable` when the log cannot write; `InvalidArgument` when the record itself cannot
/// be written (the largest legal FetchJWTSVID, 64 audiences of 2 KiB, makes a record twice the
/// size a record may be): the log is healthy and the caller must ask for less.
pub fn audit_refused(e: AuditError) -> Status {
    super::status::unrecordable(&e, "audiences")
        .unwrap_or_else(|| Status::unavailable(format!("audit log unavailable: {e}")))
}

/// Turns connections into callers.
pub struct CallerResolver {
    attestors: Attestors,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Asked first which identities a caller holds; the registry decides when it defers.
    issuer: Arc<dyn Issuer>,
    audit: Option<AuditLog>,
    /// The policy in force, asked whether it reads callers' selectors.
    policy: Option<Arc<PolicyEngine>>,
}

impl CallerResolver {
    /// Records every attestation in `audit` when there is one.
    pub fn new(
        attestors: Attestors,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        issuer: Arc<dyn Issuer>,
        audit: Option<AuditLog>,
    ) -> Self {
        Self {
            attestors,
            registry,
            metrics,
            issuer,
            audit,
            policy: None,
        }
    }

    /// Tells the resolver which policy decides for its callers: while that policy reads
    /// `principal.selectors`, every caller with supplementary groups has them compared on
    /// each call.
    pub fn with_policy(mut self, policy: Option<Arc<PolicyEngine>>) -> Self {
        self.policy = policy;
        self
    }

    fn policy_reads_selectors(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.reads_selectors())
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The caller of `req`.
    ///
    /// # Errors
    /// `Unavailable` when the caller cannot be pinned or attested (retryable),
    /// `FailedPrecondition` when an attestor refuses to guess.
    pub async fn resolve<T>(&self, req: &Request<T>) -> Result<Arc<Caller>, Status> {
        self.resolve_handle(handle_of(req)?).await
    }

    /// The caller of `req`, and its attestation record if that may not be on disk yet: the
    /// call must write it (with [`record_for`], or [`AttestationRecord::written`]) before it
    /// hands anything out or returns.
    ///
    /// # Errors
    /// As [`CallerResolver::resolve`].
    pub async fn resolve_deferring<T>(&self, req: &Request<T>) -> Result<Resolved, Status> {
        self.resolve_handle_deferring(handle_of(req)?).await
    }

    /// # Errors
    /// As [`CallerResolver::resolve`].
    pub async fn resolve_handle(&self, handle: &CallerHandle) -> Result<Arc<Caller>, Status> {
        let (caller, record) = self.resolve_handle_deferring(handle).await?;
        if let Some(record) = record {
            record.written().await.map_err(audit_refused)?;
        }
        Ok(caller)
    }

    async fn resolve_handle_deferring(&self, handle: &CallerHandle) -> Result<Resolved, Status> {
        let checking = std::time::Instant::now();
        let process = handle
            .pinned
            .as_ref()
            .map_err(|e| Status::unavailable(format!("cannot identify caller: {e}")))?;
        let now = current_fingerprint(process)?;
        if let Some(known) = handle.known_as(&now, process, || self.policy_reads_selectors()) {
            self.metrics.observe_recheck(checking.elapsed());
            return Ok(known);
        }
        self.attest(handle, process).await
    }

    /// Attests the pinned process (again) and caches the caller under its fingerprint.
    async fn attest(
        &self,
        handle: &CallerHandle,
        process: &PinnedProcess,
    ) -> Result<Resolved, Status> {
        let _attesting = handle.attesting.lock().await;
        // Taken after the wait: another call on this connection may have attested meanwhile.
        let before = current_fingerprint(process)?;
        if let Some(known) = handle.known_as(&before, process, || self.policy_reads_selectors()) {
            return Ok(known);
        }
        let groups_before = process.groups().map_err(|_| gone(process.pid()))?;
        if handle.known().is_some() {
            tracing::info!(
                pid = process.pid(),
                "caller changed program, owner or groups; attesting again"
            );
        }
        let attestation = self
            .attestors
            .attest(process)
            .await
            .map_err(attest_status)?;
        // The fingerprint taken before attesting must still hold after it: otherwise the
        // process exec'd or changed owner while we read it, and the selectors may be mixed.
        let after = process.fingerprint().map_err(|_| gone(process.pid()))?;
        let groups = process.groups().map_err(|_| gone(process.pid()))?;
        if after != before || groups != groups_before || !process.is_alive() {
            return Err(Status::unavailable(
                "caller changed during attestation; retry",
            ));
        }
        self.metrics.observe_attestation(attestation.elapsed);
        let upstream = self.issuer.identities_for(&attestation.selectors).await?;
        let caller = Arc::new(match upstream {
            None => self.caller_from(attestation),
            Some((identities, live)) => Caller {
                pid: attestation.pid,
                selectors: attestation.selectors,
                identities,
                upstream: Some(live),
                delivered: Default::default(),
                selector_text: Default::default(),
            },
        });
        let mut record = None;
        if let Some(log) = &self.audit {
            // Once per connection. A caller with no identity is recorded once per uid and
            // window, then counted; it is handed nothing, so its call waits for that. Any
            // other's record goes to disk with the first SVIDs the call hands out, or before
            // the call returns (see `AttestationRecord`).
            let event = AuditEvent::Attestation {
                pid: caller.pid,
                selectors: caller.selector_strings().to_vec(),
                spiffe_ids: caller
                    .identities
                    .iter()
                    .map(|i| i.spiffe_id.to_string())
                    .collect(),
            };
            if caller.identities.is_empty() {
                log.append_attestation(process.uid(), event)
                    .await
                    .map_err(audit_refused)?;
            } else {
                record = Some(Arc::new(AttestationRecord::new(log.clone(), event)));
            }
        }
        tracing::debug!(
            pid = caller.pid,
            pin = process.method().as_str(),
            identities = caller.identities.len(),
            "caller attested"
        );
        let identities_read_groups = caller.upstream.is_some()
            || self
                .registry
                .matched_entries_read(&caller.selectors, names_a_group);
        *handle.known() = Some(Known {
            fingerprint: after,
            groups: (!groups.groups.is_empty()).then(|| Arc::new(groups)),
            identities_read_groups,
            caller: caller.clone(),
            record: record.clone(),
        });
        Ok((caller, record))
    }

    pub fn caller_from(&self, attestation: Attestation) -> Caller {
        let identities = self.registry.identities(&attestation.selectors);
        Caller {
            pid: attestation.pid,
            selectors: attestation.selectors,
            identities,
            upstream: None,
            delivered: Default::default(),
            selector_text: Default::default(),
        }
    }
}

/// The connection state the call layer put in `req`.
fn handle_of<T>(req: &Request<T>) -> Result<&CallerHandle, Status> {
    req.extensions()
        .get::<Arc<CallerHandle>>()
        .map(|h| &**h)
        .ok_or_else(|| Status::unavailable("caller unknown: not a Unix socket connection"))
}

/// The pinned process's fingerprint. A fingerprint is only ever taken from the live process
/// (see [`PinnedProcess::fingerprint`]), so the pidfd is polled only when there is none, to
/// tell an exited caller from one whose `/proc` entry cannot be read.
fn current_fingerprint(process: &PinnedProcess) -> Result<ProcessFingerprint, Status> {
    process.fingerprint().map_err(|_| {
        if process.is_alive() {
            gone(process.pid())
        } else {
            Status::unavailable("caller process has exited")
        }
    })
}

fn gone(pid: i32) -> Status {
    attest_status(AttestError::ProcessGone { pid })
}

fn attest_status(e: AttestError) -> Status {
    match e {
        AttestError::Refused { .. } => Status::failed_precondition(e.to_string()),
        AttestError::ProcessGone { .. } | AttestError::Failed { .. } => {
            Status::unavailable(format!("attestation failed: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use spiffe::TrustDomain;
    use tonic::Code;

    use super::*;
    use crate::attest::unix::{UnixAttestor, UnixAttestorConfig};
    use crate::attest::{AttestError, BoxFuture, Selector, WorkloadAttestor};
    use crate::authority::fake::FakeIssuer;

    /// The unix attestor, counting how often it runs.
    struct Counting {
        inner: UnixAttestor,
        runs: Arc<AtomicUsize>,
    }

    impl WorkloadAttestor for Counting {
        fn name(&self) -> &'static str {
            "unix"
        }

        fn attest(&self, pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestError>> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            self.inner.attest(pid)
        }
    }

    fn resolver() -> (CallerResolver, Arc<AtomicUsize>, Arc<Metrics>) {
        counting_resolver(Vec::new())
    }

    /// A resolver with `entries` in its registry, answering to `policy`.
    fn resolver_with(
        entries: Vec<crate::registry::EntryConfig>,
        policy: Option<Arc<PolicyEngine>>,
    ) -> (CallerResolver, Arc<AtomicUsize>) {
        let (resolver, runs, _) = counting_resolver(entries);
        (resolver.with_policy(policy), runs)
    }

    fn counting_resolver(
        entries: Vec<crate::registry::EntryConfig>,
    ) -> (CallerResolver, Arc<AtomicUsize>, Arc<Metrics>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let unix = Arc::new(Counting {
            inner: UnixAttestor::new(UnixAttestorConfig::default(), false),
            runs: runs.clone(),
        });
        let td = TrustDomain::new("example.org").unwrap();
        let metrics = Arc::new(Metrics::default());
        let resolver = CallerResolver::new(
            Attestors::new(vec![unix]),
            Arc::new(Registry::new(&td, entries).unwrap()),
            metrics.clone(),
            FakeIssuer::new("example.org"),
            None,
        );
        (resolver, runs, metrics)
    }

    fn handle_for(pid: u32) -> CallerHandle {
        CallerHandle::new(PinnedProcess::from_pid(pid as i32))
    }

    fn has(caller: &Caller, selector: &str) -> bool {
        caller.selector_strings().iter().any(|s| s == selector)
    }

    /// Waits (at most 10 s) until `done` holds.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn exe_of(pid: u32) -> Option<std::path::PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/exe")).ok()
    }

    fn stop(mut child: Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds is a valid array of two ints.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: pipe2 just returned these two fds, owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[tokio::test]
    async fn a_known_caller_is_checked_not_attested_again() {
        let (resolver, runs, metrics) = resolver();
        let handle = handle_for(std::process::id());
        let first = resolver.resolve_handle(&handle).await.unwrap();
        let uid = unsafe { libc::geteuid() };
        assert!(has(&first, &format!("unix:uid:{uid}")), "{first:?}");
        for _ in 0..3 {
            let again = resolver.resolve_handle(&handle).await.unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(
            metrics
                .render()
                .contains("svid_broker_caller_recheck_seconds_count 3\n"),
            "{}",
            metrics.render()
        );
    }

    #[tokio::test]
    async fn concurrent_first_calls_attest_once() {
        let (resolver, runs, _) = resolver();
        let handle = handle_for(std::process::id());
        let calls = (0..8).map(|_| resolver.resolve_handle(&handle));
        let callers = futures::future::join_all(calls).await;
        let first = callers[0].as_ref().unwrap();
        assert!(callers
            .iter()
            .all(|c| Arc::ptr_eq(c.as_ref().unwrap(), first)));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_caller_that_execs_another_program_is_attested_again() {
        let (resolver, runs, _) = resolver();
        let mut child = Command::new("sh")
            .args(["-c", "read _; exec sleep 30"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        let shell = exe_of(pid).expect("the shell's exe");
        let handle = handle_for(pid);
        let before = resolver.resolve_handle(&handle).await.unwrap();
        assert!(has(&before, &format!("unix:path:{}", shell.display())));
        assert!(Arc::ptr_eq(
            &before,
            &resolver.resolve_handle(&handle).await.unwrap()
        ));

        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        wait_until("the shell has exec'd sleep", || {
            exe_of(pid).is_some_and(|e| e != shell)
        });
        let sleep = exe_of(pid).unwrap();
        let after = resolver.resolve_handle(&handle).await.unwrap();
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(
            has(&after, &format!("unix:path:{}", sleep.display())),
            "{after:?}"
        );
        assert!(!has(&after, &format!("unix:path:{}", shell.display())));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // The new program is known from here on.
        assert!(Arc::ptr_eq(
            &after,
            &resolver.resolve_handle(&handle).await.unwrap()
        ));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        stop(child);
    }

    /// A resolver whose registry gives our uid an identity, writing to a real audit log.
    async fn recording_resolver(dir: &std::path::Path) -> (CallerResolver, AuditLog) {
        let uid = unsafe { libc::geteuid() };
        let td = TrustDomain::new("example.org").unwrap();
        let entry = crate::registry::EntryConfig {
            spiffe_id: "spiffe://example.org/me".into(),
            selectors: vec![format!("unix:uid:{uid}")],
            x509_ttl: None,
            jwt_ttl: None,
            hint: String::new(),
        };
        let (log, _) = AuditLog::open(&dir.join("audit.log"), Default::default())
            .await
            .unwrap();
        let resolver = CallerResolver::new(
            Attestors::new(vec![Arc::new(UnixAttestor::new(
                UnixAttestorConfig::default(),
                false,
            ))]),
            Arc::new(Registry::new(&td, vec![entry]).unwrap()),
            Arc::new(Metrics::default()),
            FakeIssuer::new("example.org"),
            Some(log.clone()),
        );
        (resolver, log)
    }

    fn kinds_in(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["kind"].as_str().unwrap().to_string()
            })
            .collect()
    }

    fn handed_out() -> AuditEvent {
        AuditEvent::SvidIssued {
            spiffe_id: "spiffe://example.org/me".into(),
            svid: crate::audit::SvidKind::X509,
            serial: Some("01".into()),
            jti: None,
            audiences: Vec::new(),
            expires_at: 1,
            pid: Some(std::process::id() as i32),
        }
    }

    #[tokio::test]
    async fn the_attestation_record_goes_to_disk_with_the_first_svid_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let (resolver, _log) = recording_resolver(dir.path()).await;
        let handle = handle_for(std::process::id());
        let (caller, record) = resolver.resolve_handle_deferring(&handle).await.unwrap();
        assert_eq!(caller.identities.len(), 1);
        let record = record.expect("a caller with an identity defers its record");
        assert!(
            kinds_in(dir.path()).is_empty(),
            "nothing written before the first SVID"
        );
        // Concurrent first calls on the connection: one batch holds the attestation and both
        // calls' records follow it; the attestation is written once.
        let (again, same) = resolver.resolve_handle_deferring(&handle).await.unwrap();
        assert!(Arc::ptr_eq(&caller, &again));
        let same = same.unwrap();
        assert!(Arc::ptr_eq(&record, &same));
        let (a, b) = tokio::join!(
            record_for(None, Some(&*record), vec![handed_out()]),
            record_for(None, Some(&*same), vec![handed_out()]),
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(
            kinds_in(dir.path()),
            ["attestation", "svid_issued", "svid_issued"]
        );
        assert!(
            record.event().is_none(),
            "the event is not kept once on disk"
        );
        // Later calls find it written: nothing more.
        record.written().await.unwrap();
        resolver.resolve_handle(&handle).await.unwrap();
        assert_eq!(kinds_in(dir.path()).len(), 3);
    }

    #[tokio::test]
    async fn a_call_that_hands_out_nothing_writes_the_attestation_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (resolver, _log) = recording_resolver(dir.path()).await;
        let handle = handle_for(std::process::id());
        // The undeferred resolve (every service but the SVID fetches): on disk at return.
        resolver.resolve_handle(&handle).await.unwrap();
        assert_eq!(kinds_in(dir.path()), ["attestation"]);
        // A deferred one that fails before any SVID: the call's end writes it.
        let dir = tempfile::tempdir().unwrap();
        let (resolver, _log) = recording_resolver(dir.path()).await;
        let handle = handle_for(std::process::id());
        let (_, record) = resolver.resolve_handle_deferring(&handle).await.unwrap();
        let failed: Result<(), Status> = Err(Status::permission_denied("no"));
        let r = with_attestation_written(record.as_deref(), failed).await;
        assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(kinds_in(dir.path()), ["attestation"]);
    }

    #[tokio::test]
    async fn a_caller_whose_executable_is_renamed_is_attested_again() {
        let (resolver, runs, _) = resolver();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::copy(which_sleep(), &a).unwrap();
        let child = spawn_fresh_copy(&a);
        let handle = handle_for(child.id());
        let before = resolver.resolve_handle(&handle).await.unwrap();
        assert!(
            has(&before, &format!("unix:path:{}", a.display())),
            "{before:?}"
        );
        // Same program, same inode, another path: the `unix:path` selector no longer holds.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::rename(&a, &b).unwrap();
        let after = resolver.resolve_handle(&handle).await.unwrap();
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(
            has(&after, &format!("unix:path:{}", b.display())),
            "{after:?}"
        );
        assert!(!has(&after, &format!("unix:path:{}", a.display())));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        stop(child);
    }

    /// Runs `exe 30`, just written. Another test thread may fork while the copy's descriptor
    /// is open, and its child holds the file open for writing until it execs: the kernel
    /// refuses to run it meanwhile (ETXTBSY), so try again briefly.
    fn spawn_fresh_copy(exe: &std::path::Path) -> Child {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Command::new(exe).arg("30").spawn() {
                Ok(child) => return child,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("spawn {}: {e}", exe.display()),
            }
        }
    }

    /// The `sleep` binary itself (not a symlink to a multi-call binary, whose copy would
    /// not know its name).
    fn which_sleep() -> std::path::PathBuf {
        let found = ["/usr/bin/sleep", "/bin/sleep"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .expect("sleep in /usr/bin or /bin");
        std::fs::canonicalize(found).unwrap()
    }

    /// A child of this test, forked: it runs `first`, waits for the byte [`Self::go`]
    /// writes, runs `then` and pauses until killed. Both run after `fork` in a multi-threaded
    /// process, so they may make only async-signal-safe calls and must not allocate.
    struct ForkedChild {
        pid: libc::pid_t,
        go: OwnedFd,
    }

    impl ForkedChild {
        fn spawn(first: fn(), then: fn()) -> Self {
            let (go_r, go_w) = pipe();
            let (go_fd, go_w_fd) = (go_r.as_raw_fd(), go_w.as_raw_fd());
            // SAFETY: the child makes only async-signal-safe calls (close, read, pause and
            // whatever `first` and `then` make) on memory prepared before the fork.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                unsafe {
                    libc::close(go_w_fd);
                    first();
                    let mut b = 0u8;
                    libc::read(go_fd, (&mut b as *mut u8).cast(), 1);
                    then();
                    loop {
                        libc::pause();
                    }
                }
            }
            Self { pid, go: go_w }
        }

        /// Lets the child run `then`.
        fn go(&self) {
            // SAFETY: one byte from a valid buffer.
            let n = unsafe { libc::write(self.go.as_raw_fd(), b"x".as_ptr().cast(), 1) };
            assert_eq!(n, 1);
        }

        fn kill(self) {
            // SAFETY: our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }

    /// The groups `/proc/<pid>/status` lists now.
    fn groups_of(pinned: &PinnedProcess) -> Vec<u32> {
        pinned.groups().map(|g| g.groups).unwrap_or_default()
    }

    const KEPT: libc::gid_t = 4242;
    const DROPPED: libc::gid_t = 4243;

    /// What a resolver made of a forked root child in groups [`KEPT`] and [`DROPPED`] that
    /// drops [`DROPPED`] between its second and third call; `meanwhile` runs after the drop.
    struct GroupDrop {
        before: Arc<Caller>,
        again: Arc<Caller>,
        after: Arc<Caller>,
        attestations: usize,
        fingerprint_unchanged: bool,
    }

    async fn drop_a_group(
        resolver: &CallerResolver,
        runs: &AtomicUsize,
        meanwhile: impl FnOnce(),
    ) -> GroupDrop {
        const BOTH: [libc::gid_t; 2] = [KEPT, DROPPED];
        const ONE: [libc::gid_t; 1] = [KEPT];
        // The raw calls change the calling thread only, which is all the child has.
        let child = ForkedChild::spawn(
            || unsafe {
                if libc::syscall(libc::SYS_setgroups, 2, BOTH.as_ptr()) != 0 {
                    libc::_exit(1);
                }
            },
            || unsafe {
                libc::syscall(libc::SYS_setgroups, 1, ONE.as_ptr());
            },
        );
        let handle = handle_for(child.pid as u32);
        let pinned = handle.pinned().unwrap();
        wait_until("the child is in both groups", || {
            groups_of(pinned) == BOTH.to_vec()
        });
        let before = resolver.resolve_handle(&handle).await.unwrap();
        let again = resolver.resolve_handle(&handle).await.unwrap();
        let first = pinned.fingerprint().unwrap();
        child.go();
        wait_until("the child has dropped a group", || {
            groups_of(pinned) == ONE.to_vec()
        });
        let fingerprint_unchanged = pinned.fingerprint().unwrap() == first;
        meanwhile();
        let after = resolver.resolve_handle(&handle).await;
        child.kill();
        let dropped = format!("unix:supplementary_gid:{DROPPED}");
        assert!(has(&before, &dropped), "{before:?}");
        GroupDrop {
            before,
            again,
            after: after.unwrap(),
            attestations: runs.load(Ordering::SeqCst),
            fingerprint_unchanged,
        }
    }

    impl GroupDrop {
        /// The drop was seen: the third call attested again and lost the group.
        fn assert_seen(&self, why: &str) {
            let dropped = format!("unix:supplementary_gid:{DROPPED}");
            assert!(
                self.fingerprint_unchanged,
                "setgroups moves no part of the fingerprint"
            );
            assert!(
                Arc::ptr_eq(&self.before, &self.again),
                "{why}: unchanged groups, same caller"
            );
            assert!(!has(&self.after, &dropped), "{why}: {:?}", self.after);
            assert!(
                has(&self.after, &format!("unix:supplementary_gid:{KEPT}")),
                "{why}: {:?}",
                self.after
            );
            assert_eq!(self.attestations, 2, "{why}");
        }
    }

    fn policy(text: &str) -> Arc<PolicyEngine> {
        Arc::new(PolicyEngine::from_text(text, Default::default()).unwrap())
    }

    const ALLOW_ALL: &str = r#"@id("all") permit (principal, action, resource);"#;
    const READS_SELECTORS: &str = r#"@id("root") permit (principal, action, resource)
        when { principal.selectors.contains("unix:uid:0") };"#;

    fn entry(id: &str, selector: String) -> crate::registry::EntryConfig {
        crate::registry::EntryConfig {
            spiffe_id: id.into(),
            selectors: vec![selector],
            x509_ttl: None,
            jwt_ttl: None,
            hint: String::new(),
        }
    }

    #[tokio::test]
    async fn a_caller_that_drops_a_group_an_entry_names_is_attested_again() {
        if !svid_broker_test_support::root_or_opt_out("changes a child's supplementary groups") {
            return;
        }
        let group_entry = entry(
            "spiffe://example.org/group",
            format!("unix:supplementary_gid:{DROPPED}"),
        );
        let (resolver, runs) = resolver_with(vec![group_entry], Some(policy(ALLOW_ALL)));
        let seen = drop_a_group(&resolver, &runs, || {}).await;
        seen.assert_seen("an entry names the group");
        assert_eq!(seen.before.identities.len(), 1);
        assert!(seen.after.identities.is_empty(), "{:?}", seen.after);
    }

    #[tokio::test]
    async fn a_caller_that_drops_a_group_is_attested_again_while_the_policy_reads_selectors() {
        if !svid_broker_test_support::root_or_opt_out("changes a child's supplementary groups") {
            return;
        }
        let (resolver, runs) = resolver_with(Vec::new(), Some(policy(READS_SELECTORS)));
        drop_a_group(&resolver, &runs, || {})
            .await
            .assert_seen("the policy reads selectors");

        // A reload that starts reading them: the next call compares the groups the caller
        // was attested with, though no call read them while the old policy was in force.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.cedar");
        std::fs::write(&file, ALLOW_ALL).unwrap();
        let engine = Arc::new(PolicyEngine::load(&file, Default::default()).unwrap());
        let (resolver, runs) = resolver_with(Vec::new(), Some(engine.clone()));
        drop_a_group(&resolver, &runs, || {
            std::fs::write(&file, READS_SELECTORS).unwrap();
            engine.reload().unwrap();
        })
        .await
        .assert_seen("a reload made the policy read selectors");
    }

    #[tokio::test]
    async fn a_caller_whose_groups_nothing_reads_keeps_its_attestation_when_it_drops_one() {
        if !svid_broker_test_support::root_or_opt_out("changes a child's supplementary groups") {
            return;
        }
        // An entry for its uid, another (not matched) for a group, a policy that reads no
        // selectors: no answer could change, and the groups are not read again.
        let entries = vec![
            entry("spiffe://example.org/root", "unix:uid:0".into()),
            entry(
                "spiffe://example.org/other",
                "unix:supplementary_gid:1".into(),
            ),
        ];
        let (resolver, runs) = resolver_with(entries, Some(policy(ALLOW_ALL)));
        let kept = drop_a_group(&resolver, &runs, || {}).await;
        assert!(kept.fingerprint_unchanged);
        assert!(Arc::ptr_eq(&kept.before, &kept.after), "{:?}", kept.after);
        assert_eq!(kept.attestations, 1);
        assert_eq!(kept.before.identities.len(), 1);
    }

    #[tokio::test]
    async fn a_caller_that_leaves_the_group_of_its_own_gid_is_attested_again() {
        if !svid_broker_test_support::root_or_opt_out("changes a child's supplementary groups") {
            return;
        }
        // Its only group is its own gid (0), which the fingerprint covers as the gid; but its
        // `unix:supplementary_gid:0` selector goes with `setgroups(0, [])`, and so the groups
        // of any caller that has some are watched, not only groups beyond the gid.
        const OWN: [libc::gid_t; 1] = [0];
        let child = ForkedChild::spawn(
            || unsafe {
                if libc::syscall(libc::SYS_setgroups, 1, OWN.as_ptr()) != 0 {
                    libc::_exit(1);
                }
            },
            || unsafe {
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            },
        );
        let handle = handle_for(child.pid as u32);
        let pinned = handle.pinned().unwrap();
        wait_until("the child is in its gid's group only", || {
            groups_of(pinned) == OWN.to_vec()
        });
        let (resolver, runs) = resolver_with(Vec::new(), Some(policy(READS_SELECTORS)));
        let before = resolver.resolve_handle(&handle).await.unwrap();
        child.go();
        wait_until("the child is in no group", || groups_of(pinned).is_empty());
        let after = resolver.resolve_handle(&handle).await;
        child.kill();
        assert!(has(&before, "unix:supplementary_gid:0"), "{before:?}");
        let after = after.unwrap();
        assert!(!has(&after, "unix:supplementary_gid:0"), "{after:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_caller_is_watched_for_its_groups_exactly_when_it_has_some() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let handle = handle_for(child.id());
        let pinned = handle.pinned().unwrap();
        let has_groups = !pinned.groups().unwrap().groups.is_empty();
        let (resolver, _, _) = resolver();
        resolver.resolve_handle(&handle).await.unwrap();
        let (watched, identities_read) = {
            let known = handle.known();
            let known = known.as_ref().unwrap();
            (known.groups.is_some(), known.identities_read_groups)
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(watched, has_groups);
        assert!(
            !identities_read,
            "an empty registry reads no group selector"
        );
    }

    #[tokio::test]
    async fn a_caller_that_changes_user_is_attested_again() {
        if !svid_broker_test_support::root_or_opt_out("changes a child's user") {
            return;
        }
        const NOBODY: libc::uid_t = 65534;
        // The raw call changes this (only) thread; keeps the real and saved uid.
        let child = ForkedChild::spawn(
            || {},
            || unsafe {
                libc::syscall(libc::SYS_setresuid, -1, NOBODY, -1);
            },
        );
        let handle = handle_for(child.pid as u32);
        let (resolver, runs, _) = resolver();
        let before = resolver.resolve_handle(&handle).await.unwrap();
        assert!(has(&before, "unix:uid:0"), "{before:?}");

        let pinned = handle.pinned().unwrap();
        let first = pinned.fingerprint().unwrap();
        child.go();
        wait_until("the child has changed its euid", || {
            pinned.fingerprint().is_ok_and(|f| f != first)
        });
        let after = resolver.resolve_handle(&handle).await;
        child.kill();
        let after = after.unwrap();
        assert!(has(&after, &format!("unix:uid:{NOBODY}")), "{after:?}");
        assert!(!has(&after, "unix:uid:0"), "{after:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_exited_caller_is_unavailable_though_known() {
        let (resolver, runs, _) = resolver();
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let handle = handle_for(child.id());
        resolver.resolve_handle(&handle).await.unwrap();
        child.kill().unwrap();
        let exited = |e: Result<Arc<Caller>, Status>| {
            let e = e.expect_err("an exited caller got an identity");
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert!(e.message().contains("caller process has exited"), "{e:?}");
        };
        // A zombie (exited, not yet reaped) has exited.
        wait_until("the child has exited", || {
            !handle.pinned().unwrap().is_alive()
        });
        exited(resolver.resolve_handle(&handle).await);
        child.wait().unwrap();
        exited(resolver.resolve_handle(&handle).await);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
