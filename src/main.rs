//! The `tagbench` binary: parse the command line, run, exit with the library's code.

fn main() {
    std::process::exit(tagbench::main_impl());
}
