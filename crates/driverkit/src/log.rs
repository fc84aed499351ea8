//! A dext's log: plain lines on stderr, which the daemon collects and
//! prefixes with the dext's name and PID. `DRIVERKIT_LOG` sets the filter
//! (default `info`).

pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRIVERKIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}
