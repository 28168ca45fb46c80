//! The `caselog` command's parts that other programs reuse: the gRPC clients (`import`,
//! `export` and `tail`, `show` for `case` and `metrics`) and the synthetic workload's writer and
//! loader (`generate`, with the default `generator` feature). `main.rs` parses the command line
//! and calls one function per subcommand.

pub mod export;
#[cfg(feature = "generator")]
pub mod generate;
pub mod import;
pub mod show;
