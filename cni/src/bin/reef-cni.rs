//! reef-cni: the CNI plugin the container runtime calls for each pod (`"type": "reef-cni"`).
//! Parameters from `CNI_*` and stdin; the result (or the error JSON) on stdout; logs on stderr
//! or the configured file; exit status 0 on success, 1 on error.

fn main() -> std::process::ExitCode {
    reef_cni::plugin::main("reef-cni", reef_cni::plugin::reef_cni)
}
