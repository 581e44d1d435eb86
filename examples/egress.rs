//! Egress control, brokered secrets and the network log on the embedded local backend:
//! a secret bound to a sandbox shows up only as a stand-in token, the sandbox's rules block
//! what they do not allow, and every connection attempt lands in the network log. Nothing
//! leaves this machine (every connection it makes is refused by design).
//!
//! ```text
//! cargo run --example egress --features blocking,local
//! ```

use superserve::local::LocalServer;
use superserve::{
    CreateOptions, NetworkConfig, NetworkLogOptions, Provider, Sandbox, Secret, SecretCreateOptions,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("egress example failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let server = LocalServer::start()?;
    let config = server.config();
    if !server.egress_available() {
        println!("note: this kernel lacks nf_tables NAT, so sandboxes have loopback only");
    }

    let providers: Vec<String> = Provider::list_with_config(&config)?
        .into_iter()
        .map(|p| format!("{} ({})", p.name, p.hosts.join(", ")))
        .collect();
    println!("provider shortcuts: {}", providers.join("; "));

    let secret = Secret::create_with_config(
        &config,
        SecretCreateOptions::new("openai-demo", "sk-demo-real-value").provider("openai"),
    )?;
    println!(
        "created secret {} for {:?}",
        secret.name(),
        secret.info().hosts
    );

    let sandbox = Sandbox::create_with_config(
        &config,
        CreateOptions::new("egress-demo")
            .secret("OPENAI_API_KEY", "openai-demo")
            .network(
                NetworkConfig::new()
                    .allow_out(["api.openai.com"])
                    .deny_out(["0.0.0.0/0"]),
            ),
    )?;
    let env = sandbox.commands().run("printf %s \"$OPENAI_API_KEY\"")?;
    println!(
        "inside the sandbox OPENAI_API_KEY={} (a stand-in)",
        env.stdout
    );

    // 93.184.216.34 is public but not allowed: deny_out 0.0.0.0/0 refuses it at the proxy.
    // 192.0.2.10 (a documentation range, RFC 5737) and 169.254.169.254 (cloud metadata,
    // link-local) are special-purpose: always refused, whatever the sandbox's rules say.
    for url in [
        "http://93.184.216.34/",
        "http://192.0.2.10/",
        "http://169.254.169.254/latest/meta-data/",
    ] {
        let r = sandbox.commands().run(&format!("curl -sS -m 5 {url}"))?;
        println!("curl {url} -> exit {} {}", r.exit_code, r.stderr.trim());
    }

    // the proxy logs asynchronously; give it a moment
    let mut events = Vec::new();
    for _ in 0..50 {
        events = sandbox.get_network_log(NetworkLogOptions::new())?.events;
        if events.len() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    println!("network log, newest first:");
    for e in &events {
        println!(
            "  {} {}:{} {} rule={}",
            e.ts.as_str(),
            e.dst_ip.as_deref().unwrap_or("?"),
            e.dst_port.unwrap_or(0),
            e.verdict.as_ref().map_or("-", |v| v.as_str()),
            e.match_rule.as_deref().unwrap_or("-"),
        );
    }

    for b in secret.get_sandboxes()? {
        println!(
            "secret bound in sandbox {} as {}",
            b.sandbox_name, b.env_key
        );
    }
    sandbox.kill()?;
    secret.delete()?;
    println!("done");
    Ok(())
}
