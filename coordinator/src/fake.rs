//! An in-process fake fleet for unit tests: agents behind the [`AgentDoor`] trait that keep
//! domains and volumes in memory, log every call in one journal shared by the fleet, fail
//! on request, and can hold a call until the test lets it go.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_client::proto as pb;
use tokio::sync::Notify;
use tonic::async_trait;

use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::db::Db;
use crate::door::{AgentDoor, Power};
use crate::error::{CoordError, Result};
use crate::hosts::Hosts;
use crate::operations::Operations;
use crate::store::{HostRecord, Sqlite, Store, UserRecord};
use crate::vms::Coordinator;

/// Every call of every fake agent, in order: "h1 clone_base c1", ...
pub type Journal = Arc<Mutex<Vec<String>>>;

#[derive(Default)]
struct State {
    domains: BTreeMap<String, pb::Domain>,
    volumes: BTreeSet<String>,
}

/// One fake agent.
pub struct FakeAgent {
    host: String,
    state: Mutex<State>,
    journal: Journal,
    /// Methods that fail (with Internal).
    failing: Mutex<HashSet<&'static str>>,
    /// Methods that wait for `gate` before they act.
    held: Mutex<HashSet<&'static str>>,
    pub gate: Arc<Notify>,
    /// Itself, for work that goes on after its caller has gone (as a real agent's does).
    me: std::sync::Weak<FakeAgent>,
}

impl FakeAgent {
    pub fn new(host: &str, journal: &Journal) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            host: host.into(),
            state: Mutex::default(),
            journal: Arc::clone(journal),
            failing: Mutex::default(),
            held: Mutex::default(),
            gate: Arc::new(Notify::new()),
            me: me.clone(),
        })
    }

    pub fn fail(&self, method: &'static str) {
        self.failing.lock().unwrap().insert(method);
    }

    pub fn hold(&self, method: &'static str) {
        self.held.lock().unwrap().insert(method);
    }

    pub fn has_domain(&self, name: &str) -> bool {
        self.state.lock().unwrap().domains.contains_key(name)
    }

    pub fn volumes(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().volumes.clone()
    }

    /// Changes what the agent says of a domain (as libvirt would: a start time, clients).
    pub fn edit_domain(&self, name: &str, f: impl FnOnce(&mut pb::Domain)) {
        if let Some(d) = self.state.lock().unwrap().domains.get_mut(name) {
            f(d);
        }
    }

    pub fn put_domain(&self, d: pb::Domain) {
        self.state.lock().unwrap().domains.insert(d.name.clone(), d);
    }

    /// Logs the call, waits when held, fails when told to.
    async fn enter(&self, method: &'static str, what: &str) -> Result<()> {
        self.journal
            .lock()
            .unwrap()
            .push(format!("{} {method} {what}", self.host));
        if self.held.lock().unwrap().contains(method) {
            self.gate.notified().await;
        }
        if self.failing.lock().unwrap().contains(method) {
            return Err(CoordError::Agent(
                tonic::Code::Internal,
                format!("host {}: {method} failed (as the test asked)", self.host),
            ));
        }
        Ok(())
    }

    fn missing(&self, what: &str) -> CoordError {
        CoordError::Agent(
            tonic::Code::NotFound,
            format!("host {}: {what} does not exist", self.host),
        )
    }

    pub fn domain(&self, name: &str) -> Result<pb::Domain> {
        self.state
            .lock()
            .unwrap()
            .domains
            .get(name)
            .cloned()
            .ok_or_else(|| self.missing(&format!("domain {name:?}")))
    }
}

fn export(name: &str, parent: &str) -> pb::BaseExport {
    pb::BaseExport {
        definition_xml: name.into(),
        volumes: vec![format!("{name}-vda.base.qcow2")],
        parent: parent.into(),
        layouts: vec![pb::VolumeLayout {
            volume: format!("{name}-vda.qcow2"),
            ..Default::default()
        }],
    }
}

impl FakeAgent {
    async fn make_clone(&self, req: pb::CloneBaseRequest) -> Result<pb::Domain> {
        self.enter("clone_base", &req.name).await?;
        let mut st = self.state.lock().unwrap();
        if st.domains.contains_key(&req.name) {
            return Err(CoordError::Agent(
                tonic::Code::AlreadyExists,
                format!("host {}: domain {:?} already exists", self.host, req.name),
            ));
        }
        let d = pb::Domain {
            name: req.name.clone(),
            owner: req.owner.clone(),
            base: req.base.clone(),
            kind: pb::DomainKind::Clone as i32,
            // The overrides asked for (0: the base's).
            memory_mib: req.memory_mib,
            vcpus: req.vcpus,
            state: if req.start {
                pb::DomainState::Running
            } else {
                pb::DomainState::ShutOff
            } as i32,
            ..Default::default()
        };
        st.domains.insert(req.name.clone(), d.clone());
        st.volumes.insert(format!("{}-vda.qcow2", req.name));
        Ok(d)
    }
}

#[async_trait]
impl AgentDoor for FakeAgent {
    fn host(&self) -> &str {
        &self.host
    }

    async fn get_domain(&self, name: &str) -> Result<pb::Domain> {
        self.domain(name)
    }

    async fn define(&self, spec: pb::DomainSpec) -> Result<pb::Domain> {
        self.enter("define", &spec.name).await?;
        let d = pb::Domain {
            name: spec.name.clone(),
            owner: spec.owner.clone(),
            vcpus: spec.vcpus.max(1),
            memory_mib: spec.memory_mib.max(1),
            state: pb::DomainState::ShutOff as i32,
            ..Default::default()
        };
        self.put_domain(d.clone());
        Ok(d)
    }

    async fn power(&self, name: &str, action: Power) -> Result<pb::Domain> {
        self.enter("power", name).await?;
        let mut st = self.state.lock().unwrap();
        let d = st
            .domains
            .get_mut(name)
            .ok_or_else(|| self.missing(&format!("domain {name:?}")))?;
        // Each start from off is a new boot (the guest watcher tells boots apart by it).
        if action == Power::Start && d.state != pb::DomainState::Running as i32 {
            static BOOTS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
            d.started_at_unix = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        d.state = match action {
            Power::Start | Power::Resume | Power::Reset | Power::Reboot => pb::DomainState::Running,
            Power::Suspend => pb::DomainState::Paused,
            Power::Hibernate => pb::DomainState::Hibernated,
            _ => pb::DomainState::ShutOff,
        } as i32;
        Ok(d.clone())
    }

    async fn remove_domain(&self, name: &str) -> Result<Vec<String>> {
        self.enter("remove_domain", name).await?;
        let mut st = self.state.lock().unwrap();
        st.domains.remove(name);
        let mine: Vec<String> = st
            .volumes
            .iter()
            .filter(|v| v.starts_with(&format!("{name}-")))
            .cloned()
            .collect();
        for v in &mine {
            st.volumes.remove(v);
        }
        Ok(mine)
    }

    async fn display(&self, name: &str) -> Result<pb::DisplayInfo> {
        self.domain(name).map(|_| pb::DisplayInfo::default())
    }

    async fn screenshot(&self, name: &str) -> Result<pb::Screenshot> {
        self.domain(name).map(|_| pb::Screenshot::default())
    }

    async fn prepare_base(&self, name: &str) -> Result<pb::Base> {
        self.enter("prepare_base", name).await?;
        let mut st = self.state.lock().unwrap();
        let d = st
            .domains
            .get_mut(name)
            .ok_or_else(|| self.missing(&format!("domain {name:?}")))?;
        d.kind = pb::DomainKind::Base as i32;
        st.volumes.insert(format!("{name}-vda.base.qcow2"));
        Ok(pb::Base::default())
    }

    async fn clone_base(&self, req: pb::CloneBaseRequest) -> Result<pb::Domain> {
        // The agent's work goes on when its caller goes away (a cancelled operation).
        let me = self.me.upgrade().ok_or_else(|| self.missing("agent"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(me.make_clone(req).await);
        });
        rx.await.map_err(|_| self.missing("answer"))?
    }

    async fn restore_clone(&self, name: &str) -> Result<pb::Domain> {
        self.enter("restore_clone", name).await?;
        self.domain(name)
    }

    async fn spinoff_clone(&self, name: &str) -> Result<pb::Domain> {
        self.enter("spinoff_clone", name).await?;
        self.domain(name)
    }

    async fn assign(&self, name: &str, owner: &str) -> Result<pb::Domain> {
        self.enter("assign", name).await?;
        let mut st = self.state.lock().unwrap();
        let d = st
            .domains
            .get_mut(name)
            .ok_or_else(|| self.missing(&format!("domain {name:?}")))?;
        d.owner = owner.into();
        Ok(d.clone())
    }

    async fn add_volume(&self, req: pb::AddVolumeRequest) -> Result<pb::Domain> {
        self.enter("add_volume", &req.domain).await?;
        self.domain(&req.domain)
    }

    async fn volume_info(&self, name: &str) -> Result<pb::VolumeInfo> {
        self.enter("volume_info", name).await?;
        Ok(pb::VolumeInfo {
            name: name.into(),
            ..Default::default()
        })
    }

    async fn rebase_clone(&self, name: &str, base: &str) -> Result<pb::Domain> {
        self.enter("rebase_clone", name).await?;
        let mut st = self.state.lock().unwrap();
        let d = st.domains.get_mut(name).ok_or_else(|| self.missing(name))?;
        d.base = base.into();
        Ok(d.clone())
    }

    async fn unprepare_base(&self, name: &str) -> Result<()> {
        self.enter("unprepare_base", name).await?;
        let mut st = self.state.lock().unwrap();
        let d = st.domains.get_mut(name).ok_or_else(|| self.missing(name))?;
        d.kind = pb::DomainKind::Plain as i32;
        Ok(())
    }

    async fn copy_domain_volume(&self, req: pb::CopyDomainVolumeRequest) -> Result<pb::VolumeInfo> {
        self.enter(
            "copy_domain_volume",
            &format!("{} {}", req.domain, req.volume),
        )
        .await?;
        self.domain(&req.domain)?;
        self.state
            .lock()
            .unwrap()
            .volumes
            .insert(req.destination.clone());
        Ok(pb::VolumeInfo {
            name: req.destination,
            ..Default::default()
        })
    }

    async fn snapshot_volume(&self, req: pb::SnapshotVolumeRequest) -> Result<pb::VolumeInfo> {
        self.enter("snapshot_volume", &format!("{} {}", req.domain, req.volume))
            .await?;
        self.domain(&req.domain)?;
        Ok(pb::VolumeInfo {
            name: req.volume,
            ..Default::default()
        })
    }

    async fn capture_image(&self, req: pb::CaptureImageRequest) -> Result<pb::CapturedImage> {
        self.enter("capture_image", &format!("{} {}", req.domain, req.image))
            .await?;
        self.domain(&req.domain)?;
        self.state.lock().unwrap().volumes.insert(req.image.clone());
        Ok(pb::CapturedImage {
            volume: Some(pb::VolumeInfo {
                name: req.image,
                virtual_size: 1 << 30,
                allocated_size: 1 << 20,
                ..Default::default()
            }),
            checksum: "blake3:00".into(),
            definition_xml: "<domain/>".into(),
        })
    }

    async fn define_from_image(&self, req: pb::DefineFromImageRequest) -> Result<pb::Domain> {
        self.enter("define_from_image", &req.name).await?;
        let d = pb::Domain {
            name: req.name.clone(),
            vcpus: 1,
            memory_mib: 256,
            state: pb::DomainState::ShutOff as i32,
            ..Default::default()
        };
        self.put_domain(d.clone());
        Ok(d)
    }

    async fn detach_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        self.enter("detach_volume", &format!("{domain} {volume}"))
            .await?;
        self.domain(domain)
    }

    async fn restore_volume(&self, req: pb::RestoreVolumeRequest) -> Result<pb::VolumeInfo> {
        self.enter(
            "restore_volume",
            &format!("{} {} from {}", req.domain, req.volume, req.from),
        )
        .await?;
        Ok(pb::VolumeInfo {
            name: req.volume,
            format: "qcow2".into(),
            ..Default::default()
        })
    }

    async fn attach_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        self.enter("attach_volume", &format!("{domain} {volume}"))
            .await?;
        self.domain(domain)
    }

    async fn resize_domain_volume(
        &self,
        req: pb::ResizeDomainVolumeRequest,
    ) -> Result<pb::VolumeInfo> {
        self.enter(
            "resize_domain_volume",
            &format!("{} {}", req.domain, req.volume),
        )
        .await?;
        self.domain(&req.domain)?;
        Ok(pb::VolumeInfo {
            name: req.volume,
            virtual_size: req.size_bytes,
            ..Default::default()
        })
    }

    async fn remove_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        self.enter("remove_volume", &format!("{domain} {volume}"))
            .await?;
        self.domain(domain)
    }

    async fn set_autostart(&self, name: &str, on: bool) -> Result<pb::Domain> {
        self.enter("set_autostart", name).await?;
        let mut st = self.state.lock().unwrap();
        let d = st.domains.get_mut(name).ok_or_else(|| self.missing(name))?;
        d.autostart = on;
        Ok(d.clone())
    }

    async fn set_resources(&self, name: &str, memory_mib: u64, vcpus: u32) -> Result<pb::Domain> {
        self.enter("set_resources", name).await?;
        let mut st = self.state.lock().unwrap();
        let d = st.domains.get_mut(name).ok_or_else(|| self.missing(name))?;
        if memory_mib > 0 {
            d.memory_mib = memory_mib;
        }
        if vcpus > 0 {
            d.vcpus = vcpus;
        }
        d.needs_restart = d.state == pb::DomainState::Running as i32;
        Ok(d.clone())
    }

    async fn list_clones(&self, base: &str) -> Result<Vec<pb::Domain>> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .domains
            .values()
            .filter(|d| d.base == base)
            .cloned()
            .collect())
    }

    async fn export_base(&self, name: &str) -> Result<pb::BaseExport> {
        self.enter("export_base", name).await?;
        Ok(export(name, ""))
    }

    async fn import_base(&self, definition_xml: String) -> Result<pb::Base> {
        self.enter("import_base", &definition_xml).await?;
        self.put_domain(pb::Domain {
            name: definition_xml,
            kind: pb::DomainKind::Base as i32,
            ..Default::default()
        });
        Ok(pb::Base::default())
    }

    async fn export_domain(&self, name: &str) -> Result<pb::BaseExport> {
        self.enter("export_domain", name).await?;
        Ok(export(name, ""))
    }

    async fn import_domain(&self, definition_xml: String) -> Result<pb::Domain> {
        self.enter("import_domain", &definition_xml).await?;
        let d = pb::Domain {
            name: definition_xml,
            ..Default::default()
        };
        self.put_domain(d.clone());
        Ok(d)
    }

    async fn export_for_migration(&self, name: &str) -> Result<pb::BaseExport> {
        self.enter("export_for_migration", name).await?;
        Ok(export(name, ""))
    }

    async fn prepare_migration(&self, req: pb::ImportBaseRequest) -> Result<pb::MigrationTarget> {
        self.enter("prepare_migration", &req.definition_xml).await?;
        let mut st = self.state.lock().unwrap();
        for l in &req.layouts {
            st.volumes.insert(l.volume.clone());
        }
        Ok(pb::MigrationTarget::default())
    }

    async fn migrate(&self, req: pb::MigrateDomainRequest) -> Result<()> {
        self.enter("migrate", &req.name).await
    }

    async fn finish_migration(&self, name: &str) -> Result<pb::Domain> {
        self.enter("finish_migration", name).await?;
        self.domain(name)
    }

    async fn delete_volume(&self, name: &str) -> Result<()> {
        self.enter("delete_volume", name).await?;
        self.state.lock().unwrap().volumes.remove(name);
        Ok(())
    }

    async fn create_snapshot(&self, req: pb::CreateSnapshotRequest) -> Result<pb::Snapshot> {
        self.enter("create_snapshot", &req.name).await?;
        Ok(pb::Snapshot::default())
    }

    async fn get_snapshot(&self, _domain: &str, name: &str) -> Result<pb::Snapshot> {
        Err(self.missing(&format!("snapshot {name:?}")))
    }

    async fn list_snapshots(
        &self,
        _: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse> {
        Ok(pb::ListSnapshotsResponse::default())
    }

    async fn list_children(&self, _: pb::ListChildrenRequest) -> Result<pb::ListSnapshotsResponse> {
        Ok(pb::ListSnapshotsResponse::default())
    }

    async fn revert_snapshot(&self, req: pb::RevertSnapshotRequest) -> Result<pb::Snapshot> {
        self.enter("revert_snapshot", &req.name).await?;
        Ok(pb::Snapshot::default())
    }

    async fn delete_snapshot(&self, req: pb::DeleteSnapshotRequest) -> Result<Vec<String>> {
        self.enter("delete_snapshot", &req.name).await?;
        Ok(vec![req.name])
    }

    async fn expose_port(&self, req: pb::ExposePortRequest) -> Result<pb::ExposedPort> {
        self.enter("expose_port", &req.domain).await?;
        Ok(pb::ExposedPort::default())
    }

    async fn list_ports(&self, _domain: &str) -> Result<Vec<pb::ExposedPort>> {
        Ok(Vec::new())
    }

    async fn remove_port(&self, _: pb::RemovePortRequest) -> Result<pb::RemovePortResponse> {
        Ok(pb::RemovePortResponse::default())
    }

    async fn remove_all_ports(&self, _: &str) -> Result<pb::RemovePortResponse> {
        Ok(pb::RemovePortResponse::default())
    }

    async fn restrict_display(&self, _: pb::RestrictDisplayRequest) -> Result<()> {
        Ok(())
    }

    /// A running fake guest answers at once, with one address.
    async fn guest_status(&self, name: &str) -> Result<pb::GuestStatus> {
        let d = self.domain(name)?;
        let running = d.state == pb::DomainState::Running as i32;
        Ok(pb::GuestStatus {
            agent: if running {
                pb::GuestAgent::Connected
            } else {
                pb::GuestAgent::Disconnected
            } as i32,
            answers: running,
            addresses: if running {
                vec!["10.0.0.2".into()]
            } else {
                vec![]
            },
            detail: String::new(),
        })
    }

    /// A fake program prints its arguments; `false` exits 1.
    async fn guest_exec(
        &self,
        req: pb::GuestExecRequest,
    ) -> Result<crate::door::Events<pb::GuestExecEvent>> {
        self.enter("guest_exec", &format!("{} {}", req.name, req.path))
            .await?;
        use pb::guest_exec_event::Event;
        let ev = |e| Ok(pb::GuestExecEvent { event: Some(e) });
        let code = if req.path == "false" { 1 } else { 0 };
        Ok(Box::pin(futures::stream::iter(vec![
            ev(Event::StartedPid(1)),
            ev(Event::Stdout(req.args.join(" ").into_bytes())),
            ev(Event::Exited(pb::GuestExited {
                code,
                ..Default::default()
            })),
        ])))
    }

    async fn read_guest_file(
        &self,
        req: pb::GuestFileRef,
    ) -> Result<crate::door::Events<pb::FileChunk>> {
        self.domain(&req.name)?;
        Err(CoordError::FailedPrecondition(format!(
            "host {}: fake guests have no files",
            self.host
        )))
    }

    async fn write_guest_file(
        &self,
        _: crate::door::Outgoing<pb::GuestFileWrite>,
    ) -> Result<pb::GuestFileWritten> {
        Err(CoordError::FailedPrecondition(format!(
            "host {}: fake guests have no files",
            self.host
        )))
    }

    async fn send_volume(
        &self,
        req: pb::SendVolumeRequest,
        _stall: Duration,
        progress: &(dyn for<'p> Fn(&'p pb::SyncProgress) + Send + Sync),
    ) -> Result<pb::SyncProgress> {
        let mut what = format!("{} to {}", req.volume, req.peer);
        if !req.dest.is_empty() {
            what += &format!(" as {}", req.dest);
        }
        if !req.basis.is_empty() {
            what += &format!(" against {}", req.basis);
        }
        self.enter("send_volume", &what).await?;
        let p = pb::SyncProgress {
            volume: req.volume,
            total_bytes: 1 << 20,
            scanned_bytes: 1 << 20,
            done: true,
            ..Default::default()
        };
        progress(&p);
        Ok(p)
    }
}

/// A coordinator over a fake fleet, with an admin and a user.
pub struct Kit {
    pub coord: Arc<Coordinator>,
    pub agents: BTreeMap<String, Arc<FakeAgent>>,
    pub journal: Journal,
    pub admin: Caller,
    pub alice: Caller,
    _dir: tempfile::TempDir,
    _schema: Option<crate::store::tests::Schema>,
}

impl Kit {
    /// `hosts` fake hosts h1..hN, each with 8 vCPUs and 16 GiB.
    pub async fn new(hosts: usize) -> Self {
        Self::with(hosts, |_| {}).await
    }

    /// The same, with the coordinator's configuration changed by `tune`.
    pub async fn with(hosts: usize, tune: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // CORRAL_TEST_STORE=postgres runs the fake fleet on PostgreSQL (a schema of its own).
        let (store, schema): (Arc<dyn Store>, _) =
            match std::env::var("CORRAL_TEST_STORE").as_deref() {
                Ok("postgres") => {
                    let url = crate::store::tests::postgres_url()
                        .expect("CORRAL_TEST_STORE=postgres needs CORRAL_TEST_POSTGRES");
                    // The synchronous client blocks: not on an async worker.
                    let (pg, schema) =
                        std::thread::spawn(move || crate::store::tests::postgres_schema(&url))
                            .join()
                            .unwrap();
                    (Arc::new(pg), Some(schema))
                }
                _ => (
                    Arc::new(Sqlite::open(&dir.path().join("corral.db")).unwrap()),
                    None,
                ),
            };
        let st = Arc::clone(&store);
        let auth = std::thread::spawn(move || Auth::load(st.as_ref()).unwrap())
            .join()
            .unwrap();
        let db = Db::start(store).unwrap();
        let mut cfg = Config {
            down_after_ms: 3_600_000,
            ..Config::default()
        };
        tune(&mut cfg);
        let ops = Operations::new(Arc::clone(&db), 4);
        let fleet = Hosts::new(
            Arc::clone(&db),
            Duration::from_secs(60),
            Duration::from_secs(3600),
            None,
        );
        let journal = Journal::default();
        let mut agents = BTreeMap::new();
        for i in 1..=hosts {
            let name = format!("h{i}");
            let agent = FakeAgent::new(&name, &journal);
            let record = HostRecord {
                name: name.clone(),
                address: format!("10.0.0.{i}:7700"),
                enabled: true,
                last_seen_ms: 0,
            };
            let r = record.clone();
            db.call(move |s| s.insert_host(&r)).await.unwrap();
            let info = pb::HostInfo {
                cpus: 8,
                memory_total_bytes: 16 << 30,
                storage_free_bytes: 1 << 40,
                domain_type: "qemu".into(),
                ..Default::default()
            };
            fleet
                .attach(record, info, BTreeSet::new(), agent.clone())
                .unwrap();
            agents.insert(name, agent);
        }
        let coord = Coordinator::new(cfg, db, ops, fleet, auth, None);
        let user = |name: &str, role: &str| {
            Caller(UserRecord {
                name: name.into(),
                role: role.into(),
                attributes: serde_json::json!({}),
            })
        };
        Self {
            coord,
            agents,
            journal,
            admin: user("admin", "admin"),
            alice: user("alice", "user"),
            _dir: dir,
            _schema: schema,
        }
    }

    pub fn agent(&self, host: &str) -> &Arc<FakeAgent> {
        &self.agents[host]
    }

    /// Records base `name` (child of `parent`) as held by `hosts`, and defines it there.
    pub async fn base(&self, name: &str, parent: Option<&str>, hosts: &[&str]) {
        let (n, p) = (name.to_string(), parent.map(String::from));
        let hs: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        self.coord
            .db
            .call(move |s| {
                s.put_base(
                    &n,
                    p.as_deref(),
                    &serde_json::json!({ "vcpus": 1, "memory": 1 << 30 }),
                )?;
                for h in &hs {
                    s.set_base_host(&n, h, true)?;
                }
                // Published, as an admin does before handing out clones.
                let open = crate::access::BaseAccess {
                    public: true,
                    rules: vec![],
                };
                s.set_base_access(&n, &open)
            })
            .await
            .unwrap();
        for h in hosts {
            self.agent(h).put_domain(pb::Domain {
                name: name.into(),
                kind: pb::DomainKind::Base as i32,
                ..Default::default()
            });
        }
    }

    /// Waits for an operation to end.
    pub async fn end(&self, id: &str) -> crate::store::OpRecord {
        for _ in 0..500 {
            let op = self.coord.ops.get(id).await.unwrap();
            if op.state.is_terminal() {
                return op;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("operation {id} did not end");
    }

    pub fn calls(&self) -> Vec<String> {
        self.journal.lock().unwrap().clone()
    }
}
