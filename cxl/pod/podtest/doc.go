// Package podtest holds control planes for the tests of the CXL pod
// protocol (package pod) and for local experiments: [MemCoordinator], an
// in-memory, linearizable [pod.Coordinator] whose leases can be expired at
// will, and [ServeCoordinator]/[DialCoordinator], which share one between
// the processes of a machine over net/rpc (the multi-process pod test).
//
// It is for tests only: production code gets its coordinator from pool
// (pool.NewCoordinator over control.PodState, backed by etcd) and must not
// import this package. The net/rpc server is a single point of failure and
// no replacement for etcd.
package podtest
