//! Runs the embedded API server until interrupted and writes a kubeconfig for `kubectl`.
//!
//! `cargo run -p charon-apiserver --example serve -- [PORT] [KUBECONFIG]`

use charon_apiserver::{ApiServer, Config, write_kubeconfig};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let kubeconfig = args.next().unwrap_or_else(|| "apiserver.kubeconfig".into());
    let server = ApiServer::start(Config::loopback(port)).await?;
    write_kubeconfig(std::path::Path::new(&kubeconfig), &server.url())?;
    println!("serving on {} (kubeconfig {kubeconfig})", server.url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
