//! The client subcommands: `enqueue`, `queues`, `task get`.

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct EnqueueArgs {}

#[derive(Args, Debug)]
pub struct QueuesArgs {}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {}

pub async fn enqueue(_args: EnqueueArgs) -> Result<()> {
    anyhow::bail!("not yet")
}

pub async fn queues(_args: QueuesArgs) -> Result<()> {
    anyhow::bail!("not yet")
}

pub async fn task(_command: TaskCommand) -> Result<()> {
    anyhow::bail!("not yet")
}
