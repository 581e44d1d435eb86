//! Quick start: create a sandbox, run a command with streamed output, write and read a file,
//! pause and resume, and kill it.
//!
//! Uses the hosted service when `SUPERSERVE_API_KEY` is set; otherwise it starts the embedded
//! local backend (needs root on Linux).
//!
//! ```text
//! cargo run --example quickstart --features blocking,local
//! ```

use superserve::{CreateOptions, PauseOptions, RunOptions, Sandbox};

fn main() {
    if let Err(e) = run() {
        eprintln!("quickstart failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the local backend (if any) alive until the end of `run`.
    let (_local, config) = match std::env::var("SUPERSERVE_API_KEY") {
        Ok(_) => {
            println!("using the hosted service (SUPERSERVE_API_KEY is set)");
            (None, superserve::Config::from_env()?)
        }
        Err(_) => {
            let server = superserve::local::LocalServer::start()?;
            println!("started the local backend at {}", server.base_url());
            let config = server.config();
            (Some(server), config)
        }
    };

    let sandbox = Sandbox::create_with_config(
        &config,
        CreateOptions::new("quickstart")
            .metadata("example", "quickstart")
            .env_var("GREETING", "hello from the sandbox"),
    )?;
    println!("created sandbox {} ({})", sandbox.id(), sandbox.status());

    println!("running a command, output streamed as it arrives:");
    let result = sandbox.commands().run_with(
        "echo $GREETING; for i in 1 2 3; do echo step $i; sleep 0.2; done; uname -s",
        // a chunk is whatever arrived: it may hold several lines
        RunOptions::new().on_stdout(|s: &str| {
            for line in s.split_inclusive('\n') {
                print!("  | {line}");
            }
        }),
    )?;
    println!("command exited with {}", result.exit_code);

    sandbox
        .files()
        .write("/app/notes.txt", "written by the quickstart\n")?;
    let text = sandbox.files().read_text("/app/notes.txt")?;
    println!("wrote and read back /app/notes.txt: {:?}", text.trim_end());

    sandbox.pause_with(PauseOptions::new().wait(true))?;
    println!("paused: status is {}", sandbox.get_info()?.status);
    sandbox.resume()?;
    println!("resumed: status is {}", sandbox.get_info()?.status);
    let again = sandbox.commands().run("cat /app/notes.txt")?;
    println!("the file survived the pause: {:?}", again.stdout.trim_end());

    sandbox.kill()?;
    println!("killed sandbox {}", sandbox.id());
    Ok(())
}
