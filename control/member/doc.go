// Package member runs an etcd member inside this process: the control
// plane's server side, for a pod that brings its own (`aquifer serve
// --embedded` without --etcd-endpoints, `aquifer etcd`). Clients reach it
// through package control like any external cluster.
//
// It is a package of its own so that everything else — the pool, the
// daemon, API clients — links etcd's client only, never its server.
//
// This package owns starting and stopping a member. It must not read or
// write keys: the key layout lives in package control.
package member
