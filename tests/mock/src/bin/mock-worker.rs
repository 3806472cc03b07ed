//! `mock-worker`: a simulated OpenAI-compatible LLM engine that publishes Dynamo KV
//! events (see the `kvgate_mock` crate). Prints `LISTENING ip:port` as its first stdout line.

use clap::Parser;
use kvgate_mock::{run, MockArgs};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    run(MockArgs::parse()).await?;
    Ok(())
}
