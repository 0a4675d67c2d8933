fn main() {
    std::process::exit(pipeline::cli::main());
}
