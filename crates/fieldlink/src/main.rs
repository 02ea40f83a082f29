//! The `fieldlink` binary: a thin `main`; everything else lives in the library.

fn main() -> std::process::ExitCode {
    fieldlink::cli::main()
}
