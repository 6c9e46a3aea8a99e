use std::io::IsTerminal;

use clap::Parser;
use ec2_operator::config::{LogFormat, Settings};
use tracing_subscriber::{EnvFilter, fmt};

fn main() -> anyhow::Result<()> {
    keep_large_buffers_off_the_heap();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,aws=warn"));
    // Colours only on a terminal: log files and log collectors get plain text.
    let logs = fmt().with_env_filter(filter).with_ansi(std::io::stdout().is_terminal());
    match settings.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    ec2_operator::operator::run(settings).await
}

/// glibc serves an allocation above its mmap threshold with its own mapping, returned to the OS
/// when freed, but after each such free it raises the threshold to that size (up to 32 MiB). A
/// fleet poll reads 1,000-instance pages of a few MiB each, so after the first one every page
/// buffer lands in a malloc arena instead and the arenas stay fragmented: peak RSS at 1,000
/// instances went from 60 to 50 MiB with the threshold held at its default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_buffers_off_the_heap() {
    // SAFETY: mallopt only sets a process-wide tunable (under glibc's own lock); it is called
    // before the runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_buffers_off_the_heap() {}
