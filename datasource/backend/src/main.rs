//! `gpx_herdwatch_linux_amd64`: started by Grafana (go-plugin protocol: the handshake line on
//! stdout, then gRPC on the address it names).
use grafana_plugin_sdk::backend;
use herdwatch_datasource::plugin::Plugin;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let listener = match backend::initialize().await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("gpx_herdwatch: cannot listen on 127.0.0.1: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = backend::Plugin::new()
        .init_subscriber(true)
        .data_service(Plugin)
        .diagnostics_service(Plugin)
        .resource_service(Plugin)
        .stream_service(Plugin)
        .start(listener)
        .await;
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpx_herdwatch: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
