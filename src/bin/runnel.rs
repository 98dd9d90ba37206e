//! The `runnel` command: `broker` starts a node; `topics`, `produce`, `consume`, `perf`, `groups` and
//! `quorum` are clients of a running broker.

use std::sync::Arc;

use runnel::config::BrokerConfig;
use runnel::runtime::{self, StdDisk};
use runnel::server::Server;

const USAGE: &str = "\
usage: runnel <command> [options]

commands:
  broker   [--config server.properties] [--override key=value ...]
           start a broker; with no config: one node on 127.0.0.1:9092, data in ./runnel-data
  topics   create|list|describe|delete   manage topics
  produce  --topic T                      write lines from stdin as records
  consume  --topic T                      print records
  perf     produce|consume                measure throughput and latency
  groups   list|describe|delete           consumer groups: members, committed offsets, lag
  quorum   describe                       the controller quorum: leader, epoch, voters

Run `runnel <command> --help` for a command's options.";

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

fn broker_args(args: &[String]) -> Result<(Option<String>, Vec<String>), String> {
    let mut config = None;
    let mut overrides = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => config = Some(it.next().ok_or("--config needs a file")?.clone()),
            "--override" | "-o" => overrides.push(it.next().ok_or("--override needs key=value")?.clone()),
            "--help" | "-h" => return Err(USAGE.into()),
            // Kafka's scripts take the properties file as a bare first argument.
            s if !s.starts_with('-') && config.is_none() => config = Some(s.to_string()),
            other => return Err(format!("unknown option '{other}' for `runnel broker`\n\n{USAGE}")),
        }
    }
    Ok((config, overrides))
}

async fn run_broker(args: &[String]) -> i32 {
    let (path, overrides) = match broker_args(args) {
        Ok(x) => x,
        Err(msg) => {
            eprintln!("{msg}");
            return 2;
        }
    };
    let config = match BrokerConfig::load(path.as_deref(), &overrides) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("runnel broker: configuration error: {e}");
            return 2;
        }
    };
    init_logging();
    let server = match Server::bind(config.clone(), Arc::new(StdDisk)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("runnel broker: {e}");
            return 1;
        }
    };
    let addr = server.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(node_id = config.node_id(), %addr, data = %config.log_dir(), cluster_id = server.broker().cluster_id(), "runnel broker started");
    server.run(runtime::shutdown_signal()).await;
    0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let rest = &args[1..];
    let code = match cmd.as_str() {
        "broker" => run_broker(rest).await,
        "topics" | "produce" | "consume" | "perf" | "quorum" | "groups" => {
            let r = match cmd.as_str() {
                "topics" => runnel::cli::topics(rest).await,
                "groups" => runnel::cli::groups(rest).await,
                "quorum" => runnel::cli::quorum(rest).await,
                "produce" => runnel::cli::produce(rest).await,
                "consume" => runnel::cli::consume(rest).await,
                _ => runnel::cli::perf(rest).await,
            };
            match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("runnel {cmd}: {e:#}");
                    1
                }
            }
        }
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            0
        }
        "--version" | "-V" => {
            println!("runnel {}", env!("CARGO_PKG_VERSION"));
            0
        }
        other => {
            eprintln!("unknown command '{other}'\n\n{USAGE}");
            2
        }
    };
    std::process::exit(code);
}
