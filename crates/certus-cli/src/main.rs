//! `certus-vault`: the operator (`run`), the CRD generator (`crds`), and the cluster-less
//! `plan` / `apply` of a manifest directory.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = certus_cli::Cli::parse();
    certus_cli::main(cli)
}
