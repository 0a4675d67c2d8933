fn main() {
    // The supervisor of a `command` stage's shell starts before anything else (no logging,
    // no runtime): see `pipeline::supervise`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == pipeline::supervise::ARG) {
        let rest = if args.get(2).is_some_and(|a| a == "--") { &args[3..] } else { &args[2..] };
        std::process::exit(pipeline::supervise::main(rest));
    }
    std::process::exit(pipeline::cli::main());
}
