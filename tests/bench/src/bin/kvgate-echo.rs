//! `kvgate-echo`: the overhead phase's trivial upstream ([`kvgate_bench::echo`]) as a
//! process of its own, so it can be pinned away from Envoy and built in release. Prints
//! its endpoints (one JSON array) and answers until it is stopped.

use clap::Parser;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(
    name = "kvgate-echo",
    about = "A trivial upstream: answers every POST with a small fixed chat completion"
)]
struct Args {
    /// Addresses to listen on (`ip:port`, comma-separated; port 0 = any free one).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:0")]
    listen: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let echo = kvgate_bench::echo::Echo::start_on(&args.listen)?;
    println!("{}", serde_json::to_string(&echo.endpoints)?);
    loop {
        std::thread::park();
    }
}
