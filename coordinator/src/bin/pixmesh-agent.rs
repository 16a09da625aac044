//! `pixmesh-agent`: the device daemon (see `pixmesh_agent::cli`).

fn main() -> std::process::ExitCode {
    pixmesh_agent::cli::main()
}
