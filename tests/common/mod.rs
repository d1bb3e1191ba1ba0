//! Shared test code: the naive reference forward pass (the oracle) and the llama.cpp fixtures.
#![allow(dead_code)] // each test binary uses a different part

pub mod fixtures;
pub mod gguf_weights;
pub mod reference;
