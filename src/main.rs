//! The `attnkit` command line. Everything lives in `cli/`; this file only installs the
//! counting allocator (so `bench` and `report` can report peak heap bytes) and maps the
//! outcome to an exit code.

use attnkit::alloc_counter::CountingAllocator;
use std::process::ExitCode;

mod cli;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn main() -> ExitCode {
    cli::main()
}
