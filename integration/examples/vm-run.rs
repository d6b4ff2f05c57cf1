//! Boots the lab VM and runs a shell script in it, for poking at the real-kernel environment:
//!
//!     cargo run -p reef-integration --example vm-run -- 'ip -d link show tunl0' [BINARY…]
//!
//! The binaries are copied to /reef/bin in the guest, with their libraries.

use reef_integration::vm::{self, Kernel, VmRun};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(script) = args.next() else {
        eprintln!("usage: vm-run SCRIPT [BINARY…]");
        std::process::exit(2);
    };
    let mut run = VmRun::new(script);
    run.binaries = args.map(Into::into).collect();
    let out = Kernel::find()
        .and_then(|k| vm::boot(&k, &run))
        .unwrap_or_else(|e| {
            eprintln!("vm-run: {e}");
            std::process::exit(1);
        });
    print!("{}", out.serial);
    eprintln!(
        "vm-run: exit {:?} after {:.1}s",
        out.exit_code,
        out.wall.as_secs_f64()
    );
    std::process::exit(out.exit_code.unwrap_or(1));
}
