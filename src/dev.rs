//! `charon dev`: Charon's environment on one machine, with no cluster. It runs the embedded
//! API server, installs the CRDs, writes a kubeconfig for `kubectl`, and stays in the
//! foreground until interrupted.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, Config};

/// Arguments of `charon dev`.
#[derive(Clone, Debug, clap::Args)]
pub struct DevArgs {
    /// Where to write the kubeconfig for kubectl.
    #[arg(long, default_value = "charon-dev.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Port of the API server on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Run only the cluster, without the Charon controller.
    #[arg(long)]
    pub no_controller: bool,
}

/// Runs until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let server = charon_apiserver::start(address)
        .await
        .with_context(|| format!("starting the API server on {address}"))?;
    charon_apiserver::write_kubeconfig(&args.kubeconfig, &server.url())
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    let client = Client::try_from(Config::new(server.url().parse()?))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for crd in crate::crd::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .with_context(|| format!("installing CRD {}", crd.metadata.name.unwrap_or_default()))?;
    }
    println!("API server listening on {}", server.url());
    println!("CRDs installed: workflows, workflowinstances and backfills (charon.dev)");
    println!(
        "Use it with: export KUBECONFIG={}",
        args.kubeconfig.display()
    );
    if !args.no_controller {
        println!(
            "Note: the Charon controller is not part of this build yet; only the cluster runs."
        );
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.shutdown().await;
    Ok(())
}
