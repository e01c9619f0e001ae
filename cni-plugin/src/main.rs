fn main() {
    std::process::exit(trellis_cni::cli::main());
}
