//! `berth log tail|verify`, and the hidden `berth log stress` that the
//! durability test kills with SIGKILL.

use crate::system::{OsEntropy, SystemClock};
use anyhow::Context as _;
use berth_core::{Command, CommandEnvelope, Position, RecordedEvent};
use berth_engine::CommandBus;
use berth_log_rocksdb::{LogReader, RocksLog};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum LogCommand {
    /// Print the last events of the log (works beside a running berth).
    Tail {
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// How many of the last events to print.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u64,
        /// Keep printing new events as they are committed.
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per event instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every envelope's checksum, the order of positions and every stream's versions.
    Verify {
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Append volume-create commands from many writers until killed, printing each acknowledgement (for durability tests).
    #[command(hide = true)]
    Stress {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
}

fn log_dir(data_dir: Option<PathBuf>) -> PathBuf {
    data_dir.unwrap_or_else(super::default_data_dir).join("log")
}

fn print_event(event: &RecordedEvent, json: bool) {
    if json {
        println!("{}", serde_json::to_string(event).expect("events serialize"));
        return;
    }
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(event.recorded_at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    println!(
        "{:>8}  {time}  {:<40} v{:<4} {:<28} {}",
        event.position.0,
        event.stream.to_string(),
        event.version.0,
        event.event.type_name(),
        event.actor
    );
}

pub fn run(command: LogCommand) -> anyhow::Result<ExitCode> {
    match command {
        LogCommand::Tail { data_dir, lines, follow, json } => {
            let reader = LogReader::open(&log_dir(data_dir))?;
            let head = reader.head()?;
            let mut after = Position(head.0.saturating_sub(lines));
            loop {
                let batch = reader.read_all(after, 1024)?;
                for event in &batch {
                    print_event(event, json);
                }
                std::io::stdout().flush().ok();
                match batch.last() {
                    Some(last) => after = last.position,
                    None if follow => {
                        std::thread::sleep(Duration::from_millis(200));
                        reader.refresh()?;
                    }
                    None => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        LogCommand::Verify { data_dir } => {
            let path = log_dir(data_dir);
            let report = LogReader::open(&path)?.verify()?;
            match report.problem {
                None => {
                    println!(
                        "ok: {} events in {} streams; every checksum, position and stream version verified ({})",
                        report.event_count,
                        report.stream_count,
                        path.display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some((position, reason)) => {
                    println!("corrupt at position {position}: {reason}");
                    println!("the {} events before it are intact", report.event_count);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        LogCommand::Stress { data_dir, writers } => stress(data_dir, writers),
    }
}

fn stress(data_dir: PathBuf, writers: usize) -> anyhow::Result<ExitCode> {
    let log = Arc::new(RocksLog::open(&data_dir.join("log"))?);
    let bus = Arc::new(CommandBus::new(log, Arc::new(SystemClock), Arc::new(OsEntropy)).context("loading the model")?);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    runtime.block_on(async move {
        let tasks: Vec<_> = (0..writers)
            .map(|writer| {
                let bus = bus.clone();
                let stdout = stdout.clone();
                tokio::spawn(async move {
                    let mut index = 0u64;
                    loop {
                        let name = format!("w{writer}-{}-{index}", std::process::id());
                        let command = Command::CreateVolume { name: name.clone(), driver: "local".into(), labels: BTreeMap::new() };
                        let outcome = bus.execute(CommandEnvelope::new("stress", command)).await.expect("stress append");
                        let mut out = stdout.lock().unwrap();
                        writeln!(out, "ack {name} {}", outcome.position.0).ok();
                        out.flush().ok();
                        index += 1;
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    Ok(ExitCode::SUCCESS)
}
