use std::io::IsTerminal;

use clap::Parser;
use ec2_operator::config::{LogFormat, Settings};
use tracing_subscriber::{EnvFilter, fmt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
