//! Integration tests: the real binary and library against fake Falcon and VMRay servers.
mod analysts;
mod cli;
mod conformance;
mod continuous;
mod demo;
mod exactly_once;
mod falcon;
mod giveup;
mod metrics;
mod operator;
mod pipeline;
mod reliability;
mod sim;
mod support;
mod verdicts;
mod vmray;
