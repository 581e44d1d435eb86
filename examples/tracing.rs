//! What the crate traces: a span per API operation and per HTTP attempt, and events for
//! retries, token refreshes and re-activations, printed with `tracing-subscriber`.
//!
//! ```sh
//! cargo run --example tracing --features blocking,local
//! RUST_LOG=superserve=info cargo run --example tracing --features blocking,local   # retries only
//! ```
//!
//! Runs on the embedded local backend (Linux, root), or on the hosted service when
//! `SUPERSERVE_API_KEY` is set. The local backend is also asked to fail one request, so that a
//! retry shows up.

use superserve::local::{Fault, FaultRule, LocalServer};
use superserve::{Config, CreateOptions, Sandbox};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("superserve=debug")),
        )
        // print each span once, when it closes, with its fields and how long it took
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false)
        .init();

    let (config, server) = if std::env::var("SUPERSERVE_API_KEY").is_ok() {
        (Config::from_env()?, None)
    } else {
        let server = LocalServer::start()?;
        (server.config(), Some(server))
    };
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("traced"))?;
    if let Some(server) = &server {
        // one 503 on the next GET of the sandbox: the SDK retries it
        server.inject(
            FaultRule::new("GET", format!("/sandboxes/{}", sb.id())).fault(Fault::Status {
                status: 503,
                code: "service_unavailable".into(),
            }),
        );
    }
    let info = sb.get_info()?;
    let r = sb.commands().run("echo traced")?;
    sb.files().write("/tmp/traced.txt", "hello")?;
    if let Some(server) = &server {
        // an expired token: the next data-plane call re-activates and retries once
        server.expire_tokens(sb.id());
    }
    sb.files().read_text("/tmp/traced.txt")?;
    sb.kill()?;
    println!(
        "{} was {}; the command printed {:?}",
        info.id, info.status, r.stdout
    );
    Ok(())
}
