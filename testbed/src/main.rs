//! `testbed`: `testbed up` runs a local cluster. The testbed also re-executes itself as
//! `testbed node ...` and `testbed paxos ...` for its children, so one binary is all it needs.

/// mimalloc: these processes allocate per HTTP request and per message; glibc malloc showed up
/// as ~12% of CPU in the cluster benchmark profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    testbed::main_with_args(std::env::args().collect())
}
