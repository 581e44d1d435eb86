//! The quick start in the async flavour: create a sandbox, stream a command's output, run an
//! interactive session, write and read a file, pause and resume, kill.
//!
//! Uses the hosted service when `SUPERSERVE_API_KEY` is set; otherwise it starts the embedded
//! local backend (needs root on Linux).
//!
//! ```text
//! cargo run --example quickstart_async --features async,local
//! ```

use superserve::{AsyncSandbox, CreateOptions, PauseOptions, RunOptions};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("quickstart_async failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (_local, config) = match std::env::var("SUPERSERVE_API_KEY") {
        Ok(_) => (None, superserve::Config::from_env()?),
        Err(_) => {
            let server = superserve::local::LocalServer::start()?;
            println!("started the local backend at {}", server.base_url());
            let config = server.config();
            (Some(server), config)
        }
    };
    let sandbox =
        AsyncSandbox::create_with_config(&config, CreateOptions::new("quickstart-async")).await?;
    println!("created sandbox {}", sandbox.id());

    let result = sandbox
        .commands()
        .run_with(
            "for i in 1 2 3; do echo tick $i; sleep 0.2; done",
            // a chunk is whatever arrived: it may hold several lines
            RunOptions::new().on_stdout(|s: &str| {
                for line in s.split_inclusive('\n') {
                    print!("  | {line}");
                }
            }),
        )
        .await?;
    println!("exit code {}", result.exit_code);

    let session = sandbox
        .commands()
        .spawn_with(
            "python3 -i -q",
            RunOptions::new().on_stdout(|s: &str| print!("  python> {s}")),
        )
        .await?;
    session.write_stdin("print(6 * 7)\n").await?;
    session.close_stdin().await?;
    let r = session.wait().await?;
    println!("python exited with {}", r.exit_code);

    sandbox.files().write("/app/hello.txt", "hi").await?;
    println!(
        "read back: {}",
        sandbox.files().read_text("/app/hello.txt").await?
    );

    sandbox.pause_with(PauseOptions::new().wait(true)).await?;
    sandbox.resume().await?;
    println!("paused and resumed: {}", sandbox.get_info().await?.status);
    sandbox.kill().await?;
    println!("killed");
    Ok(())
}
