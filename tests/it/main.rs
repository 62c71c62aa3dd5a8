//! Integration tests: the real binary and library against fake Falcon and VMRay servers.
mod cli;
mod sim;
mod support;
