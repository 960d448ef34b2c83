// Package rdmatest owns helpers shared by the rdma backends' tests and
// benchmarks (one benchmark loop for every transport, so their numbers are
// comparable). It must not be imported by non-test code.
package rdmatest
