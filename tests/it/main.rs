//! Integration tests: the real binary and library against fake Falcon and VMRay servers.
mod cli;
mod falcon;
mod sim;
mod support;
mod vmray;
