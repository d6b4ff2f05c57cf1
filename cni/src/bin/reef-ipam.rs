//! reef-ipam: the IPAM plugin (`"ipam": {"type": "reef-ipam"}`) for other plugins such as
//! `bridge` and `ptp`, backed by reef's block IPAM.

fn main() -> std::process::ExitCode {
    reef_cni::plugin::main("reef-ipam", reef_cni::plugin::reef_ipam)
}
