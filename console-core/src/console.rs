//! The console's calls, generic over its [`Host`]: each command of the
//! desktop app is one method here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::approvals::{ApprovalsLink, Target};
use crate::error::ConsoleError;
use crate::host::{Host, Notice};
use crate::inbox::{Applied, Inbox};
use crate::local::LocalGateway;
use crate::traffic::{self, Pace, Traffic};
use crate::types::{
    ConsoleEvent, Decision, DevAccess, InboxView, Link, LocalInfo, LocalOptions, LocalStatus,
    Persona, RequestView, TrafficStatus,
};

/// The console.
pub struct Console<H: Host> {
    pub(crate) inner: Arc<Inner<H>>,
}

impl<H: Host> Clone for Console<H> {
    fn clone(&self) -> Self {
        Console {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<H> {
    pub(crate) host: H,
    status: Mutex<LocalStatus>,
    /// Held across a start or stop, so they do not interleave.
    pub(crate) local: tokio::sync::Mutex<Option<LocalGateway>>,
    inbox: Arc<Mutex<Inbox>>,
    link: Mutex<Option<ApprovalsLink>>,
    traffic: Mutex<Option<Traffic>>,
    pace: Mutex<Pace>,
    told_no_notifications: AtomicBool,
    /// The notification thread's queue, started with the first job.
    notices: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// The sign-in to a team's gateway, when there is one.
    pub(crate) remote: tokio::sync::Mutex<Option<crate::remote::Remote>>,
    pub(crate) remote_status: Mutex<crate::types::RemoteStatus>,
    /// Who the session browser views the local gateway's recordings as.
    pub(crate) local_viewer: Mutex<Persona>,
    /// An evidence export is running.
    pub(crate) exporting: AtomicBool,
    /// A sign-in is waiting for the browser (or the provider).
    pub(crate) signing_in: AtomicBool,
    /// Wakes a waiting sign-in to give up.
    pub(crate) cancel_sign_in: tokio::sync::Notify,
}

/// Turns a busy flag off when dropped (the call ended, however it ended).
pub(crate) struct Reset<'a>(pub(crate) &'a AtomicBool);

impl Drop for Reset<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What the notification thread does.
enum Job {
    Show(Box<RequestView>),
    Close(String),
}

impl<H: Host> Console<H> {
    /// A console with nothing running.
    pub fn new(host: H) -> Console<H> {
        Console {
            inner: Arc::new(Inner {
                host,
                status: Mutex::new(LocalStatus::Stopped),
                local: tokio::sync::Mutex::new(None),
                inbox: Arc::new(Mutex::new(Inbox::default())),
                link: Mutex::new(None),
                traffic: Mutex::new(None),
                pace: Mutex::new(Pace::default()),
                told_no_notifications: AtomicBool::new(false),
                notices: Mutex::new(None),
                remote: tokio::sync::Mutex::new(None),
                remote_status: Mutex::new(crate::types::RemoteStatus::SignedOut {
                    gateway: None,
                    reason: None,
                }),
                local_viewer: Mutex::new(Persona::engineer()),
                exporting: AtomicBool::new(false),
                signing_in: AtomicBool::new(false),
                cancel_sign_in: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.inner.host
    }

    /// Change the demo traffic's timing (tests, and impatient demos).
    pub fn set_pace(&self, pace: Pace) {
        *self.inner.pace.lock().expect("pace") = pace;
    }

    fn set_status(&self, status: LocalStatus) {
        *self.inner.status.lock().expect("status") = status.clone();
        self.inner.host.emit(ConsoleEvent::Local { status });
    }

    /// Where the local gateway stands (with its live session count).
    pub fn local_status(&self) -> LocalStatus {
        let status = self.inner.status.lock().expect("status").clone();
        if let (LocalStatus::Running { .. }, Ok(local)) = (&status, self.inner.local.try_lock())
            && let Some(local) = local.as_ref()
        {
            return LocalStatus::Running {
                info: Box::new(local.info()),
            };
        }
        status
    }

    /// Start the local gateway (a no-op answering its info if it runs).
    pub async fn start_local(&self, options: LocalOptions) -> Result<LocalInfo, ConsoleError> {
        let mut local = self
            .inner
            .local
            .try_lock()
            .map_err(|_| ConsoleError::Busy("starting or stopping"))?;
        if let Some(running) = local.as_ref() {
            return Ok(running.info());
        }
        self.set_status(LocalStatus::Starting {
            step: "Checking the listen addresses".into(),
        });
        let data_dir = self.inner.host.data_dir();
        let started = LocalGateway::start(&data_dir, &options, |step| {
            self.set_status(LocalStatus::Starting { step: step.into() })
        })
        .await;
        let running = match started {
            Ok(running) => running,
            Err(e) => {
                self.set_status(LocalStatus::Failed { error: e.view() });
                return Err(e);
            }
        };
        let info = running.info();
        // Signed in to a team's gateway: the inbox stays with it.
        if !self.signed_in() {
            self.connect_inbox(
                Target {
                    url: info.api.clone(),
                    ca_file: Some(running.ca_file()),
                },
                running.tokens(Persona::approver()),
            );
        }
        *local = Some(running);
        self.set_status(LocalStatus::Running {
            info: Box::new(info.clone()),
        });
        Ok(info)
    }

    /// Stop the demo traffic, the inbox's link and the local gateway.
    pub async fn stop_local(&self) {
        let mut local = self.inner.local.lock().await;
        let Some(running) = local.take() else {
            return;
        };
        self.set_status(LocalStatus::Stopping);
        self.stop_traffic();
        if !self.signed_in() {
            self.disconnect_inbox();
        }
        running.stop().await;
        self.set_status(LocalStatus::Stopped);
    }

    /// Everything stops (the window closes). A sign-in stays in the keyring.
    pub async fn shutdown(&self) {
        self.stop_local().await;
        self.leave_remote().await;
    }

    /// Signed in to a team's gateway.
    pub(crate) fn signed_in(&self) -> bool {
        matches!(
            *self.inner.remote_status.lock().expect("remote status"),
            crate::types::RemoteStatus::SignedIn { .. }
        )
    }

    /// Stop the inbox's link and empty it (its notifications come down).
    pub(crate) fn disconnect_inbox(&self) {
        if let Some(link) = self.inner.link.lock().expect("link").take() {
            link.stop();
        }
        let shown = self.inner.inbox.lock().expect("inbox").clear();
        for request in shown {
            self.desktop(Job::Close(request));
        }
        self.emit_inbox();
    }

    /// Point the inbox at the local gateway, if it runs.
    pub(crate) async fn inbox_to_local(&self) {
        let local = self.inner.local.lock().await;
        if let Some(running) = local.as_ref() {
            let info = running.info();
            self.connect_inbox(
                Target {
                    url: info.api.clone(),
                    ca_file: Some(running.ca_file()),
                },
                running.tokens(Persona::approver()),
            );
        }
    }

    pub(crate) fn connect_inbox(&self, target: Target, tokens: crate::approvals::TokenSource) {
        let weak: Weak<Inner<H>> = Arc::downgrade(&self.inner);
        let on_change = Arc::new(move |applied: Applied| {
            if let Some(inner) = weak.upgrade() {
                Console { inner }.changed(applied);
            }
        });
        let link = ApprovalsLink::start(target, tokens, self.inner.inbox.clone(), on_change);
        if let Some(old) = self.inner.link.lock().expect("link").replace(link) {
            old.stop();
        }
    }

    fn emit_inbox(&self) {
        let inbox = self.inbox();
        self.inner.host.emit(ConsoleEvent::Inbox { inbox });
    }

    fn changed(&self, applied: Applied) {
        if applied.changed {
            self.emit_inbox();
        }
        for request in applied.to_close {
            self.desktop(Job::Close(request));
        }
        for request in applied.to_notify {
            self.desktop(Job::Show(Box::new(request)));
        }
    }

    /// Hand a notification job to the one thread that talks to the
    /// notification service: in order, so a request's notification is never
    /// taken down before it is shown, and never on the link's task.
    fn desktop(&self, job: Job) {
        let mut sender = self.inner.notices.lock().expect("notices");
        let sender = sender.get_or_insert_with(|| {
            let (send, receive) = std::sync::mpsc::channel::<Job>();
            let inner = Arc::downgrade(&self.inner);
            std::thread::spawn(move || {
                while let Ok(job) = receive.recv() {
                    let Some(inner) = inner.upgrade() else { return };
                    Console { inner }.run_job(job);
                }
            });
            send
        });
        let _ = sender.send(job);
    }

    fn run_job(&self, job: Job) {
        let inner = &self.inner;
        match job {
            Job::Close(request) => inner.host.close_notice(&request),
            Job::Show(request) => {
                // Settled while waiting its turn: nothing to show.
                let pending = inner
                    .inbox
                    .lock()
                    .expect("inbox")
                    .get(&request.id)
                    .is_some_and(|r| r.state == "pending");
                if !pending {
                    return;
                }
                let notice = notice(&request);
                tracing::info!(request = %request.id, "notifying the desktop of a new request");
                if let Err(why) = inner.host.notify(&notice) {
                    tracing::warn!(request = %request.id, %why, "no desktop notification");
                    if !inner.told_no_notifications.swap(true, Ordering::SeqCst) {
                        inner.host.emit(ConsoleEvent::Notice {
                            level: "warning".into(),
                            message: format!(
                                "Desktop notifications are unavailable ({why}); new requests still appear here."
                            ),
                        });
                    }
                }
            }
        }
    }

    /// The inbox.
    pub fn inbox(&self) -> InboxView {
        let mut view = self.inner.inbox.lock().expect("inbox").view();
        if self.inner.link.lock().expect("link").is_none() {
            view.link = Link {
                state: "off".into(),
                detail: Some(
                    "Start the local gateway, or sign in to your team's gateway, to see approval requests."
                        .into(),
                ),
                url: None,
            };
        }
        view
    }

    /// Approve or deny a request.
    pub async fn decide(&self, decision: Decision) -> Result<RequestView, ConsoleError> {
        let decider = self
            .inner
            .link
            .lock()
            .expect("link")
            .as_ref()
            .map(ApprovalsLink::decider)
            .ok_or(ConsoleError::NotRunning)?;
        decider.decide(decision).await
    }

    /// A token and a psql line for `persona` on the local gateway.
    pub async fn dev_access(&self, persona: Persona) -> Result<DevAccess, ConsoleError> {
        let local = self.inner.local.lock().await;
        local
            .as_ref()
            .ok_or(ConsoleError::NotRunning)?
            .access(&persona)
    }

    /// Start the demo traffic (an agent's queries and a held export a minute).
    pub async fn start_traffic(&self) -> Result<TrafficStatus, ConsoleError> {
        let local = self.inner.local.lock().await;
        let running = local.as_ref().ok_or(ConsoleError::NotRunning)?;
        let mut traffic = self.inner.traffic.lock().expect("traffic");
        if let Some(traffic) = traffic.as_ref() {
            return Ok(traffic.status());
        }
        let info = running.info();
        let agent = Persona::agent();
        let target = traffic::Target {
            addr: running.listen_addr(),
            ca_file: running.ca_file(),
            database: info.connection.clone(),
            user: agent.subject.clone(),
            mcp: info.mcp.clone().map(|url| traffic::McpTarget {
                url,
                tokens: running.mcp_tokens(agent.clone()),
            }),
        };
        let host = Arc::downgrade(&self.inner);
        let started = Traffic::start(
            target,
            running.tokens(agent),
            *self.inner.pace.lock().expect("pace"),
            Arc::new(move |status| {
                if let Some(inner) = host.upgrade() {
                    inner.host.emit(ConsoleEvent::Traffic { status });
                }
            }),
        );
        let status = started.status();
        *traffic = Some(started);
        self.inner.host.emit(ConsoleEvent::Traffic {
            status: status.clone(),
        });
        Ok(status)
    }

    /// Stop the demo traffic.
    pub fn stop_traffic(&self) -> TrafficStatus {
        let stopped = self.inner.traffic.lock().expect("traffic").take();
        let status = stopped.map(Traffic::stop).unwrap_or_default();
        self.inner.host.emit(ConsoleEvent::Traffic {
            status: status.clone(),
        });
        status
    }

    /// The demo traffic's counters.
    pub fn traffic(&self) -> TrafficStatus {
        self.inner
            .traffic
            .lock()
            .expect("traffic")
            .as_ref()
            .map(Traffic::status)
            .unwrap_or_default()
    }
}

/// The notification for a request.
fn notice(request: &RequestView) -> Notice {
    let what = request
        .accesses
        .first()
        .or(request.resources.first())
        .cloned()
        .unwrap_or_else(|| request.statement.chars().take(60).collect());
    let kind = match request.requester.kind {
        tollgate::identity::PrincipalKind::Agent => "agent",
        tollgate::identity::PrincipalKind::Person => "person",
    };
    Notice {
        request: request.id.clone(),
        title: format!("Approval needed: {what}"),
        body: format!(
            "{} ({kind}) on {}: {}. Expires in {} min. Request {}.",
            request.requester.subject,
            request.connection,
            request.policy_reason,
            request.expires_in_secs.div_ceil(60),
            request.id
        ),
    }
}
