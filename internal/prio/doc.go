// Package prio sets the scheduling priority (nice value) of every thread of
// this process, for the processes that serve others and must not queue
// behind them: the pager daemon and the UFFD handlers, whose faulting vCPUs
// wait on them, and the benchmark's storage model, which stands in for a
// device.
//
// This package owns that one system call sequence. It must not decide which
// processes are raised or by how much: its callers' configurations do.
package prio
