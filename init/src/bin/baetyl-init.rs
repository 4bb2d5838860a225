//! The initramfs's `/init`: a thin, static binary around `baetyl_init::run_cli`. The same `run_cli` is also
//! `baetyl init` in the multi-call binary.

use clap::Parser;

#[derive(Parser)]
#[command(name = "baetyl-init", version)]
struct Cli {
    #[command(flatten)]
    init: baetyl_init::InitArgs,
}

fn main() {
    // The kernel passes PID 1 unknown parameters as arguments; ignore anything clap rejects rather than exit.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if nix::unistd::getpid().as_raw() != 1 => e.exit(),
        Err(_) => Cli {
            init: baetyl_init::InitArgs {
                cmdline: "/proc/cmdline".into(),
                ..Default::default()
            },
        },
    };
    std::process::exit(baetyl_init::run_cli(cli.init));
}
