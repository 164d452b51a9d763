// A library target lets tracer-user name this crate as a build-dependency, so
// cargo rebuilds the embedded eBPF object when its sources change.
#![no_std]
