//! Pieces of a template build: its control handle (cancel), the egress policy of its build
//! sandbox, how commands run as a template's user.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::super::egress::SandboxPolicy;
use super::super::model::{Binding, Network};

/// A running build: cancel requests reach it here.
#[derive(Debug, Default)]
pub(crate) struct BuildCtl {
    cancelled: AtomicBool,
    pub notify: Notify,
}

impl BuildCtl {
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once the build is cancelled.
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// A build sandbox reaches the network as a sandbox without rules does (public
/// destinations; the always-blocked ranges stay blocked), with no secrets.
#[derive(Debug)]
pub(crate) struct BuildPolicy;

impl SandboxPolicy for BuildPolicy {
    fn rules(&self) -> Option<(Option<Network>, Vec<Binding>)> {
        Some((None, Vec::new()))
    }

    fn name(&self) -> Option<String> {
        Some("template-build".into())
    }
}

/// `program args` run as `user` (root: unchanged), through util-linux's `setpriv`, with the
/// user's `HOME`, `USER` and `LOGNAME`.
pub(crate) fn as_user(
    user: Option<&str>,
    program: String,
    args: Vec<String>,
    env: &mut Vec<(String, String)>,
) -> (String, Vec<String>) {
    let Some(u) = user.filter(|u| *u != "root") else {
        return (program, args);
    };
    for (k, v) in [
        ("HOME", format!("/home/{u}")),
        ("USER", u.to_owned()),
        ("LOGNAME", u.to_owned()),
    ] {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    }
    let mut a = vec![
        "--reuid".to_owned(),
        u.to_owned(),
        "--regid".to_owned(),
        u.to_owned(),
        "--init-groups".to_owned(),
        "--".to_owned(),
        program,
    ];
    a.extend(args);
    ("setpriv".to_owned(), a)
}
