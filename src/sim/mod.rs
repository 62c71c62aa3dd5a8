//! The built-in simulated Falcon tenant and VMRay instance (issue 5): filled in by the simulator
//! work.
