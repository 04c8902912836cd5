//! The `lockfs` command. Today it carries the lock-table demonstration;
//! the daemon (`serve`), mounts and administration commands build on the
//! same table.

mod demo;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lockfs",
    version,
    about = "lockfs: one lock table for local and remote locks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Walk through the lock table: grants, conflicts, queues, deadlock,
    /// grace, value blocks and share reservations.
    Demo {
        /// Print the steps as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo { json } => {
            let steps = demo::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&steps)?);
            } else {
                demo::print(&steps);
            }
        }
    }
    Ok(())
}
