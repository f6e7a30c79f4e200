//! rlsgate command line (all logic lives in the library).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    rlsgate::cli::main()
}
